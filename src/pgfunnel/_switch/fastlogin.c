/* fastlogin.c: logins the switch finishes alone, on a route Python installed.
 *
 * Python decides who may log in, how, and into which pool. Once a client of a (database, user)
 * pair has logged in the slow way (every message up to Python, see login.c), Python may give
 * the switch a route for that pair: the pool, the method (md5 or SCRAM-SHA-256) with the
 * user's secret in the form the check needs, and what the pool shows its new clients. The next
 * logins of that pair then run here, in the switch's thread: the startup packet, the password
 * exchange, the welcome and the hand-over into the pool, with no round trip to Python. Python
 * hears one event afterwards (LOGGED_IN, or LOGIN_ENDED when the login failed or the client
 * left) and keeps its records and logs from it.
 *
 * Whatever this file does not expect (no route, another startup parameter, a protocol other
 * than 3.0, a cancel or GSSENC request, a second SSLRequest, a client over the cap) goes to
 * Python as if the switch had never looked: ACCEPTED, then the messages. Once a password
 * request has gone out the login cannot go back to Python: it ends here, with PostgreSQL's
 * messages. Python drops the routes whenever its decision could change (RELOAD, a new
 * userlist, DISABLE, KILL, SUSPEND, SHUTDOWN, a pool whose parameters change). */
#define _GNU_SOURCE
#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "switch.h"

#define CODE_SSL 80877103u
#define PROTO_V30 0x00030000u
#define SCRAM_MECH "SCRAM-SHA-256"
#define SCRAM_NONCE_RAW 18 /* random bytes of the server's nonce (24 base64 characters) */
#define AUTH_OK 0
#define AUTH_MD5 5
#define AUTH_SASL 10
#define AUTH_SASL_CONTINUE 11
#define AUTH_SASL_FINAL 12

enum fl_step { FL_START = 0, FL_MD5, FL_SASL_INIT, FL_SASL_FINAL };

struct route {
    struct route *next;
    uint64_t hash;
    uint32_t refs; /* the table's, and one per login in progress on it */
    uint32_t klen;
    struct fast_route spec;
    uint8_t *blob; /* key, welcome and app copied in one allocation */
};

/* One login in progress here (conn->fl). */
struct flogin {
    struct flogin *prev, *next; /* sw->fast_head: fast_expire walks them */
    struct conn *c;
    struct route *r;
    int64_t listener;
    int64_t started; /* CLOCK_MONOTONIC µs of the accept */
    uint8_t step, ssl_done;
    uint8_t salt[4];
    char host[64];
    uint32_t port;
    uint8_t *sp; /* the startup packet's body (pairs of C strings) */
    uint32_t splen;
    const uint8_t *user, *db;
    uint32_t ulen, dlen;
    const uint8_t *own[PARAM_MAX_TRACKED]; /* the client's values by tracked index, or NULL */
    uint32_t ownlen[PARAM_MAX_TRACKED];
    char *bare, *sfirst, *gs2; /* SCRAM: client-first-bare, server-first, the GS2 header */
    size_t nonce_len;          /* the nonce is sfirst[2 .. 2 + nonce_len) */
};

static uint32_t be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* ---- randomness, digests, base64 ----------------------------------------------------------- */

/* Bytes from the kernel's CSPRNG, drawn a few hundred at a time (as Python's _Entropy): each
 * byte is handed out once. -1: none to be had. */
static int fl_random(struct sw *sw, uint8_t *out, size_t n)
{
    if (n > sizeof(sw->rnd))
        return -1;
    if (sw->rnd_have < n) {
        ssize_t got = getrandom(sw->rnd, sizeof(sw->rnd), 0);
        if (got != (ssize_t)sizeof(sw->rnd))
            return -1;
        sw->rnd_have = sizeof(sw->rnd);
    }
    uint8_t *at = sw->rnd + sizeof(sw->rnd) - sw->rnd_have;
    memcpy(out, at, n);
    explicit_bzero(at, n);
    sw->rnd_have -= (uint32_t)n;
    return 0;
}

static void hex(const uint8_t *p, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
}

/* The digests, fetched from OpenSSL's default provider once per process. EVP_md5() and
 * EVP_sha256() make OpenSSL 3 look the algorithm up again at every use, and its one-shot HMAC()
 * a MAC as well; a SCRAM login makes three such calls. */
static pthread_once_t md_once = PTHREAD_ONCE_INIT;
static EVP_MD *md_md5, *md_sha256;

static void md_fetch(void)
{
    md_md5 = EVP_MD_fetch(NULL, "MD5", NULL);
    md_sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
}

enum { MD_MD5, MD_SHA256 };

static const EVP_MD *md_get(int which)
{
    pthread_once(&md_once, md_fetch);
    return which == MD_MD5 ? md_md5 : md_sha256;
}

static int digest(int which, const uint8_t *p, size_t n, uint8_t *out)
{
    const EVP_MD *md = md_get(which);
    unsigned int len = 0;
    return md != NULL && EVP_Digest(p, n, out, &len, md, NULL) == 1 ? 0 : -1;
}

