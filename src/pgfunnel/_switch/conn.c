/* conn.c: one connection's buffers, reads and writes, and flow control between the two ends
 * of a link (a side is not read while the buffer it reads into is full). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "io.h"
#include "switch.h"

/* ---- buffers ---------------------------------------------------------------------------- */

void buf_free(struct buf *b)
{
    free(b->data);
    b->data = NULL;
    b->alloc = b->start = b->scanned = b->end = 0;
}

/* buf_free, keeping a read buffer's block for the next one that needs it (at most SPARE_MAX,
 * and at most SPARE_BYTES in all). Under ASan a spare is poisoned until it is taken again, so
 * that a use after the drop is still caught. */
void buf_drop(struct sw *sw, struct buf *b)
{
    if (b->data != NULL && b->alloc == sw->bufsize && sw->nspare < SPARE_MAX &&
        (uint64_t)(sw->nspare + 1) * sw->bufsize <= SPARE_BYTES) {
        ASAN_POISON(b->data, b->alloc);
        sw->spare[sw->nspare++] = b->data;
        b->data = NULL;
        b->alloc = b->start = b->scanned = b->end = 0;
        return;
    }
    buf_free(b);
}

void buf_spares_free(struct sw *sw)
{
    while (sw->nspare > 0) {
        uint8_t *p = sw->spare[--sw->nspare];
        ASAN_UNPOISON(p, sw->bufsize);
        free(p);
    }
}

/* Moves the pending bytes to the front so that the tail has room. */
static void buf_compact(struct buf *b)
{
    if (b->start == 0)
        return;
    memmove(b->data, b->data + b->start, b->end - b->start);
    b->scanned -= b->start;
    b->end -= b->start;
    b->start = 0;
}

/* Room to read into, the pending bytes counted against the buffer size (or `want`, when a
 * whole message larger than that must be held); 0 when full (or no memory). */
static uint32_t buf_read_room(struct sw *sw, struct buf *b, uint32_t want)
{
    uint32_t limit = want > sw->bufsize ? want : sw->bufsize;
    uint32_t pending = b->end - b->start;
    if (pending >= limit)
        return 0;
    if (b->data == NULL && sw->nspare > 0) {
        b->data = sw->spare[--sw->nspare];
        b->alloc = limit;
        ASAN_UNPOISON(b->data, limit);
    }
    if (b->alloc < limit) {
        uint8_t *p = realloc(b->data, limit);
        if (p == NULL)
            return 0;
        b->data = p;
        b->alloc = limit;
    }
    if (b->alloc - b->end < limit - pending)
        buf_compact(b);
    return limit - pending;
}

/* Appends whole bytes (an injected message): sendable at once, beyond the read limit if need
 * be. Any partial header waiting at the tail is dropped: the caller is about to close. */
int buf_append(struct buf *b, const uint8_t *p, size_t n)
{
    b->end = b->scanned;
    if (n > UINT32_MAX - (b->end - b->start))
        return -1;
    uint32_t need = (b->end - b->start) + (uint32_t)n;
    if (b->alloc < need) {
        uint8_t *q = realloc(b->data, need);
        if (q == NULL)
            return -1;
        b->data = q;
        b->alloc = need;
    }
    if (b->alloc - b->end < n)
        buf_compact(b);
    if (n > 0)
        memcpy(b->data + b->end, p, n);
    b->end += (uint32_t)n;
    b->scanned = b->end;
    return 0;
}

/* ---- ids, states, lists ---------------------------------------------------------------- */

