/* login.c: the switch's part of the login phases: listeners and accept, a server's connect()
 * completion, and the framing that passes whole login messages up to Python (which decides
 * everything: authentication, the pool, refusals) until Python promotes the connection. */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "io.h"
#include "switch.h"

/* The protocol codes of PostgreSQL's untyped first packets. */
#define CODE_CANCEL 80877102u
#define CODE_SSL 80877103u
#define CODE_GSSENC 80877104u
#define PROTO_MAJOR_V3 3u

#define ACCEPT_BATCH 64  /* accepts per turn: a storm does not starve the connections */
#define LOGIN_BUF_MIN 1024 /* a login buffer's first size: most logins are a few hundred bytes */

static uint32_t be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* ---- framing (pure: fuzzed by tests/switch/fuzz_login.c) -------------------------------- */

/* How many bytes at the front of p[0..n) go up to Python as one MESSAGE; 0 while the first
 * message is not whole. An untyped packet (startup, SSLRequest, GSSENCRequest, cancel) goes up
 * alone; so does each typed message of a client, because what follows its last
 * authentication message (a query pipelined after the password) belongs to the pool, not to
 * Python. A server's typed messages go up together, up to and including a ReadyForQuery: what
 * follows that is not login any more (promote calls it IDLE_DATA). `max_len` caps a typed
 * message, type byte included. A bad length is reported (*stop) only when it is the first
 * message, so that a stream frames the same however it is cut into reads. *status: the
 * status of a ReadyForQuery (5 bytes) that ends the batch, else 0. */
size_t login_frame(uint8_t *phase, const uint8_t *p, size_t n, uint32_t max_len, int *stop,
                   uint32_t *flags, uint8_t *status)
{
    *stop = LOGIN_MORE;
    *flags = 0;
    *status = 0;
    if (*phase == LP_UNTYPED) {
        if (n < 4)
            return 0;
        uint32_t len = be32(p);
        if (len < 8 || len > MAX_STARTUP_PACKET) {
            *stop = LOGIN_BAD;
            return 0;
        }
        if (n < len)
            return 0;
        uint32_t code = be32(p + 4);
        *flags = MSG_UNTYPED;
        if (code == CODE_SSL || code == CODE_GSSENC) {
            /* The next packet is untyped again; bytes that came before Python's answer are
             * the CVE-2021-23214 class: Python must be able to refuse them. */
            if (n > len)
                *flags |= MSG_MORE_BUFFERED;
        } else if (code >> 16 == PROTO_MAJOR_V3) {
            *phase = LP_TYPED;
        }
        return len;
    }
    size_t off = 0;
    while (n - off >= 5) {
        uint8_t type = p[off];
        uint32_t len = be32(p + off + 1);
        int bad = len < 4 ? LOGIN_BAD : len >= max_len ? LOGIN_TOO_BIG : LOGIN_MORE;
        if (bad != LOGIN_MORE) {
            if (off == 0)
                *stop = bad;
            break;
        }
        if (n - off - 1 < len)
            break;
        if (type == 'Z' && len == 5)
            *status = p[off + 5];
        off += 1 + (size_t)len;
        if (*phase == LP_TYPED || type == 'Z')
            break;
    }
    return off;
}

/* ---- the login read path ---------------------------------------------------------------- */

/* Room to read into the login buffer: it grows with what comes, up to `limit` bytes pending.
 * -1: no memory. */
static int64_t login_room(struct buf *b, uint32_t limit)
{
    uint32_t pending = b->end - b->start;
    if (pending >= limit)
        return 0;
    if (b->end == b->alloc && b->start > 0) {
        memmove(b->data, b->data + b->start, pending);
        b->start = 0;
        b->end = b->scanned = pending;
    }
    if (b->end == b->alloc) {
        uint32_t want = b->alloc < LOGIN_BUF_MIN / 2 ? LOGIN_BUF_MIN : b->alloc * 2;
        if (want > limit)
            want = limit;
        uint8_t *q = realloc(b->data, want);
        if (q == NULL)
            return -1;
        b->data = q;
        b->alloc = want;
    }
    uint32_t room = b->alloc - b->end;
    return room < limit - pending ? room : limit - pending;
}

