/* fuzz_fastlogin.c: libFuzzer harness over the logins the switch runs alone (fastlogin.c,
 * with login.c, conn.c and loop.c) with real sockets, in one thread.
 *
 * A route is set for database "db", user "alice" (md5 or SCRAM-SHA-256 by the first byte);
 * a client connects through a listener and the input is a list of operations: stream bytes
 * (in any pieces), the route's usual startup packet, an SSLRequest, a SASLInitialResponse, a
 * client-final-message carrying the nonce the switch sent (so that its proof check is
 * reached), Python's janitor (fast_expire with no grace), clearing the routes, the client
 * leaving, a turn of the loop. Checked:
 *   - the login buffer never holds more than login_max bytes;
 *   - the connection ends in at most one outcome (handed to Python, logged in, ended), and a
 *     login that ended reports no CLOSED;
 *   - nobody logs in but with the password: the harness's own md5 answer (from the salt it
 *     was sent) may log in; any other LOGGED_IN is a broken check (an md5 answer needs the
 *     salt's digest of the secret, a SCRAM proof the ClientKey). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
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

#define LOGIN_MAX 10000

static const uint8_t STARTUP[] = "\0\0\0\0\0\3\0\0user\0alice\0database\0db\0"
                                 "application_name\0fuzz\0";

static void nonblock(int fd)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

struct outcome {
    uint64_t id;
    int accepted, logged_in, ended, closed;
};

static void collect(struct sw *sw, struct outcome *o)
{
    for (size_t k = 0; k < sw->nev; k++) {
        struct event *e = &sw->evq[k];
        if (o->id == 0 && (e->kind == EV_ACCEPTED || e->kind == EV_LOGIN_ENDED ||
                           e->kind == EV_LOGGED_IN))
            o->id = e->conn;
        if (e->conn != o->id)
            continue;
        switch (e->kind) {
        case EV_ACCEPTED:
            CHECK(!o->accepted && !o->ended && !o->logged_in);
            o->accepted = 1;
            break;
        case EV_LOGGED_IN:
            o->logged_in = 1;
            break;
        case EV_LOGIN_ENDED:
            CHECK(!o->accepted && !o->ended && !o->logged_in);
            o->ended = 1;
            break;
        case EV_CLOSED:
            CHECK(!o->ended && !o->closed);
            o->closed = 1;
            break;
        default:
            break;
        }
    }
    sw_drop_events(sw);
}

/* What the switch wrote to the client so far (appended to seen). */
static uint8_t seen[1 << 16];
static size_t seen_len;

static void drain_peer(int peer)
{
    while (seen_len < sizeof(seen)) {
        ssize_t n = recv(peer, seen + seen_len, sizeof(seen) - seen_len, MSG_DONTWAIT);
        if (n <= 0)
            return;
        seen_len += (size_t)n;
    }
}

/* The nonce of the last AuthenticationSASLContinue the client got ("r=...,"), or NULL. */
static const uint8_t *nonce_in_seen(size_t *len)
{
    const uint8_t *found = NULL;
    for (size_t i = 0; i + 11 < seen_len; i++) {
        if (seen[i] == 'R' && seen[i + 5] == 0 && seen[i + 8] == 11 && seen[i + 9] == 'r' &&
            seen[i + 10] == '=') {
            const uint8_t *p = seen + i + 9;
            const uint8_t *comma = memchr(p, ',', seen_len - (size_t)(p - seen));
            if (comma != NULL) {
                found = p;
                *len = (size_t)(comma - p);
            }
        }
    }
    return found;
}

/* The salt of the last AuthenticationMD5Password the client got, or NULL. */
static const uint8_t *salt_in_seen(void)
{
    const uint8_t *found = NULL;
    for (size_t i = 0; i + 13 <= seen_len; i++)
        if (seen[i] == 'R' && memcmp(seen + i + 1, "\0\0\0\x0c\0\0\0\x05", 8) == 0)
            found = seen + i + 9;
    return found;
}

/* The right md5 password message for `salt`: "md5" + hex(md5(secret_hex + salt)). */
static size_t md5_answer(const uint8_t *secret_hex, const uint8_t *salt, uint8_t *out)
{
    uint8_t in[36], d[16];
    unsigned int dl = 0;
    memcpy(in, secret_hex, 32);
    memcpy(in + 32, salt, 4);
    CHECK(EVP_Digest(in, sizeof in, d, &dl, EVP_md5(), NULL) == 1);
    out[0] = 'p';
    put32(out + 1, 4 + 35 + 1);
    memcpy(out + 5, "md5", 3);
    for (int k = 0; k < 16; k++)
        snprintf((char *)out + 8 + 2 * k, 3, "%02x", d[k]);
    out[40] = 0;
    return 41;
}