struct conn *conn_new(struct sw *sw, int fd, uint8_t kind, struct pool *pool)
{
    uint32_t slot = UINT32_MAX;
    for (uint32_t i = 0; i < sw->nslots; i++) {
        uint32_t j = (sw->slot_hint + i) % sw->nslots;
        if (sw->slots[j] == NULL) {
            slot = j;
            break;
        }
    }
    if (slot == UINT32_MAX) {
        /* slot + 1 stays below 2^30: cancelkey.c packs an id into 62 bits */
        uint32_t n = sw->nslots ? sw->nslots * 2 : 64;
        if (n > CONN_SLOTS_MAX)
            n = CONN_SLOTS_MAX;
        if (n <= sw->nslots)
            return NULL;
        struct conn **s = realloc(sw->slots, (size_t)n * sizeof(*s));
        if (s == NULL)
            return NULL;
        memset(s + sw->nslots, 0, (size_t)(n - sw->nslots) * sizeof(*s));
        slot = sw->nslots;
        sw->slots = s;
        sw->nslots = n;
    }
    struct conn *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    /* slot + 1 so that no id is 0 (0 means "no connection" in events and snapshots) */
    c->id = ((uint64_t)++sw->gen << 32) | (slot + 1);
    c->fd = fd;
    c->kind = kind;
    c->pool = pool;
    c->writable = 1;
    c->sc.status = 'I';
    c->connect_wall = c->request_wall = sw->now_wall;
    c->connect_mono = c->idle_since = sw->now_mono;
    pool->n[ST_NEW]++;
    if (kind == KIND_CLIENT)
        sw->nclients++;
    sw->slots[slot] = c;
    sw->slot_hint = slot + 1;
    return c;
}

struct conn *conn_find(struct sw *sw, uint64_t id)
{
    uint32_t slot = (uint32_t)(id & 0xffffffffu);
    if (slot == 0 || slot > sw->nslots)
        return NULL;
    struct conn *c = sw->slots[slot - 1];
    return c != NULL && c->id == id ? c : NULL;
}

static int legal(uint8_t kind, uint8_t from, uint8_t to)
{
    if (to == ST_DEAD)
        return from != ST_DEAD;
    if (kind == KIND_CLIENT) {
        switch (to) {
        case CL_ACTIVE: /* logged in; its server released; or out of the queue to leave */
            return from == ST_NEW || from == CL_LINKED || from == CL_WAITING ||
                   from == CL_LOGIN;
        case CL_WAITING:
            return from == CL_ACTIVE;
        case CL_LINKED:
            return from == CL_ACTIVE || from == CL_WAITING;
        case CL_CLOSING:
            return from == CL_ACTIVE || from == CL_WAITING || from == CL_LINKED ||
                   from == CL_LOGIN;
        case CL_LOGIN: /* accepted by a listener (login.c) */
            return from == ST_NEW;
        default:
            return 0;
        }
    }
    switch (to) {
    case SV_IDLE:
        return from == ST_NEW || from == SV_ACTIVE || from == SV_LOGIN || from == SV_TALK;
    case SV_ACTIVE:
        return from == ST_NEW || from == SV_IDLE || from == SV_ACTIVE || from == SV_LOGIN ||
               from == SV_TALK;
    case SV_PARKED:
        return from == SV_IDLE || from == SV_ACTIVE || from == SV_LOGIN || from == SV_TALK;
    case SV_LOGIN: /* connect_server (login.c) */
        return from == ST_NEW;
    case SV_TALK: /* talk (login.c): the pooler's own queries */
        return from == SV_IDLE || from == SV_PARKED;
    default:
        return 0;
    }
}

/* The one place a state changes, keeping the pool's counts. An illegal move is a bug in the
 * switch, not something a peer can cause: stop loudly rather than corrupt the lists. */
void conn_set_state(struct conn *c, uint8_t state)
{
    if (!legal(c->kind, c->state, state)) {
        fprintf(stderr, "pgfunnel switch: illegal state change %d -> %d (kind %d)\n", c->state,
                state, c->kind);
        abort();
    }
    c->pool->n[c->state]--;
    c->pool->n[state]++;
    c->state = state;
}

void conn_schedule(struct sw *sw, struct conn *c)
{
    if (c->scheduled || c->state == ST_DEAD)
        return;
    c->scheduled = 1;
    c->todo_next = NULL;
    if (sw->todo_tail != NULL)
        sw->todo_tail->todo_next = c;
    else
        sw->todo_head = c;
    sw->todo_tail = c;
}

