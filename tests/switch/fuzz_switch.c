/* fuzz_switch.c: libFuzzer harness over the switch's connection and pool code (conn.c,
 * pool.c, loop.c, scan.c, stats.c, timers.c) with real socket pairs, in one thread.
 *
 * One client and one server in one pool (mode from the input); the input is a list of
 * operations: bytes from the client, bytes from the server, either side reading what the
 * switch sent it, the client leaving, a turn of the loop, a deadline sweep (every timeout 1 µs)
 * and, if the input says so, Python acting on what it reported (`timers_expire`). Two
 * parameters are tracked (params.c): the client may want a value the server does not have (a
 * SET and its swallowed answer at each link), and the server's bytes may carry
 * ParameterStatus. Checked after every turn:
 *   - what the server has received is whole messages of the types a client may send (never a
 *     Terminate, never a refused type) whenever the server is idle in the pool;
 *   - the pool's counts agree with the connections that exist;
 *   - a second client that shares the first one's wishes (params.c keeps one set for both)
 *     and never speaks keeps them whatever the first one's server reports.
 * For half the inputs the pool tracks named prepared statements (ps.c): the client's
 * Parse/Bind/Describe/Close are rewritten, and the server's ParseComplete/CloseComplete are
 * matched to what was sent. The pool's pooling_hazards (warn, refuse, pin) comes from the
 * input too: a refused statement is replaced, a pinned client keeps its server. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "switch.h"

#define CHECK(cond)                                                                          \
    do {                                                                                     \
        if (!(cond))                                                                         \
            __builtin_trap();                                                                \
    } while (0)

static const uint8_t ERR[] = "E\0\0\0\x04";

/* What the server side has received, checked as a stream of frontend messages. */
struct received {
    uint8_t hdr[5];
    size_t hdr_len;
    uint64_t skip;
};

static void feed(struct received *r, const uint8_t *p, size_t n)
{
    while (n > 0) {
        if (r->skip > 0) {
            size_t take = r->skip < n ? (size_t)r->skip : n;
            r->skip -= take;
            p += take;
            n -= take;
            continue;
        }
        r->hdr[r->hdr_len++] = *p++;
        n--;
        if (r->hdr_len < 5)
            continue;
        r->hdr_len = 0;
        uint8_t type = r->hdr[0];
        uint32_t len = ((uint32_t)r->hdr[1] << 24) | ((uint32_t)r->hdr[2] << 16) |
                       ((uint32_t)r->hdr[3] << 8) | r->hdr[4];
        CHECK(len >= 4);
        CHECK(type != 'X' && strchr("QPBEDCHSFdcf", type) != NULL && type != 0);
        r->skip = len - 4;
    }
}

static int drain(int fd, struct received *r)
{
    uint8_t buf[4096];
    ssize_t n;
    int got = 0;
    while ((n = read(fd, buf, sizeof(buf))) > 0) {
        if (r != NULL)
            feed(r, buf, (size_t)n);
        got = 1;
    }
    return got;
}

