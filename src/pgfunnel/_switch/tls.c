/* tls.c: TLS where the bytes are carried (OpenSSL's libssl). The two contexts (one that
 * accepts clients, one that connects to servers), the preamble before a handshake (the 'S'
 * that answers a client's SSLRequest, a PostgreSQL 17 client's direct TLS, the SSLRequest to a
 * server and its one-byte answer), the handshake, and the reads and writes of a connection
 * once TLS is up. Every other file reads and writes through io_read / io_write, which are
 * read(2) / send(2) on a connection without TLS.
 *
 * A connection's TLS state hangs off its slot (sw->tls_of), so that a connection without TLS
 * costs one byte (conn.tls, in what was padding). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <arpa/inet.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "switch.h"

#define CODE_SSL 80877103u

/* A connection's TLS: its SSL, where its preamble is, and why it failed. */
struct tlsc {
    SSL *ssl;
    uint8_t step;   /* TS_* */
    uint8_t sent;   /* bytes of the preamble written (the SSLRequest is 8) */
    uint8_t direct; /* a client that began with its ClientHello (ALPN required) */
    uint8_t mode;   /* a server's sslmode (TLS_MODE_*) */
    char *host;     /* a server's name: SNI, and verify-full's check */
    char why[TLS_WHY_MAX]; /* why it failed: posted with its CLOSED (or LOGIN_ENDED) */
};

enum tls_step {
    TS_ANSWER = 1, /* client: the 'S' to write, then the handshake */
    TS_ACCEPT,     /* client: handshake */
    TS_REQUEST,    /* server: the SSLRequest to write */
    TS_REPLY,      /* server: its one byte to read */
    TS_CONNECT,    /* server: handshake */
    TS_UP,
};

static const unsigned char ALPN_PG[] = {10, 'p', 'o', 's', 't', 'g', 'r', 'e', 's', 'q', 'l'};

/* ---- the side table ------------------------------------------------------------------------ */

static uint32_t slot_of(const struct conn *c)
{
    return (uint32_t)(c->id & 0xffffffffu) - 1;
}

static struct tlsc *tls_get(struct sw *sw, const struct conn *c)
{
    return c->tls ? sw->tls_of[slot_of(c)] : NULL;
}

static struct tlsc *tls_attach(struct sw *sw, struct conn *c)
{
    uint32_t slot = slot_of(c);
    if (slot >= sw->tls_nslots) {
        uint32_t n = sw->nslots;
        struct tlsc **t = realloc(sw->tls_of, (size_t)n * sizeof(*t));
        if (t == NULL)
            return NULL;
        memset(t + sw->tls_nslots, 0, (size_t)(n - sw->tls_nslots) * sizeof(*t));
        sw->tls_of = t;
        sw->tls_nslots = n;
    }
    struct tlsc *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    sw->tls_of[slot] = t;
    c->tls = TLS_ON;
    return t;
}

/* Why a connection's TLS failed ("" if nothing failed), for its CLOSED or LOGIN_ENDED. */
const char *tls_failure(struct sw *sw, const struct conn *c)
{
    struct tlsc *t = tls_get(sw, c);
    return t != NULL ? t->why : "";
}

/* At the connection's close (`reason`), before its socket is: a close_notify if TLS is up and
 * the connection ends cleanly (one try, no waiting), then the state goes. */
void tls_end(struct sw *sw, struct conn *c, uint8_t reason)
{
    struct tlsc *t = tls_get(sw, c);
    if (t == NULL)
        return;
    if (t->ssl != NULL) {
        if (t->step == TS_UP && c->err == 0 && c->fd >= 0 && reason != R_TLS_FAILED &&
            reason != R_IO_ERROR && reason != R_CLIENT_EOF && reason != R_SERVER_EOF)
            (void)SSL_shutdown(t->ssl);
        SSL_free(t->ssl);
    }
    free(t->host);
    free(t);
    sw->tls_of[slot_of(c)] = NULL;
    c->tls = 0;
    ERR_clear_error();
}