/* Closes the socket now. The struct lives until the loop's batch ends (an event of the
 * same batch may still point at it). */
void conn_destroy(struct sw *sw, struct conn *c, uint8_t reason, int report)
{
    if (c->state == ST_DEAD)
        return;
    /* A pooled client's close only needs logging and counting in Python: no wake-up of its
     * own (EV_LAZY). A server's, or a login's that Python talks, needs Python at once. */
    uint8_t lazy = c->kind == KIND_CLIENT && c->state >= CL_ACTIVE && c->state <= CL_CLOSING
                       ? EV_LAZY
                       : 0;
    char why[TLS_WHY_MAX];
    why[0] = 0;
    if (c->tls) /* (a close without TLS copies nothing: a storm closes a client per login) */
        snprintf(why, sizeof why, "%s", tls_failure(sw, c));
    if (c->fl != NULL) {
        /* A login the switch ran: Python never saw its ACCEPTED, it hears LOGIN_ENDED (with
         * its TLS, still up here) */
        if (report)
            fast_closing(sw, c, reason, why);
        else
            fast_drop(sw, c);
        report = 0;
    }
    if (c->tls)
        tls_end(sw, c, reason); /* before the socket closes: its close_notify */
    if (c->kind == KIND_CLIENT)
        sw->nclients--;
    pool_unlist(sw, c);
    if (c->peer != NULL) {
        c->peer->peer = NULL;
        c->peer = NULL;
    }
    if (c->fd >= 0) { /* -1: detached, the fd is Python's again */
        loop_del(sw, c);
        close(c->fd);
        c->fd = -1;
    }
    buf_drop(sw, &c->out);
    buf_drop(sw, &c->hold);
    params_free(sw, c);
    ps_free(sw, c);
    conn_set_state(c, ST_DEAD);
    c->close_reason = reason;
    uint32_t slot = (uint32_t)(c->id & 0xffffffffu);
    sw->slots[slot - 1] = NULL;
    if (report) {
        /* Python logs the errno of a failed connect or I/O error (as text: data is bytes). */
        char num[16];
        int len = 0;
        const char *data = num;
        if (reason == R_TLS_FAILED) { /* why, in words (tls.c) */
            data = why;
            len = (int)strlen(why);
        } else if (c->err != 0 && (reason == R_IO_ERROR || reason == R_CONNECT_FAILED))
            len = snprintf(num, sizeof(num), "%d", c->err);
        else if (reason == R_UNKNOWN_TYPE) /* Python logs "unknown pkt from client" with it */
            num[len++] = (char)c->bad_type;
        sw_post_data(sw, EV_CLOSED | lazy, c->id, c->pool->id, reason, (const uint8_t *)data,
                     len > 0 ? (size_t)len : 0);
    }
    c->dead_next = sw->dead;
    sw->dead = c;
}

void conn_free_dead(struct sw *sw)
{
    struct conn **pp = &sw->dead;
    while (*pp != NULL) {
        struct conn *c = *pp;
        if (c->scheduled) { /* still on the to-do list: next time */
            pp = &c->dead_next;
            continue;
        }
        *pp = c->dead_next;
        free(c);
    }
}

/* A client ends: write `msg` after what it was already sent, then close. Its server is
 * judged as if the client had left. */
void conn_close_with(struct sw *sw, struct conn *c, const uint8_t *msg, size_t len,
                     uint8_t reason)
{
    if (c->state == ST_DEAD || c->state == CL_CLOSING)
        return;
    pool_client_left(sw, c);
    buf_free(&c->hold);
    if (buf_append(&c->out, msg, len) < 0) {
        conn_destroy(sw, c, reason, 1);
        return;
    }
    conn_set_state(c, CL_CLOSING);
    c->close_reason = reason;
    c->readable = 0;
    conn_schedule(sw, c);
}

/* Python ends a server: `final` (its Terminate) is written once, without waiting, as PgBouncer
 * does, and only at a message boundary: nothing of a client's waits to be written to it, and
 * it has not been left with part of a message's body (`cut`), after which the Terminate would
 * be read as the rest. Then it is closed, quietly: PostgreSQL ends the session as asked. */