static void nonblock(int fd)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static void check_counts(struct sw *sw, struct pool *p)
{
    uint32_t live[ST_COUNT] = {0};
    for (uint32_t i = 0; i < sw->nslots; i++)
        if (sw->slots[i] != NULL)
            live[sw->slots[i]->state]++;
    for (int st = CL_ACTIVE; st < ST_DEAD; st++)
        CHECK(live[st] == p->n[st]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    struct sw sw;
    memset(&sw, 0, sizeof(sw));
    sw.epfd = sw.wake_fd = sw.ev_fd = sw.timer_fd = -1;
    sw.bufsize = 64; /* small: flow control and partial messages on every path */
    sw.max_packet = 4096;
    CHECK(loop_init(&sw) == 0);
    pthread_mutex_init(&sw.lock, NULL);
    pthread_mutex_lock(&sw.lock);
    sw_clock(&sw);
    buf_append(&sw.msg_unsupported, ERR, 5);
    buf_append(&sw.msg_long_tx, ERR, 5);
    buf_append(&sw.msg_server_gone, ERR, 5);
    struct pool *pool = pool_add(&sw, 1, data[0] % 3);
    CHECK(pool != NULL);
    /* named prepared statements (ps.c) for half the inputs, with room for two per server so
     * that the LRU closes some */
    pool->ps_max = (data[0] / 6) % 2 ? 2 : 0;
    pool->hazards = (uint8_t)((data[0] / 12) % 3); /* pooling_hazards: warn, refuse, pin */
    static const char *const names[] = {"application_name", "TimeZone"};
    static const size_t lens[] = {16, 8};
    CHECK(params_set_tracked(&sw, names, lens, 2) == 0);
    sw.pseed = 0; /* repeatable runs: the chains do not depend on it, but keep them the same */
    const uint8_t *pn[] = {(const uint8_t *)"application_name", (const uint8_t *)"TimeZone"};
    const uint8_t *pv_server[] = {(const uint8_t *)"a", (const uint8_t *)"UTC"};
    const uint8_t *pv_client[] = {(const uint8_t *)((data[0] / 3) % 2 ? "b" : "a"),
                                  (const uint8_t *)"UTC"};
    const size_t vl[] = {1, 3};
    for (size_t k = 0; k < sizeof(pool->to.us) / sizeof(pool->to.us[0]); k++)
        pool->to.us[k] = 1; /* the timer stays off: the input runs the sweep (op 7) */

    int cl[2], sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, cl) == 0);
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    nonblock(cl[0]);
    nonblock(sv[0]);
    nonblock(cl[1]);
    nonblock(sv[1]);
    struct conn *s = conn_new(&sw, sv[1], KIND_SERVER, pool);
    CHECK(s != NULL && loop_add(&sw, s) == 0);
    uint64_t sid = s->id;
    CHECK(params_set(&sw, s, pn, lens, pv_server, vl, 2) == 0);
    pool_release(&sw, s);
    struct conn *c = conn_new(&sw, cl[1], KIND_CLIENT, pool);
    CHECK(c != NULL && loop_add(&sw, c) == 0);
    conn_set_state(c, CL_ACTIVE);
    CHECK(params_set(&sw, c, pn, lens, pv_client, vl, 2) == 0);
    int quiet[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, quiet) == 0);
    nonblock(quiet[1]);
    struct conn *q = conn_new(&sw, quiet[1], KIND_CLIENT, pool);
    CHECK(q != NULL && loop_add(&sw, q) == 0);
    conn_set_state(q, CL_ACTIVE);
    CHECK(params_set(&sw, q, pn, lens, pv_client, vl, 2) == 0);
    uint64_t qid = q->id;

    struct received got = {0};
    int client_open = 1;
    size_t i = 1;
    while (i < size) {
        uint8_t op = data[i++];
        int act = (op >> 3) & 3; /* op 7's flags (it takes no bytes): 1 clients, 2 servers */
        size_t len = op >> 3;
        if (len > size - i)
            len = size - i;
        switch (op & 7) {
        case 0:
        case 1:
            if (client_open && send(cl[0], data + i, len, MSG_NOSIGNAL) < 0) {
                /* the switch closed it, or its buffers are full */
            }
            i += len;
            break;
        case 2:
        case 3:
            if (send(sv[0], data + i, len, MSG_NOSIGNAL) < 0) {
                /* the switch closed it */
            }
            i += len;
            break;
        case 4:
            if (client_open)
                drain(cl[0], NULL);
            break;
        case 5:
            drain(sv[0], &got);
            break;
        case 6:
            if (client_open) {
                close(cl[0]);
                client_open = 0;
            }
            break;
        default: {
            /* A sweep; Python then acts on each deadline it reported of the connections the
             * flags name (late: after the others of the same sweep were acted on). */
            size_t from = sw.nev;
            sw_clock(&sw);
            timers_tick(&sw);
            for (size_t e = from; act && e < sw.nev; e++) {
                struct conn *dc = conn_find(&sw, sw.evq[e].conn);
                if (sw.evq[e].kind == EV_DEADLINE && dc != NULL && (act & dc->kind))
                    CHECK(timers_expire(&sw, dc, (uint8_t)sw.evq[e].reason, ERR, 5) >= 0);
            }
            break;
        }
        }
        loop_once(&sw, 0);
        loop_once(&sw, 0);
        check_counts(&sw, pool);
        struct conn *qc = conn_find(&sw, qid);
        for (uint32_t k = 0; qc != NULL && k < 2; k++)
            CHECK(qc->pv[k].known && qc->pv[k].len == vl[k] &&
                  memcmp(pval_bytes(&qc->pv[k]), pv_client[k], vl[k]) == 0);
        struct conn *srv = conn_find(&sw, sid);
        if (srv != NULL && srv->state == SV_IDLE) {
            /* Nothing more is coming to an idle server: all it got must be whole. */
            drain(sv[0], &got);
            CHECK(got.hdr_len == 0 && got.skip == 0);
            CHECK(srv->swallow == 0 && srv->pw.rem == 0); /* no SET answer owed */
        }
        sw_drop_events(&sw); /* events are Python's: not kept */
    }

    for (uint32_t k = 0; k < sw.nslots; k++)
        if (sw.slots[k] != NULL)
            conn_destroy(&sw, sw.slots[k], R_NONE, 0);
    while (sw.todo_head != NULL) {
        sw.todo_head->scheduled = 0;
        sw.todo_head = sw.todo_head->todo_next;
    }
    conn_free_dead(&sw);
    buf_spares_free(&sw);
    close(quiet[0]);
    CHECK(sw.ptab_count == 0); /* every shared set was released with its last client */
    free(sw.slots);
    params_fini(&sw);
    ps_fini(&sw);
    free(pool);
    sw_drop_events(&sw);
    free(sw.evq);
    buf_free(&sw.msg_unsupported);
    buf_free(&sw.msg_long_tx);
    buf_free(&sw.msg_server_gone);
    if (client_open)
        close(cl[0]);
    close(sv[0]);
    loop_fini(&sw);
    pthread_mutex_unlock(&sw.lock);
    pthread_mutex_destroy(&sw.lock);
    return 0;
}
