/* fuzz_tls.c: libFuzzer harness over the switch's TLS path (tls.c with conn.c, login.c,
 * loop.c) with real sockets, in one thread.
 *
 * The first byte picks the side:
 *   0: a client whose SSLRequest was answered (tls_accept_start): the input, in pieces, is
 *      what it sends from then on (the handshake's records: a real ClientHello in the corpus);
 *   1: a server connection in sslmode prefer, 2: in require (tls_connect_start): the input is
 *      the server's side, its answer to the SSLRequest ('S', 'N', anything) and what follows;
 *   3: the ALPN list parser alone (tls_alpn_pick), against a reference walk.
 * Each piece is sent, then the loop turns; the peer may close. Checked: the process survives
 * (a bad peer ends its own connection), a connection ends only for a reason its side can have
 * (TLS_FAILED, EOF, an I/O error; a server that said 'N' to prefer goes on in clear and asks
 * for nothing else), no TLS state outlives its connection (LeakSanitizer sees the rest). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "switch.h"

#define CHECK(cond)                                                                          \
    do {                                                                                     \
        if (!(cond))                                                                         \
            __builtin_trap();                                                                \
    } while (0)

static SSL_CTX *cl_ctx, *sv_ctx;

/* A key and a self-signed certificate, written once to files for tls_make_ctx. */
static void make_contexts(void)
{
    char dir[] = "/tmp/pgf-fuzz-tls-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char crt[64], key[64];
    snprintf(crt, sizeof crt, "%s/c.pem", dir);
    snprintf(key, sizeof key, "%s/k.pem", dir);
    EVP_PKEY *pk = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    CHECK(pk != NULL && x != NULL);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, pk);
    X509_NAME *n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"fuzz", -1, -1, 0);
    X509_set_issuer_name(x, n);
    CHECK(X509_sign(x, pk, EVP_sha256()) > 0);
    FILE *f = fopen(crt, "w");
    CHECK(f != NULL && PEM_write_X509(f, x) == 1);
    fclose(f);
    f = fopen(key, "w");
    CHECK(f != NULL && PEM_write_PrivateKey(f, pk, NULL, NULL, 0, NULL, NULL) == 1);
    fclose(f);
    X509_free(x);
    EVP_PKEY_free(pk);
    char err[256];
    struct tls_conf cf = {.side = TLS_SIDE_CLIENTS,
                          .mode = TLS_MODE_PREFER,
                          .protocols = TLS_PROTO_1_2 | TLS_PROTO_1_3,
                          .dhe = TLS_DHE_AUTO,
                          .key_file = key,
                          .cert_file = crt};
    cl_ctx = tls_make_ctx(&cf, err, sizeof err);
    CHECK(cl_ctx != NULL);
    struct tls_conf sf = {.side = TLS_SIDE_SERVERS,
                          .mode = TLS_MODE_REQUIRE,
                          .protocols = TLS_PROTO_1_2 | TLS_PROTO_1_3};
    sv_ctx = tls_make_ctx(&sf, err, sizeof err);
    CHECK(sv_ctx != NULL);
    unlink(crt);
    unlink(key);
    rmdir(dir);
}

static void nonblock(int fd)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static int closed_reason; /* 0 while open */
static int messages;

static void collect(struct sw *sw, uint64_t id)
{
    for (size_t k = 0; k < sw->nev; k++) {
        struct event *e = &sw->evq[k];
        if (e->conn != id)
            continue;
        if (e->kind == EV_CLOSED) {
            CHECK(closed_reason == 0);
            closed_reason = (int)e->reason;
            if (e->reason == R_TLS_FAILED)
                CHECK(e->len > 0 && e->len < TLS_WHY_MAX);
        } else if (e->kind == EV_MESSAGE) {
            messages++;
        }
    }
    sw_drop_events(sw);
}

