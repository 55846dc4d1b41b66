/* fuzz_login.c: libFuzzer harness over the switch's login phases (login.c with conn.c, loop.c)
 * with real sockets, in one thread.
 *
 * Either a client accepted by a listener (abstract unix socket) or a server handed in with
 * connect_server's path; the input is a list of operations: stream bytes from the peer (as
 * they come: in any pieces), a run of one repeated byte (large messages), Python's read_next,
 * the peer leaving, a turn of the loop. Checked:
 *   - after every turn, the connection never buffers more than login_max bytes;
 *   - every MESSAGE is the next bytes of the stream, cut as an independent reference framer
 *     cuts the whole stream in one piece: a client's messages one per event, with the right
 *     UNTYPED flag; a server's one or more per event, a ReadyForQuery only last;
 *   - at the end (everything read, read_next given until nothing more comes): a live
 *     connection has had every whole message and holds exactly the rest; one closed for
 *     BAD_PACKET or TOO_BIG was closed where the reference stops, for that reason. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "switch.h"

#define CHECK(cond)                                                                          \
    do {                                                                                     \
        if (!(cond))                                                                         \
            __builtin_trap();                                                                \
    } while (0)

#define LOGIN_MAX 10000 /* the smallest login_max the module accepts */
#define MAX_PACKET 2000 /* small: a server's TOO_BIG is reachable */
#define MAX_STREAM (1u << 20)
#define MAX_EVENTS 8192

static uint8_t stream[MAX_STREAM];
static size_t stream_len;

struct got {
    size_t len;
    uint32_t flags;
};
static struct got got[MAX_EVENTS];
static size_t ngot, got_bytes;
static int closed_reason; /* 0 while open */

static uint32_t be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* The reference: the whole stream in one piece, message by message. */
struct ref_msg {
    size_t off, len;
    int untyped;
};
static struct ref_msg ref[MAX_STREAM / 5 + 1];
static size_t nref;

static int ref_frame(int server, size_t *stop_off)
{
    size_t pos = 0;
    int untyped = !server;
    nref = 0;
    while (pos < stream_len) {
        size_t left = stream_len - pos;
        const uint8_t *p = stream + pos;
        size_t whole;
        if (untyped) {
            if (left < 4)
                break;
            uint32_t len = be32(p);
            if (len < 8 || len > 10000) {
                *stop_off = pos;
                return R_BAD_PACKET;
            }
            if (left < len)
                break;
            whole = len;
            ref[nref] = (struct ref_msg){.off = pos, .len = whole, .untyped = 1};
            if (be32(p + 4) >> 16 == 3) /* a v3 StartupMessage: typed from here */
                untyped = 0;
        } else {
            if (left < 5)
                break;
            uint32_t len = be32(p + 1);
            if (len < 4) {
                *stop_off = pos;
                return R_BAD_PACKET;
            }
            whole = 1 + (size_t)len;
            if (whole > LOGIN_MAX || (server && len > MAX_PACKET)) {
                *stop_off = pos;
                return R_TOO_BIG;
            }
            if (left < whole)
                break;
            ref[nref] = (struct ref_msg){.off = pos, .len = whole, .untyped = 0};
        }
        nref++;
        pos += whole;
    }
    *stop_off = pos;
    return 0;
}

static void nonblock(int fd)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

/* Takes the events of connection `id`: the accepted client's id, MESSAGEs, its CLOSED. */
static int collect(struct sw *sw, uint64_t *id, int *outstanding)
{
    int any = 0;
    for (size_t k = 0; k < sw->nev; k++) {
        struct event *e = &sw->evq[k];
        if (e->kind == EV_ACCEPTED && *id == 0) {
            *id = e->conn;
            continue;
        }
        if (e->conn != *id || *id == 0)
            continue;
        any = 1;
        if (e->kind == EV_MESSAGE) {
            CHECK(!*outstanding && closed_reason == 0);
            CHECK(e->len > 0 && got_bytes + e->len <= stream_len);
            CHECK(memcmp(e->data, stream + got_bytes, e->len) == 0);
            CHECK(ngot < MAX_EVENTS);
            got[ngot++] = (struct got){.len = e->len, .flags = e->reason};
            got_bytes += e->len;
            *outstanding = 1;
        } else if (e->kind == EV_CLOSED) {
            CHECK(closed_reason == 0);
            closed_reason = (int)e->reason;
        }
    }
    sw_drop_events(sw);
    return any;
}

static void check_buffered(struct sw *sw, uint64_t id)
{
    struct conn *c = id != 0 ? conn_find(sw, id) : NULL;
    if (c != NULL) {
        CHECK(c->hold.end - c->hold.start <= LOGIN_MAX);
        CHECK(c->hold.alloc <= LOGIN_MAX);
    }
}

/* The events against the reference: the same cuts, the right flags. */
static void check_cuts(int server)
{
    size_t r = 0;
    for (size_t k = 0; k < ngot; k++) {
        size_t len = 0, msgs = 0;
        while (len < got[k].len) {
            CHECK(r < nref);
            CHECK(ref[r].len <= got[k].len - len);
            if (server)
                CHECK(stream[ref[r].off] != 'Z' || len + ref[r].len == got[k].len);
            len += ref[r].len;
            msgs++;
            r++;
        }
        CHECK(len == got[k].len);
        if (server) {
            CHECK(got[k].flags == 0);
        } else {
            CHECK(msgs == 1);
            struct ref_msg *m = &ref[r - 1];
            CHECK(!!(got[k].flags & MSG_UNTYPED) == m->untyped);
            if (got[k].flags & MSG_MORE_BUFFERED) {
                uint32_t code = be32(stream + m->off + 4);
                CHECK(m->untyped && (code == 80877103u || code == 80877104u));
            }
        }
    }
}

