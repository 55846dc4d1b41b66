/* params.c: the tracked startup parameters: what each client wants and each server has, the
 * SET query that makes a server match its new client at a link, and the walk over server bytes
 * that notes ParameterStatus and swallows the answer to that query. */
#define _GNU_SOURCE
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "switch.h"

static uint32_t be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* ---- names and values ------------------------------------------------------------------- */

/* The names go into SET unquoted, as net/app.py writes them: only what a GUC name (custom
 * ones included, "ext.name") is made of. */
static int valid_name(const char *p, size_t n)
{
    if (n == 0 || n > PARAM_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = p[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '.'))
            return 0;
    }
    return 1;
}

/* Once, when the switch is made: every connection's slots are sized by ntracked. */
int params_set_tracked(struct sw *sw, const char *const *names, const size_t *lens, size_t n)
{
    if (n > PARAM_MAX_TRACKED)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (!valid_name(names[i], lens[i]))
            return -1;
        for (size_t j = 0; j < i; j++)
            if (lens[j] == lens[i] && memcmp(names[j], names[i], lens[i]) == 0)
                return -1;
    }
    struct ptrack *t = n ? calloc(n, sizeof(*t)) : NULL;
    if (n && t == NULL)
        return -2;
    for (size_t i = 0; i < n; i++) {
        memcpy(t[i].name, names[i], lens[i]);
        t[i].len = (uint32_t)lens[i];
    }
    free(sw->tracked);
    sw->tracked = t;
    sw->ntracked = (uint32_t)n;
    if (getrandom(&sw->pseed, sizeof(sw->pseed), GRND_NONBLOCK) != (ssize_t)sizeof(sw->pseed)) {
        struct timespec ts; /* no entropy yet (early boot): the time, the pid, an address */
        clock_gettime(CLOCK_MONOTONIC, &ts);
        sw->pseed = ((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec) ^
                    ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)sw;
    }
    return 0;
}

void params_fini(struct sw *sw)
{
    free(sw->ptab); /* empty: every client released its set */
    sw->ptab = NULL;
    sw->ptab_size = sw->ptab_count = 0;
    free(sw->tracked);
    sw->tracked = NULL;
    sw->ntracked = 0;
}

static int tracked_index(const struct sw *sw, const uint8_t *name, size_t n)
{
    for (uint32_t i = 0; i < sw->ntracked; i++)
        if (sw->tracked[i].len == n && memcmp(sw->tracked[i].name, name, n) == 0)
            return (int)i;
    return -1;
}