void tls_fini(struct sw *sw)
{
    for (uint32_t i = 0; i < sw->tls_nslots; i++) {
        struct tlsc *t = sw->tls_of[i];
        if (t != NULL) {
            SSL_free(t->ssl);
            free(t->host);
            free(t);
        }
    }
    free(sw->tls_of);
    sw->tls_of = NULL;
    sw->tls_nslots = 0;
    SSL_CTX_free(sw->tls_cl.ctx);
    SSL_CTX_free(sw->tls_sv.ctx);
    sw->tls_cl.ctx = sw->tls_sv.ctx = NULL;
}

/* ---- why it failed ------------------------------------------------------------------------- */

/* OpenSSL's reason for the last failure on `ssl`, with the certificate check's when that was
 * it, into c's failure text (conn_destroy posts it with the CLOSED or LOGIN_ENDED). */
static void tls_why(struct sw *sw, struct conn *c, SSL *ssl, int err, const char *what)
{
    struct tlsc *t = tls_get(sw, c);
    if (t == NULL)
        return;
    char *text = t->why;
    long vr = ssl != NULL ? SSL_get_verify_result(ssl) : X509_V_OK;
    unsigned long e = ERR_peek_last_error();
    if (vr != X509_V_OK && (e == 0 || ERR_GET_REASON(e) == SSL_R_CERTIFICATE_VERIFY_FAILED))
        snprintf(text, TLS_WHY_MAX, "%s: certificate verify failed: %s", what,
                 X509_verify_cert_error_string(vr));
    else if (e != 0) {
        const char *r = ERR_reason_error_string(e);
        snprintf(text, TLS_WHY_MAX, "%s: %s", what, r != NULL ? r : "unknown TLS error");
    } else if (err == SSL_ERROR_SYSCALL && errno != 0)
        snprintf(text, TLS_WHY_MAX, "%s: %s", what, strerror(errno));
    else if (err == SSL_ERROR_SYSCALL || err == SSL_ERROR_ZERO_RETURN)
        snprintf(text, TLS_WHY_MAX, "%s: the peer closed the connection", what);
    else
        snprintf(text, TLS_WHY_MAX, "%s", what);
    ERR_clear_error();
}

static void tls_say(struct sw *sw, struct conn *c, const char *text)
{
    struct tlsc *t = tls_get(sw, c);
    if (t != NULL)
        snprintf(t->why, TLS_WHY_MAX, "%s", text);
}

static void tls_fail(struct sw *sw, struct conn *c, SSL *ssl, int err, const char *what)
{
    tls_why(sw, c, ssl, err, what);
    if (c->kind == KIND_SERVER && c->state != SV_LOGIN)
        conn_server_gone(sw, c, R_TLS_FAILED);
    else
        conn_destroy(sw, c, R_TLS_FAILED, !c->quiet);
}

/* ---- starting -------------------------------------------------------------------------------- */

/* A client's SSLRequest is answered 'S' (written before anything else), then the handshake.
 * -1: no context for clients, or no memory. */
int tls_accept_start(struct sw *sw, struct conn *c)
{
    if (sw->tls_cl.ctx == NULL || c->tls)
        return -1;
    struct tlsc *t = tls_attach(sw, c);
    if (t == NULL)
        return -1;
    t->step = TS_ANSWER;
    conn_schedule(sw, c);
    return 0;
}

/* A client whose first byte is a TLS handshake record (PostgreSQL 17's sslnegotiation=direct):
 * nothing of it has been read, the handshake reads it. 0: not for TLS (the caller reads it as
 * a startup packet, which fails as a bad length), 1: the handshake began, -1: no memory. */
int tls_direct_start(struct sw *sw, struct conn *c)
{
    uint8_t b;
    if (sw->tls_cl.ctx == NULL || sw->tls_cl.mode == TLS_MODE_DISABLE || c->tls)
        return 0;
    ssize_t n;
    do
        n = recv(c->fd, &b, 1, MSG_PEEK);
    while (n < 0 && errno == EINTR);
    if (n != 1 || b != 0x16)
        return 0;
    struct sockaddr_storage ss;
    socklen_t slen = sizeof ss;
    if (getsockname(c->fd, (struct sockaddr *)&ss, &slen) < 0 || ss.ss_family == AF_UNIX)
        return 0; /* as PostgreSQL: no TLS over a unix socket */
    struct tlsc *t = tls_attach(sw, c);
    if (t == NULL)
        return -1;
    t->step = TS_ANSWER;
    t->sent = 1; /* no 'S': the client began the handshake */
    t->direct = 1;
    return 1;
}

