/* module.c: the CPython face of the switch: the Switch type, its commands and snapshots. Every
 * call takes the switch lock with the GIL released; no Python object is touched under it. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "switch.h"

typedef struct {
    PyObject_HEAD
    struct sw sw;
    int ready; /* the lock and fds exist */
    int stopped;
} SwitchObject;

static void sw_lock(struct sw *sw)
{
    if (pthread_mutex_trylock(&sw->lock) != 0) {
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&sw->lock);
        Py_END_ALLOW_THREADS
    }
    sw_clock(sw);
}

/* Work a command queued for the loop (a hand-off, bytes to write) runs in the loop's thread. */
static void sw_unlock(struct sw *sw)
{
    if (sw->todo_head != NULL && sw->running)
        loop_wake(sw);
    sw_flush_events(sw, 1); /* what the command itself reported (a close, WAITERS) */
    pthread_mutex_unlock(&sw->lock);
}

static int check_open(SwitchObject *self)
{
    if (!self->ready || self->stopped) {
        PyErr_SetString(PyExc_RuntimeError, "switch is stopped");
        return -1;
    }
    return 0;
}

static int copy_msg(struct buf *b, Py_buffer *v)
{
    return buf_append(b, v->buf, (size_t)v->len);
}

/* tracked=: the parameter names (str) whose values the switch keeps in step (params.c). */
static int set_tracked(struct sw *sw, PyObject *obj)
{
    PyObject *seq = PySequence_Fast(obj, "tracked must be a sequence of str");
    if (seq == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    const char *names[PARAM_MAX_TRACKED];
    size_t lens[PARAM_MAX_TRACKED];
    int rc = -1;
    if (n > PARAM_MAX_TRACKED) {
        PyErr_Format(PyExc_ValueError, "at most %d tracked parameters", PARAM_MAX_TRACKED);
        goto out;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t len;
        names[i] = PyUnicode_AsUTF8AndSize(PySequence_Fast_GET_ITEM(seq, i), &len);
        if (names[i] == NULL)
            goto out;
        lens[i] = (size_t)len;
    }
    rc = params_set_tracked(sw, names, lens, (size_t)n);
    if (rc == -2)
        PyErr_NoMemory();
    else if (rc < 0)
        PyErr_SetString(PyExc_ValueError, "tracked: names of letters, digits, '_' and '.' (at "
                                          "most 63 bytes), each once");
out:
    Py_DECREF(seq);
    return rc < 0 ? -1 : 0;
}

/* A params argument (a mapping, or a sequence of (name, value) pairs of str) as UTF-8
 * pointers into the str objects `items` keeps alive. Values are checked here, before any
 * command changes a thing. */
struct pargs {
    PyObject *items;
    size_t n;
    const uint8_t **names, **values;
    size_t *nlens, *vlens;
};

static void pargs_free(struct pargs *a)
{
    Py_CLEAR(a->items);
    PyMem_Free(a->names);
    PyMem_Free(a->values);
    PyMem_Free(a->nlens);
    PyMem_Free(a->vlens);
    memset(a, 0, sizeof(*a));
}

static int pargs_parse(PyObject *obj, struct pargs *a)
{
    memset(a, 0, sizeof(*a));
    if (obj == NULL || obj == Py_None)
        return 0;
    if (PyDict_Check(obj) || PyObject_HasAttrString(obj, "items"))
        a->items = PyMapping_Items(obj);
    else
        a->items = PySequence_List(obj);
    if (a->items == NULL)
        return -1;
    Py_ssize_t n = PyList_GET_SIZE(a->items);
    a->n = (size_t)n;
    a->names = PyMem_Calloc(a->n + 1, sizeof(*a->names));
    a->values = PyMem_Calloc(a->n + 1, sizeof(*a->values));
    a->nlens = PyMem_Calloc(a->n + 1, sizeof(*a->nlens));
    a->vlens = PyMem_Calloc(a->n + 1, sizeof(*a->vlens));
    if (!a->names || !a->values || !a->nlens || !a->vlens) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(a->items, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2 ||
            !PyUnicode_Check(PyTuple_GET_ITEM(item, 0)) ||
            !PyUnicode_Check(PyTuple_GET_ITEM(item, 1))) {
            PyErr_SetString(PyExc_TypeError, "params: (name, value) pairs of str");
            goto fail;
        }
        Py_ssize_t nl, vl;
        a->names[i] = (const uint8_t *)PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(item, 0), &nl);
        if (a->names[i] == NULL)
            goto fail;
        a->values[i] = (const uint8_t *)PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(item, 1), &vl);
        if (a->values[i] == NULL)
            goto fail; /* a lone surrogate: not UTF-8 (UnicodeEncodeError, a ValueError) */
        a->nlens[i] = (size_t)nl;
        a->vlens[i] = (size_t)vl;
        if (!params_valid_value(a->values[i], a->vlens[i])) {
            PyErr_Format(PyExc_ValueError,
                         "params: the value of %R is over %d bytes or holds a NUL",
                         PyTuple_GET_ITEM(item, 0), PARAM_VALUE_MAX);
            goto fail;
        }
    }
    return 0;
fail:
    pargs_free(a);
    return -1;
}

static int pargs_apply(struct sw *sw, struct conn *c, struct pargs *a)
{
    if (a->items == NULL)
        return 0;
    return params_set(sw, c, a->names, a->nlens, a->values, a->vlens, a->n);
}

static int Switch_init(SwitchObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"unsupported_pkt", "long_tx",     "server_gone",
                             "max_packet_size", "buffer_size", "tracked",
                             "tick_ms",         "login_max",   NULL};
    Py_buffer unsupported = {0}, long_tx = {0}, gone = {0};
    unsigned long long max_packet = 0x7fffffffULL, bufsize = 65536, login_max = 65536;
    PyObject *tracked = NULL;
    unsigned int tick_ms = 100;
    if (self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "Switch.__init__ called twice");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|$y*y*y*KKOIK", kwlist, &unsupported, &long_tx,
                                     &gone, &max_packet, &bufsize, &tracked, &tick_ms,
                                     &login_max))
        return -1;
    int rc = -1;
    if (unsupported.buf == NULL || long_tx.buf == NULL || gone.buf == NULL) {
        PyErr_SetString(PyExc_TypeError, "unsupported_pkt, long_tx and server_gone are required");
        goto out;
    }
    if (max_packet < 5 || max_packet > 0x7fffffffULL || bufsize < 64 || bufsize > (1u << 30)) {
        PyErr_SetString(PyExc_ValueError, "max_packet_size or buffer_size out of range");
        goto out;
    }
    if (tick_ms < 1 || tick_ms > 60000) {
        PyErr_SetString(PyExc_ValueError, "tick_ms out of range (1..60000)");
        goto out;
    }
    /* A startup packet (up to MAX_STARTUP_PACKET) must fit in the login buffer. */
    if (login_max < MAX_STARTUP_PACKET || login_max > (1u << 30)) {
        PyErr_SetString(PyExc_ValueError, "login_max out of range");
        goto out;
    }
    if (cancel_selftest() < 0) {
        PyErr_SetString(PyExc_RuntimeError, "SipHash-2-4 gives a wrong answer: not built right");
        goto out;
    }
    struct sw *sw = &self->sw;
    memset(sw, 0, sizeof(*sw));
    ssize_t got;
    do /* early in boot the pool may not be ready: getrandom blocks, a signal may cut it */
        got = getrandom(sw->cancel_secret, sizeof(sw->cancel_secret), 0);
    while (got < 0 && errno == EINTR);
    if (got != (ssize_t)sizeof(sw->cancel_secret)) {
        if (got >= 0)
            errno = EIO;
        PyErr_SetFromErrno(PyExc_OSError);
        goto out;
    }
    sw->epfd = sw->wake_fd = sw->ev_fd = sw->timer_fd = -1;
    sw->tick_ms = tick_ms;
    sw->max_packet = (uint32_t)max_packet;
    sw->bufsize = (uint32_t)bufsize;
    sw->login_max = (uint32_t)login_max;
    sw->login_pool.id = -1;
    if (copy_msg(&sw->msg_unsupported, &unsupported) < 0 ||
        copy_msg(&sw->msg_long_tx, &long_tx) < 0 || copy_msg(&sw->msg_server_gone, &gone) < 0) {
        PyErr_NoMemory();
        goto out;
    }
    if (tracked != NULL && set_tracked(sw, tracked) < 0) {
        buf_free(&sw->msg_unsupported);
        buf_free(&sw->msg_long_tx);
        buf_free(&sw->msg_server_gone);
        goto out;
    }
    if (loop_init(sw) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        params_fini(sw);
        loop_fini(sw);
        goto out;
    }
    pthread_mutex_init(&sw->lock, NULL);
    sw_clock(sw);
    self->ready = 1;
    rc = 0;
out:
    PyBuffer_Release(&unsupported);
    PyBuffer_Release(&long_tx);
    PyBuffer_Release(&gone);
    return rc;
}

/* Stops the thread and closes every connection still owned; no events for them. */
static void shutdown_switch(SwitchObject *self)
{
    if (!self->ready || self->stopped)
        return;
    struct sw *sw = &self->sw;
    Py_BEGIN_ALLOW_THREADS
    loop_stop(sw);
    Py_END_ALLOW_THREADS
    self->stopped = 1;
    for (uint32_t i = 0; i < sw->nslots; i++)
        if (sw->slots[i] != NULL)
            conn_destroy(sw, sw->slots[i], R_NONE, 0);
    while (sw->todo_head != NULL) {
        sw->todo_head->scheduled = 0;
        sw->todo_head = sw->todo_head->todo_next;
    }
    sw->todo_tail = NULL;
    conn_free_dead(sw);
    buf_spares_free(sw);
    free(sw->slots);
    sw->slots = NULL;
    sw->nslots = 0;
    while (sw->pools != NULL) {
        struct pool *p = sw->pools;
        sw->pools = p->next;
        free(p);
    }
    sw_drop_events(sw);
    free(sw->evq);
    sw->evq = NULL;
    sw->nev = sw->evcap = 0;
    buf_free(&sw->msg_unsupported);
    buf_free(&sw->msg_long_tx);
    buf_free(&sw->msg_server_gone);
    params_fini(sw);
    fast_fini(sw);
    ps_fini(sw);
    tls_fini(sw);
    loop_fini(sw);
    pthread_mutex_destroy(&sw->lock);
}