void conn_end_server(struct sw *sw, struct conn *s, const uint8_t *final, size_t len)
{
    if (len > 0 && s->fd >= 0 && !s->connecting && !s->cut && s->out.start == s->out.end &&
        (s->tls == 0 || (s->tls & TLS_UP))) {
        ssize_t n = io_write(sw, s, final, len); /* the socket is non-blocking */
        (void)n; /* it is closed next whatever happened */
    }
    conn_destroy(sw, s, R_NONE, 0);
}

/* A server ends (EOF, error, bad bytes): its client, if any, is told and closed too. */
void conn_server_gone(struct sw *sw, struct conn *s, uint8_t reason)
{
    struct conn *c = s->state == SV_ACTIVE ? s->peer : NULL;
    if (c != NULL) {
        s->peer = NULL;
        c->peer = NULL;
        conn_set_state(c, CL_ACTIVE);
        conn_close_with(sw, c, sw->msg_server_gone.data,
                        sw->msg_server_gone.end - sw->msg_server_gone.start, R_SERVER_GONE);
    }
    conn_destroy(sw, s, reason, 1);
}

/* ---- I/O -------------------------------------------------------------------------------- */

static int would_block(void)
{
    return errno == EAGAIN || errno == EWOULDBLOCK;
}

/* Writes what is sendable; returns 1 if it wrote anything. */
static int conn_write(struct sw *sw, struct conn *c)
{
    struct buf *b = &c->out;
    uint32_t len = b->scanned - b->start;
    if (len == 0 || !c->writable)
        return 0;
    ssize_t n = io_write(sw, c, b->data + b->start, len);
    if (n < 0) {
        if (would_block()) {
            c->writable = 0;
            return 0;
        }
        c->err = errno;
        if (c->state == CL_CLOSING) {
            /* Closing already (the error was a last word to a client that has gone): the
             * reason stays the one that decided the close, BAD_PACKET rather than EPIPE. */
            conn_destroy(sw, c, c->close_reason, !c->quiet);
        } else if (c->kind == KIND_SERVER) {
            conn_server_gone(sw, c, R_IO_ERROR);
        } else {
            pool_client_left(sw, c);
            conn_destroy(sw, c, R_IO_ERROR, !c->quiet);
        }
        return 0;
    }
    if ((uint32_t)n < len)
        c->writable = 0;
    b->start += (uint32_t)n;
    b->done += (uint64_t)n;
    if (b->start == b->end) {
        b->start = b->scanned = b->end = 0;
        if (c->kind == KIND_CLIENT && c->state != CL_LINKED)
            buf_drop(sw, b); /* an idle client keeps no buffer */
    }
    /* Room was made in the buffer the peer reads into. */
    if (c->peer != NULL && c->peer->stalled) {
        c->peer->stalled = 0;
        conn_schedule(sw, c->peer);
    }
    if (c->kind == KIND_SERVER && b->start == b->end)
        pool_check_release(sw, c);
    return 1;
}

/* A FATAL 08P01 ErrorResponse with `text` (PgBouncer's and the login path's wording) into
 * out[0..cap); its length, 0 if it does not fit. */
size_t fatal_protocol_error(uint8_t *out, size_t cap, const char *text)
{
    static const char head[] = "SFATAL\0VFATAL\0C08P01\0M";
    size_t hlen = sizeof head - 1, tlen = strlen(text);
    size_t len = 4 + hlen + tlen + 2; /* the length word, the fields, text's NUL, the end NUL */
    if (1 + len > cap || len > UINT32_MAX)
        return 0;
    out[0] = 'E';
    out[1] = (uint8_t)(len >> 24);
    out[2] = (uint8_t)(len >> 16);
    out[3] = (uint8_t)(len >> 8);
    out[4] = (uint8_t)len;
    memcpy(out + 5, head, hlen);
    memcpy(out + 5 + hlen, text, tlen + 1);
    out[5 + hlen + tlen + 1] = 0;
    return 1 + len;
}