/* A server connection whose sslmode wants TLS: the SSLRequest goes first, then its answer
 * decides. `host`: the name for SNI and verify-full (NULL: an address, checked as one). */
int tls_connect_start(struct sw *sw, struct conn *c, uint8_t mode, const char *host)
{
    if (mode == TLS_MODE_DISABLE)
        return 0;
    if (sw->tls_sv.ctx == NULL) /* TLS off for servers: allow/prefer go on in clear */
        return mode >= TLS_MODE_REQUIRE ? -2 : 0;
    struct tlsc *t = tls_attach(sw, c);
    if (t == NULL)
        return -1;
    t->step = TS_REQUEST;
    t->mode = mode;
    if (host != NULL && host[0] != 0 && (t->host = strdup(host)) == NULL) {
        tls_end(sw, c, R_NONE);
        return -1;
    }
    return 1;
}

static int is_address(const char *host)
{
    unsigned char a[16];
    return inet_pton(AF_INET, host, a) == 1 || inet_pton(AF_INET6, host, a) == 1;
}

static SSL *tls_new(struct sw *sw, struct conn *c, struct tlsc *t, int server)
{
    SSL_CTX *ctx = server ? sw->tls_cl.ctx : sw->tls_sv.ctx;
    SSL *ssl = ctx != NULL ? SSL_new(ctx) : NULL;
    if (ssl == NULL || SSL_set_fd(ssl, c->fd) != 1) {
        SSL_free(ssl);
        return NULL;
    }
    if (server) {
        SSL_set_accept_state(ssl);
    } else {
        SSL_set_connect_state(ssl);
        if (t->host != NULL && !is_address(t->host))
            SSL_set_tlsext_host_name(ssl, t->host);
        if (t->mode == TLS_MODE_VERIFY_FULL && t->host != NULL) {
            int ok = is_address(t->host)
                         ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), t->host)
                         : SSL_set1_host(ssl, t->host);
            if (ok != 1) {
                SSL_free(ssl);
                return NULL;
            }
        }
        if (t->mode >= TLS_MODE_VERIFY_CA)
            SSL_set_verify(ssl, SSL_VERIFY_PEER, NULL);
    }
    t->ssl = ssl;
    return ssl;
}

/* ---- the preamble and the handshake ---------------------------------------------------------- */

static int handshake(struct sw *sw, struct conn *c, struct tlsc *t)
{
    ERR_clear_error();
    int r = SSL_do_handshake(t->ssl);
    if (r == 1) {
        if (t->direct) {
            const unsigned char *p;
            unsigned int n;
            SSL_get0_alpn_selected(t->ssl, &p, &n);
            if (n == 0) {
                /* PostgreSQL 17 refuses direct TLS without ALPN, so does the pooler */
                tls_say(sw, c, "TLS handshake error: direct TLS without the ALPN protocol "
                               "\"postgresql\"");
                conn_destroy(sw, c, R_TLS_FAILED, !c->quiet);
                return 1;
            }
        }
        t->step = TS_UP;
        c->tls |= TLS_UP;
        /* What followed the handshake (a startup packet sent with the client's Finished) may
         * be in OpenSSL's buffer already (read-ahead), where no epoll edge will announce it:
         * read as if the socket said readable (an empty read just says EAGAIN). */
        c->readable = 1;
        return 0;
    }
    int err = SSL_get_error(t->ssl, r);
    if (err == SSL_ERROR_WANT_READ) {
        c->readable = 0;
        return 1;
    }
    if (err == SSL_ERROR_WANT_WRITE) {
        c->writable = 0;
        return 1;
    }
    tls_fail(sw, c, t->ssl, err, "TLS handshake error");
    return 1;
}

/* Drives a connection's TLS until it is up. 0: up (or no TLS any more: a server that said
 * 'N' to a mode that allows it): carry on with the bytes; 1: not yet, or the connection is
 * closed (the caller stops). */