/* The reference: walk the list, stop at the first bad length. */
static void fuzz_alpn(const uint8_t *p, size_t n)
{
    if (n > 65535)
        return;
    const uint8_t *out = NULL;
    uint8_t outlen = 0;
    int r = tls_alpn_pick(p, (unsigned int)n, &out, &outlen);
    int want = 0;
    for (size_t i = 0; i < n;) {
        size_t len = p[i];
        if (len == 0 || len > n - i - 1) {
            want = -1;
            break;
        }
        if (len == 10 && memcmp(p + i + 1, "postgresql", 10) == 0) {
            want = 1;
            CHECK(out == p + i + 1);
            break;
        }
        i += 1 + len;
    }
    CHECK(r == want);
    if (r == 1)
        CHECK(outlen == 10 && out >= p && out + outlen <= p + n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int side = data[0] & 3;
    if (side == 3) {
        fuzz_alpn(data + 1, size - 1);
        return 0;
    }
    if (cl_ctx == NULL)
        make_contexts();
    struct sw sw;
    memset(&sw, 0, sizeof(sw));
    sw.epfd = sw.wake_fd = sw.ev_fd = -1;
    sw.bufsize = 256;
    sw.max_packet = 2000;
    sw.login_max = 10000;
    sw.login_pool.id = -1;
    CHECK(loop_init(&sw) == 0);
    pthread_mutex_init(&sw.lock, NULL);
    pthread_mutex_lock(&sw.lock);
    sw_clock(&sw);
    SSL_CTX_up_ref(cl_ctx);
    SSL_CTX_up_ref(sv_ctx);
    tls_set_ctx(&sw, TLS_SIDE_CLIENTS, cl_ctx, TLS_MODE_PREFER);
    tls_set_ctx(&sw, TLS_SIDE_SERVERS, sv_ctx, TLS_MODE_REQUIRE);
    struct pool *pool = pool_add(&sw, 1, MODE_TRANSACTION);
    CHECK(pool != NULL);
    closed_reason = messages = 0;

    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    nonblock(sv[0]);
    nonblock(sv[1]);
    struct conn *c;
    if (side == 0) {
        c = conn_new(&sw, sv[1], KIND_CLIENT, &sw.login_pool);
        CHECK(c != NULL && loop_add(&sw, c) == 0);
        c->login_phase = LP_UNTYPED;
        conn_set_state(c, CL_LOGIN);
        c->login_sent = 1; /* its SSLRequest went up */
        CHECK(tls_accept_start(&sw, c) == 0);
        login_read_next(&sw, c);
    } else {
        c = login_connect(&sw, sv[1], pool);
        CHECK(c != NULL);
        uint8_t mode = side == 1 ? TLS_MODE_PREFER : TLS_MODE_REQUIRE;
        CHECK(tls_connect_start(&sw, c, mode, "fuzz.example") == 1);
        static const uint8_t startup[] = {0, 0, 0, 8, 0, 3, 0, 0};
        CHECK(buf_append(&c->out, startup, sizeof startup) == 0);
    }
    uint64_t id = c->id;
    int peer = sv[0], peer_open = 1;
    uint8_t sink[4096];

    size_t i = 1;
    while (i < size) {
        /* a piece: one length byte, then that many bytes (0: close the peer) */
        size_t len = data[i++];
        if (len == 0) {
            if (peer_open) {
                close(peer);
                peer_open = 0;
            }
        } else {
            if (len > size - i)
                len = size - i;
            if (peer_open && closed_reason == 0)
                (void)send(peer, data + i, len, MSG_NOSIGNAL);
            i += len;
        }
        for (int k = 0; k < 3; k++) {
            loop_once(&sw, 0);
            collect(&sw, id);
        }
        while (peer_open && recv(peer, sink, sizeof sink, MSG_DONTWAIT) > 0)
            ; /* what the switch writes (its 'S', the SSLRequest, TLS records) */
        c = conn_find(&sw, id);
        if (c != NULL && c->kind == KIND_CLIENT)
            CHECK(c->hold.end - c->hold.start <= sw.login_max);
    }
    if (closed_reason != 0) {
        CHECK(closed_reason == R_TLS_FAILED || closed_reason == R_CLIENT_EOF ||
              closed_reason == R_SERVER_EOF || closed_reason == R_IO_ERROR ||
              closed_reason == R_BAD_PACKET || closed_reason == R_TOO_BIG);
        CHECK(conn_find(&sw, id) == NULL);
    }
    if (side == 2)
        CHECK(closed_reason != 0 || (conn_find(&sw, id) != NULL && conn_find(&sw, id)->tls));

    for (uint32_t k = 0; k < sw.nslots; k++)
        if (sw.slots[k] != NULL)
            conn_destroy(&sw, sw.slots[k], R_NONE, 0);
    while (sw.todo_head != NULL) {
        sw.todo_head->scheduled = 0;
        sw.todo_head = sw.todo_head->todo_next;
    }
    conn_free_dead(&sw);
    buf_spares_free(&sw);
    for (uint32_t k = 0; k < sw.tls_nslots; k++)
        CHECK(sw.tls_of[k] == NULL); /* each connection's TLS went with it */
    free(sw.slots);
    free(pool);
    sw_drop_events(&sw);
    free(sw.evq);
    tls_fini(&sw);
    if (peer_open)
        close(peer);
    loop_fini(&sw);
    pthread_mutex_unlock(&sw.lock);
    pthread_mutex_destroy(&sw.lock);
    return 0;
}