/* `hdr`: the offender's whole 5-byte header (type and length word). */
static void client_scan_failed(struct sw *sw, struct conn *c, int stop, const uint8_t *hdr)
{
    uint8_t type = hdr[0];
    c->bad_type = type;
    if (stop == SCAN_TERMINATE) {
        pool_client_left(sw, c);
        conn_destroy(sw, c, R_CLIENT_TERMINATE, 1);
    } else if (stop == SCAN_UNKNOWN_TYPE) {
        conn_close_with(sw, c, sw->msg_unsupported.data,
                        sw->msg_unsupported.end - sw->msg_unsupported.start, R_UNKNOWN_TYPE);
    } else {
        /* The client is told why, as at login (proto/framing.py words it the same way). */
        int32_t len = (int32_t)(((uint32_t)hdr[1] << 24) | ((uint32_t)hdr[2] << 16) |
                                ((uint32_t)hdr[3] << 8) | hdr[4]);
        char text[128];
        if (stop == SCAN_TOO_BIG && len >= 4) /* a negative length word is no size at all */
            snprintf(text, sizeof text, "oversized packet: %ld bytes (max_packet_size=%lu)",
                     (long)len, (unsigned long)sw->max_packet);
        else if (type >= 0x20 && type < 0x7f)
            snprintf(text, sizeof text, "bad packet header: type '%c' length %ld", (char)type,
                     (long)len);
        else
            snprintf(text, sizeof text, "bad packet header: type %u length %ld", (unsigned)type,
                     (long)len);
        uint8_t msg[192];
        size_t n = fatal_protocol_error(msg, sizeof msg, text);
        conn_close_with(sw, c, msg, n, stop == SCAN_TOO_BIG ? R_TOO_BIG : R_BAD_PACKET);
    }
}

static int client_scan(struct sw *sw, struct conn *c, struct buf *dst, struct conn *s);

/* The bytes dst must hold for the message ps.c or sets.c must see whole, whose header its
 * scan stopped at; 0 when none waits. */
static uint32_t stmt_want(const struct conn *c, const struct buf *dst)
{
    if (!c->sc.ps || c->sc.skip != 0 || dst->end - dst->scanned < 5)
        return 0;
    const uint8_t *h = dst->data + dst->scanned;
    uint32_t len = ((uint32_t)h[1] << 24) | ((uint32_t)h[2] << 16) | ((uint32_t)h[3] << 8) | h[4];
    /* -1: a Query not all there yet, wanted whole to be looked at (only its first bytes when
     * it is longer than SCAN_HOLD_MAX: the usual room brings them) */
    int held = scan_wants_whole(c->sc.ps, h[0], len, h + 5, dst->end - dst->scanned - 5);
    if (held == 0 || (held < 0 && len - 4 > SCAN_HOLD_MAX))
        return 0;
    uint64_t want = (uint64_t)(dst->scanned - dst->start) + 1 + len;
    return want > UINT32_MAX ? UINT32_MAX : (uint32_t)want;
}

/* Reads a client into its server's out buffer (or its own hold buffer while it has no
 * server); returns 1 if it read anything. */
static int client_read(struct sw *sw, struct conn *c)
{
    struct conn *s = c->state == CL_LINKED ? c->peer : NULL;
    struct buf *dst;
    if (s != NULL)
        dst = &s->out;
    else if (c->state == CL_ACTIVE || c->state == CL_WAITING)
        dst = &c->hold;
    else
        return 0;
    uint32_t room = buf_read_room(sw, dst, stmt_want(c, dst));
    if (room == 0) {
        c->stalled = 1;
        return 0;
    }
    ssize_t n = io_read(sw, c, dst->data + dst->end, room);
    if (n < 0) {
        if (would_block()) {
            c->readable = 0;
            return 0;
        }
        c->err = errno;
        pool_client_left(sw, c);
        conn_destroy(sw, c, R_IO_ERROR, 1);
        return 0;
    }
    if (n == 0) {
        pool_client_left(sw, c);
        conn_destroy(sw, c, R_CLIENT_EOF, 1);
        return 0;
    }
    if ((uint32_t)n < room && !c->hup)
        c->readable = 0; /* a short read means drained; the next data brings a new edge */
    c->stalled = 0;
    dst->end += (uint32_t)n;
    c->pool->st.bytes_recv += (uint64_t)n;
    c->request_wall = sw->now_wall;
    c->idle_since = sw->now_mono;
    return client_scan(sw, c, dst, s);
}