/* Strict UTF-8: no overlong forms, no surrogates, nothing past U+10FFFF. */
int params_valid_utf8(const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t b = p[i];
        if (b < 0x80) {
            i++;
            continue;
        }
        size_t extra;
        uint32_t cp, min;
        if (b >= 0xC2 && b <= 0xDF) {
            extra = 1, cp = b & 0x1F, min = 0x80;
        } else if (b >= 0xE0 && b <= 0xEF) {
            extra = 2, cp = b & 0x0F, min = 0x800;
        } else if (b >= 0xF0 && b <= 0xF4) {
            extra = 3, cp = b & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        if (n - i <= extra)
            return 0;
        for (size_t k = 1; k <= extra; k++) {
            if ((p[i + k] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += extra + 1;
    }
    return 1;
}

/* What the switch keeps and quotes: at most PARAM_VALUE_MAX bytes of UTF-8 without NUL (no
 * value PostgreSQL reports holds one, and a SET of it would fail). */
int params_valid_value(const uint8_t *p, size_t n)
{
    return n <= PARAM_VALUE_MAX && (n == 0 || memchr(p, 0, n) == NULL) && params_valid_utf8(p, n);
}

/* A server's slots: [0, ntracked) what it has now, [ntracked, 2 ntracked) its last reported
 * value. A client's are a shared set (below). */
static struct pval *pv_of(struct sw *sw, struct conn *s)
{
    if (s->pv == NULL && sw->ntracked > 0)
        s->pv = calloc(2 * (size_t)sw->ntracked, sizeof(*s->pv));
    return s->pv;
}

static void pval_clear(struct pval *v)
{
    free(v->heap);
    v->heap = NULL;
    v->len = 0;
    v->known = 0;
}

static int pval_set(struct pval *v, const uint8_t *p, size_t n)
{
    if (n <= PVAL_INLINE) {
        memmove(v->small, p, n);
        free(v->heap);
        v->heap = NULL;
    } else {
        uint8_t *q = malloc(n);
        if (q == NULL)
            return -1;
        memcpy(q, p, n);
        free(v->heap);
        v->heap = q;
    }
    v->len = (uint32_t)n;
    v->known = 1;
    return 0;
}

static int pval_copy(struct pval *dst, const struct pval *src)
{
    if (!src->known) {
        pval_clear(dst);
        return 0;
    }
    return pval_set(dst, pval_bytes(src), src->len);
}

/* `v` is known and holds exactly p[0..n). */
static int pval_is(const struct pval *v, const uint8_t *p, size_t n)
{
    return v->known && v->len == n && memcmp(pval_bytes(v), p, n) == 0;
}

static int pval_equal(const struct pval *a, const struct pval *b)
{
    return b->known && pval_is(a, pval_bytes(b), b->len);
}

/* ---- a client's wishes: one shared set per distinct values ------------------------------ */

/* Most of a pool's clients want the same encoding, DateStyle, zone and name: they share one
 * refcounted set, interned by its values, so that an idle client costs a pointer rather than
 * ntracked slots. A set is never written while shared: a changed wish finds or makes another. */
struct pset {
    struct pset *next; /* the intern table's chain */
    uint64_t hash;
    uint64_t id; /* unique for the switch's life: a server's pmatch names it */
    uint32_t refs;
    struct pval v[]; /* ntracked */
};

/* A value being looked up, not owned. */
struct pview {
    const uint8_t *p;
    uint32_t len;
    uint8_t known;
};

static struct pset *pset_of(struct pval *pv)
{
    return (struct pset *)(void *)((char *)pv - offsetof(struct pset, v));
}

/* FNV-1a from a random seed, then a full avalanche (MurmurHash3's finalizer) so that the low
 * bits that pick the chain depend on every byte. Values are chosen by clients (an application
 * name): without the seed, sets could be made to share one chain. */
static uint64_t views_hash(const struct sw *sw, const struct pview *w, uint32_t n)
{
    uint64_t h = 1469598103934665603ull ^ sw->pseed;
    for (uint32_t i = 0; i < n; i++) {
        h = (h ^ (w[i].known ? w[i].len + 1u : 0u)) * 1099511628211ull;
        for (uint32_t k = 0; w[i].known && k < w[i].len; k++)
            h = (h ^ w[i].p[k]) * 1099511628211ull;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

static int pset_matches(const struct pset *s, const struct pview *w, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        if (w[i].known ? !pval_is(&s->v[i], w[i].p, w[i].len) : s->v[i].known)
            return 0;
    }
    return 1;
}

static int ptab_grow(struct sw *sw)
{
    uint32_t size = sw->ptab_size ? sw->ptab_size * 2 : 64;
    if (size < sw->ptab_size)
        return -1;
    struct pset **tab = calloc(size, sizeof(*tab));
    if (tab == NULL)
        return -1;
    for (uint32_t b = 0; b < sw->ptab_size; b++) {
        struct pset *s = sw->ptab[b];
        while (s != NULL) {
            struct pset *next = s->next;
            s->next = tab[s->hash & (size - 1)];
            tab[s->hash & (size - 1)] = s;
            s = next;
        }
    }
    free(sw->ptab);
    sw->ptab = tab;
    sw->ptab_size = size;
    return 0;
}

/* The shared set holding exactly these values, with one more reference; NULL: no memory. */
static struct pval *pset_intern(struct sw *sw, const struct pview *w)
{
    uint32_t n = sw->ntracked;
    uint64_t h = views_hash(sw, w, n);
    if (sw->ptab_size > 0)
        for (struct pset *s = sw->ptab[h & (sw->ptab_size - 1)]; s != NULL; s = s->next)
            if (s->hash == h && pset_matches(s, w, n)) {
                s->refs++;
                return s->v;
            }
    if (sw->ptab_count >= sw->ptab_size && ptab_grow(sw) < 0)
        return NULL;
    struct pset *s = calloc(1, sizeof(*s) + (size_t)n * sizeof(struct pval));
    if (s == NULL)
        return NULL;
    for (uint32_t i = 0; i < n; i++)
        if (w[i].known && pval_set(&s->v[i], w[i].p, w[i].len) < 0) {
            for (uint32_t k = 0; k < i; k++)
                free(s->v[k].heap);
            free(s);
            return NULL;
        }
    s->hash = h;
    s->id = ++sw->pset_seq;
    s->refs = 1;
    struct pset **head = &sw->ptab[h & (sw->ptab_size - 1)];
    s->next = *head;
    *head = s;
    sw->ptab_count++;
    return s->v;
}

static void pset_release(struct sw *sw, struct pval *pv)
{
    if (pv == NULL)
        return;
    struct pset *s = pset_of(pv);
    if (--s->refs > 0)
        return;
    struct pset **at = &sw->ptab[s->hash & (sw->ptab_size - 1)];
    while (*at != s)
        at = &(*at)->next;
    *at = s->next;
    sw->ptab_count--;
    for (uint32_t i = 0; i < sw->ntracked; i++)
        free(s->v[i].heap);
    free(s);
}

/* The client's wishes become `w` (ntracked views). Returns -1 out of memory: they stay. */
static int client_wants(struct sw *sw, struct conn *c, const struct pview *w)
{
    struct pval *nv = pset_intern(sw, w); /* before the release: w may point into c->pv */
    if (nv == NULL)
        return -1;
    pset_release(sw, c->pv);
    c->pv = nv;
    return 0;
}

/* One wish changes (known 0: none); the others stay. */
static int client_wants_one(struct sw *sw, struct conn *c, uint32_t i, const uint8_t *p,
                            size_t n, int known)
{
    struct pview w[PARAM_MAX_TRACKED];
    for (uint32_t k = 0; k < sw->ntracked; k++)
        w[k] = c->pv != NULL && c->pv[k].known
                   ? (struct pview){pval_bytes(&c->pv[k]), c->pv[k].len, 1}
                   : (struct pview){NULL, 0, 0};
    w[i] = (struct pview){known ? p : NULL, known ? (uint32_t)n : 0, (uint8_t)(known != 0)};
    return client_wants(sw, c, w);
}

void params_free(struct sw *sw, struct conn *c)
{
    if (c->pv != NULL && c->kind == KIND_CLIENT) {
        pset_release(sw, c->pv);
        c->pv = NULL;
    } else if (c->pv != NULL) {
        for (size_t i = 0; i < 2 * (size_t)sw->ntracked; i++)
            free(c->pv[i].heap);
        free(c->pv);
        c->pv = NULL;
    }
    free(c->pw.buf);
    c->pw.buf = NULL;
}

/* Python's values for a connection: a client's wishes (a name not given: no wish), or what a
 * server's login reported (a name not given: "", as pool/scheduler.py server_login_ok keeps
 * it). Checked whole before anything changes; names not tracked are ignored. */
int params_set(struct sw *sw, struct conn *c, const uint8_t *const *names, const size_t *nlens,
               const uint8_t *const *values, const size_t *vlens, size_t n)
{
    for (size_t k = 0; k < n; k++)
        if (!params_valid_value(values[k], vlens[k]))
            return -1;
    if (sw->ntracked == 0)
        return 0;
    if (c->kind == KIND_CLIENT) {
        struct pview w[PARAM_MAX_TRACKED];
        for (uint32_t i = 0; i < sw->ntracked; i++) {
            w[i] = (struct pview){NULL, 0, 0};
            for (size_t k = 0; k < n; k++)
                if (nlens[k] == sw->tracked[i].len &&
                    memcmp(names[k], sw->tracked[i].name, nlens[k]) == 0)
                    w[i] = (struct pview){values[k], (uint32_t)vlens[k], 1};
        }
        return client_wants(sw, c, w) < 0 ? -2 : 0;
    }
    c->pmatch = 0; /* the server's values are Python's now */
    struct pval *pv = pv_of(sw, c);
    if (pv == NULL)
        return -2;
    for (uint32_t i = 0; i < sw->ntracked; i++) {
        const uint8_t *v = NULL;
        size_t vn = 0;
        for (size_t k = 0; k < n; k++)
            if (nlens[k] == sw->tracked[i].len &&
                memcmp(names[k], sw->tracked[i].name, nlens[k]) == 0) {
                v = values[k];
                vn = vlens[k];
            }
        if (pval_set(&pv[i], v != NULL ? v : (const uint8_t *)"", vn) < 0)
            return -2;
        if (pval_set(&pv[sw->ntracked + i], pval_bytes(&pv[i]), pv[i].len) < 0)
            return -2;
    }
    return 0;
}

/* ---- the SET query ---------------------------------------------------------------------- */

/* pgfunnel.proto.messages.quote_literal byte for byte, on valid UTF-8 (params_valid_value):
 * printable ASCII only, so that the literal reads the same in every client_encoding a shared
 * server may be left in (issue 10: SJIS, where a second byte may be a backslash). `out` has
 * room for 3 + 6 * n bytes. Returns the length written. */
size_t quote_literal(const uint8_t *p, size_t n, uint8_t *out)
{
    static const char hex[] = "0123456789abcdef";
    int plain = 1;
    for (size_t i = 0; i < n; i++)
        if (p[i] < 0x20 || p[i] > 0x7E || p[i] == '\\')
            plain = 0;
    size_t o = 0;
    if (!plain)
        out[o++] = 'E';
    out[o++] = '\'';
    size_t i = 0;
    while (i < n) {
        uint32_t cp = p[i];
        size_t extra = cp < 0x80 ? 0 : cp < 0xE0 ? 1 : cp < 0xF0 ? 2 : 3;
        if (extra > 0)
            cp &= extra == 1 ? 0x1F : extra == 2 ? 0x0F : 0x07;
        for (size_t k = 1; k <= extra && i + k < n; k++)
            cp = (cp << 6) | (p[i + k] & 0x3F);
        i += extra + 1;
        if (cp == '\'') {
            out[o++] = '\'';
            out[o++] = '\'';
        } else if (cp == '\\') { /* only in the E'' form: plain has none */
            out[o++] = '\\';
            out[o++] = '\\';
        } else if (cp >= 0x20 && cp < 0x7F) {
            out[o++] = (uint8_t)cp;
        } else {
            int digits = cp <= 0xFFFF ? 4 : 8;
            out[o++] = '\\';
            out[o++] = digits == 4 ? 'u' : 'U';
            for (int d = digits - 1; d >= 0; d--)
                out[o++] = (uint8_t)hex[(cp >> (4 * d)) & 0xF];
        }
    }
    out[o++] = '\'';
    return o;
}

/* At a link: if the client wants values the server does not have, one simple Query
 * "SET a = <lit>; SET b = <lit>" (the differing names, in the tracked order, as net/app.py
 * _link builds it) goes to the server ahead of the client's bytes, the server is taken to have
 * them, and its answer is swallowed (server_read). Returns -1 when out of memory. */
int params_link(struct sw *sw, struct conn *c, struct conn *s)
{
    if (sw->ntracked == 0 || c->pv == NULL)
        return 0;
    struct pval *want = c->pv;
    uint64_t set = pset_of(want)->id;
    if (s->pmatch == set)
        return 0; /* its values are as this set wants, and have not changed since */
    struct pval *have = pv_of(sw, s);
    if (have == NULL)
        return -1;
    size_t size = 5 + 1;
    int differ = 0;
    for (uint32_t i = 0; i < sw->ntracked; i++) {
        if (!want[i].known || pval_equal(&want[i], &have[i]))
            continue;
        differ = 1;
        size += 4 + sw->tracked[i].len + 3 + 3 + 6 * (size_t)want[i].len + 2;
    }
    if (!differ) {
        s->pmatch = set;
        return 0;
    }
    uint8_t *q = malloc(size);
    if (q == NULL)
        return -1;
    size_t o = 5;
    for (uint32_t i = 0; i < sw->ntracked; i++) {
        if (!want[i].known || pval_equal(&want[i], &have[i]))
            continue;
        if (o > 5) {
            memcpy(q + o, "; ", 2);
            o += 2;
        }
        memcpy(q + o, "SET ", 4);
        o += 4;
        memcpy(q + o, sw->tracked[i].name, sw->tracked[i].len);
        o += sw->tracked[i].len;
        memcpy(q + o, " = ", 3);
        o += 3;
        o += quote_literal(pval_bytes(&want[i]), want[i].len, q + o);
    }
    q[o++] = 0;
    q[0] = 'Q';
    uint32_t len = (uint32_t)(o - 1);
    q[1] = (uint8_t)(len >> 24);
    q[2] = (uint8_t)(len >> 16);
    q[3] = (uint8_t)(len >> 8);
    q[4] = (uint8_t)len;
    int rc = buf_append(&s->out, q, o);
    free(q);
    if (rc < 0)
        return -1;
    s->pmatch = set; /* taken to have them, as its values below (a failed SET clears it) */
    for (uint32_t i = 0; i < sw->ntracked; i++)
        if (want[i].known && pval_copy(&have[i], &want[i]) < 0) {
            pval_clear(&have[i]); /* unknown: the next link SETs it again */
            s->pmatch = 0;
        }
    s->swallow++;
    s->set_err = 0;
    return 0;
}

/* The swallowed answer ended with its ReadyForQuery. A failed simple query applies none of
 * its SETs: the server has what it last reported (server_conn.py _internal_data), and Python
 * hears of it (net/app.py internal_done logs it); the client's bytes go on as sent. */
void params_swallowed(struct sw *sw, struct conn *s)
{
    if (s->swallow > 0)
        s->swallow--;
    if (s->swallow > 0 || !s->set_err)
        return;
    s->set_err = 0;
    s->pmatch = 0;
    sets_replay_failed(sw, s); /* sets.c's own queries may be the ones that failed */
    if (s->pv != NULL)
        for (uint32_t i = 0; i < sw->ntracked; i++)
            if (pval_copy(&s->pv[i], &s->pv[sw->ntracked + i]) < 0)
                pval_clear(&s->pv[i]);
    sw_post(sw, EV_PARAMS_FAILED, s->id, s->pool->id, 0);
}

/* The server's tracked values are unknown (a RESET ALL went before params_link): the link
 * SETs every value its client wants. */
void params_forget(struct sw *sw, struct conn *s)
{
    s->pmatch = 0;
    if (s->pv != NULL)
        for (uint32_t i = 0; i < sw->ntracked; i++)
            pval_clear(&s->pv[i]);
}

/* ---- ParameterStatus -------------------------------------------------------------------- */

/* A whole ParameterStatus body (name\0value\0), or its first PARAM_MSG_MAX bytes (`over`).
 * The server's value is noted (both slots); a value the switch cannot keep (too long, not
 * UTF-8) leaves it unknown, so that the next link SETs the client's value. While linked and
 * not inside the switch's own SET, the client SET it: it wants that value from now on
 * (server_conn.py _param); one the switch cannot keep leaves the client's earlier wish. */
static void param_status(struct sw *sw, struct conn *s, const uint8_t *p, size_t n, int over)
{
    const uint8_t *nul = memchr(p, 0, n);
    if (nul == NULL)
        return;
    int i = tracked_index(sw, p, (size_t)(nul - p));
    if (i < 0)
        return;
    const uint8_t *v = nul + 1;
    const uint8_t *end = memchr(v, 0, n - (size_t)(v - p));
    int keep = !over && end != NULL && params_valid_value(v, (size_t)(end - v));
    struct pval *have = pv_of(sw, s);
    if (have == NULL)
        return;
    uint32_t t = sw->ntracked;
    size_t vn = keep ? (size_t)(end - v) : 0;
    if (!keep || !pval_is(&have[i], v, vn))
        s->pmatch = 0; /* a value that changed: compared again at the next link */
    if (!keep || pval_set(&have[i], v, vn) < 0)
        pval_clear(&have[i]);
    if (pval_copy(&have[t + i], &have[i]) < 0)
        pval_clear(&have[t + i]);
    struct conn *c = s->state == SV_ACTIVE && s->swallow == 0 ? s->peer : NULL;
    if (c != NULL && have[i].known &&
        client_wants_one(sw, c, (uint32_t)i, pval_bytes(&have[i]), have[i].len, 1) < 0)
        (void)client_wants_one(sw, c, (uint32_t)i, NULL, 0, 0); /* else: no wish, as before */
}

/* Server bytes scan_server has just consumed (so every header in them is whole and checked),
 * in stream order: ParameterStatus bodies are copied out as they pass, and an ErrorResponse
 * inside the switch's own SET answer is noted. */
void params_server_bytes(struct sw *sw, struct conn *s, const uint8_t *p, size_t n)
{
    struct pwalk *w = &s->pw;
    while (n > 0) {
        if (w->rem == 0) {
            if (n < 5)
                return; /* cannot happen: scan.c consumes whole headers */
            w->type = p[0];
            w->rem = be32(p + 1) - 4;
            p += 5;
            n -= 5;
            if (w->type == 'E' && s->swallow > 0)
                s->set_err = 1;
            if (s->ps != 0 && !s->swallow && (w->type == 'E' || w->type == 'C'))
                w->type |= 0x80; /* kept for ps.c: an error, a command's tag */
            if (w->type == 'S' || (w->type & 0x80)) {
                w->len = 0;
                w->over = w->rem > PARAM_MSG_MAX;
                if (w->buf == NULL && (w->buf = malloc(PARAM_MSG_MAX)) == NULL && s->pv) {
                    for (uint32_t i = 0; i < sw->ntracked; i++)
                        pval_clear(&s->pv[i]); /* no memory: every value unknown */
                    s->pmatch = 0;
                }
            }
        } else {
            size_t take = w->rem < n ? w->rem : n;
            if ((w->type == 'S' || (w->type & 0x80)) && w->buf != NULL && w->len < PARAM_MSG_MAX) {
                size_t room = PARAM_MSG_MAX - w->len;
                size_t copy = take < room ? take : room;
                memcpy(w->buf + w->len, p, copy);
                w->len += (uint32_t)copy;
            }
            w->rem -= (uint32_t)take;
            p += take;
            n -= take;
        }
        if (w->rem == 0 && w->type == 'S') {
            w->type = 0;
            if (w->buf != NULL && sw->ntracked > 0)
                param_status(sw, s, w->buf, w->len, w->over);
        } else if (w->rem == 0 && (w->type & 0x80)) {
            if (w->type == ('E' | 0x80))
                sets_server_error(sw, s); /* however long: this batch's commands failed */
            if (w->buf != NULL && !w->over && w->type == ('E' | 0x80))
                ps_server_error(sw, s, w->buf, w->len);
            else if (w->buf != NULL && !w->over)
                ps_server_tag(sw, s, w->buf, w->len);
            w->type = 0;
        }
    }
}

/* Bytes from an idle server (one read): whole ParameterStatus messages are noted (a reload
 * changed a reported setting); anything else, or a message cut by the read, returns -1 and
 * the server is not reused, as before. */
int params_idle_bytes(struct sw *sw, struct conn *s, const uint8_t *p, size_t n)
{
    while (n > 0) {
        if (n < 5 || p[0] != 'S')
            return -1;
        uint32_t len = be32(p + 1);
        if (len < 4 || len - 4 > n - 5 || len - 4 > PARAM_MSG_MAX)
            return -1;
        if (sw->ntracked > 0)
            param_status(sw, s, p + 5, len - 4, 0);
        p += 1 + len;
        n -= 1 + len;
    }
    return 0;
}