static void Switch_dealloc(SwitchObject *self)
{
    shutdown_switch(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Switch_fileno(SwitchObject *self, PyObject *Py_UNUSED(a))
{
    if (check_open(self) < 0)
        return NULL;
    return PyLong_FromLong(self->sw.ev_fd);
}

static PyObject *Switch_start(SwitchObject *self, PyObject *Py_UNUSED(a))
{
    if (check_open(self) < 0)
        return NULL;
    if (self->sw.running)
        Py_RETURN_NONE;
    if (loop_start(&self->sw) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *Switch_stop(SwitchObject *self, PyObject *Py_UNUSED(a))
{
    shutdown_switch(self);
    Py_RETURN_NONE;
}

static PyObject *Switch_add_pool(SwitchObject *self, PyObject *args)
{
    long long id;
    int mode;
    if (!PyArg_ParseTuple(args, "Li", &id, &mode) || check_open(self) < 0)
        return NULL;
    if (mode != MODE_SESSION && mode != MODE_TRANSACTION && mode != MODE_STATEMENT) {
        PyErr_SetString(PyExc_ValueError, "unknown pool mode");
        return NULL;
    }
    sw_lock(&self->sw);
    struct pool *p = pool_add(&self->sw, id, (uint8_t)mode);
    sw_unlock(&self->sw);
    if (p == NULL)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* Takes ownership of fd once it is registered; on an error the caller still owns it. Its
 * tracked values (params) are in place before it can be linked; a client's pending bytes are
 * taken as read. */
static PyObject *add_conn(SwitchObject *self, int fd, long long pool_id, uint8_t kind,
                          Py_buffer *pending, PyObject *params, long long connected)
{
    struct pargs pa;
    if (check_open(self) < 0 || pargs_parse(params, &pa) < 0)
        return NULL;
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
        pargs_free(&pa);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    struct sw *sw = &self->sw;
    sw_lock(sw);
    struct pool *p = pool_find(sw, pool_id);
    if (p == NULL) {
        sw_unlock(sw);
        pargs_free(&pa);
        PyErr_Format(PyExc_KeyError, "no pool %lld", pool_id);
        return NULL;
    }
    struct conn *c = conn_new(sw, fd, kind, p);
    if (c == NULL) {
        sw_unlock(sw);
        pargs_free(&pa);
        return PyErr_NoMemory();
    }
    int err = 0;
    if (pargs_apply(sw, c, &pa) < 0)
        err = ENOMEM;
    else if (loop_add(sw, c) < 0)
        err = errno;
    if (err != 0) {
        params_free(sw, c);
        sw->slots[(c->id & 0xffffffffu) - 1] = NULL;
        p->n[ST_NEW]--;
        free(c);
        sw_unlock(sw);
        pargs_free(&pa);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    /* A server Python connected earlier (and maybe detached and cleaned since) keeps its
     * age: server_lifetime counts from its connect, in CLOCK_MONOTONIC µs. */
    if (connected > 0 && connected < sw->now_mono)
        c->connect_mono = connected;
    uint64_t id = c->id;
    if (kind == KIND_CLIENT) {
        conn_set_state(c, CL_ACTIVE);
        if (pending != NULL && pending->len > 0 &&
            conn_client_pending(sw, c, pending->buf, (size_t)pending->len) < 0)
            conn_destroy(sw, c, R_IO_ERROR, 1);
    } else {
        pool_release(sw, c);
    }
    sw_unlock(sw);
    pargs_free(&pa);
    return PyLong_FromUnsignedLongLong(id);
}

static PyObject *Switch_add_client(SwitchObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"", "", "pending", "params", NULL};
    int fd;
    long long pool_id;
    Py_buffer pending = {0};
    PyObject *params = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iL|y*O", kwlist, &fd, &pool_id, &pending,
                                     &params))
        return NULL;
    PyObject *r = add_conn(self, fd, pool_id, KIND_CLIENT, pending.buf ? &pending : NULL, params,
                            0);
    PyBuffer_Release(&pending);
    return r;
}

static PyObject *Switch_add_server(SwitchObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"", "", "params", "connected_us", NULL};
    int fd;
    long long pool_id, connected = 0;
    PyObject *params = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iL|OL", kwlist, &fd, &pool_id, &params,
                                     &connected))
        return NULL;
    return add_conn(self, fd, pool_id, KIND_SERVER, NULL, params, connected);
}