/* Scans what a client sent into dst (its server's out buffer, or its hold buffer) and moves
 * it on: to the server, or into the queue for one. With prepared statements tracked, a whole
 * Parse/Bind/Describe/Close is rewritten for its server (ps.c) before it is consumed; those
 * held while the client has no server are rewritten when it gets one (conn_client_linked). */
static int client_scan(struct sw *sw, struct conn *c, struct buf *dst, struct conn *s)
{
    int fresh = c->tr.owed == 0 && !c->tr.batch && c->sc.skip == 0 && dst->scanned == dst->start;
    int stop;
    size_t total = 0;
    /* Tracking is switched on or off while the client holds no server, never within a link
     * (the server's answers must match what was sent) */
    if (s == NULL)
        c->sc.ps = c->pool->mode == MODE_SESSION ? 0
                   : c->pool->ps_max > 0         ? SCAN_PS_HOLD | SCAN_PS_STMTS
                                                 : SCAN_PS_HOLD;
    else if (c->sc.ps != 0)
        c->sc.ps = (uint8_t)((c->sc.ps & SCAN_PS_STMTS) | SCAN_PS_LINKED);
    for (;;) {
        size_t used = scan_client(&c->sc, &c->tr, dst->data + dst->scanned,
                                  dst->end - dst->scanned, sw->max_packet, &stop);
        dst->scanned += (uint32_t)used;
        total += used;
        if (stop != SCAN_STMT)
            break;
        uint8_t type = dst->data[dst->scanned]; /* what replaces it is of the same kind */
        long adv = ps_client_msg(sw, c, s, dst, dst->scanned, c->tr.owed);
        if (adv < 0) {
            conn_server_gone(sw, s, R_IO_ERROR); /* out of memory: this link alone ends */
            return 0;
        }
        dst->scanned += (uint32_t)adv;
        total += (size_t)adv;
        /* consumed here, not in scan_client: the boundary kept as it would have */
        if (type == 'Q') {
            if (c->tr.owed < UINT32_MAX)
                c->tr.owed++;
            c->tr.batch = 0;
        } else {
            c->tr.batch = 1;
        }
    }
    if (stop != SCAN_MORE) {
        uint8_t hdr[5]; /* the offender's header is whole */
        memcpy(hdr, dst->data + dst->scanned, sizeof hdr);
        dst->end = dst->scanned; /* the offender and what follows never reach a server */
        client_scan_failed(sw, c, stop, hdr);
        return 0;
    }
    if (s != NULL) {
        if (fresh && total > 0)
            stats_request(sw, s);
        conn_write(sw, s);
        pool_check_release(sw, s);
    } else if (c->state == CL_ACTIVE && dst->scanned > dst->start) {
        pool_wants_server(sw, c);
    }
    return 1;
}

/* A client promoted from login with bytes already read (login.c): scanned as if read now. */
void conn_client_held(struct sw *sw, struct conn *c)
{
    client_scan(sw, c, &c->hold, NULL);
}

static uint32_t be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* A client just linked to s (pool.c), with what it sent while it had no server now in s's
 * out buffer, after the switch's own `injected` bytes: its Parse/Bind/Describe/Close and session commands (whole: scan.c
 * held them so) go through ps.c for s, each knowing the ReadyForQuery answers owed before it. */