int tls_busy(struct sw *sw, struct conn *c)
{
    struct tlsc *t = tls_get(sw, c);
    if (t == NULL || t->step == TS_UP)
        return 0;
    if (c->state == CL_CLOSING) {
        /* Python ends a client in its handshake: nothing can be said to it in clear now */
        conn_destroy(sw, c, c->close_reason, !c->quiet);
        return 1;
    }
    ssize_t n;
    switch (t->step) {
    case TS_ANSWER:
        if (t->sent == 0) {
            if (!c->writable)
                return 1;
            do
                n = send(c->fd, "S", 1, MSG_NOSIGNAL);
            while (n < 0 && errno == EINTR);
            if (n < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK) {
                    c->writable = 0;
                    return 1;
                }
                c->err = errno;
                conn_destroy(sw, c, R_IO_ERROR, !c->quiet);
                return 1;
            }
            t->sent = 1;
        }
        if (tls_new(sw, c, t, 1) == NULL) {
            tls_fail(sw, c, NULL, 0,
                     sw->tls_cl.ctx == NULL ? "TLS handshake error: TLS for clients was turned off"
                                            : "TLS handshake error: out of memory");
            return 1;
        }
        t->step = TS_ACCEPT;
        return handshake(sw, c, t);
    case TS_ACCEPT:
    case TS_CONNECT:
        return handshake(sw, c, t);
    case TS_REQUEST: {
        if (!c->writable)
            return 1;
        uint8_t req[8] = {0, 0, 0, 8, (uint8_t)(CODE_SSL >> 24), (uint8_t)(CODE_SSL >> 16),
                          (uint8_t)(CODE_SSL >> 8), (uint8_t)CODE_SSL};
        do
            n = send(c->fd, req + t->sent, sizeof req - t->sent, MSG_NOSIGNAL);
        while (n < 0 && errno == EINTR);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                c->writable = 0;
                return 1;
            }
            c->err = errno;
            conn_destroy(sw, c, R_IO_ERROR, 1);
            return 1;
        }
        t->sent += (uint8_t)n;
        if (t->sent < sizeof req)
            return 1;
        t->step = TS_REPLY;
    }
        /* fall through */
    case TS_REPLY: {
        if (!c->readable)
            return 1;
        uint8_t b;
        do
            n = read(c->fd, &b, 1);
        while (n < 0 && errno == EINTR);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            c->readable = 0;
            return 1;
        }
        if (n <= 0) {
            c->err = n < 0 ? errno : 0;
            conn_destroy(sw, c, n == 0 ? R_SERVER_EOF : R_IO_ERROR, 1);
            return 1;
        }
        if (b == 'N' && t->mode < TLS_MODE_REQUIRE) {
            tls_end(sw, c, R_NONE); /* prefer/allow: on in clear */
            return 0;
        }
        if (b != 'S') {
            tls_say(sw, c, b == 'N' ? "server refused SSL"
                                    : "server answered the SSLRequest with an error");
            conn_destroy(sw, c, R_TLS_FAILED, 1);
            return 1;
        }
        if (tls_new(sw, c, t, 0) == NULL) {
            tls_fail(sw, c, NULL, 0,
                     sw->tls_sv.ctx == NULL ? "TLS handshake error: TLS for servers was turned off"
                                            : "TLS handshake error: out of memory");
            return 1;
        }
        t->step = TS_CONNECT;
        return handshake(sw, c, t);
    }
    default:
        return 0;
    }
}

/* ---- reads and writes ------------------------------------------------------------------------ */

/* io_read (switch.h) on a connection whose TLS is up, as read(2): > 0 bytes, 0 at the end,
 * -1 with errno (EAGAIN: nothing more now). It reads records until `n` bytes are there or the socket has nothing more, so that a short
 * read still means drained (edge-triggered epoll); a record read but not yet returned is
 * returned by the next call, never waited for. */
ssize_t tls_read(struct sw *sw, struct conn *c, uint8_t *p, size_t n)
{
    struct tlsc *t = tls_get(sw, c);
    size_t got = 0;
    while (got < n) {
        size_t k = 0;
        ERR_clear_error();
        if (SSL_read_ex(t->ssl, p + got, n - got, &k) == 1) {
            got += k;
            continue;
        }
        int err = SSL_get_error(t->ssl, 0);
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
            if (err == SSL_ERROR_WANT_WRITE)
                c->tls |= TLS_READ_WANTS_OUT; /* read again at the next EPOLLOUT */
            if (got > 0)
                return (ssize_t)got;
            errno = EAGAIN;
            return -1;
        }
        if (got > 0)
            return (ssize_t)got; /* the end or the error comes at the next call */
        if (err == SSL_ERROR_ZERO_RETURN || (err == SSL_ERROR_SYSCALL && errno == 0))
            return 0;
        int e = err == SSL_ERROR_SYSCALL ? errno : EPROTO;
        tls_why(sw, c, t->ssl, err, "TLS");
        errno = e;
        return -1;
    }
    return (ssize_t)got;
}