static void login_failed(struct sw *sw, struct conn *c, uint8_t reason, int err)
{
    c->err = err;
    conn_destroy(sw, c, reason, 1);
}

/* Passes up what is whole, unless Python has not asked for the next message yet. */
static void login_pass_up(struct sw *sw, struct conn *c)
{
    struct buf *b = &c->hold;
    if (c->fl != NULL && fast_pass_up(sw, c))
        return; /* the switch runs this login itself (fastlogin.c) */
    if (c->login_sent || b->end == b->start)
        return;
    uint32_t cap = sw->login_max;
    if (c->kind == KIND_SERVER && sw->max_packet < cap - 1)
        cap = sw->max_packet + 1; /* the length word plus the type byte */
    int stop;
    uint32_t flags;
    uint8_t status;
    size_t used = login_frame(&c->login_phase, b->data + b->start, b->end - b->start, cap, &stop,
                              &flags, &status);
    if (stop != LOGIN_MORE) {
        uint8_t reason = stop == LOGIN_TOO_BIG ? R_TOO_BIG : R_BAD_PACKET;
        if (c->kind != KIND_CLIENT) {
            login_failed(sw, c, reason, 0);
            return;
        }
        /* A client hears why, before a byte more of it is buffered. The length word follows
         * the type byte of a typed message; an untyped packet starts with it. */
        const uint8_t *p = b->data + b->start;
        size_t off = c->login_phase == LP_UNTYPED ? 0 : 1;
        long len = b->end - b->start >= off + 4
                       ? (long)(int32_t)(((uint32_t)p[off] << 24) | ((uint32_t)p[off + 1] << 16) |
                                         ((uint32_t)p[off + 2] << 8) | p[off + 3])
                       : -1;
        char text[128];
        if (reason == R_TOO_BIG && len >= 4)
            snprintf(text, sizeof text, "oversized packet: %ld bytes (max %lu during login)", len,
                     (unsigned long)cap - 1);
        else
            snprintf(text, sizeof text, "bad packet header: length %ld", len);
        uint8_t msg[192];
        size_t n = fatal_protocol_error(msg, sizeof msg, text);
        c->login_sent = 1; /* nothing more goes up */
        conn_close_with(sw, c, msg, n, reason);
        return;
    }
    if (used == 0)
        return;
    if (c->tls & TLS_UP)
        flags |= MSG_TLS;
    if (sw_post_data(sw, EV_MESSAGE, c->id, c->pool->id, flags, b->data + b->start, used) < 0) {
        login_failed(sw, c, R_IO_ERROR, ENOMEM);
        return;
    }
    c->login_sent = 1;
    if (c->state == SV_TALK && c->ps != 0) {
        /* the pooler's own reset (DISCARD ALL) drops the server's prepared statements too */
        const uint8_t *m = b->data + b->start;
        for (size_t off = 0; off + 5 <= used;) {
            uint32_t len = be32(m + off + 1);
            if (m[off] == 'C' && len >= 4 && off + 1 + len <= used)
                ps_server_tag(sw, c, m + off + 5, len - 4);
            off += 1 + (size_t)len;
        }
    }
    if (status != 0)
        c->sc.status = status; /* promote hands on only a server that said idle */
    b->start += (uint32_t)used;
    b->scanned = b->start;
    if (b->start == b->end)
        buf_free(b); /* nothing held while Python thinks */
}