void conn_client_linked(struct sw *sw, struct conn *c, struct conn *s, uint32_t injected)
{
    struct buf *o = &s->out;
    /* from the client's first byte: the switch's own queries before it are answered, and
     * swallowed, before anything the client sent */
    uint32_t at = o->start + injected, zs = 0;
    while (o->scanned - at >= 5) {
        uint8_t type = o->data[at];
        uint32_t len = be32(o->data + at + 1);
        if ((uint64_t)len + 1 > o->scanned - at)
            break; /* a message still coming in (never one of these four) */
        if (scan_wants_whole(c->sc.ps, type, len, o->data + at + 5, len - 4) > 0) {
            long n = ps_client_msg(sw, c, s, o, at, zs);
            if (n < 0) {
                conn_server_gone(sw, s, R_IO_ERROR); /* out of memory: this link alone ends */
                return;
            }
            o->scanned = (uint32_t)((int64_t)o->scanned + n - ((int64_t)len + 1));
            at += (uint32_t)n;
            if (type == 'Q')
                zs++;
            continue;
        }
        if (type == 'Q' || type == 'S' || type == 'F')
            zs++;
        at += len + 1;
    }
    if (o->scanned < o->end)
        client_scan(sw, c, o, s); /* the rest, as if read now */
}

/* Statement mode and the server opened a transaction: the client gets the reason in place of
 * that statement's answer (as much of it as is not sent yet), and the server is not reused. */
static void long_transaction(struct sw *sw, struct conn *s, struct conn *c)
{
    struct buf *b = &c->out;
    uint64_t cut = c->stmt_abs > b->done ? c->stmt_abs : b->done;
    uint64_t keep = cut - b->done;
    /* With TLS, bytes a write that waits has encrypted already are not counted in `done`:
     * the answer is kept whole (the client reads it, then the error) */
    if (keep < (uint64_t)(b->end - b->start) && !(c->tls & TLS_UP))
        b->end = b->scanned = b->start + (uint32_t)keep;
    s->peer = NULL;
    c->peer = NULL;
    conn_set_state(c, CL_ACTIVE);
    conn_close_with(sw, c, sw->msg_long_tx.data, sw->msg_long_tx.end - sw->msg_long_tx.start,
                    R_LONG_TX);
    conn_destroy(sw, s, R_LONG_TX, 1);
}