static PyObject *Switch_set_params(SwitchObject *self, PyObject *args)
{
    unsigned long long id;
    PyObject *params;
    struct pargs pa;
    if (!PyArg_ParseTuple(args, "KO", &id, &params) || check_open(self) < 0)
        return NULL;
    if (params == Py_None) {
        PyErr_SetString(PyExc_TypeError, "params: a mapping or (name, value) pairs");
        return NULL;
    }
    if (pargs_parse(params, &pa) < 0)
        return NULL;
    struct sw *sw = &self->sw;
    sw_lock(sw);
    struct conn *c = conn_find(sw, id);
    int rc = c != NULL ? pargs_apply(sw, c, &pa) : 0;
    sw_unlock(sw);
    pargs_free(&pa);
    if (c == NULL) {
        PyErr_Format(PyExc_KeyError, "no connection %llu", id);
        return NULL;
    }
    if (rc < 0)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* The values in use: a client's wishes, or what a server has now (unknown ones left out). */
static PyObject *Switch_params(SwitchObject *self, PyObject *args)
{
    unsigned long long id;
    if (!PyArg_ParseTuple(args, "K", &id) || check_open(self) < 0)
        return NULL;
    struct sw *sw = &self->sw;
    sw_lock(sw);
    struct conn *c = conn_find(sw, id);
    if (c == NULL) {
        sw_unlock(sw);
        PyErr_Format(PyExc_KeyError, "no connection %llu", id);
        return NULL;
    }
    uint32_t t = sw->ntracked;
    size_t total = 0;
    for (uint32_t i = 0; c->pv != NULL && i < t; i++)
        total += c->pv[i].known ? c->pv[i].len : 0;
    /* copied out under the lock; Python objects are made after it */
    uint8_t *copy = malloc(total ? total : 1);
    int32_t lens[PARAM_MAX_TRACKED];
    if (copy == NULL) {
        sw_unlock(sw);
        return PyErr_NoMemory();
    }
    size_t o = 0;
    for (uint32_t i = 0; i < t; i++) {
        lens[i] = c->pv != NULL && c->pv[i].known ? (int32_t)c->pv[i].len : -1;
        if (lens[i] > 0) {
            memcpy(copy + o, pval_bytes(&c->pv[i]), c->pv[i].len);
            o += c->pv[i].len;
        }
    }
    sw_unlock(sw);
    PyObject *d = PyDict_New();
    o = 0;
    for (uint32_t i = 0; d != NULL && i < t; i++) {
        if (lens[i] < 0)
            continue;
        PyObject *v = PyUnicode_DecodeUTF8((const char *)copy + o, lens[i], "strict");
        o += (size_t)lens[i];
        if (v == NULL || PyDict_SetItemString(d, sw->tracked[i].name, v) < 0)
            Py_CLEAR(d);
        Py_XDECREF(v);
    }
    free(copy);
    return d;
}

static PyObject *Switch_pause(SwitchObject *self, PyObject *args)
{
    long long pool_id;
    int on;
    if (!PyArg_ParseTuple(args, "Lp", &pool_id, &on) || check_open(self) < 0)
        return NULL;
    struct sw *sw = &self->sw;
    sw_lock(sw);
    struct pool *p = pool_find(sw, pool_id);
    if (p != NULL)
        pool_pause(sw, p, on);
    sw_unlock(sw);
    if (p == NULL) {
        PyErr_Format(PyExc_KeyError, "no pool %lld", pool_id);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* The pool's queue length now: a WAITERS event is read after the fact, and a client it
 * counted may have got a server since (Python must not open one for it). */
static PyObject *Switch_waiting(SwitchObject *self, PyObject *args)
{
    long long pool_id;
    if (!PyArg_ParseTuple(args, "L", &pool_id) || check_open(self) < 0)
        return NULL;
    struct sw *sw = &self->sw;
    sw_lock(sw);
    struct pool *p = pool_find(sw, pool_id);
    unsigned long n = p != NULL ? p->n[CL_WAITING] : 0;
    sw_unlock(sw);
    if (p == NULL) {
        PyErr_Format(PyExc_KeyError, "no pool %lld", pool_id);
        return NULL;
    }
    return PyLong_FromUnsignedLong(n);
}

static PyObject *Switch_send(SwitchObject *self, PyObject *args)
{
    unsigned long long id;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "Ky*", &id, &data))
        return NULL;
    if (check_open(self) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    struct sw *sw = &self->sw;
    sw_lock(sw);
    struct conn *c = conn_find(sw, id);
    const char *err = NULL;
    if (c == NULL)
        err = "no such connection";
    else if (c->kind == KIND_SERVER ? c->state != SV_LOGIN && c->state != SV_TALK
                                    : c->kind != KIND_CLIENT || c->state == CL_LINKED ||
                                          c->state == CL_CLOSING)
        err = "send is for a client that holds no server, or a connection in login";
    else if (buf_append(&c->out, data.buf, (size_t)data.len) < 0)
        err = "out of memory";
    else
        conn_schedule(sw, c);
    sw_unlock(sw);
    PyBuffer_Release(&data);
    if (err != NULL) {
        PyErr_SetString(PyExc_ValueError, err);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Python closes a server (or a listener), with `final` (the Terminate) if it can go. */
static void close_server(struct sw *sw, struct conn *c, const uint8_t *final, size_t len)
{
    if (c->state == SV_ACTIVE) {
        /* Its client cannot go on without it: told and closed (and reported). */
        struct conn *cl = c->peer;
        c->cut = cl->sc.skip != 0; /* mid-body: the rest of that message never comes */
        c->peer = NULL;
        cl->peer = NULL;
        conn_set_state(cl, CL_ACTIVE);
        conn_close_with(sw, cl, sw->msg_server_gone.data,
                        sw->msg_server_gone.end - sw->msg_server_gone.start, R_SERVER_GONE);
    }
    conn_end_server(sw, c, final, len);
}

static PyObject *Switch_close(SwitchObject *self, PyObject *args)
{
    unsigned long long id;
    Py_buffer final = {0};
    if (!PyArg_ParseTuple(args, "K|y*", &id, &final))
        return NULL;
    if (check_open(self) < 0) {
        PyBuffer_Release(&final);
        return NULL;
    }
    struct sw *sw = &self->sw;
    sw_lock(sw);
    struct conn *c = conn_find(sw, id);
    int found = c != NULL;
    if (c != NULL) {
        c->quiet = 1;
        size_t n = final.buf != NULL ? (size_t)final.len : 0;
        if (c->kind == KIND_CLIENT)
            conn_close_with(sw, c, final.buf, n, R_NONE);
        else
            close_server(sw, c, final.buf, n);
    }
    sw_unlock(sw);
    PyBuffer_Release(&final);
    return PyBool_FromLong(found);
}

static PyObject *Switch_detach(SwitchObject *self, PyObject *args)
{
    unsigned long long id;
    if (!PyArg_ParseTuple(args, "K", &id) || check_open(self) < 0)
        return NULL;
    struct sw *sw = &self->sw;
    sw_lock(sw);
    struct conn *c = conn_find(sw, id);
    if (c == NULL) {
        sw_unlock(sw);
        PyErr_Format(PyExc_KeyError, "no connection %llu", id);
        return NULL;
    }
    if (c->state != SV_IDLE && c->state != SV_PARKED && c->state != CL_ACTIVE &&
        c->state != CL_WAITING && c->state != CL_LOGIN && c->state != SV_LOGIN &&
        c->state != SV_TALK) {
        sw_unlock(sw);
        PyErr_SetString(PyExc_ValueError, "only an idle or parked server, a client that "
                                          "holds no server, or a login, can be detached");
        return NULL;
    }
    if (c->tls) {
        sw_unlock(sw);
        PyErr_SetString(PyExc_ValueError, "a TLS connection cannot leave the switch");
        return NULL;
    }
    if ((c->kind == KIND_CLIENT || c->state == SV_LOGIN || c->state == SV_TALK) &&
        c->out.start != c->out.end) {
        sw_unlock(sw);
        PyErr_SetString(PyExc_ValueError, "the client still has bytes to receive");
        return NULL;
    }
    PyObject *held = PyBytes_FromStringAndSize((const char *)c->hold.data + c->hold.start,
                                               c->hold.end - c->hold.start);
    if (held == NULL) {
        sw_unlock(sw);
        return NULL;
    }
    /* Out of the switch without closing the fd: Python owns it again. */
    int fd = c->fd;
    loop_del(sw, c);
    c->fd = -1;
    conn_destroy(sw, c, R_NONE, 0);
    sw_unlock(sw);
    return Py_BuildValue("(iN)", fd, held);
}

static PyObject *Switch_set_close_needed(SwitchObject *self, PyObject *args)
{
    unsigned long long id;
    if (!PyArg_ParseTuple(args, "K", &id) || check_open(self) < 0)
        return NULL;
    struct sw *sw = &self->sw;
    sw_lock(sw);
    struct conn *c = conn_find(sw, id);
    int found = c != NULL && c->kind == KIND_SERVER;
    if (found) {
        c->close_needed = 1;
        if (c->state == SV_IDLE)
            pool_park(sw, c, R_CLOSE_NEEDED);
    }
    sw_unlock(sw);
    return PyBool_FromLong(found);
}

static PyObject *Switch_set_timeouts(SwitchObject *self, PyObject *args, PyObject *kw)
{
    /* In the order of the deadline reasons (struct timeouts). */
    static char *kwlist[] = {"pool",        "query_wait",       "query_wait_notify",
                             "query",       "idle_transaction", "client_idle",
                             "server_idle", "server_lifetime",  "reserve",
                             NULL};
    long long pool_id, v[R_RESERVE - R_QUERY_WAIT + 1] = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "L|$LLLLLLLL", kwlist, &pool_id, &v[0], &v[1],
                                     &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) ||
        check_open(self) < 0)
        return NULL;
    struct timeouts to;
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        if (v[i] < 0) {
            PyErr_SetString(PyExc_ValueError, "a timeout is >= 0 (µs; 0: off)");
            return NULL;
        }
        to.us[i] = v[i];
    }
    struct sw *sw = &self->sw;
    sw_lock(sw);
    struct pool *p = pool_find(sw, pool_id);
    int rc = p != NULL ? timers_set(sw, p, &to) : 0;
    sw_unlock(sw);
    if (p == NULL) {
        PyErr_Format(PyExc_KeyError, "no pool %lld", pool_id);
        return NULL;
    }
    if (rc < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *Switch_expire(SwitchObject *self, PyObject *args)
{
    unsigned long long id;
    unsigned int reason;
    Py_buffer final = {0};
    if (!PyArg_ParseTuple(args, "KI|y*", &id, &reason, &final))
        return NULL;
    if (check_open(self) < 0) {
        PyBuffer_Release(&final);
        return NULL;
    }
    struct sw *sw = &self->sw;
    sw_lock(sw);
    struct conn *c = conn_find(sw, id);
    int rc = c == NULL || reason > 255
                 ? 0
                 : timers_expire(sw, c, (uint8_t)reason, final.buf,
                                 final.buf ? (size_t)final.len : 0);
    sw_unlock(sw);
    PyBuffer_Release(&final);
    if (rc < 0)
        return PyErr_NoMemory();
    return PyBool_FromLong(rc);
}

static PyObject *Switch_ticks(SwitchObject *self, PyObject *Py_UNUSED(a))
{
    if (check_open(self) < 0)
        return NULL;
    sw_lock(&self->sw);
    unsigned long long n = self->sw.ticks;
    sw_unlock(&self->sw);
    return PyLong_FromUnsignedLongLong(n);
}

static PyObject *Switch_events(SwitchObject *self, PyObject *Py_UNUSED(a))
{
    if (check_open(self) < 0)
        return NULL;
    struct sw *sw = &self->sw;
    /* Only the queue's lock: a storm of logins keeps the loop's batches busy, and Python
     * waiting for one to end to read its events cost a third of its time (perf). */
    pthread_mutex_lock(&sw->evlock);
    struct event *q = sw->evq;
    size_t n = sw->nev;
    sw->evq = NULL;
    sw->nev = sw->evcap = 0;
    sw->ev_signal = sw->ev_awake = 0; /* the queue is empty: the next event wakes again */
    sw->lazy_due = 0;
    uint64_t v;
    ssize_t r = read(sw->ev_fd, &v, sizeof(v));
    (void)r;
    pthread_mutex_unlock(&sw->evlock);
    PyObject *list = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; list != NULL && i < n; i++) {
        /* ACCEPTED carries the listener's id (unsigned, like every id) in the pool field. */
        const struct event *e = &q[i];
        PyObject *t = e->kind == EV_ACCEPTED
                          ? Py_BuildValue("(iKKIy#L)", e->kind, (unsigned long long)e->conn,
                                          (unsigned long long)e->pool, e->reason, "",
                                          (Py_ssize_t)0, (long long)e->at)
                          : Py_BuildValue("(iKLIy#L)", e->kind, (unsigned long long)e->conn,
                                          (long long)e->pool, e->reason,
                                          e->data != NULL ? (const char *)e->data : "",
                                          (Py_ssize_t)e->len, (long long)e->at);
        if (t == NULL)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, (Py_ssize_t)i, t);
    }
    for (size_t i = 0; i < n; i++)
        free(q[i].data);
    free(q);
    return list;
}

struct pool_row {
    int64_t id;
    uint8_t mode;
    uint32_t cl_active, cl_waiting, sv_active, sv_idle, sv_parked, sv_login, sv_talk;
    int64_t maxwait;
    struct stats st;
    int paused;
};

static PyObject *Switch_pools(SwitchObject *self, PyObject *Py_UNUSED(a))
{
    if (check_open(self) < 0)
        return NULL;
    struct sw *sw = &self->sw;
    sw_lock(sw);
    size_t n = 0;
    for (struct pool *p = sw->pools; p != NULL; p = p->next)
        n++;
    struct pool_row *rows = calloc(n ? n : 1, sizeof(*rows));
    if (rows == NULL) {
        sw_unlock(sw);
        return PyErr_NoMemory();
    }
    size_t i = 0;
    for (struct pool *p = sw->pools; p != NULL; p = p->next, i++) {
        rows[i] = (struct pool_row){
            .id = p->id,
            .mode = p->mode,
            .cl_active = p->n[CL_ACTIVE] + p->n[CL_LINKED],
            .cl_waiting = p->n[CL_WAITING],
            .sv_active = p->n[SV_ACTIVE],
            .sv_idle = p->n[SV_IDLE],
            .sv_parked = p->n[SV_PARKED],
            .sv_login = p->n[SV_LOGIN],
            .sv_talk = p->n[SV_TALK],
            .maxwait = p->wq_head != NULL ? sw->now_mono - p->wq_head->wait_start : 0,
            .st = p->st,
            .paused = p->paused,
        };
    }
    sw_unlock(sw);
    PyObject *list = PyList_New((Py_ssize_t)n);
    for (i = 0; list != NULL && i < n; i++) {
        struct pool_row *r = &rows[i];
        PyObject *hist = PyTuple_New(WAIT_BUCKETS);
        for (int b = 0; hist != NULL && b < WAIT_BUCKETS; b++) {
            PyObject *v = PyLong_FromUnsignedLongLong(r->st.wait_hist[b]);
            if (v == NULL)
                Py_CLEAR(hist);
            else
                PyTuple_SET_ITEM(hist, b, v);
        }
        PyObject *t = hist == NULL ? NULL
                                   : Py_BuildValue("(LiIIIIILKKKKKKKNNIIKKKK)", (long long)r->id,
                                                   r->mode, r->cl_active, r->cl_waiting,
                                                   r->sv_active, r->sv_idle, r->sv_parked,
                                                   (long long)r->maxwait,
                                                   (unsigned long long)r->st.xact_count,
                                                   (unsigned long long)r->st.query_count,
                                                   (unsigned long long)r->st.bytes_recv,
                                                   (unsigned long long)r->st.bytes_sent,
                                                   (unsigned long long)r->st.xact_us,
                                                   (unsigned long long)r->st.query_us,
                                                   (unsigned long long)r->st.wait_us, hist,
                                                   PyBool_FromLong(r->paused), r->sv_login,
                                                   r->sv_talk,
                                                   (unsigned long long)r->st.assign_count,
                                                   (unsigned long long)r->st.client_parse_count,
                                                   (unsigned long long)r->st.server_parse_count,
                                                   (unsigned long long)r->st.bind_count);
        if (t == NULL)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, (Py_ssize_t)i, t);
    }
    free(rows);
    return list;
}