static int login_read(struct sw *sw, struct conn *c)
{
    struct buf *b = &c->hold;
    int64_t room = login_room(b, sw->login_max);
    if (room < 0) {
        login_failed(sw, c, R_IO_ERROR, ENOMEM);
        return 0;
    }
    if (room == 0) {
        c->stalled = 1; /* flow control: read again after read_next */
        return 0;
    }
    if (c->kind == KIND_CLIENT && c->login_phase == LP_UNTYPED && b->end == b->start &&
        c->tls == 0 && sw->tls_cl.ctx != NULL && sw->tls_cl.mode != TLS_MODE_DISABLE) {
        /* A first byte 0x16: a TLS handshake without an SSLRequest (direct TLS) */
        int direct = tls_direct_start(sw, c);
        if (direct < 0) {
            login_failed(sw, c, R_IO_ERROR, ENOMEM);
            return 0;
        }
        if (direct > 0) {
            conn_schedule(sw, c);
            return 0;
        }
    }
    ssize_t n = io_read(sw, c, b->data + b->end, (size_t)room);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            c->readable = 0;
            return 0;
        }
        login_failed(sw, c, R_IO_ERROR, errno);
        return 0;
    }
    if (n == 0) {
        login_failed(sw, c, c->kind == KIND_CLIENT ? R_CLIENT_EOF : R_SERVER_EOF, 0);
        return 0;
    }
    if (n < room && !c->hup)
        c->readable = 0; /* a short read means drained */
    c->stalled = 0;
    b->end += (uint32_t)n;
    c->request_wall = sw->now_wall;
    return 1;
}

/* A connection in CL_LOGIN, SV_LOGIN or SV_TALK: pass up what is whole, read, pass up
 * again. SUSPEND does not stop it: the admin console (and its RESUME) is a connection in
 * login mode, and Python reads a login only when it asks for the next message. */
int login_service(struct sw *sw, struct conn *c)
{
    login_pass_up(sw, c);
    if (c->state == ST_DEAD || !c->readable)
        return 0;
    if ((c->tls & (TLS_ON | TLS_UP)) == TLS_ON) {
        conn_schedule(sw, c); /* an SSLRequest just answered 'S': the handshake reads next */
        return 0;
    }
    int got = login_read(sw, c);
    if (got)
        login_pass_up(sw, c);
    return got;
}

/* A server whose connect() may still be in progress: nothing is written before the socket
 * says writable, then SO_ERROR tells how the connect ended. 1: the caller stops here. */
int login_connecting(struct sw *sw, struct conn *c)
{
    if (!c->connecting)
        return 0;
    if (!c->writable)
        return 1;
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err != 0) {
        login_failed(sw, c, R_CONNECT_FAILED, err);
        return 1;
    }
    c->connecting = 0;
    return 0;
}

/* ---- listeners -------------------------------------------------------------------------- */

/* Undoes conn_new for a connection that never got registered. */
static void conn_unmake(struct sw *sw, struct conn *c)
{
    if (c->kind == KIND_CLIENT)
        sw->nclients--;
    sw->slots[(c->id & 0xffffffffu) - 1] = NULL;
    c->pool->n[ST_NEW]--;
    free(c);
}

/* Out of fds or memory: accepting again at once would spin. Python frees something (evicts
 * the oldest silent client, say) and calls listen_resume. */
static void listen_pause(struct sw *sw, struct conn *l, int err)
{
    l->stalled = 1;
    sw_post(sw, EV_LISTEN_ERROR, l->id, l->pool->id, (uint32_t)err);
}

/* Errors of one connection only (accept(2): Linux reports pending network errors here). */
static int accept_skippable(int err)
{
    switch (err) {
    case ECONNABORTED:
    case EPERM:
    case EPROTO:
    case ENETDOWN:
    case ENOPROTOOPT:
    case EHOSTDOWN:
    case ENONET:
    case EHOSTUNREACH:
    case EOPNOTSUPP:
    case ENETUNREACH:
        return 1;
    default:
        return 0;
    }
}