static unsigned long run_count;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int server = data[0] & 1;
    struct sw sw;
    memset(&sw, 0, sizeof(sw));
    sw.epfd = sw.wake_fd = sw.ev_fd = -1;
    sw.bufsize = 64;
    sw.max_packet = MAX_PACKET;
    sw.login_max = LOGIN_MAX;
    sw.login_pool.id = -1;
    CHECK(loop_init(&sw) == 0);
    pthread_mutex_init(&sw.lock, NULL);
    pthread_mutex_lock(&sw.lock);
    sw_clock(&sw);
    struct pool *pool = pool_add(&sw, 1, MODE_TRANSACTION);
    CHECK(pool != NULL);
    stream_len = ngot = got_bytes = 0;
    closed_reason = 0;

    int peer = -1;
    uint64_t id = 0;
    int outstanding = 0;
    if (server) {
        int sv[2];
        CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
        nonblock(sv[1]);
        struct conn *c = login_connect(&sw, sv[1], pool);
        CHECK(c != NULL);
        id = c->id;
        peer = sv[0];
    } else {
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        int n = snprintf(a.sun_path + 1, sizeof(a.sun_path) - 1, "pgf-fuzz-login-%d-%lu",
                         (int)getpid(), run_count++);
        socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
        int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
        CHECK(lfd >= 0 && bind(lfd, (struct sockaddr *)&a, alen) == 0 && listen(lfd, 4) == 0);
        CHECK(login_listen(&sw, lfd) != NULL);
        peer = socket(AF_UNIX, SOCK_STREAM, 0);
        CHECK(peer >= 0 && connect(peer, (struct sockaddr *)&a, alen) == 0);
        for (int k = 0; k < 8 && id == 0; k++) {
            loop_once(&sw, 0);
            collect(&sw, &id, &outstanding);
        }
        CHECK(id != 0);
    }
    nonblock(peer);
    int peer_open = 1;
    uint8_t fill[4096];

    size_t i = 1;
    while (i < size) {
        uint8_t op = data[i++];
        size_t len = op >> 3;
        const uint8_t *src = data + i;
        switch (op & 7) {
        case 0:
        case 1:
            if (len > size - i)
                len = size - i;
            i += len;
            break;
        case 2:
            if (i >= size) {
                len = 0;
                break;
            }
            memset(fill, data[i++], sizeof(fill));
            len = (len + 1) * 128;
            src = fill;
            break;
        case 3:
            if (outstanding) {
                login_read_next(&sw, conn_find(&sw, id));
                outstanding = 0;
            }
            len = 0;
            break;
        case 4:
            if (peer_open) {
                close(peer);
                peer_open = 0;
            }
            len = 0;
            break;
        default:
            len = 0;
            break;
        }
        if ((op & 7) <= 2 && len > 0 && peer_open && closed_reason == 0 &&
            len <= MAX_STREAM - stream_len) {
            ssize_t n = send(peer, src, len, MSG_NOSIGNAL);
            if (n > 0) {
                memcpy(stream + stream_len, src, (size_t)n);
                stream_len += (size_t)n;
            }
        }
        loop_once(&sw, 0);
        loop_once(&sw, 0);
        collect(&sw, &id, &outstanding);
        check_buffered(&sw, id);
        if (closed_reason != 0)
            outstanding = 0;
    }

    /* Everything sent is read, and Python asks for more until nothing more comes. */
    for (int idle = 0, k = 0; idle < 4 && k < 4096 && closed_reason == 0; k++) {
        if (outstanding) {
            login_read_next(&sw, conn_find(&sw, id));
            outstanding = 0;
        }
        loop_once(&sw, 0);
        idle = collect(&sw, &id, &outstanding) ? 0 : idle + 1;
        check_buffered(&sw, id);
    }

    size_t stop_off;
    int stop = ref_frame(server, &stop_off);
    check_cuts(server);
    if (closed_reason == R_BAD_PACKET || closed_reason == R_TOO_BIG) {
        CHECK(stop == closed_reason);
        CHECK(got_bytes == stop_off);
    } else if (closed_reason != 0) {
        CHECK(!peer_open && (closed_reason == R_CLIENT_EOF || closed_reason == R_SERVER_EOF));
    } else {
        struct conn *c = conn_find(&sw, id);
        CHECK(c != NULL && stop == 0);
        size_t whole = nref > 0 ? ref[nref - 1].off + ref[nref - 1].len : 0;
        CHECK(got_bytes == whole);
        CHECK(c->hold.end - c->hold.start == stream_len - whole);
        CHECK(stream_len == whole ||
              memcmp(c->hold.data + c->hold.start, stream + whole, stream_len - whole) == 0);
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
    free(sw.slots);
    free(pool);
    sw_drop_events(&sw);
    free(sw.evq);
    if (peer_open)
        close(peer);
    loop_fini(&sw);
    pthread_mutex_unlock(&sw.lock);
    pthread_mutex_destroy(&sw.lock);
    return 0;
}