static int server_read(struct sw *sw, struct conn *s)
{
    if (s->state == SV_IDLE) {
        /* An idle server has nothing to say but a ParameterStatus (a reload changed a
         * reported setting); anything else (a FATAL before it goes, say), and it is not
         * reused. */
        uint8_t scratch[PARAM_MSG_MAX + 5];
        ssize_t n = io_read(sw, s, scratch, sizeof(scratch));
        if (n < 0 && would_block()) {
            s->readable = 0;
            return 0;
        }
        if (n > 0 && params_idle_bytes(sw, s, scratch, (size_t)n) == 0) {
            if ((size_t)n < sizeof(scratch) && !s->hup)
                s->readable = 0;
            return 1;
        }
        s->err = n < 0 ? errno : 0;
        conn_server_gone(sw, s, n == 0 ? R_SERVER_EOF : n < 0 ? R_IO_ERROR : R_IDLE_DATA);
        return 0;
    }
    if (s->state != SV_ACTIVE)
        return 0; /* parked: Python decides; its bytes stay in the kernel */
    struct conn *c = s->peer;
    struct buf *dst = &c->out;
    uint32_t room = buf_read_room(sw, dst, 0);
    if (room == 0) {
        s->stalled = 1;
        return 0;
    }
    ssize_t n = io_read(sw, s, dst->data + dst->end, room);
    if (n < 0 && would_block()) {
        s->readable = 0;
        return 0;
    }
    if (n <= 0) {
        s->err = n < 0 ? errno : 0;
        conn_server_gone(sw, s, n == 0 ? R_SERVER_EOF : R_IO_ERROR);
        return 0;
    }
    if ((uint32_t)n < room && !s->hup)
        s->readable = 0; /* (an EOF after the data brings no new edge: hup keeps reading) */
    s->stalled = 0;
    s->request_wall = sw->now_wall;
    dst->end += (uint32_t)n;
    s->pool->st.bytes_sent += (uint64_t)n;
    for (;;) {
        int stop;
        uint32_t from = dst->scanned;
        struct track own = {0}; /* the switch's own SET owes the client nothing */
        s->sc.ps = s->ps != 0 && !s->swallow && ps_server_waiting(sw, s);
        size_t used = scan_server(&s->sc, s->swallow ? &own : &c->tr, dst->data + dst->scanned,
                                  dst->end - dst->scanned, sw->max_packet, &stop);
        dst->scanned += (uint32_t)used;
        if (sw->ntracked > 0 || s->pool->mode != MODE_SESSION)
            params_server_bytes(sw, s, dst->data + from, used);
        if (s->swallow) {
            /* The answer to the switch's SET: out of the client's buffer before anything of
             * it can be written, and not counted. */
            memmove(dst->data + from, dst->data + dst->scanned, dst->end - dst->scanned);
            dst->end -= (uint32_t)used;
            dst->scanned = from;
            s->pool->st.bytes_sent -= used;
            if (stop == SCAN_RFQ) {
                params_swallowed(sw, s);
                continue;
            }
        }
        if (stop == SCAN_PS) {
            int adv = ps_server_msg(sw, s, dst); /* a ParseComplete/CloseComplete: ps.c's */
            if (adv < 0) {
                conn_server_gone(sw, s, R_BAD_PACKET);
                return 0;
            }
            dst->scanned += (uint32_t)adv;
            continue;
        }
        if (stop == SCAN_MORE)
            break;
        if (stop != SCAN_RFQ) {
            conn_server_gone(sw, s, stop == SCAN_TOO_BIG ? R_TOO_BIG : R_BAD_PACKET);
            return 0;
        }
        if (s->ps != 0)
            ps_server_rfq(sw, s);
        stats_rfq(sw, s, s->sc.status);
        if (s->pool->mode == MODE_STATEMENT && s->sc.status != 'I') {
            long_transaction(sw, s, c);
            return 0;
        }
        c->stmt_abs = dst->done + (dst->scanned - dst->start);
    }
    conn_write(sw, c);
    pool_check_release(sw, s);
    return 1;
}

/* Bytes Python read from a client after its login (a query pipelined after the password):
 * taken as if the switch had read them. Returns -1 when out of memory. */
int conn_client_pending(struct sw *sw, struct conn *c, const uint8_t *p, size_t n)
{
    struct buf *dst = &c->hold;
    if (n == 0)
        return 0;
    if (buf_append(dst, p, n) < 0)
        return -1;
    dst->scanned = dst->end - (uint32_t)n; /* appended as whole: to be scanned like a read */
    c->pool->st.bytes_recv += (uint64_t)n;
    c->request_wall = sw->now_wall;
    client_scan(sw, c, dst, NULL);
    return 0;
}

/* Moves bytes while it can; re-queues itself rather than starve the other connections. */
void conn_service(struct sw *sw, struct conn *c)
{
    if (c->state == ST_DEAD)
        return;
    if (c->kind == KIND_LISTENER) {
        login_accept(sw, c);
        return;
    }
    if (login_connecting(sw, c))
        return;
    if ((c->tls & (TLS_ON | TLS_UP)) == TLS_ON && tls_busy(sw, c))
        return; /* its TLS preamble or handshake (tls.c) */
    for (int round = 0; round < 16; round++) {
        if (c->state == ST_DEAD)
            return;
        int progress = conn_write(sw, c);
        if (c->state == ST_DEAD)
            return;
        if (c->state == CL_CLOSING) {
            if (c->out.start == c->out.end)
                conn_destroy(sw, c, c->close_reason, !c->quiet);
            return;
        }
        if (c->state == CL_LOGIN || c->state == SV_LOGIN || c->state == SV_TALK)
            progress |= login_service(sw, c);
        else if (c->readable && !sw->suspended) /* SUSPEND: writes go on, reads wait */
            progress |= c->kind == KIND_CLIENT ? client_read(sw, c) : server_read(sw, c);
        if (!progress)
            return;
    }
    conn_schedule(sw, c);
}