void login_accept(struct sw *sw, struct conn *l)
{
    if (l->stalled || !l->readable || l->state == ST_DEAD)
        return; /* accepts while suspended: new console sessions must reach RESUME */
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        if (sw->login_cap != 0 && sw->login_pool.n[CL_LOGIN] >= sw->login_cap) {
            /* A flood of silent sockets: the backlog keeps the rest, rather than the
             * process running out of fds (the console and /metrics need some). Python
             * evicts the oldest silent ones and resumes (errno 0: the cap, not an error). */
            listen_pause(sw, l, 0);
            return;
        }
        struct sockaddr_storage ss;
        socklen_t slen = sizeof(ss);
        int fd = accept4(l->fd, (struct sockaddr *)&ss, &slen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            int err = errno;
            if (err == EINTR || accept_skippable(err))
                continue;
            if (err == EAGAIN || err == EWOULDBLOCK)
                l->readable = 0;
            else
                listen_pause(sw, l, err);
            return;
        }
        /* TCP_NODELAY comes from the listener (login_listen): Linux copies it to the
         * accepted socket, which saves a system call per login. */
        struct conn *c = conn_new(sw, fd, KIND_CLIENT, &sw->login_pool);
        if (c == NULL) {
            close(fd);
            listen_pause(sw, l, ENOMEM);
            return;
        }
        if (loop_add(sw, c) < 0) {
            int err = errno;
            conn_unmake(sw, c);
            close(fd);
            listen_pause(sw, l, err);
            return;
        }
        c->login_phase = LP_UNTYPED;
        conn_set_state(c, CL_LOGIN);
        if (sw->rtab_count > 0) {
            char host[INET6_ADDRSTRLEN + 1] = "unix";
            uint32_t port = 0;
            if (ss.ss_family == AF_INET) {
                const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
                inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
                port = ntohs(a->sin_port);
            } else if (ss.ss_family == AF_INET6) {
                const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
                inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
                port = ntohs(a->sin6_port);
            }
            fast_accept(sw, c, (int64_t)l->id, host, port);
        }
        if (c->fl == NULL) /* else Python hears of it when the switch is done with it */
            sw_post(sw, EV_ACCEPTED, c->id, (int64_t)l->id, 0);
    }
    conn_schedule(sw, l); /* more may wait: after the other connections' turn */
}

/* A bound, listening, non-blocking socket; NULL with errno set (the fd stays the caller's). */
struct conn *login_listen(struct sw *sw, int fd)
{
    int on = 0;
    socklen_t olen = sizeof(on);
    struct sockaddr_storage ss;
    socklen_t slen = sizeof(ss);
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &olen) < 0 ||
        getsockname(fd, (struct sockaddr *)&ss, &slen) < 0)
        return NULL;
    if (!on) {
        errno = EINVAL;
        return NULL;
    }
    struct conn *l = conn_new(sw, fd, KIND_LISTENER, &sw->login_pool);
    if (l == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6) {
        /* Set once here: every socket it accepts inherits it (Linux clones the listener's
         * TCP options into the new socket), so no per-login setsockopt. */
        int one = 1;
        if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0) {
            int err = errno;
            conn_unmake(sw, l);
            errno = err;
            return NULL;
        }
    }
    if (loop_add(sw, l) < 0) {
        int err = errno;
        conn_unmake(sw, l);
        errno = err;
        return NULL;
    }
    /* Connections may wait in the backlog already: look without waiting for an edge. */
    l->readable = 1;
    conn_schedule(sw, l);
    return l;
}