/* io_write (switch.h) on a connection whose TLS is up, as send(2) with MSG_NOSIGNAL (partial
 * writes on, the buffer may move between tries): it writes records until all `n` bytes are taken or the socket is full, so that a
 * short write still means full (edge-triggered epoll: the next EPOLLOUT says when to go on);
 * -1 with errno EAGAIN when the socket took nothing. */
ssize_t tls_write(struct sw *sw, struct conn *c, const uint8_t *p, size_t n)
{
    struct tlsc *t = tls_get(sw, c);
    size_t done = 0;
    int err = SSL_ERROR_NONE;
    while (done < n) {
        size_t k = 0;
        ERR_clear_error();
        if (SSL_write_ex(t->ssl, p + done, n - done, &k) != 1) {
            err = SSL_get_error(t->ssl, 0);
            break;
        }
        done += k;
    }
    if (err == SSL_ERROR_WANT_READ)
        c->tls |= TLS_WRITE_WANTS_IN; /* written on at the next EPOLLIN, not EPOLLOUT */
    if (done > 0 || n == 0)
        return (ssize_t)done; /* an error, if any, comes again at the next call */
    if (err == SSL_ERROR_WANT_WRITE || err == SSL_ERROR_WANT_READ) {
        errno = EAGAIN;
        return -1;
    }
    int e = err == SSL_ERROR_SYSCALL && errno != 0 ? errno : EPROTO;
    tls_why(sw, c, t->ssl, err, "TLS");
    errno = e;
    return -1;
}

/* ---- the contexts ------------------------------------------------------------------------------ */

/* ALPN of a client (the server side): "postgresql" if it offers it. One that offers others
 * only is refused, as PostgreSQL 17 does; one that offers none goes on, unless it began with
 * direct TLS (checked after the handshake). Pure: fuzzed by tests/switch/fuzz_tls.c. */
int tls_alpn_pick(const uint8_t *in, unsigned int inlen, const uint8_t **out, uint8_t *outlen)
{
    unsigned int i = 0;
    while (i < inlen) {
        unsigned int len = in[i];
        if (len == 0 || len > inlen - i - 1)
            return -1; /* malformed: OpenSSL checks, this does not count on it */
        if (len == ALPN_PG[0] && memcmp(in + i + 1, ALPN_PG + 1, len) == 0) {
            *out = in + i + 1;
            *outlen = (uint8_t)len;
            return 1;
        }
        i += 1 + len;
    }
    return 0;
}

static int alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)ssl;
    (void)arg;
    int r = tls_alpn_pick(in, inlen, out, outlen);
    return r == 1 ? SSL_TLSEXT_ERR_OK : SSL_TLSEXT_ERR_ALERT_FATAL;
}

/* A client certificate is asked for but not checked (modes below verify-ca with a CA file):
 * the result stays on the connection for auth_type=cert, which wants it verified. */
static int verify_any(int ok, X509_STORE_CTX *store)
{
    (void)ok;
    (void)store;
    return 1;
}