/* HMAC-SHA-256 (RFC 2104) over the fetched digest; keys here are SCRAM's 32-byte keys. */
static int hmac256(const uint8_t *key, size_t klen, const uint8_t *p, size_t n, uint8_t *out)
{
    const EVP_MD *md = md_get(MD_SHA256);
    uint8_t pad[64], inner[32];
    unsigned int len = 0;
    if (md == NULL || klen > sizeof(pad))
        return -1;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL)
        return -1;
    int ok = 1;
    memset(pad, 0x36, sizeof(pad));
    for (size_t i = 0; i < klen; i++)
        pad[i] ^= key[i];
    ok = ok && EVP_DigestInit_ex(ctx, md, NULL) == 1 &&
         EVP_DigestUpdate(ctx, pad, sizeof(pad)) == 1 && EVP_DigestUpdate(ctx, p, n) == 1 &&
         EVP_DigestFinal_ex(ctx, inner, &len) == 1 && len == sizeof(inner);
    memset(pad, 0x5c, sizeof(pad));
    for (size_t i = 0; i < klen; i++)
        pad[i] ^= key[i];
    ok = ok && EVP_DigestInit_ex(ctx, md, NULL) == 1 &&
         EVP_DigestUpdate(ctx, pad, sizeof(pad)) == 1 &&
         EVP_DigestUpdate(ctx, inner, sizeof(inner)) == 1 &&
         EVP_DigestFinal_ex(ctx, out, &len) == 1 && len == 32;
    EVP_MD_CTX_free(ctx);
    OPENSSL_cleanse(pad, sizeof(pad));
    OPENSSL_cleanse(inner, sizeof(inner));
    return ok ? 0 : -1;
}

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Standard base64 with padding; out has room for 4 * ((n + 2) / 3) + 1. Returns the length. */
size_t fast_b64_encode(const uint8_t *p, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n)
            v |= p[i + 2];
        out[o++] = b64chars[(v >> 18) & 63];
        out[o++] = b64chars[(v >> 12) & 63];
        out[o++] = i + 1 < n ? b64chars[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? b64chars[v & 63] : '=';
    }
    out[o] = 0;
    return o;
}

static int b64val(uint8_t ch)
{
    const char *at = ch != 0 ? strchr(b64chars, ch) : NULL;
    return at != NULL ? (int)(at - b64chars) : -1;
}

/* Strict base64 (padding required, nothing outside the alphabet): the length decoded into
 * out (room for `cap`), or -1. */
long fast_b64_decode(const uint8_t *p, size_t n, uint8_t *out, size_t cap)
{
    if (n % 4 != 0)
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 4) {
        int v[4];
        int pad = 0;
        for (int k = 0; k < 4; k++) {
            if (p[i + k] == '=' && i + 4 == n && k >= 2) {
                v[k] = 0;
                pad++;
            } else if (pad > 0 || (v[k] = b64val(p[i + k])) < 0) {
                return -1;
            }
        }
        uint32_t w = ((uint32_t)v[0] << 18) | ((uint32_t)v[1] << 12) | ((uint32_t)v[2] << 6) |
                     (uint32_t)v[3];
        size_t take = 3 - (size_t)pad;
        if (o + take > cap)
            return -1;
        out[o++] = (uint8_t)(w >> 16);
        if (take > 1)
            out[o++] = (uint8_t)(w >> 8);
        if (take > 2)
            out[o++] = (uint8_t)w;
    }
    return (long)o;
}

/* ---- the route table ----------------------------------------------------------------------- */