struct conn_row {
    uint64_t id, peer;
    int64_t pool, connect_wall, request_wall, wait_us;
    int64_t link_wall, xact_wall; /* SHOW HOLDERS: held for, transaction for */
    int fd;
    uint32_t owed, prepared, carried;
    uint8_t kind, state, status;
};

static PyObject *Switch_conns(SwitchObject *self, PyObject *Py_UNUSED(a))
{
    if (check_open(self) < 0)
        return NULL;
    struct sw *sw = &self->sw;
    sw_lock(sw);
    size_t n = 0;
    for (uint32_t i = 0; i < sw->nslots; i++)
        n += sw->slots[i] != NULL && sw->slots[i]->kind != KIND_LISTENER;
    struct conn_row *rows = calloc(n ? n : 1, sizeof(*rows));
    if (rows == NULL) {
        sw_unlock(sw);
        return PyErr_NoMemory();
    }
    size_t k = 0;
    for (uint32_t i = 0; i < sw->nslots; i++) {
        struct conn *c = sw->slots[i];
        if (c == NULL || c->kind == KIND_LISTENER)
            continue;
        /* A linked pair's server: when it was given to its client, and the start of the
         * transaction running on it (a request in flight or status T/E), on both rows. */
        const struct conn *s = c->kind == KIND_SERVER ? c : c->peer;
        int64_t link_wall = 0, xact_wall = 0;
        if (s != NULL && s->state == SV_ACTIVE && s->peer != NULL) {
            link_wall = s->link_wall;
            if (s->sc.status != 'I' || s->peer->tr.owed != 0 || s->peer->tr.batch)
                xact_wall = sw->now_wall - (sw->now_mono - s->xact_start);
        }
        rows[k++] = (struct conn_row){
            .link_wall = link_wall,
            .xact_wall = xact_wall,
            .id = c->id,
            .peer = c->peer != NULL ? c->peer->id : 0,
            .pool = c->pool->id,
            .connect_wall = c->connect_wall,
            .request_wall = c->request_wall,
            .wait_us = c->state == CL_WAITING ? sw->now_mono - c->wait_start : 0,
            .fd = c->fd,
            .owed = c->tr.owed,
            .prepared = ps_count(sw, c),
            .carried = c->kind == KIND_CLIENT ? sets_count(sw, c) : 0,
            .kind = c->kind,
            .state = c->state,
            .status = c->kind == KIND_SERVER ? c->sc.status : 0,
        };
    }
    sw_unlock(sw);
    PyObject *list = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; list != NULL && i < n; i++) {
        struct conn_row *r = &rows[i];
        char status[2] = {(char)r->status, 0};
        PyObject *t = Py_BuildValue(
            "(KiLiiKLLLsILLII)", (unsigned long long)r->id, r->kind, (long long)r->pool,
            r->state, r->fd, (unsigned long long)r->peer, (long long)r->connect_wall,
            (long long)r->request_wall, (long long)r->wait_us, status, r->owed,
            (long long)r->link_wall, (long long)r->xact_wall, r->prepared, r->carried);
        if (t == NULL)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, (Py_ssize_t)i, t);
    }
    free(rows);
    return list;
}

/* The linked connection's id (0: none): routing a cancel without a conns() snapshot. */
static PyObject *Switch_peer_of(SwitchObject *self, PyObject *args)
{
    unsigned long long id;
    if (!PyArg_ParseTuple(args, "K", &id) || check_open(self) < 0)
        return NULL;
    struct sw *sw = &self->sw;
    sw_lock(sw);
    struct conn *c = conn_find(sw, id);
    int found = c != NULL && c->kind != KIND_LISTENER;
    uint64_t peer = found && c->peer != NULL ? c->peer->id : 0;
    sw_unlock(sw);
    if (!found) {
        PyErr_Format(PyExc_KeyError, "no connection %llu", id);
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(peer);
}

/* The (pid, key) of the BackendKeyData a connection is given: its id under the switch's
 * keyed permutation (cancelkey.c), so that a cancel request names it without a table. */
static PyObject *Switch_cancel_key(SwitchObject *self, PyObject *args)
{
    PyObject *arg;
    if (!PyArg_ParseTuple(args, "O!", &PyLong_Type, &arg) || check_open(self) < 0)
        return NULL;
    /* Not "K", which wraps a too big id round into the domain */
    unsigned long long id = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        id = 0; /* negative or over 64 bits: outside the domain, as 0 is */
    }
    uint32_t pid, key;
    if (cancel_key_make(&self->sw, id, &pid, &key) < 0) {
        PyErr_Format(PyExc_ValueError, "no cancel key for id %R", arg);
        return NULL;
    }
    return Py_BuildValue("(II)", (unsigned int)pid, (unsigned int)key);
}

/* The id a cancel request's (pid, key) was made for (0: none can have been). Whether that
 * connection is still there is the caller's to look up. */
static PyObject *Switch_cancel_target(SwitchObject *self, PyObject *args)
{
    PyObject *opid, *okey;
    if (!PyArg_ParseTuple(args, "O!O!", &PyLong_Type, &opid, &PyLong_Type, &okey) ||
        check_open(self) < 0)
        return NULL;
    int over_pid = 0, over_key = 0; /* any int may come: out of range names no one */
    long long pid = PyLong_AsLongLongAndOverflow(opid, &over_pid);
    long long key = PyLong_AsLongLongAndOverflow(okey, &over_key);
    if (PyErr_Occurred())
        return NULL;
    if (over_pid || over_key || pid < 0 || key < 0 || pid > 0x7fffffffLL || key > 0x7fffffffLL)
        return PyLong_FromLong(0);
    return PyLong_FromUnsignedLongLong(cancel_key_id(&self->sw, (uint32_t)pid, (uint32_t)key));
}

/* SUSPEND: reads stop everywhere, writes go on (loop.c); off reads what became readable. */
static PyObject *Switch_suspend(SwitchObject *self, PyObject *args)
{
    int on;
    if (!PyArg_ParseTuple(args, "p", &on) || check_open(self) < 0)
        return NULL;
    sw_lock(&self->sw);
    loop_suspend(&self->sw, on);
    sw_unlock(&self->sw);
    Py_RETURN_NONE;
}

/* At most n clients in login at once (0: no cap): a listener pauses with LISTEN_ERROR errno
 * 0 at the cap. */
static PyObject *Switch_set_login_cap(SwitchObject *self, PyObject *args)
{
    unsigned int n;
    if (!PyArg_ParseTuple(args, "I", &n) || check_open(self) < 0)
        return NULL;
    sw_lock(&self->sw);
    self->sw.login_cap = n;
    sw_unlock(&self->sw);
    Py_RETURN_NONE;
}

/* ---- routes: logins the switch runs alone (fastlogin.c) ------------------------------------ */

static int copy_exact(Py_buffer *b, uint8_t *out, size_t n, const char *what)
{
    if ((size_t)b->len != n) {
        PyErr_Format(PyExc_ValueError, "%s must be %zu bytes", what, n);
        return -1;
    }
    memcpy(out, b->buf, n);
    return 0;
}

/* The welcome blob: pairs of C strings, each tracked parameter's value one the switch can keep
 * as a client's wish. */
static int welcome_ok(struct sw *sw, const uint8_t *p, size_t n)
{
    if (n == 0)
        return 1;
    if (p[n - 1] != 0)
        return 0;
    size_t off = 0;
    while (off < n) {
        const uint8_t *name = p + off;
        const uint8_t *nend = memchr(name, 0, n - off);
        if (nend == NULL || nend == name || (size_t)(nend - name) > PARAM_NAME_MAX)
            return 0;
        off = (size_t)(nend - p) + 1;
        if (off >= n)
            return 0;
        const uint8_t *v = p + off;
        const uint8_t *vend = memchr(v, 0, n - off);
        if (vend == NULL)
            return 0;
        for (uint32_t i = 0; i < sw->ntracked; i++)
            if (strcmp(sw->tracked[i].name, (const char *)name) == 0 &&
                !params_valid_value(v, (size_t)(vend - v)))
                return 0;
        off = (size_t)(vend - p) + 1;
    }
    return 1;
}

static PyObject *Switch_set_route(SwitchObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"key",        "pool",   "method", "gen",    "md5",  "iterations",
                             "salt",       "stored", "server", "welcome", "app", NULL};
    Py_buffer key = {0}, md5 = {0}, salt = {0}, stored = {0}, server = {0}, welcome = {0},
              app = {0};
    long long pool;
    unsigned char method;
    unsigned long long gen;
    unsigned int iterations = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*LbK|$y*Iy*y*y*y*y*", kwlist, &key, &pool,
                                     &method, &gen, &md5, &iterations, &salt, &stored, &server,
                                     &welcome, &app))
        return NULL;
    PyObject *ret = NULL;
    struct fast_route spec;
    memset(&spec, 0, sizeof(spec));
    if (check_open(self) < 0)
        goto out;
    spec.key = key.buf;
    spec.klen = (uint32_t)key.len;
    spec.pool = pool;
    spec.method = method;
    spec.gen = gen;
    spec.iterations = iterations;
    if (method == FAST_MD5) {
        if (copy_exact(&md5, spec.md5, 32, "md5") < 0)
            goto out;
    } else if (method == FAST_SCRAM) {
        if (salt.len <= 0 || salt.len > FAST_SALT_MAX) {
            PyErr_SetString(PyExc_ValueError, "salt must be 1 to 64 bytes");
            goto out;
        }
        memcpy(spec.salt, salt.buf, (size_t)salt.len);
        spec.salt_len = (uint32_t)salt.len;
        if (copy_exact(&stored, spec.stored, 32, "stored") < 0 ||
            copy_exact(&server, spec.server, 32, "server") < 0)
            goto out;
    }
    if (key.len <= 0 || memchr(key.buf, 0, (size_t)key.len) == NULL ||
        !welcome_ok(&self->sw, welcome.buf, (size_t)welcome.len) ||
        !params_valid_value(app.buf, (size_t)app.len) || welcome.len > (1 << 20)) {
        PyErr_SetString(PyExc_ValueError, "bad route key, welcome or app");
        goto out;
    }
    spec.welcome = welcome.buf;
    spec.wlen = (uint32_t)welcome.len;
    spec.app = app.buf;
    spec.alen = (uint32_t)app.len;
    sw_lock(&self->sw);
    int rc = fast_route_set(&self->sw, &spec);
    sw_unlock(&self->sw);
    if (rc == -1)
        PyErr_NoMemory();
    else if (rc < 0)
        PyErr_SetString(PyExc_ValueError, "bad route");
    else
        ret = Py_NewRef(Py_None);