static int set_versions(SSL_CTX *ctx, uint32_t protocols, char *err, size_t cap)
{
    static const struct {
        uint32_t bit;
        int version;
        unsigned long no;
    } V[] = {{TLS_PROTO_1_0, TLS1_VERSION, SSL_OP_NO_TLSv1},
             {TLS_PROTO_1_1, TLS1_1_VERSION, SSL_OP_NO_TLSv1_1},
             {TLS_PROTO_1_2, TLS1_2_VERSION, SSL_OP_NO_TLSv1_2},
             {TLS_PROTO_1_3, TLS1_3_VERSION, SSL_OP_NO_TLSv1_3}};
    int lo = 0, hi = 0;
    for (size_t i = 0; i < sizeof V / sizeof V[0]; i++) {
        if (protocols & V[i].bit) {
            if (lo == 0)
                lo = V[i].version;
            hi = V[i].version;
        }
    }
    if (lo == 0) {
        snprintf(err, cap, "no TLS protocol version allowed");
        return -1;
    }
    if (SSL_CTX_set_min_proto_version(ctx, lo) != 1 ||
        SSL_CTX_set_max_proto_version(ctx, hi) != 1) {
        snprintf(err, cap, "TLS protocol versions not supported by this OpenSSL");
        return -1;
    }
    /* a gap (tlsv1.1 and tlsv1.3 only, say) */
    for (size_t i = 0; i < sizeof V / sizeof V[0]; i++)
        if (V[i].version > lo && V[i].version < hi && !(protocols & V[i].bit))
            SSL_CTX_set_options(ctx, V[i].no);
    if (lo < TLS1_2_VERSION)
        SSL_CTX_set_security_level(ctx, 0); /* tlsv1.0/1.1 asked for: let them be */
    return 0;
}

static void ssl_err(char *err, size_t cap, const char *what, const char *path)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e != 0 ? ERR_reason_error_string(e) : NULL;
    if (path != NULL)
        snprintf(err, cap, "%s \"%s\": %s", what, path, r != NULL ? r : "failed");
    else
        snprintf(err, cap, "%s: %s", what, r != NULL ? r : "failed");
    ERR_clear_error();
}

/* Builds a context from `cf`; NULL with the reason (and the file's path) in err. Called
 * without the switch lock (it reads files). */
SSL_CTX *tls_make_ctx(const struct tls_conf *cf, char *err, size_t cap)
{
    int accept = cf->side == TLS_SIDE_CLIENTS;
    SSL_CTX *ctx = SSL_CTX_new(accept ? TLS_server_method() : TLS_client_method());
    if (ctx == NULL) {
        ssl_err(err, cap, "TLS context", NULL);
        return NULL;
    }
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                                 SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    /* One read(2) takes what the socket has, records after records, rather than a record's
     * header and body in two reads each: io_read's loop then ends at the first EAGAIN. */
    SSL_CTX_set_read_ahead(ctx, 1);
    if (set_versions(ctx, cf->protocols, err, cap) < 0)
        goto fail;
    if (cf->ciphers != NULL && cf->ciphers[0] != 0 &&
        SSL_CTX_set_cipher_list(ctx, cf->ciphers) != 1) {
        ssl_err(err, cap, "TLS ciphers", cf->ciphers);
        goto fail;
    }
    if (cf->ciphers13 != NULL && cf->ciphers13[0] != 0 &&
        SSL_CTX_set_ciphersuites(ctx, cf->ciphers13) != 1) {
        ssl_err(err, cap, "TLS 1.3 ciphers", cf->ciphers13);
        goto fail;
    }
    if (cf->cert_file != NULL && cf->cert_file[0] != 0) {
        if (SSL_CTX_use_certificate_chain_file(ctx, cf->cert_file) != 1) {
            ssl_err(err, cap, "cannot load certificate", cf->cert_file);
            goto fail;
        }
        if (cf->key_file == NULL || cf->key_file[0] == 0 ||
            SSL_CTX_use_PrivateKey_file(ctx, cf->key_file, SSL_FILETYPE_PEM) != 1) {
            ssl_err(err, cap, "cannot load private key",
                    cf->key_file != NULL && cf->key_file[0] ? cf->key_file : "(none)");
            goto fail;
        }
        if (SSL_CTX_check_private_key(ctx) != 1) {
            ssl_err(err, cap, "private key does not match certificate", cf->key_file);
            goto fail;
        }
    } else if (accept && cf->mode != TLS_MODE_DISABLE) {
        snprintf(err, cap, "TLS for clients needs a certificate and its key");
        goto fail;
    }
    int want_ca = cf->mode >= TLS_MODE_VERIFY_CA;
    if (cf->ca_file != NULL && cf->ca_file[0] != 0) {
        if (SSL_CTX_load_verify_locations(ctx, cf->ca_file, NULL) != 1) {
            ssl_err(err, cap, "cannot load CA file", cf->ca_file);
            goto fail;
        }
        if (accept) {
            STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(cf->ca_file);
            if (names != NULL)
                SSL_CTX_set_client_CA_list(ctx, names);
        }
    } else if (want_ca && accept) {
        snprintf(err, cap, "verifying client certificates needs a CA file");
        goto fail;
    } else if (want_ca && SSL_CTX_set_default_verify_paths(ctx) != 1) {
        ssl_err(err, cap, "cannot load the system's CA certificates", NULL);
        goto fail;
    }
    if (accept) {
        if (want_ca)
            SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
        else if (cf->ca_file != NULL && cf->ca_file[0] != 0)
            SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, verify_any);
        else
            SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
        SSL_CTX_set_alpn_select_cb(ctx, alpn_cb, NULL);
        /* Nothing to resume: each login is one handshake (libpq does not resume) */
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
        SSL_CTX_set_num_tickets(ctx, 0);
        if (cf->ecdhcurve != NULL && cf->ecdhcurve[0] != 0 && strcmp(cf->ecdhcurve, "auto") != 0 &&
            SSL_CTX_set1_groups_list(ctx, cf->ecdhcurve) != 1) {
            ssl_err(err, cap, "TLS ECDH curve", cf->ecdhcurve);
            goto fail;
        }
        if (cf->dhe == TLS_DHE_AUTO || cf->dhe == TLS_DHE_LEGACY)
            SSL_CTX_set_dh_auto(ctx, 1);
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL); /* per connection from verify-ca on */
        SSL_CTX_set_alpn_protos(ctx, ALPN_PG, sizeof ALPN_PG);
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    }
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