static uint64_t key_hash(const struct sw *sw, const uint8_t *p, size_t n)
{
    uint64_t h = 1469598103934665603ull ^ sw->pseed;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

static void route_put(struct route *r)
{
    if (r != NULL && --r->refs == 0) {
        explicit_bzero(&r->spec, sizeof(r->spec)); /* the secrets */
        free(r->blob);
        free(r);
    }
}

static struct route *route_find(const struct sw *sw, const uint8_t *key, size_t klen)
{
    if (sw->rtab_size == 0)
        return NULL;
    uint64_t h = key_hash(sw, key, klen);
    for (struct route *r = sw->rtab[h & (sw->rtab_size - 1)]; r != NULL; r = r->next)
        if (r->hash == h && r->klen == klen && memcmp(r->spec.key, key, klen) == 0)
            return r;
    return NULL;
}

/* Drops every route; logins in progress keep theirs until they end. */
void fast_routes_clear(struct sw *sw)
{
    for (uint32_t i = 0; i < sw->rtab_size; i++) {
        struct route *r = sw->rtab[i];
        while (r != NULL) {
            struct route *next = r->next;
            route_put(r);
            r = next;
        }
        sw->rtab[i] = NULL;
    }
    sw->rtab_count = 0;
}

void fast_fini(struct sw *sw)
{
    fast_routes_clear(sw);
    free(sw->rtab);
    sw->rtab = NULL;
    sw->rtab_size = 0;
    explicit_bzero(sw->rnd, sizeof(sw->rnd));
}

/* Adds (or replaces) the route of spec->key. The spec's pointers are copied. -1: no memory;
 * -2: a bad spec. */
int fast_route_set(struct sw *sw, const struct fast_route *spec)
{
    if (spec->klen == 0 || spec->klen > 2 * MAX_STARTUP_PACKET ||
        (spec->method != FAST_MD5 && spec->method != FAST_SCRAM) ||
        spec->salt_len > sizeof(spec->salt) ||
        spec->wlen > 1u << 20 || spec->alen > PARAM_VALUE_MAX ||
        (spec->method == FAST_SCRAM && (spec->iterations == 0 || spec->salt_len == 0)))
        return -2;
    if (sw->rtab_count + 1 > sw->rtab_size / 2) {
        uint32_t size = sw->rtab_size ? sw->rtab_size * 2 : 64;
        struct route **t = calloc(size, sizeof(*t));
        if (t == NULL)
            return -1;
        for (uint32_t i = 0; i < sw->rtab_size; i++) {
            struct route *r = sw->rtab[i];
            while (r != NULL) {
                struct route *next = r->next;
                r->next = t[r->hash & (size - 1)];
                t[r->hash & (size - 1)] = r;
                r = next;
            }
        }
        free(sw->rtab);
        sw->rtab = t;
        sw->rtab_size = size;
    }
    struct route *r = calloc(1, sizeof(*r));
    uint8_t *blob = malloc((size_t)spec->klen + spec->wlen + spec->alen + 1);
    if (r == NULL || blob == NULL) {
        free(r);
        free(blob);
        return -1;
    }
    r->spec = *spec;
    memcpy(blob, spec->key, spec->klen);
    memcpy(blob + spec->klen, spec->welcome, spec->wlen);
    memcpy(blob + spec->klen + spec->wlen, spec->app, spec->alen);
    blob[spec->klen + spec->wlen + spec->alen] = 0;
    r->blob = blob;
    r->spec.key = blob;
    r->spec.welcome = blob + spec->klen;
    r->spec.app = blob + spec->klen + spec->wlen;
    r->klen = spec->klen;
    r->hash = key_hash(sw, blob, spec->klen);
    r->refs = 1;
    struct route **pp = &sw->rtab[r->hash & (sw->rtab_size - 1)];
    for (; *pp != NULL; pp = &(*pp)->next) {
        struct route *old = *pp;
        if (old->hash == r->hash && old->klen == r->klen && memcmp(old->spec.key, blob, r->klen) == 0) {
            r->next = old->next;
            *pp = r;
            route_put(old);
            return 0;
        }
    }
    r->next = NULL;
    *pp = r;
    sw->rtab_count++;
    return 0;
}

/* ---- a login's state --------------------------------------------------------------------- */

static void fl_free(struct sw *sw, struct conn *c)
{
    struct flogin *f = c->fl;
    if (f == NULL)
        return;
    if (f->prev != NULL)
        f->prev->next = f->next;
    else
        sw->fast_head = f->next;
    if (f->next != NULL)
        f->next->prev = f->prev;
    route_put(f->r);
    free(f->sp);
    if (f->bare != NULL)
        explicit_bzero(f->bare, strlen(f->bare));
    free(f->bare);
    free(f->sfirst);
    free(f->gs2);
    explicit_bzero(f->salt, sizeof(f->salt));
    free(f);
    c->fl = NULL;
}

/* At accept: the login is the switch's to try when Python has routes and the clients are
 * under the cap it gave (over it, Python decides: refuse, evict a silent socket). */
void fast_accept(struct sw *sw, struct conn *c, int64_t listener, const char *host, uint32_t port)
{
    if (sw->rtab_count == 0 || sw->nclients > sw->fast_cap)
        return;
    struct flogin *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return; /* Python's path needs no memory of ours */
    f->c = c;
    f->listener = listener;
    f->started = sw->now_mono;
    snprintf(f->host, sizeof(f->host), "%s", host);
    f->port = port;
    f->next = sw->fast_head;
    if (f->next != NULL)
        f->next->prev = f;
    sw->fast_head = f;
    c->fl = f;
}

/* Python takes the login over from the start: ACCEPTED (bit 0 of its reason: an SSLRequest
 * was answered 'N' already), and the caller passes the current message up. */
static void fl_fallback(struct sw *sw, struct conn *c)
{
    uint32_t flags = c->fl->ssl_done ? ACCEPTED_SSL_ANSWERED : 0;
    if (c->tls & TLS_UP)
        flags |= ACCEPTED_TLS;
    int64_t listener = c->fl->listener;
    fl_free(sw, c);
    sw_post(sw, EV_ACCEPTED, c->id, listener, flags);
}

/* The identity part of LOGGED_IN / LOGIN_ENDED: user, database, host, port (C strings). */
static size_t who(const struct flogin *f, uint8_t *out)
{
    size_t o = 0;
    if (f->user != NULL) {
        memcpy(out + o, f->user, f->ulen);
        o += f->ulen;
    }
    out[o++] = 0;
    if (f->db != NULL) {
        memcpy(out + o, f->db, f->dlen);
        o += f->dlen;
    }
    out[o++] = 0;
    o += (size_t)sprintf((char *)out + o, "%s", f->host) + 1;
    o += (size_t)sprintf((char *)out + o, "%u", (unsigned)f->port) + 1;
    return o;
}

static size_t who_len(const struct flogin *f)
{
    return (size_t)f->ulen + f->dlen + sizeof(f->host) + 16;
}

/* The login ends here without a welcome: Python hears who it was and why (it logs the lines
 * and counts the refusal a login of its own would have), and no CLOSED follows. */
static void fl_ended_why(struct sw *sw, struct conn *c, uint8_t reason, const char *text)
{
    struct flogin *f = c->fl;
    size_t tlen = text != NULL ? strlen(text) : 0;
    char tls[160];
    size_t dlen = tls_describe(sw, c, tls, sizeof tls);
    uint8_t *data = malloc(who_len(f) + tlen + 1 + dlen + 1);
    size_t n = data != NULL ? who(f, data) : 0;
    if (data != NULL) {
        /* two more fields: why TLS failed ("" for any other end), the TLS description ("" in
         * clear) */
        memcpy(data + n, text != NULL ? text : "", tlen + 1);
        n += tlen + 1;
        memcpy(data + n, tls, dlen);
        n += dlen;
        data[n++] = 0;
    }
    uint32_t why = (uint32_t)reason | (f->step != FL_START ? LOGIN_ENDED_ASKED : 0);
    sw_post_data(sw, EV_LOGIN_ENDED | EV_LAZY, c->id, f->listener, why, data, n);
    free(data);
    fl_free(sw, c);
    c->quiet = 1;
}

static void fl_ended(struct sw *sw, struct conn *c, uint8_t reason)
{
    fl_ended_why(sw, c, reason, NULL);
}

/* A FATAL ErrorResponse with PostgreSQL's fields, then the close. */
static void fl_refuse(struct sw *sw, struct conn *c, const char *sqlstate, const char *text,
                      uint8_t reason)
{
    size_t tlen = strlen(text);
    uint8_t *msg = malloc(64 + tlen);
    size_t n = 0;
    if (msg != NULL) {
        static const char head[] = "SFATAL\0VFATAL\0C";
        msg[0] = 'E';
        n = 5;
        memcpy(msg + n, head, sizeof head - 1);
        n += sizeof head - 1;
        memcpy(msg + n, sqlstate, 6); /* five characters and the NUL */
        n += 6;
        msg[n++] = 'M';
        memcpy(msg + n, text, tlen + 1);
        n += tlen + 1;
        msg[n++] = 0;
        put32(msg + 1, (uint32_t)(n - 1));
    }
    fl_ended(sw, c, reason);
    conn_close_with(sw, c, msg, n, reason);
    free(msg);
}

static void fl_auth_failed(struct sw *sw, struct conn *c)
{
    struct flogin *f = c->fl;
    size_t cap = (size_t)f->ulen + 64;
    char *text = malloc(cap);
    if (text == NULL) {
        fl_ended(sw, c, R_AUTH_FAILED);
        conn_destroy(sw, c, R_AUTH_FAILED, 0);
        return;
    }
    snprintf(text, cap, "password authentication failed for user \"%.*s\"", (int)f->ulen,
             (const char *)f->user);
    fl_refuse(sw, c, "28P01", text, R_AUTH_FAILED);
    free(text);
}

static int fl_send(struct conn *c, const uint8_t *p, size_t n)
{
    return buf_append(&c->out, p, n);
}

/* 'R' with an int32 code and `data`. */
static int fl_auth_request(struct sw *sw, struct conn *c, uint32_t code, const void *data, size_t n)
{
    uint8_t head[9];
    head[0] = 'R';
    put32(head + 1, (uint32_t)(8 + n));
    put32(head + 5, code);
    if (fl_send(c, head, sizeof head) < 0 || (n > 0 && fl_send(c, data, n) < 0))
        return -1;
    conn_schedule(sw, c);
    return 0;
}

/* ---- the startup packet -------------------------------------------------------------------- */

static int ieq(const uint8_t *a, size_t alen, const char *b)
{
    size_t blen = strlen(b);
    if (alen != blen)
        return 0;
    for (size_t i = 0; i < alen; i++) {
        uint8_t x = a[i], y = (uint8_t)b[i];
        if (x >= 'A' && x <= 'Z')
            x = (uint8_t)(x + 32);
        if (y >= 'A' && y <= 'Z')
            y = (uint8_t)(y + 32);
        if (x != y)
            return 0;
    }
    return 1;
}

/* Reads a protocol 3.0 startup packet into f. 0: the switch can go on with it; -1: Python's
 * (anything but user, database and the tracked parameters, a repeated key, a value Python
 * would refuse or change). */
static int fl_startup(struct sw *sw, struct flogin *f, const uint8_t *p, size_t len)
{
    if (len < 9 || be32(p + 4) != PROTO_V30 || p[len - 1] != 0)
        return -1;
    f->sp = malloc(len - 8);
    if (f->sp == NULL)
        return -1;
    memcpy(f->sp, p + 8, len - 8);
    f->splen = (uint32_t)(len - 8);
    const uint8_t *q = f->sp, *end = f->sp + f->splen;
    int have_db = 0;
    for (;;) {
        const uint8_t *kend = memchr(q, 0, (size_t)(end - q));
        if (kend == NULL)
            return -1;
        size_t klen = (size_t)(kend - q);
        if (klen == 0)
            return kend + 1 == end ? 0 : -1; /* the terminator, and nothing after it */
        const uint8_t *v = kend + 1;
        const uint8_t *vend = v < end ? memchr(v, 0, (size_t)(end - v)) : NULL;
        if (vend == NULL)
            return -1;
        size_t vlen = (size_t)(vend - v);
        if (!params_valid_utf8(q, klen) || !params_valid_value(v, vlen))
            return -1;
        if (klen == 4 && memcmp(q, "user", 4) == 0) {
            if (f->user != NULL || vlen == 0)
                return -1;
            f->user = v;
            f->ulen = (uint32_t)vlen;
        } else if (klen == 8 && memcmp(q, "database", 8) == 0) {
            if (have_db)
                return -1;
            have_db = 1;
            if (vlen > 0) {
                f->db = v;
                f->dlen = (uint32_t)vlen;
            }
        } else {
            uint32_t i = 0;
            while (i < sw->ntracked && !ieq(q, klen, sw->tracked[i].name))
                i++;
            if (i == sw->ntracked || f->own[i] != NULL)
                return -1;
            f->own[i] = v;
            f->ownlen[i] = (uint32_t)vlen;
        }
        q = vend + 1;
        if (q >= end)
            return -1;
    }
}

/* ---- the exchanges ------------------------------------------------------------------------- */

static int fl_begin(struct sw *sw, struct conn *c)
{
    struct flogin *f = c->fl;
    struct route *r = f->r;
    if (r->spec.method == FAST_MD5) {
        if (fl_random(sw, f->salt, sizeof f->salt) < 0)
            return -1;
        f->step = FL_MD5;
        return fl_auth_request(sw, c, AUTH_MD5, f->salt, sizeof f->salt);
    }
    static const char mechs[] = SCRAM_MECH "\0";
    f->step = FL_SASL_INIT;
    return fl_auth_request(sw, c, AUTH_SASL, mechs, sizeof mechs);
}

/* 1: the password matched; 0: it did not; -1: no digest. */
static int fl_md5_check(struct flogin *f, const uint8_t *p, size_t n)
{
    while (n > 0 && p[n - 1] == 0)
        n--; /* as Python: trailing NULs are not part of the answer */
    uint8_t in[32 + 4], d[16];
    char want[35];
    memcpy(in, f->r->spec.md5, 32);
    memcpy(in + 32, f->salt, 4);
    if (digest(MD_MD5, in, sizeof in, d) < 0)
        return -1;
    memcpy(want, "md5", 3);
    hex(d, sizeof d, want + 3);
    return n == sizeof want && CRYPTO_memcmp(p, want, sizeof want) == 0;
}

/* The value of attribute `name` (one letter) in a SCRAM message: the last one, as Python's
 * dict of the comma-separated parts keeps. NULL if absent. */
static const char *attr(const char *s, char name, size_t *len)
{
    const char *found = NULL;
    const char *part = s;
    for (;;) {
        const char *comma = strchr(part, ',');
        size_t plen = comma != NULL ? (size_t)(comma - part) : strlen(part);
        if (plen >= 2 && part[0] == name && part[1] == '=') {
            found = part + 2;
            *len = plen - 2;
        }
        if (comma == NULL)
            return found;
        part = comma + 1;
    }
}

/* A C string copy of p[0..n) if it holds no NUL and is UTF-8 (Python decodes it strictly). */
static char *text_copy(const uint8_t *p, size_t n)
{
    if (memchr(p, 0, n) != NULL || !params_valid_utf8(p, n))
        return NULL;
    char *s = malloc(n + 1);
    if (s != NULL) {
        memcpy(s, p, n);
        s[n] = 0;
    }
    return s;
}

/* SASLInitialResponse: the mechanism, then client-first-message. 1: answered; 0: refused
 * (as a wrong password, which is what PostgreSQL's mock exchange and Python do); -1: memory. */
static int fl_sasl_init(struct sw *sw, struct conn *c, const uint8_t *p, size_t n)
{
    struct flogin *f = c->fl;
    const uint8_t *mend = memchr(p, 0, n);
    if (mend == NULL || (size_t)(mend - p) != strlen(SCRAM_MECH) ||
        memcmp(p, SCRAM_MECH, strlen(SCRAM_MECH)) != 0)
        return 0;
    size_t off = (size_t)(mend - p) + 1;
    if (n - off < 4)
        return 0;
    uint32_t dlen = be32(p + off);
    off += 4;
    if (dlen == 0xffffffffu || dlen > n - off)
        return 0;
    char *first = text_copy(p + off, dlen);
    if (first == NULL)
        return 0;
    /* gs2-header "n,<authzid>," or "y,<authzid>,": no channel binding is offered */
    const char *c1 = strchr(first, ',');
    const char *c2 = c1 != NULL ? strchr(c1 + 1, ',') : NULL;
    if ((first[0] != 'n' && first[0] != 'y') || c1 != first + 1 || c2 == NULL) {
        free(first);
        return 0;
    }
    size_t hlen = (size_t)(c2 - first) + 1;
    size_t rlen = 0;
    const char *r = attr(c2 + 1, 'r', &rlen);
    if (r == NULL || rlen == 0) {
        free(first);
        return 0;
    }
    uint8_t raw[SCRAM_NONCE_RAW];
    char snonce[SCRAM_NONCE_RAW / 3 * 4 + 1];
    char salt64[((sizeof f->r->spec.salt + 2) / 3) * 4 + 1];
    if (fl_random(sw, raw, sizeof raw) < 0) {
        free(first);
        return -1;
    }
    fast_b64_encode(raw, sizeof raw, snonce);
    fast_b64_encode(f->r->spec.salt, f->r->spec.salt_len, salt64);
    size_t cap = 2 + rlen + strlen(snonce) + 3 + strlen(salt64) + 3 + 12 + 1;
    f->gs2 = malloc(hlen + 1);
    f->bare = strdup(c2 + 1);
    f->sfirst = malloc(cap);
    if (f->gs2 == NULL || f->bare == NULL || f->sfirst == NULL) {
        free(first);
        return -1;
    }
    memcpy(f->gs2, first, hlen);
    f->gs2[hlen] = 0;
    int len = snprintf(f->sfirst, cap, "r=%.*s%s,s=%s,i=%u", (int)rlen, r, snonce, salt64,
                       (unsigned)f->r->spec.iterations);
    free(first);
    if (len < 0 || (size_t)len >= cap)
        return -1;
    f->nonce_len = rlen + strlen(snonce);
    f->step = FL_SASL_FINAL;
    return fl_auth_request(sw, c, AUTH_SASL_CONTINUE, f->sfirst, (size_t)len) < 0 ? -1 : 1;
}

/* SASLResponse: client-final-message. 1: the proof matched (out: SASLFinal's data and the
 * recovered ClientKey); 0: refused; -1: memory or digest failure. */
static int fl_sasl_final(struct flogin *f, const uint8_t *p, size_t n, char *final, size_t fcap,
                         uint8_t *client_key)
{
    char *msg = text_copy(p, n);
    if (msg == NULL)
        return 0;
    int ok = 0;
    /* without-proof, then ",p=" and the proof: the last ",p=" splits them */
    char *split = NULL;
    for (char *at = strstr(msg, ",p="); at != NULL; at = strstr(at + 1, ",p="))
        split = at;
    if (split == NULL)
        goto out;
    *split = 0;
    const char *proof64 = split + 3;
    size_t rlen = 0, clen = 0;
    const char *r = attr(msg, 'r', &rlen);
    const char *cb = attr(msg, 'c', &clen);
    if (r == NULL || rlen != f->nonce_len || memcmp(r, f->sfirst + 2, rlen) != 0 || cb == NULL)
        goto out;
    uint8_t cbind[256];
    long cbn = fast_b64_decode((const uint8_t *)cb, clen, cbind, sizeof cbind);
    if (cbn < 0 || (size_t)cbn != strlen(f->gs2) || memcmp(cbind, f->gs2, (size_t)cbn) != 0)
        goto out;
    uint8_t proof[32];
    if (fast_b64_decode((const uint8_t *)proof64, strlen(proof64), proof, sizeof proof) != 32)
        goto out;
    size_t alen = strlen(f->bare) + 1 + strlen(f->sfirst) + 1 + strlen(msg);
    char *am = malloc(alen + 1);
    if (am == NULL) {
        ok = -1;
        goto out;
    }
    snprintf(am, alen + 1, "%s,%s,%s", f->bare, f->sfirst, msg);
    uint8_t sig[32], stored[32], ssig[32];
    const struct fast_route *s = &f->r->spec;
    if (hmac256(s->stored, 32, (const uint8_t *)am, alen, sig) < 0 ||
        hmac256(s->server, 32, (const uint8_t *)am, alen, ssig) < 0) {
        free(am);
        ok = -1;
        goto out;
    }
    free(am);
    for (int i = 0; i < 32; i++)
        client_key[i] = proof[i] ^ sig[i];
    if (digest(MD_SHA256, client_key, 32, stored) < 0) {
        ok = -1;
        goto out;
    }
    if (CRYPTO_memcmp(stored, s->stored, 32) != 0)
        goto out;
    memcpy(final, "v=", 2);
    if (fcap < 2 + 45)
        goto out;
    fast_b64_encode(ssig, sizeof ssig, final + 2);
    ok = 1;
out:
    explicit_bzero(msg, n);
    free(msg);
    return ok;
}

/* ---- the welcome --------------------------------------------------------------------------- */

/* The value the client is shown (and kept as its wish) for tracked parameter i: its own, the
 * route's application_name when it names none, else the pool's (absent: empty, as Python). */
static const uint8_t *shown(const struct flogin *f, uint32_t i, const char *name, uint32_t *len,
                            int *own)
{
    const struct fast_route *s = &f->r->spec;
    *own = 1;
    if (f->own[i] != NULL) {
        *len = f->ownlen[i];
        return f->own[i];
    }
    if (strcmp(name, "application_name") == 0) {
        *len = s->alen;
        return s->app;
    }
    *own = 0;
    const uint8_t *w = s->welcome, *end = s->welcome + s->wlen;
    while (w < end) {
        size_t nlen = strlen((const char *)w);
        const uint8_t *v = w + nlen + 1;
        size_t vlen = strlen((const char *)v);
        if (strcmp((const char *)w, name) == 0) {
            *len = (uint32_t)vlen;
            return v;
        }
        w = v + vlen + 1;
    }
    *len = 0;
    return (const uint8_t *)"";
}

static int param_status(struct conn *c, const char *name, const uint8_t *v, size_t vlen)
{
    size_t nlen = strlen(name);
    uint8_t head[5];
    head[0] = 'S';
    put32(head + 1, (uint32_t)(4 + nlen + 1 + vlen + 1));
    if (fl_send(c, head, 5) < 0 || fl_send(c, (const uint8_t *)name, nlen + 1) < 0 ||
        fl_send(c, v, vlen) < 0 || fl_send(c, (const uint8_t *)"", 1) < 0)
        return -1;
    return 0;
}

/* AuthenticationOk (after `final`, SCRAM's SASLFinal), the parameters, the cancel key and
 * ReadyForQuery; then LOGGED_IN up and the client into its pool, as Python's promote. */
static int fl_welcome(struct sw *sw, struct conn *c, const char *final, const uint8_t *ckey)
{
    struct flogin *f = c->fl;
    const struct fast_route *s = &f->r->spec;
    struct pool *p = pool_find(sw, s->pool);
    if (p == NULL) {
        fl_refuse(sw, c, "08P01", "the pool of this login is gone; connect again", R_SERVER_GONE);
        return 0;
    }
    if (final != NULL && fl_auth_request(sw, c, AUTH_SASL_FINAL, final, strlen(final)) < 0)
        return -1;
    if (fl_auth_request(sw, c, AUTH_OK, NULL, 0) < 0)
        return -1;
    /* The pool's parameters in its order, the client's own value in place of a tracked one;
     * then the client's own that the pool does not report, in tracked order. */
    uint8_t shown_seen[PARAM_MAX_TRACKED] = {0};
    const uint8_t *w = s->welcome, *wend = s->welcome + s->wlen;
    while (w < wend) {
        const char *name = (const char *)w;
        size_t nlen = strlen(name);
        const uint8_t *v = w + nlen + 1;
        size_t vlen = strlen((const char *)v);
        for (uint32_t i = 0; i < sw->ntracked; i++) {
            if (strcmp(sw->tracked[i].name, name) == 0) {
                uint32_t olen;
                int own;
                const uint8_t *ov = shown(f, i, name, &olen, &own);
                shown_seen[i] = 1;
                if (own) {
                    v = ov;
                    vlen = olen;
                }
                break;
            }
        }
        if (param_status(c, name, v, vlen) < 0)
            return -1;
        w = (const uint8_t *)name + nlen + 1 + strlen((const char *)(name + nlen + 1)) + 1;
    }
    const uint8_t *names[PARAM_MAX_TRACKED], *values[PARAM_MAX_TRACKED];
    size_t nlens[PARAM_MAX_TRACKED], vlens[PARAM_MAX_TRACKED];
    for (uint32_t i = 0; i < sw->ntracked; i++) {
        uint32_t vlen;
        int own;
        values[i] = shown(f, i, sw->tracked[i].name, &vlen, &own);
        vlens[i] = vlen;
        names[i] = (const uint8_t *)sw->tracked[i].name;
        nlens[i] = sw->tracked[i].len;
        if (own && !shown_seen[i] && param_status(c, sw->tracked[i].name, values[i], vlen) < 0)
            return -1;
    }
    uint8_t key[8];
    uint32_t kpid, kkey;
    if (cancel_key_make(sw, c->id, &kpid, &kkey) < 0)
        return -1;
    put32(key, kpid);
    put32(key + 4, kkey);
    uint8_t tail[5 + 8 + 6] = {'K', 0, 0, 0, 12};
    memcpy(tail + 5, key, 8);
    memcpy(tail + 13, "Z\0\0\0\5I", 6);
    if (fl_send(c, tail, sizeof tail) < 0)
        return -1;
    if (params_set(sw, c, names, nlens, values, vlens, sw->ntracked) < 0)
        return -1;
    /* LOGGED_IN's data: who, the listener, the cancel key (two ints), the method, the route's
     * generation,
     * the ClientKey (hex, SCRAM), the TLS description ("" in clear), then per tracked
     * parameter "=value" if the client set it. */
    char tls[160];
    size_t tlen = tls_describe(sw, c, tls, sizeof tls);
    size_t cap = who_len(f) + 96 + 2 * 32 + tlen + 1;
    for (uint32_t i = 0; i < sw->ntracked; i++)
        cap += 2 + (f->own[i] != NULL ? f->ownlen[i] : 0);
    uint8_t *data = malloc(cap);
    if (data == NULL)
        return -1;
    size_t o = who(f, data);
    o += (size_t)sprintf((char *)data + o, "%lld", (long long)f->listener) + 1;
    o += (size_t)sprintf((char *)data + o, "%u", (unsigned)be32(key)) + 1;
    o += (size_t)sprintf((char *)data + o, "%u", (unsigned)be32(key + 4)) + 1;
    o += (size_t)sprintf((char *)data + o, "%u", (unsigned)s->method) + 1;
    o += (size_t)sprintf((char *)data + o, "%llu", (unsigned long long)s->gen) + 1;
    if (ckey != NULL) {
        hex(ckey, 32, (char *)data + o);
        o += 64;
    }
    data[o++] = 0;
    memcpy(data + o, tls, tlen);
    o += tlen;
    data[o++] = 0;
    for (uint32_t i = 0; i < sw->ntracked; i++) {
        if (f->own[i] != NULL) {
            data[o++] = '=';
            memcpy(data + o, f->own[i], f->ownlen[i]);
            o += f->ownlen[i];
        }
        data[o++] = 0;
    }
    int rc = sw_post_data(sw, EV_LOGGED_IN | EV_LAZY, c->id, s->pool, 0, data, o);
    explicit_bzero(data, o);
    free(data);
    if (rc < 0)
        return -1;
    fl_free(sw, c);
    if (login_promote(sw, c, p, NULL, 0) < 0) {
        /* Python has the LOGGED_IN: the CLOSED that follows tells it the client is gone. */
        conn_destroy(sw, c, R_IO_ERROR, 1);
    }
    return 0;
}

/* ---- the driver ---------------------------------------------------------------------------- */

/* One whole message of a login the switch runs. 1: taken; 0: Python takes the login over and
 * the message goes up (fallback done); -1: the connection is closed or promoted. */
static int fl_message(struct sw *sw, struct conn *c, const uint8_t *p, size_t n, uint32_t flags)
{
    struct flogin *f = c->fl;
    if (f->step == FL_START) {
        if (!(flags & MSG_UNTYPED) || n < 8) {
            fl_fallback(sw, c);
            return 0;
        }
        uint32_t code = be32(p + 4);
        int tcp = strcmp(f->host, "unix") != 0;
        if (code == CODE_SSL && !f->ssl_done && !(flags & MSG_MORE_BUFFERED)) {
            f->ssl_done = 1;
            if (tcp && sw->tls_cl.mode != TLS_MODE_DISABLE && sw->tls_cl.ctx != NULL) {
                /* 'S', then the handshake (tls.c); the startup packet comes through it */
                if (tls_accept_start(sw, c) < 0) {
                    fl_fallback(sw, c);
                    return 0;
                }
                return 1;
            }
            if (fl_send(c, (const uint8_t *)"N", 1) < 0) {
                fl_fallback(sw, c);
                return 0;
            }
            conn_schedule(sw, c);
            return 1;
        }
        if (tcp && sw->tls_cl.mode >= TLS_MODE_REQUIRE && !(c->tls & TLS_UP)) {
            fl_fallback(sw, c); /* Python refuses it: "SSL required" */
            return 0;
        }
        struct route *r = NULL;
        if (fl_startup(sw, f, p, n) == 0 && f->user != NULL) { /* no user: Python's error */
            /* the key: database (default: the user) NUL user */
            const uint8_t *db = f->db != NULL ? f->db : f->user;
            size_t dlen = f->db != NULL ? f->dlen : f->ulen;
            size_t klen = dlen + 1 + f->ulen;
            uint8_t *key = malloc(klen);
            if (key != NULL) {
                memcpy(key, db, dlen);
                key[dlen] = 0;
                memcpy(key + dlen + 1, f->user, f->ulen);
                r = route_find(sw, key, klen);
                free(key);
            }
        }
        if (r == NULL) {
            fl_fallback(sw, c);
            return 0;
        }
        if (f->db == NULL) {
            f->db = f->user;
            f->dlen = f->ulen;
        }
        r->refs++;
        f->r = r;
        if (fl_begin(sw, c) < 0) {
            fl_ended(sw, c, R_IO_ERROR);
            conn_destroy(sw, c, R_IO_ERROR, 0);
            return -1;
        }
        return 1;
    }
    if (p[0] != 'p') {
        char text[64];
        uint8_t t = p[0];
        if (t >= 0x20 && t < 0x7f && t != '\'' && t != '\\')
            snprintf(text, sizeof text, "expected a password message, got '%c'", t);
        else
            snprintf(text, sizeof text, "expected a password message, got '\\x%02x'", t);
        fl_refuse(sw, c, "08P01", text, R_BAD_PACKET);
        return -1;
    }
    const uint8_t *body = p + 5;
    size_t blen = n - 5;
    int ok;
    char final[64];
    uint8_t ckey[32];
    switch (f->step) {
    case FL_MD5:
        ok = fl_md5_check(f, body, blen);
        if (ok == 1 && fl_welcome(sw, c, NULL, NULL) == 0)
            return -1;
        break;
    case FL_SASL_INIT:
        ok = fl_sasl_init(sw, c, body, blen);
        if (ok == 1)
            return 1;
        break;
    default:
        ok = fl_sasl_final(f, body, blen, final, sizeof final, ckey);
        if (ok == 1 && fl_welcome(sw, c, final, ckey) == 0) {
            explicit_bzero(ckey, sizeof ckey);
            return -1;
        }
        explicit_bzero(ckey, sizeof ckey);
        break;
    }
    if (c->fl == NULL)
        return -1;
    if (ok == 0) {
        fl_auth_failed(sw, c);
        return -1;
    }
    fl_ended(sw, c, R_IO_ERROR);
    conn_destroy(sw, c, R_IO_ERROR, 0);
    return -1;
}

/* Called by login_pass_up for a client whose login the switch runs: takes whole messages
 * while it runs it. 1: nothing more for the caller to do; 0: the caller goes on as for any
 * login (Python has it now, or a bad header ends it: the caller says why to the client). */
int fast_pass_up(struct sw *sw, struct conn *c)
{
    struct buf *b = &c->hold;
    while (c->fl != NULL && c->state == CL_LOGIN && b->end > b->start) {
        int stop;
        uint32_t flags;
        uint8_t status;
        /* The phase moves on only with a message taken: one handed back is framed again. */
        uint8_t phase = c->login_phase;
        size_t used = login_frame(&phase, b->data + b->start, b->end - b->start, sw->login_max,
                                  &stop, &flags, &status);
        if (stop != LOGIN_MORE) {
            if (c->fl->step == FL_START)
                fl_fallback(sw, c);
            else
                fl_ended(sw, c, stop == LOGIN_TOO_BIG ? R_TOO_BIG : R_BAD_PACKET);
            return 0;
        }
        if (used == 0)
            return 1;
        /* Taken before it is handled: a welcome hands on only what follows it (a query
         * pipelined after the password); a fallback puts it back for Python. */
        const uint8_t *msg = b->data + b->start;
        uint8_t was = c->login_phase;
        c->login_phase = phase;
        b->start += (uint32_t)used;
        b->scanned = b->start;
        int rc = fl_message(sw, c, msg, used, flags);
        if (rc == 0) {
            c->login_phase = was;
            b->start -= (uint32_t)used;
            b->scanned = b->start;
            return 0;
        }
        if (rc < 0)
            return 1;
    }
    if (c->fl != NULL && b->start == b->end)
        buf_free(b);
    return c->fl != NULL ? 1 : 0;
}

/* conn_destroy of a connection without a report. */
void fast_drop(struct sw *sw, struct conn *c)
{
    fl_free(sw, c);
}

/* The connection closes while the switch runs its login (EOF, an error): Python hears of it
 * as LOGIN_ENDED (it never saw an ACCEPTED), so no CLOSED. 1: the caller reports nothing. */
int fast_closing(struct sw *sw, struct conn *c, uint8_t reason, const char *why)
{
    if (c->fl == NULL)
        return 0;
    fl_ended_why(sw, c, reason, why != NULL && why[0] != 0 ? why : NULL);
    return 1;
}

/* Python's janitor: a login silent for `grace_us` since its accept goes to Python (it evicts
 * silent sockets under max_client_conn and applies client_login_timeout); one that asked for a
 * password and is still in its exchange after `timeout_us` is refused with `msg`. */
void fast_expire(struct sw *sw, int64_t grace_us, int64_t timeout_us, const uint8_t *msg,
                 size_t len)
{
    struct flogin *f = sw->fast_head;
    while (f != NULL) {
        struct flogin *next = f->next;
        struct conn *c = f->c;
        int64_t age = sw->now_mono - f->started;
        if (f->step == FL_START && age >= grace_us) {
            fl_fallback(sw, c);
            conn_schedule(sw, c); /* what it holds goes up now */
        } else if (f->step != FL_START && timeout_us > 0 && age >= timeout_us) {
            fl_ended(sw, c, R_LOGIN_TIMEOUT);
            conn_close_with(sw, c, msg, len, R_LOGIN_TIMEOUT);
        }
        f = next;
    }
}