out:
    explicit_bzero(&spec, sizeof(spec));
    PyBuffer_Release(&key);
    PyBuffer_Release(&md5);
    PyBuffer_Release(&salt);
    PyBuffer_Release(&stored);
    PyBuffer_Release(&server);
    PyBuffer_Release(&welcome);
    PyBuffer_Release(&app);
    return ret;
}

static PyObject *Switch_clear_routes(SwitchObject *self, PyObject *Py_UNUSED(a))
{
    if (check_open(self) < 0)
        return NULL;
    sw_lock(&self->sw);
    fast_routes_clear(&self->sw);
    sw_unlock(&self->sw);
    Py_RETURN_NONE;
}

static PyObject *Switch_routes(SwitchObject *self, PyObject *Py_UNUSED(a))
{
    if (check_open(self) < 0)
        return NULL;
    sw_lock(&self->sw);
    uint32_t n = self->sw.rtab_count;
    sw_unlock(&self->sw);
    return PyLong_FromUnsignedLong(n);
}

static PyObject *Switch_set_fast_cap(SwitchObject *self, PyObject *args)
{
    unsigned int n;
    if (!PyArg_ParseTuple(args, "I", &n) || check_open(self) < 0)
        return NULL;
    sw_lock(&self->sw);
    self->sw.fast_cap = n;
    sw_unlock(&self->sw);
    Py_RETURN_NONE;
}

static PyObject *Switch_fast_expire(SwitchObject *self, PyObject *args)
{
    long long grace, timeout;
    Py_buffer msg;
    if (!PyArg_ParseTuple(args, "LLy*", &grace, &timeout, &msg))
        return NULL;
    if (check_open(self) < 0) {
        PyBuffer_Release(&msg);
        return NULL;
    }
    sw_lock(&self->sw);
    fast_expire(&self->sw, grace, timeout, msg.buf, (size_t)msg.len);
    sw_unlock(&self->sw);
    PyBuffer_Release(&msg);
    Py_RETURN_NONE;
}

/* The connections whose out buffer still holds bytes (SUSPEND waits for none). */
static PyObject *Switch_unflushed(SwitchObject *self, PyObject *Py_UNUSED(a))
{
    if (check_open(self) < 0)
        return NULL;
    struct sw *sw = &self->sw;
    sw_lock(sw);
    size_t n = 0;
    for (uint32_t i = 0; i < sw->nslots; i++)
        n += sw->slots[i] != NULL && sw->slots[i]->out.start != sw->slots[i]->out.end;
    uint64_t *ids = malloc((n ? n : 1) * sizeof(*ids));
    if (ids == NULL) {
        sw_unlock(sw);
        return PyErr_NoMemory();
    }
    size_t k = 0;
    for (uint32_t i = 0; i < sw->nslots; i++)
        if (sw->slots[i] != NULL && sw->slots[i]->out.start != sw->slots[i]->out.end)
            ids[k++] = sw->slots[i]->id;
    sw_unlock(sw);
    PyObject *list = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; list != NULL && i < n; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(ids[i]);
        if (v == NULL)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, (Py_ssize_t)i, v);
    }
    free(ids);
    return list;
}

/* cancel_wait(client, error=b""): with `error` (an ErrorResponse), the answers are queued in
 * the same step, error + ReadyForQuery per one owed (the error alone when none is), so that
 * no byte the client sends meanwhile can link it to a server before they are. */
static PyObject *Switch_cancel_wait(SwitchObject *self, PyObject *args)
{
    static const uint8_t rfq[6] = {'Z', 0, 0, 0, 5, 'I'};
    unsigned long long id;
    Py_buffer error = {0};
    if (!PyArg_ParseTuple(args, "K|y*", &id, &error))
        return NULL;
    if (check_open(self) < 0) {
        PyBuffer_Release(&error);
        return NULL;
    }
    struct sw *sw = &self->sw;
    sw_lock(sw);
    struct conn *c = conn_find(sw, id);
    int rc = c != NULL ? pool_cancel_wait(sw, c) : -1;
    if (rc != -1 && error.len > 0) {
        int ok = 1;
        for (int i = 0; ok && i < (rc > 0 ? rc : 1); i++) {
            ok = buf_append(&c->out, error.buf, (size_t)error.len) == 0 &&
                 (rc <= 0 || buf_append(&c->out, rfq, sizeof rfq) == 0);
        }
        if (ok)
            conn_schedule(sw, c);
        else
            conn_close_with(sw, c, NULL, 0, R_IO_ERROR); /* no memory: it hears CLOSED */
    }
    sw_unlock(sw);
    PyBuffer_Release(&error);
    if (c == NULL) {
        PyErr_Format(PyExc_KeyError, "no connection %llu", id);
        return NULL;
    }
    return PyLong_FromLong(rc);
}