static unsigned long run_count;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    struct sw sw;
    memset(&sw, 0, sizeof(sw));
    sw.epfd = sw.wake_fd = sw.ev_fd = -1;
    sw.bufsize = 64;
    sw.max_packet = 2000;
    sw.login_max = LOGIN_MAX;
    sw.login_pool.id = -1;
    sw.fast_cap = 100;
    CHECK(loop_init(&sw) == 0);
    pthread_mutex_init(&sw.lock, NULL);
    pthread_mutex_lock(&sw.lock);
    sw_clock(&sw);
    static const char *tracked[] = {"client_encoding", "application_name"};
    size_t tlens[] = {15, 16};
    CHECK(params_set_tracked(&sw, tracked, tlens, 2) == 0);
    struct pool *pool = pool_add(&sw, 1, MODE_TRANSACTION);
    CHECK(pool != NULL);

    struct fast_route r;
    memset(&r, 0, sizeof(r));
    static const uint8_t key[] = "db\0alice";
    static const uint8_t welcome[] = "client_encoding\0UTF8\0server_version\0"
                                     "15.0\0application_name\0\0";
    r.key = key;
    r.klen = sizeof(key) - 1;
    r.pool = 1;
    r.gen = 1;
    r.method = (data[0] & 1) ? FAST_SCRAM : FAST_MD5;
    memset(r.md5, 'a', sizeof(r.md5));
    r.iterations = 4096;
    r.salt_len = 16;
    memset(r.salt, 7, 16);
    memset(r.stored, 1, 32);
    memset(r.server, 2, 32);
    r.welcome = welcome;
    r.wlen = sizeof(welcome) - 1;
    r.app = (const uint8_t *)"";
    r.alen = 0;
    CHECK(fast_route_set(&sw, &r) == 0);

    struct sockaddr_un a = {.sun_family = AF_UNIX};
    int n = snprintf(a.sun_path + 1, sizeof(a.sun_path) - 1, "pgf-fuzz-fast-%d-%lu",
                     (int)getpid(), run_count++);
    socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
    CHECK(lfd >= 0 && bind(lfd, (struct sockaddr *)&a, alen) == 0 && listen(lfd, 4) == 0);
    CHECK(login_listen(&sw, lfd) != NULL);
    int peer = socket(AF_UNIX, SOCK_STREAM, 0);
    CHECK(peer >= 0 && connect(peer, (struct sockaddr *)&a, alen) == 0);
    nonblock(peer);
    loop_once(&sw, 0);
    int peer_open = 1;
    struct outcome o = {0};
    int answered = 0; /* the harness sent the right md5 answer */
    seen_len = 0;
    uint8_t msg[4096];

    size_t i = 1;
    while (i < size) {
        uint8_t op = data[i++];
        size_t len = op >> 3;
        const uint8_t *src = NULL;
        switch (op & 7) {
        case 0: /* raw bytes */
            if (len > size - i)
                len = size - i;
            src = data + i;
            i += len;
            break;
        case 1: /* the startup packet of the route */
            memcpy(msg, STARTUP, sizeof(STARTUP)); /* its last NUL ends the pairs */
            len = sizeof(STARTUP);
            put32(msg, (uint32_t)len);
            src = msg;
            break;
        case 2: /* SSLRequest */
            put32(msg, 8);
            put32(msg + 4, 80877103u);
            src = msg;
            len = 8;
            break;
        case 3: { /* SASLInitialResponse "SCRAM-SHA-256" + len fuzz bytes as the message */
            size_t d = len > size - i ? size - i : len;
            size_t o2 = 5;
            memcpy(msg + o2, "SCRAM-SHA-256", 14);
            o2 += 14;
            put32(msg + o2, (uint32_t)d);
            o2 += 4;
            memcpy(msg + o2, data + i, d);
            o2 += d;
            i += d;
            msg[0] = 'p';
            put32(msg + 1, (uint32_t)(o2 - 1));
            src = msg;
            len = o2;
            break;
        }
        case 4: { /* client-final: "c=biws,r=<the switch's nonce>" + 2 len + 1 fuzz bytes
                   * (",p=" and a proof in base64 are 47) */
            drain_peer(peer);
            size_t nlen = 0;
            const uint8_t *nonce = nonce_in_seen(&nlen);
            size_t d = 2 * len + 1 > size - i ? size - i : 2 * len + 1;
            size_t o2 = 5;
            memcpy(msg + o2, "c=biws,", 7);
            o2 += 7;
            if (nonce != NULL && nlen < 1024) {
                memcpy(msg + o2, nonce, nlen);
                o2 += nlen;
            }
            memcpy(msg + o2, data + i, d);
            o2 += d;
            i += d;
            msg[0] = 'p';
            put32(msg + 1, (uint32_t)(o2 - 1));
            src = msg;
            len = o2;
            break;
        }
        case 5: /* Python's janitor: nothing may wait longer */
            fast_expire(&sw, (op >> 3) & 1 ? 0 : 1000000, (op >> 4) & 1, (const uint8_t *)"E", 1);
            len = 0;
            break;
        case 6: /* RELOAD: the routes go; a login in its exchange finishes on its own */
            if (op >> 3)
                fast_routes_clear(&sw);
            len = 0;
            break;
        default:
            len = 0;
            if ((op >> 3) == 1) { /* the right md5 answer, if a salt came */
                drain_peer(peer);
                const uint8_t *salt = salt_in_seen();
                if (salt != NULL && r.method == FAST_MD5) {
                    len = md5_answer(r.md5, salt, msg);
                    src = msg;
                    answered = 1;
                }
            } else if (peer_open && (op >> 3) == 0) {
                close(peer);
                peer_open = 0;
            }
            break;
        }
        if (src != NULL && len > 0 && peer_open)
            (void)send(peer, src, len, MSG_NOSIGNAL);
        sw_clock(&sw);
        loop_once(&sw, 0);
        loop_once(&sw, 0);
        collect(&sw, &o);
        CHECK(!o.logged_in || answered);
        if (o.id != 0) {
            struct conn *c = conn_find(&sw, o.id);
            if (c != NULL)
                CHECK(c->hold.end - c->hold.start <= LOGIN_MAX);
        }
        if (peer_open)
            drain_peer(peer);
    }
    for (int k = 0; k < 8; k++) {
        loop_once(&sw, 0);
        collect(&sw, &o);
    }
    CHECK(!o.logged_in || answered);

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
    fast_fini(&sw);
    params_fini(&sw);
    if (peer_open)
        close(peer);
    loop_fini(&sw);
    pthread_mutex_unlock(&sw.lock);
    pthread_mutex_destroy(&sw.lock);
    return 0;
}