/* A server socket on which connect() was called (in progress or done); NULL with errno set. */
struct conn *login_connect(struct sw *sw, int fd, struct pool *p)
{
    struct conn *c = conn_new(sw, fd, KIND_SERVER, p);
    if (c == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    c->connecting = 1;
    c->writable = 0; /* until epoll says the connect ended */
    c->login_phase = LP_SERVER;
    if (loop_add(sw, c) < 0) {
        int err = errno;
        conn_unmake(sw, c);
        errno = err;
        return NULL;
    }
    conn_set_state(c, SV_LOGIN);
    return c;
}

void login_read_next(struct sw *sw, struct conn *c)
{
    c->login_sent = 0;
    c->stalled = 0;
    conn_schedule(sw, c);
}

/* The pooler's own queries (ROLLBACK, the reset query, a check) on an idle or parked server:
 * its messages go up as a login's do, Python writes with send, then promotes it again. A
 * server parked DIRTY_BUSY may be mid-message (a partial header was with its client): no. */
const char *login_talk(struct sw *sw, struct conn *s)
{
    if (s->kind != KIND_SERVER || (s->state != SV_IDLE && s->state != SV_PARKED))
        return "only an idle or parked server can talk";
    if (s->state == SV_PARKED &&
        (s->park_reason == R_DIRTY_BUSY || s->park_reason == R_DIRTY_PARTIAL))
        return "a server parked DIRTY_BUSY may be mid-message: close it";
    pool_unlist(sw, s);
    conn_set_state(s, SV_TALK);
    s->login_phase = LP_SERVER;
    s->login_sent = 0;
    s->stalled = 0;
    conn_schedule(sw, s); /* what it sent while parked is in the kernel: read it now */
    return NULL;
}

/* Moves a connection's count to another pool (a client leaves the login pool). */
static void move_pool(struct conn *c, struct pool *p)
{
    c->pool->n[c->state]--;
    p->n[c->state]++;
    c->pool = p;
}

/* Why c cannot be promoted (an error text), or NULL. `pending`: Python has bytes to carry,
 * which only a client takes. */
const char *login_promotable(const struct conn *c, int pending)
{
    if (c->state == CL_LOGIN)
        return NULL;
    if (c->state != SV_LOGIN && c->state != SV_TALK)
        return "only a client or a server in login (or talk) can be promoted";
    if (pending)
        return "pending bytes are for a client";
    if (c->connecting)
        return "the server is not connected yet";
    if (c->out.start != c->out.end)
        return "the server still has bytes to write";
    if (c->hold.end == c->hold.start && c->sc.status != 'I')
        return "the server's last ReadyForQuery did not say idle";
    return NULL;
}

/* Into the pool as add_client/add_server would put it (login_promotable said it can be). A
 * client's `pending` bytes (Python received them in MESSAGE events) come before what the
 * switch still holds from it, and are scanned as add_client's pending are. -1: no memory,
 * nothing changed. */
int login_promote(struct sw *sw, struct conn *c, struct pool *p, const uint8_t *pending,
                  size_t plen)
{
    if (c->state == CL_LOGIN) {
        struct buf *h = &c->hold;
        if (plen > 0) {
            struct buf nb = {0};
            if (buf_append(&nb, pending, plen) < 0 ||
                buf_append(&nb, h->data + h->start, h->end - h->start) < 0) {
                buf_free(&nb);
                return -1;
            }
            buf_free(h);
            *h = nb;
            p->st.bytes_recv += (uint64_t)plen; /* as add_client's pending */
            c->request_wall = sw->now_wall;
        }
        move_pool(c, p);
        c->login_sent = 0;
        conn_set_state(c, CL_ACTIVE);
        c->idle_since = sw->now_mono; /* client_idle_timeout counts from its last login message */
        if (h->end == h->start) {
            buf_free(h);
        } else {
            /* Read after its last login message (a query pipelined after the password):
             * carried as if read now. */
            h->scanned = h->start;
            conn_client_held(sw, c);
        }
        c->stalled = 0;
        conn_schedule(sw, c);
        return 0;
    }
    move_pool(c, p);
    c->login_sent = 0;
    if (c->hold.end != c->hold.start) {
        conn_server_gone(sw, c, R_IDLE_DATA); /* it spoke after its ReadyForQuery */
        return 0;
    }
    buf_free(&c->hold);
    c->pmatch = 0; /* what its values are is what the promote said (talk mode may have changed
                    * them, and its bytes did not go through params.c) */
    pool_release(sw, c);
    conn_schedule(sw, c); /* an idle server read since its last edge is checked at once */
    return 0;
}