static PyObject *Switch_set_pool_checks(SwitchObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"pool", "check_delay_us", "reset_always", NULL};
    long long pool_id, delay = -1;
    int reset = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "L|$Lp", kwlist, &pool_id, &delay, &reset) ||
        check_open(self) < 0)
        return NULL;
    if (delay < -1) {
        PyErr_SetString(PyExc_ValueError, "check_delay_us is >= 0, or -1: no checks");
        return NULL;
    }
    struct sw *sw = &self->sw;
    sw_lock(sw);
    struct pool *p = pool_find(sw, pool_id);
    if (p != NULL) {
        p->check_delay = delay;
        p->reset_always = reset != 0;
    }
    sw_unlock(sw);
    if (p == NULL) {
        PyErr_Format(PyExc_KeyError, "no pool %lld", pool_id);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* max_prepared_statements for a pool (ps.c): 0 passes named statements as sent. */
static PyObject *Switch_set_pool_prepared(SwitchObject *self, PyObject *args)
{
    long long pool_id;
    unsigned int max;
    if (!PyArg_ParseTuple(args, "LI", &pool_id, &max) || check_open(self) < 0)
        return NULL;
    struct sw *sw = &self->sw;
    sw_lock(sw);
    struct pool *p = pool_find(sw, pool_id);
    if (p != NULL)
        p->ps_max = max;
    sw_unlock(sw);
    if (p == NULL) {
        PyErr_Format(PyExc_KeyError, "no pool %lld", pool_id);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* pooling_hazards for a pool (ps.c): HAZARDS_WARN, HAZARDS_REFUSE or HAZARDS_PIN. */
static PyObject *Switch_set_pool_hazards(SwitchObject *self, PyObject *args)
{
    long long pool_id;
    int mode;
    if (!PyArg_ParseTuple(args, "Li", &pool_id, &mode) || check_open(self) < 0)
        return NULL;
    if (mode != HAZARDS_WARN && mode != HAZARDS_REFUSE && mode != HAZARDS_PIN) {
        PyErr_SetString(PyExc_ValueError, "unknown pooling_hazards mode");
        return NULL;
    }
    struct sw *sw = &self->sw;
    sw_lock(sw);
    struct pool *p = pool_find(sw, pool_id);
    if (p != NULL)
        p->hazards = (uint8_t)mode;
    sw_unlock(sw);
    if (p == NULL) {
        PyErr_Format(PyExc_KeyError, "no pool %lld", pool_id);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* SHOW CLIENTS: what a client carries (sets.c), as text; "" for an unknown id. */
static PyObject *Switch_carries(SwitchObject *self, PyObject *args)
{
    unsigned long long id;
    if (!PyArg_ParseTuple(args, "K", &id) || check_open(self) < 0)
        return NULL;
    char text[1024];
    struct sw *sw = &self->sw;
    sw_lock(sw);
    struct conn *c = conn_find(sw, id);
    size_t n = c != NULL && c->kind == KIND_CLIENT ? sets_describe(sw, c, text, sizeof text) : 0;
    sw_unlock(sw);
    return PyUnicode_DecodeUTF8(text, (Py_ssize_t)n, "replace");
}

/* SHOW MEM: (distinct statements, their bytes, client names, server statements). */
static PyObject *Switch_ps_mem(SwitchObject *self, PyObject *Py_UNUSED(a))
{
    if (check_open(self) < 0)
        return NULL;
    struct sw *sw = &self->sw;
    sw_lock(sw);
    unsigned long long n = sw->stab_count, bytes = sw->stab_bytes;
    unsigned long long nc = sw->ps_client_count, ns = sw->ps_server_count;
    sw_unlock(sw);
    return Py_BuildValue("(KKKK)", n, bytes, nc, ns);
}

/* ---- login phases (login.c) ----------------------------------------------------------- */

static PyObject *Switch_listen(SwitchObject *self, PyObject *args)
{
    int fd;
    if (!PyArg_ParseTuple(args, "i", &fd) || check_open(self) < 0)
        return NULL;
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    struct sw *sw = &self->sw;
    sw_lock(sw);
    struct conn *l = login_listen(sw, fd);
    int err = errno;
    uint64_t id = l != NULL ? l->id : 0;
    sw_unlock(sw);
    if (l == NULL) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromUnsignedLongLong(id);
}

static PyObject *Switch_listen_resume(SwitchObject *self, PyObject *args)
{
    unsigned long long id;
    if (!PyArg_ParseTuple(args, "K", &id) || check_open(self) < 0)
        return NULL;
    struct sw *sw = &self->sw;
    sw_lock(sw);
    struct conn *l = conn_find(sw, id);
    int found = l != NULL && l->kind == KIND_LISTENER;
    if (found) {
        l->stalled = 0;
        l->readable = 1; /* what waits in the backlog brings no new edge */
        conn_schedule(sw, l);
    }
    sw_unlock(sw);
    if (!found) {
        PyErr_Format(PyExc_KeyError, "no listener %llu", id);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* connect_server(fd, pool, first=b""): `first` (the StartupMessage) is queued with the
 * registration, so that a connect failing at once cannot make Python's first send miss. */
static PyObject *Switch_connect_server(SwitchObject *self, PyObject *args)
{
    int fd;
    long long pool_id;
    Py_buffer first = {0};
    int tls_mode = TLS_MODE_DISABLE;
    const char *host = NULL;
    if (!PyArg_ParseTuple(args, "iL|y*iz", &fd, &pool_id, &first, &tls_mode, &host))
        return NULL;
    if (tls_mode < TLS_MODE_DISABLE || tls_mode > TLS_MODE_VERIFY_FULL) {
        PyBuffer_Release(&first);
        PyErr_SetString(PyExc_ValueError, "tls_mode must be 0..5");
        return NULL;
    }
    PyObject *result = NULL;
    int fl;
    if (check_open(self) < 0)
        goto out;
    fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto out;
    }
    struct sw *sw = &self->sw;
    sw_lock(sw);
    struct pool *p = pool_find(sw, pool_id);
    if (p == NULL) {
        sw_unlock(sw);
        PyErr_Format(PyExc_KeyError, "no pool %lld", pool_id);
        goto out;
    }
    struct conn *c = login_connect(sw, fd, p);
    int err = errno;
    uint64_t id = c != NULL ? c->id : 0;
    int tls_rc = c != NULL ? tls_connect_start(sw, c, (uint8_t)tls_mode, host) : 0;
    if (tls_rc < 0) {
        err = tls_rc == -2 ? EPROTO : ENOMEM; /* -2: require without a context for servers */
        loop_del(sw, c);
        c->fd = -1;
        conn_destroy(sw, c, R_NONE, 0);
        c = NULL;
    }
    if (c != NULL && first.buf != NULL && first.len > 0 &&
        buf_append(&c->out, first.buf, (size_t)first.len) < 0) {
        err = ENOMEM; /* the fd stays Python's: undo the registration */
        loop_del(sw, c);
        c->fd = -1;
        conn_destroy(sw, c, R_NONE, 0);
        c = NULL;
    }
    sw_unlock(sw);
    if (c == NULL) {
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        goto out;
    }
    result = PyLong_FromUnsignedLongLong(id);
out:
    PyBuffer_Release(&first);
    return result;
}

/* tls_configure(side, mode, protocols, dhe, key_file, cert_file, ca_file, ciphers, ciphers13,
 * ecdhcurve): a new context for clients (side 0) or servers (1), built from the files now;
 * new connections use it, those up keep theirs. A broken file or setting: ValueError with
 * the reason and the path, and the old context stays. mode 0 (disable): none. */
static PyObject *Switch_tls_configure(SwitchObject *self, PyObject *args)
{
    struct tls_conf cf = {0};
    int side, mode, dhe;
    unsigned int protocols;
    if (!PyArg_ParseTuple(args, "iiIizzzzzz", &side, &mode, &protocols, &dhe, &cf.key_file,
                          &cf.cert_file, &cf.ca_file, &cf.ciphers, &cf.ciphers13, &cf.ecdhcurve))
        return NULL;
    if (check_open(self) < 0)
        return NULL;
    if ((side != TLS_SIDE_CLIENTS && side != TLS_SIDE_SERVERS) || mode < TLS_MODE_DISABLE ||
        mode > TLS_MODE_VERIFY_FULL || dhe < TLS_DHE_NONE || dhe > TLS_DHE_LEGACY) {
        PyErr_SetString(PyExc_ValueError, "bad side, mode or dhe");
        return NULL;
    }
    cf.side = side;
    cf.mode = (uint8_t)mode;
    cf.protocols = protocols;
    cf.dhe = (uint8_t)dhe;
    struct ssl_ctx_st *ctx = NULL;
    if (mode != TLS_MODE_DISABLE) {
        char err[512];
        Py_BEGIN_ALLOW_THREADS
        ctx = tls_make_ctx(&cf, err, sizeof err);
        Py_END_ALLOW_THREADS
        if (ctx == NULL) {
            PyErr_SetString(PyExc_ValueError, err);
            return NULL;
        }
    }
    struct sw *sw = &self->sw;
    sw_lock(sw);
    tls_set_ctx(sw, side, ctx, (uint8_t)mode);
    sw_unlock(sw);
    Py_RETURN_NONE;
}

/* tls_accept(conn) -> bool: a client in login whose SSLRequest Python read is answered 'S'
 * and its handshake begins; what it sends next comes up decrypted (MSG_TLS). False: bytes
 * came after its SSLRequest, before the answer (the CVE-2021-23214 class): nothing done. */
static PyObject *Switch_tls_accept(SwitchObject *self, PyObject *args)
{
    unsigned long long id;
    if (!PyArg_ParseTuple(args, "K", &id) || check_open(self) < 0)
        return NULL;
    struct sw *sw = &self->sw;
    sw_lock(sw);
    struct conn *c = conn_find(sw, id);
    const char *bad = NULL;
    int ok = 0;
    if (c == NULL)
        bad = "no such connection";
    else if (c->kind != KIND_CLIENT || c->state != CL_LOGIN || c->tls)
        bad = "only a client in login without TLS can start it";
    else if (sw->tls_cl.ctx == NULL)
        bad = "no TLS context for clients";
    else if (c->hold.end == c->hold.start && c->out.end == c->out.start) {
        if (tls_accept_start(sw, c) < 0)
            bad = "out of memory";
        else {
            login_read_next(sw, c);
            ok = 1;
        }
    }
    sw_unlock(sw);
    if (bad != NULL) {
        PyErr_SetString(c == NULL ? PyExc_KeyError : PyExc_ValueError, bad);
        return NULL;
    }
    return PyBool_FromLong(ok);
}

/* tls_info(conn) -> str: PgBouncer's `tls` column ("" without TLS). */
static PyObject *Switch_tls_info(SwitchObject *self, PyObject *args)
{
    unsigned long long id;
    if (!PyArg_ParseTuple(args, "K", &id) || check_open(self) < 0)
        return NULL;
    struct sw *sw = &self->sw;
    char out[160];
    sw_lock(sw);
    struct conn *c = conn_find(sw, id);
    if (c != NULL)
        tls_describe(sw, c, out, sizeof out);
    sw_unlock(sw);
    if (c == NULL) {
        PyErr_Format(PyExc_KeyError, "no connection %llu", id);
        return NULL;
    }
    return PyUnicode_DecodeUTF8(out, (Py_ssize_t)strlen(out), "replace");
}

/* tls_infos() -> {conn: str}: the `tls` column of every connection with TLS up. */
static PyObject *Switch_tls_infos(SwitchObject *self, PyObject *Py_UNUSED(a))
{
    if (check_open(self) < 0)
        return NULL;
    PyObject *d = PyDict_New();
    if (d == NULL)
        return NULL;
    struct sw *sw = &self->sw;
    sw_lock(sw);
    for (uint32_t i = 0; i < sw->nslots; i++) {
        struct conn *c = sw->slots[i];
        char out[160];
        if (c == NULL || !(c->tls & TLS_UP) || tls_describe(sw, c, out, sizeof out) == 0)
            continue;
        PyObject *k = PyLong_FromUnsignedLongLong(c->id);
        PyObject *v = PyUnicode_DecodeUTF8(out, (Py_ssize_t)strlen(out), "replace");
        int rc = k != NULL && v != NULL ? PyDict_SetItem(d, k, v) : -1;
        Py_XDECREF(k);
        Py_XDECREF(v);
        if (rc < 0) {
            sw_unlock(sw);
            Py_DECREF(d);
            return NULL;
        }
    }
    sw_unlock(sw);
    return d;
}

/* tls_peer(conn) -> (cn, verified) | None: the client certificate's CommonName ("" if it has
 * none) and whether it was verified against the CA file; None: no certificate (or no TLS). */
static PyObject *Switch_tls_peer(SwitchObject *self, PyObject *args)
{
    unsigned long long id;
    if (!PyArg_ParseTuple(args, "K", &id) || check_open(self) < 0)
        return NULL;
    struct sw *sw = &self->sw;
    char cn[256];
    int verified = 0, r = -1;
    sw_lock(sw);
    struct conn *c = conn_find(sw, id);
    if (c != NULL)
        r = tls_peer(sw, c, cn, sizeof cn, &verified);
    sw_unlock(sw);
    if (c == NULL) {
        PyErr_Format(PyExc_KeyError, "no connection %llu", id);
        return NULL;
    }
    if (r <= 0)
        Py_RETURN_NONE;
    return Py_BuildValue("(sO)", cn, verified ? Py_True : Py_False);
}

/* end_idle(conn, final=b"") -> bool: close a server only if it is idle now (PAUSE closing
 * idle servers, a reload's close_needed), writing `final` (its Terminate) first. */
static PyObject *Switch_end_idle(SwitchObject *self, PyObject *args)
{
    unsigned long long id;
    Py_buffer final = {0};
    if (!PyArg_ParseTuple(args, "K|y*", &id, &final))
        return NULL;
    if (check_open(self) < 0) {
        PyBuffer_Release(&final);
        return NULL;
    }
    struct sw *sw = &self->sw;
    sw_lock(sw);
    struct conn *c = conn_find(sw, id);
    int done = c != NULL && c->kind == KIND_SERVER && c->state == SV_IDLE;
    if (done) {
        c->quiet = 1;
        close_server(sw, c, final.buf, final.buf != NULL ? (size_t)final.len : 0);
    }
    sw_unlock(sw);
    PyBuffer_Release(&final);
    return PyBool_FromLong(done);
}

static PyObject *Switch_read_next(SwitchObject *self, PyObject *args)
{
    unsigned long long id;
    if (!PyArg_ParseTuple(args, "K", &id) || check_open(self) < 0)
        return NULL;
    struct sw *sw = &self->sw;
    sw_lock(sw);
    struct conn *c = conn_find(sw, id);
    int found = c != NULL, wrong = 0;
    if (c != NULL && c->state != CL_LOGIN && c->state != SV_LOGIN && c->state != SV_TALK)
        wrong = 1;
    else if (c != NULL)
        login_read_next(sw, c);
    sw_unlock(sw);
    if (wrong) {
        PyErr_SetString(PyExc_ValueError, "read_next is for a connection in login");
        return NULL;
    }
    return PyBool_FromLong(found);
}

/* Its tracked values (params) are in place before it can be linked, as add_client/add_server's;
 * a client's pending bytes (received by Python in MESSAGE events after its login) are taken
 * as read before what the switch still holds from it. */
static PyObject *Switch_promote(SwitchObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"", "", "params", "pending", NULL};
    unsigned long long id;
    long long pool_id;
    PyObject *params = NULL;
    Py_buffer pending = {0};
    struct pargs pa;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "KL|Oy*", kwlist, &id, &pool_id, &params,
                                     &pending))
        return NULL;
    if (check_open(self) < 0 || pargs_parse(params, &pa) < 0) {
        PyBuffer_Release(&pending);
        return NULL;
    }
    struct sw *sw = &self->sw;
    sw_lock(sw);
    struct pool *p = pool_find(sw, pool_id);
    struct conn *c = conn_find(sw, id);
    const char *err = NULL;
    int nomem = 0;
    if (p != NULL && c != NULL) {
        err = login_promotable(c, pending.len > 0);
        if (err == NULL && pargs_apply(sw, c, &pa) < 0)
            nomem = 1;
        else if (err == NULL && login_promote(sw, c, p, pending.buf, (size_t)pending.len) < 0)
            nomem = 1;
    }
    sw_unlock(sw);
    pargs_free(&pa);
    PyBuffer_Release(&pending);
    if (nomem)
        return PyErr_NoMemory();
    if (p == NULL) {
        PyErr_Format(PyExc_KeyError, "no pool %lld", pool_id);
        return NULL;
    }
    if (err != NULL) {
        PyErr_SetString(PyExc_ValueError, err);
        return NULL;
    }
    return PyBool_FromLong(c != NULL);
}

static PyObject *Switch_talk(SwitchObject *self, PyObject *args)
{
    unsigned long long id;
    if (!PyArg_ParseTuple(args, "K", &id) || check_open(self) < 0)
        return NULL;
    struct sw *sw = &self->sw;
    sw_lock(sw);
    struct conn *c = conn_find(sw, id);
    const char *err = c != NULL ? login_talk(sw, c) : NULL;
    sw_unlock(sw);
    if (err != NULL) {
        PyErr_SetString(PyExc_ValueError, err);
        return NULL;
    }
    return PyBool_FromLong(c != NULL);
}

static PyObject *Switch_peer(SwitchObject *self, PyObject *args)
{
    unsigned long long id;
    if (!PyArg_ParseTuple(args, "K", &id) || check_open(self) < 0)
        return NULL;
    struct sw *sw = &self->sw;
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    struct ucred cred = {.pid = -1, .uid = (uid_t)-1, .gid = (gid_t)-1};
    socklen_t clen = sizeof(cred);
    int missing = 0, rc = -1, err = 0;
    sw_lock(sw);
    struct conn *c = conn_find(sw, id);
    if (c == NULL || c->kind == KIND_LISTENER || c->fd < 0) {
        missing = 1;
    } else {
        memset(&ss, 0, sizeof(ss));
        rc = getpeername(c->fd, (struct sockaddr *)&ss, &len);
        err = errno;
        if (rc == 0 && ss.ss_family == AF_UNIX &&
            getsockopt(c->fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) < 0)
            cred.pid = -1, cred.uid = (uid_t)-1;
    }
    sw_unlock(sw);
    if (missing) {
        PyErr_Format(PyExc_KeyError, "no connection %llu", id);
        return NULL;
    }
    if (rc < 0) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    char host[INET6_ADDRSTRLEN + 1] = "";
    int port = 0;
    long uid = -1, pid = -1;
    PyObject *name = NULL;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
        port = ntohs(a->sin_port);
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
        port = ntohs(a->sin6_port);
    } else if (ss.ss_family == AF_UNIX) {
        struct sockaddr_un *a = (struct sockaddr_un *)&ss;
        size_t off = offsetof(struct sockaddr_un, sun_path);
        size_t plen = len > off ? len - off : 0;
        if (plen > sizeof(a->sun_path))
            plen = sizeof(a->sun_path);
        if (plen > 0 && a->sun_path[0] == '\0') { /* abstract: '@name', as ss(8) shows it */
            PyObject *raw = PyUnicode_DecodeFSDefaultAndSize(a->sun_path + 1,
                                                             (Py_ssize_t)plen - 1);
            if (raw == NULL)
                return NULL;
            name = PyUnicode_FromFormat("@%U", raw);
            Py_DECREF(raw);
        } else {
            name = PyUnicode_DecodeFSDefaultAndSize(a->sun_path,
                                                    (Py_ssize_t)strnlen(a->sun_path, plen));
        }
        if (name == NULL)
            return NULL;
        if (cred.pid != -1) {
            uid = (long)cred.uid;
            pid = (long)cred.pid;
        }
    }
    if (name == NULL)
        name = PyUnicode_FromString(host);
    if (name == NULL)
        return NULL;
    return Py_BuildValue("(iNill)", (int)ss.ss_family, name, port, uid, pid);
}

/* scan(server, state, data, max_len) -> (consumed, stop, state, statuses): scan.c on one chunk,
 * for tests; state is (skip, status, owed, batch), statuses the ReadyForQuery statuses seen. */
static PyObject *mod_scan(PyObject *Py_UNUSED(m), PyObject *args)
{
    int server, batch;
    unsigned int skip, owed, max_len;
    char status;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "p(IcIp)y*I", &server, &skip, &status, &owed, &batch, &data,
                          &max_len))
        return NULL;
    struct scan sc = {.skip = skip, .status = (uint8_t)status};
    struct track tr = {.owed = owed, .batch = (uint8_t)batch};
    const uint8_t *p = data.buf;
    size_t n = (size_t)data.len, off = 0;
    uint8_t statuses[256];
    size_t nst = 0;
    int stop;
    for (;;) {
        size_t used = server ? scan_server(&sc, &tr, p + off, n - off, max_len, &stop)
                             : scan_client(&sc, &tr, p + off, n - off, max_len, &stop);
        off += used;
        if (stop != SCAN_RFQ)
            break;
        if (nst < sizeof(statuses))
            statuses[nst++] = sc.status;
    }
    PyBuffer_Release(&data);
    return Py_BuildValue("(ni(IcIN)y#)", (Py_ssize_t)off, stop, sc.skip, (char)sc.status, tr.owed,
                         PyBool_FromLong(tr.batch), (const char *)statuses, (Py_ssize_t)nst);
}