/* Puts a context in place (the old one is freed when its last connection goes: each SSL
 * holds a reference). Under the switch lock. */
void tls_set_ctx(struct sw *sw, int side, SSL_CTX *ctx, uint8_t mode)
{
    struct tls_side *s = side == TLS_SIDE_CLIENTS ? &sw->tls_cl : &sw->tls_sv;
    SSL_CTX_free(s->ctx);
    s->ctx = ctx;
    s->mode = mode;
}

/* ---- what it is -------------------------------------------------------------------------------- */

/* PgBouncer's `tls` column: protocol/cipher/key exchange, "" without TLS. */
size_t tls_describe(struct sw *sw, const struct conn *c, char *out, size_t cap)
{
    struct tlsc *t = tls_get(sw, c);
    out[0] = 0;
    if (t == NULL || t->step != TS_UP)
        return 0;
    const char *v = SSL_get_version(t->ssl);
    const char *ci = SSL_get_cipher_name(t->ssl);
    int nid = SSL_get_negotiated_group(t->ssl);
    const char *g = nid != 0 ? OBJ_nid2sn(nid & ~TLSEXT_nid_unknown) : NULL;
    int n;
    if (g != NULL)
        n = snprintf(out, cap, "%s/%s/ECDH=%s", v, ci, g);
    else
        n = snprintf(out, cap, "%s/%s", v, ci);
    return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}

/* The peer's certificate: its subject's CN into cn (NUL-terminated, "" if none) and whether
 * it was verified against the CA file. -1: no TLS up, 0: no certificate, 1: one. */
int tls_peer(struct sw *sw, const struct conn *c, char *cn, size_t cap, int *verified)
{
    struct tlsc *t = tls_get(sw, c);
    cn[0] = 0;
    *verified = 0;
    if (t == NULL || t->step != TS_UP)
        return -1;
    X509 *x = SSL_get1_peer_certificate(t->ssl);
    if (x == NULL)
        return 0;
    X509_NAME *name = X509_get_subject_name(x);
    int i = name != NULL ? X509_NAME_get_index_by_NID(name, NID_commonName, -1) : -1;
    if (i >= 0) {
        ASN1_STRING *d = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i));
        unsigned char *u = NULL;
        int len = ASN1_STRING_to_UTF8(&u, d);
        /* a CN with a NUL inside names nobody */
        if (len > 0 && (size_t)len < cap && memchr(u, 0, (size_t)len) == NULL) {
            memcpy(cn, u, (size_t)len);
            cn[len] = 0;
        }
        OPENSSL_free(u);
    }
    *verified = SSL_get_verify_result(t->ssl) == X509_V_OK;
    X509_free(x);
    return 1;
}