/* quote_literal(utf8) -> the SQL literal params.c writes in its SET (tests). */
static PyObject *mod_quote_literal(PyObject *Py_UNUSED(m), PyObject *args)
{
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "y*", &data))
        return NULL;
    PyObject *r = NULL;
    size_t n = (size_t)data.len;
    if (!params_valid_utf8(data.buf, n)) {
        PyErr_SetString(PyExc_ValueError, "not UTF-8");
    } else if (n > ((size_t)PY_SSIZE_T_MAX - 3) / 6) {
        PyErr_NoMemory();
    } else {
        uint8_t *out = malloc(3 + 6 * n);
        if (out == NULL) {
            PyErr_NoMemory();
        } else {
            size_t len = quote_literal(data.buf, n, out);
            r = PyBytes_FromStringAndSize((const char *)out, (Py_ssize_t)len);
            free(out);
        }
    }
    PyBuffer_Release(&data);
    return r;
}

static PyMethodDef module_methods[] = {
    {"scan", mod_scan, METH_VARARGS, "scan(server, state, data, max_len) (tests)"},
    {"quote_literal", mod_quote_literal, METH_VARARGS, "quote_literal(utf8) -> literal (tests)"},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef Switch_methods[] = {
    {"fileno", (PyCFunction)Switch_fileno, METH_NOARGS, "The event fd Python watches."},
    {"start", (PyCFunction)Switch_start, METH_NOARGS, "Start the switch's thread."},
    {"stop", (PyCFunction)Switch_stop, METH_NOARGS, "Stop it and close every connection."},
    {"add_pool", (PyCFunction)Switch_add_pool, METH_VARARGS, "add_pool(pool, mode)"},
    {"add_client", (PyCFunction)(void (*)(void))Switch_add_client, METH_VARARGS | METH_KEYWORDS,
     "add_client(fd, pool, pending=b'', params=None) -> id"},
    {"add_server", (PyCFunction)(void (*)(void))Switch_add_server, METH_VARARGS | METH_KEYWORDS,
     "add_server(fd, pool, params=None, connected_us=0) -> id"},
    {"set_params", (PyCFunction)Switch_set_params, METH_VARARGS, "set_params(conn, params)"},
    {"params", (PyCFunction)Switch_params, METH_VARARGS, "params(conn) -> dict"},
    {"pause", (PyCFunction)Switch_pause, METH_VARARGS, "pause(pool, on)"},
    {"waiting", (PyCFunction)Switch_waiting, METH_VARARGS, "waiting(pool) -> queued now"},
    {"send", (PyCFunction)Switch_send, METH_VARARGS, "send(conn, data)"},
    {"close", (PyCFunction)Switch_close, METH_VARARGS, "close(conn, final=b'') -> found"},
    {"detach", (PyCFunction)Switch_detach, METH_VARARGS, "detach(conn) -> (fd, held bytes)"},
    {"tls_configure", (PyCFunction)Switch_tls_configure, METH_VARARGS,
     "tls_configure(side, mode, protocols, dhe, key, cert, ca, ciphers, ciphers13, ecdhcurve)"},
    {"tls_accept", (PyCFunction)Switch_tls_accept, METH_VARARGS, "tls_accept(conn) -> bool"},
    {"tls_info", (PyCFunction)Switch_tls_info, METH_VARARGS, "tls_info(conn) -> str"},
    {"tls_infos", (PyCFunction)Switch_tls_infos, METH_NOARGS, "tls_infos() -> {conn: str}"},
    {"tls_peer", (PyCFunction)Switch_tls_peer, METH_VARARGS,
     "tls_peer(conn) -> (cn, verified) | None"},
    {"end_idle", (PyCFunction)Switch_end_idle, METH_VARARGS, "end_idle(conn, final=b'') -> bool"},
    {"set_close_needed", (PyCFunction)Switch_set_close_needed, METH_VARARGS,
     "set_close_needed(conn) -> found"},
    {"set_timeouts", (PyCFunction)(void (*)(void))Switch_set_timeouts,
     METH_VARARGS | METH_KEYWORDS, "set_timeouts(pool, *, query_wait=0, ...) in µs"},
    {"expire", (PyCFunction)Switch_expire, METH_VARARGS,
     "expire(conn, reason, final=b'') -> acted"},
    {"ticks", (PyCFunction)Switch_ticks, METH_NOARGS, "Deadline sweeps run so far."},
    {"listen", (PyCFunction)Switch_listen, METH_VARARGS, "listen(fd) -> listener id"},
    {"listen_resume", (PyCFunction)Switch_listen_resume, METH_VARARGS, "listen_resume(id)"},
    {"set_login_cap", (PyCFunction)Switch_set_login_cap, METH_VARARGS, "set_login_cap(n)"},
    {"set_pool_prepared", (PyCFunction)Switch_set_pool_prepared, METH_VARARGS,
     "set_pool_prepared(pool, max_prepared_statements)"},
    {"set_pool_hazards", (PyCFunction)Switch_set_pool_hazards, METH_VARARGS,
     "set_pool_hazards(pool, mode)"},
    {"carries", (PyCFunction)Switch_carries, METH_VARARGS,
     "carries(conn) -> its session settings and SQL statements (text)"},
    {"ps_mem", (PyCFunction)Switch_ps_mem, METH_NOARGS,
     "ps_mem() -> (statements, bytes, client names, server statements)"},
    {"set_route", (PyCFunction)(void (*)(void))Switch_set_route, METH_VARARGS | METH_KEYWORDS,
     "set_route(key, pool, method, gen, *, md5, iterations, salt, stored, server, welcome, app)"},
    {"clear_routes", (PyCFunction)Switch_clear_routes, METH_NOARGS, "Drop every route."},
    {"routes", (PyCFunction)Switch_routes, METH_NOARGS, "How many routes are set."},
    {"set_fast_cap", (PyCFunction)Switch_set_fast_cap, METH_VARARGS, "set_fast_cap(n)"},
    {"fast_expire", (PyCFunction)Switch_fast_expire, METH_VARARGS,
     "fast_expire(grace_us, timeout_us, msg)"},
    {"connect_server", (PyCFunction)Switch_connect_server, METH_VARARGS,
     "connect_server(fd, pool, first=b'', tls_mode=0, host=None) -> id"},
    {"read_next", (PyCFunction)Switch_read_next, METH_VARARGS, "read_next(conn) -> found"},
    {"promote", (PyCFunction)(void (*)(void))Switch_promote, METH_VARARGS | METH_KEYWORDS,
     "promote(conn, pool, params=None, pending=b'') -> found"},
    {"talk", (PyCFunction)Switch_talk, METH_VARARGS, "talk(conn) -> found"},
    {"peer", (PyCFunction)Switch_peer, METH_VARARGS,
     "peer(conn) -> (family, host, port, uid, pid)"},
    {"events", (PyCFunction)Switch_events, METH_NOARGS, "Drain the events."},
    {"pools", (PyCFunction)Switch_pools, METH_NOARGS, "Per pool counts and counters."},
    {"conns", (PyCFunction)Switch_conns, METH_NOARGS, "Per connection state."},
    {"peer_of", (PyCFunction)Switch_peer_of, METH_VARARGS, "peer_of(conn) -> linked id or 0"},
    {"cancel_key", (PyCFunction)Switch_cancel_key, METH_VARARGS,
     "cancel_key(conn) -> (pid, key) of its BackendKeyData"},
    {"cancel_target", (PyCFunction)Switch_cancel_target, METH_VARARGS,
     "cancel_target(pid, key) -> the id that pair was made for, or 0"},
    {"suspend", (PyCFunction)Switch_suspend, METH_VARARGS, "suspend(on)"},
    {"unflushed", (PyCFunction)Switch_unflushed, METH_NOARGS, "Ids with bytes still to write."},
    {"cancel_wait", (PyCFunction)Switch_cancel_wait, METH_VARARGS,
     "cancel_wait(client, error=b'') -> owed, -2 (none owed) or -1 (nothing done)"},
    {"set_pool_checks", (PyCFunction)(void (*)(void))Switch_set_pool_checks,
     METH_VARARGS | METH_KEYWORDS,
     "set_pool_checks(pool, *, check_delay_us=-1, reset_always=False)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SwitchType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pgfunnel._switch._switch.Switch",
    .tp_basicsize = sizeof(SwitchObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The native data plane: an epoll thread carrying logged-in connections.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Switch_init,
    .tp_dealloc = (destructor)Switch_dealloc,
    .tp_methods = Switch_methods,
};

static struct PyModuleDef switch_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_switch",
    .m_doc = "The switch: pgfunnel's native data plane.",
    .m_size = -1,
    .m_methods = module_methods,
};

#define ADD_INT(m, name)                                                                      \
    if (PyModule_AddIntConstant(m, #name, name) < 0)                                          \
    goto fail

PyMODINIT_FUNC PyInit__switch(void)
{
    if (PyType_Ready(&SwitchType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&switch_module);
    if (m == NULL)
        return NULL;
    ADD_INT(m, MODE_SESSION);
    ADD_INT(m, PARAM_VALUE_MAX);
    ADD_INT(m, MODE_TRANSACTION);
    ADD_INT(m, MODE_STATEMENT);
    ADD_INT(m, EV_WAITERS);
    ADD_INT(m, EV_CLOSED);
    ADD_INT(m, EV_ATTENTION);
    ADD_INT(m, EV_PARAMS_FAILED);
    ADD_INT(m, EV_DEADLINE);
    ADD_INT(m, EV_ACCEPTED);
    ADD_INT(m, EV_LISTEN_ERROR);
    ADD_INT(m, EV_MESSAGE);
    ADD_INT(m, EV_LOGGED_IN);
    ADD_INT(m, EV_LOGIN_ENDED);
    ADD_INT(m, ACCEPTED_SSL_ANSWERED);
    ADD_INT(m, ACCEPTED_TLS);
    ADD_INT(m, MSG_TLS);
    ADD_INT(m, R_TLS_FAILED);
    ADD_INT(m, TLS_PROTO_1_0);
    ADD_INT(m, TLS_PROTO_1_1);
    ADD_INT(m, TLS_PROTO_1_2);
    ADD_INT(m, TLS_PROTO_1_3);
    ADD_INT(m, LOGIN_ENDED_ASKED);
    ADD_INT(m, FAST_MD5);
    ADD_INT(m, FAST_SCRAM);
    ADD_INT(m, R_CONNECT_FAILED);
    ADD_INT(m, R_CHECK_NEEDED);
    ADD_INT(m, R_RESET_NEEDED);
    ADD_INT(m, R_DIRTY_PARTIAL);
    ADD_INT(m, R_AUTH_FAILED);
    ADD_INT(m, R_LOGIN_TIMEOUT);
    ADD_INT(m, R_PLAN_CHANGED);
    ADD_INT(m, R_PINNED_END);
    ADD_INT(m, EV_HAZARD);
    ADD_INT(m, HAZARDS_WARN);
    ADD_INT(m, HAZARDS_REFUSE);
    ADD_INT(m, HAZARDS_PIN);
    ADD_INT(m, HZ_ADVISORY_LOCK);
    ADD_INT(m, HZ_LISTEN);
    ADD_INT(m, HZ_TEMP);
    ADD_INT(m, HZ_HOLD_CURSOR);
    ADD_INT(m, CL_LOGIN);
    ADD_INT(m, SV_LOGIN);
    ADD_INT(m, SV_TALK);
    ADD_INT(m, MSG_MORE_BUFFERED);
    ADD_INT(m, MSG_UNTYPED);
    ADD_INT(m, MAX_STARTUP_PACKET);
    ADD_INT(m, R_CLIENT_TERMINATE);
    ADD_INT(m, R_CLIENT_EOF);
    ADD_INT(m, R_SERVER_EOF);
    ADD_INT(m, R_IO_ERROR);
    ADD_INT(m, R_BAD_PACKET);
    ADD_INT(m, R_TOO_BIG);
    ADD_INT(m, R_UNKNOWN_TYPE);
    ADD_INT(m, R_LONG_TX);
    ADD_INT(m, R_IDLE_DATA);
    ADD_INT(m, R_SERVER_GONE);
    ADD_INT(m, R_SESSION_END);
    ADD_INT(m, R_DIRTY_TXN);
    ADD_INT(m, R_DIRTY_BUSY);
    ADD_INT(m, R_CLOSE_NEEDED);
    ADD_INT(m, R_QUERY_WAIT);
    ADD_INT(m, R_QUERY_WAIT_NOTIFY);
    ADD_INT(m, R_QUERY);
    ADD_INT(m, R_IDLE_TRANSACTION);
    ADD_INT(m, R_CLIENT_IDLE);
    ADD_INT(m, R_SERVER_IDLE);
    ADD_INT(m, R_SERVER_LIFETIME);
    ADD_INT(m, R_RESERVE);
    ADD_INT(m, KIND_CLIENT);
    ADD_INT(m, KIND_SERVER);
    ADD_INT(m, CL_ACTIVE);
    ADD_INT(m, CL_WAITING);
    ADD_INT(m, CL_LINKED);
    ADD_INT(m, CL_CLOSING);
    ADD_INT(m, SV_IDLE);
    ADD_INT(m, SV_ACTIVE);
    ADD_INT(m, SV_PARKED);
    ADD_INT(m, SCAN_MORE);
    ADD_INT(m, SCAN_TERMINATE);
    ADD_INT(m, SCAN_BAD_LENGTH);
    ADD_INT(m, SCAN_TOO_BIG);
    ADD_INT(m, SCAN_UNKNOWN_TYPE);
    PyObject *bounds = PyTuple_New(WAIT_BUCKETS - 1);
    if (bounds == NULL)
        goto fail;
    for (int i = 0; i < WAIT_BUCKETS - 1; i++) {
        PyObject *v = PyLong_FromLongLong(wait_bounds_us[i]);
        if (v == NULL) {
            Py_DECREF(bounds);
            goto fail;
        }
        PyTuple_SET_ITEM(bounds, i, v);
    }
    if (PyModule_AddObject(m, "WAIT_BUCKETS_US", bounds) < 0) {
        Py_DECREF(bounds);
        goto fail;
    }
    Py_INCREF(&SwitchType);
    if (PyModule_AddObject(m, "Switch", (PyObject *)&SwitchType) < 0) {
        Py_DECREF(&SwitchType);
        goto fail;
    }
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
