/* sets.c: session settings that follow their client through transaction and statement
 * pooling. A `SET name ...` / `RESET name` / `RESET ALL` / `DISCARD ALL` a client runs outside
 * a transaction (simple Query, or an unnamed Parse) is noted when the server says it succeeded
 * (no error, ReadyForQuery idle before and after); the client's settings are then a small set
 * of statements keyed by the setting's name, and each server carries the set it last got. At
 * a link whose server carries other settings, one swallowed Query brings it to the client's:
 * `RESET` of what the client does not have, then the client's own statements as it sent them.
 * The parameters params.c tracks (reported by the server: client_encoding, DateStyle,
 * TimeZone, ...) are left to params.c; `SET LOCAL`, `SET TRANSACTION` and statements inside a
 * transaction block are not session state and are ignored. */
#include <stdlib.h>
#include <string.h>

#include "switch.h"

/* Settings and SQL statements one client may carry; beyond, not followed. A link replays at
 * most 3 + 2 * SETS_MAX queries, whose answers s->swallow (8 bits, with params.c's SET)
 * counts. */
#define SETS_MAX 100
#define SET_TEXT_MAX 16384 /* the longest statement kept */
#define SET_KEY_MAX 63

/* SK_SET/SK_RESET: a setting, or (isprep) a SQL prepared statement: PREPARE / DEALLOCATE;
 * SK_CLEAR: DISCARD ALL (both); SK_CLEAR_SETS: RESET ALL; SK_CLEAR_PREP: DEALLOCATE ALL */
enum { SK_SET = 1, SK_RESET = 2, SK_CLEAR = 3, SK_CLEAR_SETS = 4, SK_CLEAR_PREP = 5 };

struct sentry {
    uint64_t h; /* of key and text: a set's hash is the sum of its entries' */
    uint32_t klen, tlen;
    uint8_t isprep; /* a SQL prepared statement (key: its name), not a setting */
    char key[SET_KEY_MAX + 1];
    uint8_t *text; /* SK_SET: the statement, without its trailing ';' */
};

struct sset {
    uint64_t hash;
    uint32_t n, cap;
    struct sentry *e;
};

/* A session command sent to a server, waiting for the ReadyForQuery that ends its batch. */
struct spend {
    uint32_t zs;
    uint8_t kind;
    struct sentry ent;
};

struct sstate {
    struct sset mine;     /* client: its settings; server: those it carries */
    struct spend *pend;   /* server: commands in flight */
    uint32_t npend, cappend;
    uint8_t err;          /* server: an ErrorResponse since the last ReadyForQuery */
    uint8_t last_status;  /* server: the status of the last ReadyForQuery */
    uint8_t unknown;      /* server: what it carries is not known (its next link: RESET ALL) */
};

static int is_space(uint8_t ch)
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v';
}

static int is_ident(uint8_t ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '_' || ch == '$' || ch >= 0x80;
}

static uint8_t lower(uint8_t ch)
{
    return ch >= 'A' && ch <= 'Z' ? (uint8_t)(ch + 32) : ch;
}

/* A keyword at p[0..n) (case-insensitive, followed by a non-identifier byte or the end). */
static size_t keyword(const uint8_t *p, size_t n, const char *kw)
{
    size_t k = strlen(kw);
    if (n < k)
        return 0;
    for (size_t i = 0; i < k; i++)
        if (lower(p[i]) != (uint8_t)kw[i])
            return 0;
    if (n > k && is_ident(p[k]))
        return 0;
    return k;
}

static size_t skip_space(const uint8_t *p, size_t n, size_t i)
{
    while (i < n && is_space(p[i]))
        i++;
    return i;
}

static uint64_t hash_of(const struct sw *sw, const struct sentry *e)
{
    uint64_t h = 1469598103934665603ull ^ sw->pseed;
    for (uint32_t i = 0; i < e->klen; i++)
        h = (h ^ (uint8_t)e->key[i]) * 1099511628211ull;
    h = (h ^ (0xfe + e->isprep)) * 1099511628211ull;
    for (uint32_t i = 0; i < e->tlen; i++)
        h = (h ^ e->text[i]) * 1099511628211ull;
    return h ^ (h >> 31);
}

/* The name at p[i..n) into e->key: "quoted" as it is, else a word in lower case (with `dots`,
 * a custom setting's "a.b"). Returns the offset after it, or 0 when there is none, or it is
 * longer than SET_KEY_MAX. */
static size_t name_at(const uint8_t *p, size_t n, size_t i, int dots, struct sentry *e)
{
    size_t j = i;
    if (i < n && p[i] == '"') {
        j = i + 1;
        while (j < n && p[j] != '"')
            j++;
        if (j >= n || j - i - 1 == 0 || j - i - 1 > SET_KEY_MAX)
            return 0;
        e->klen = (uint32_t)(j - i - 1);
        memcpy(e->key, p + i + 1, e->klen);
        j++;
    } else {
        while (j < n && (is_ident(p[j]) || (dots && p[j] == '.')))
            j++;
        if (j == i || j - i > SET_KEY_MAX)
            return 0;
        e->klen = (uint32_t)(j - i);
        for (size_t x = 0; x < e->klen; x++)
            e->key[x] = (char)lower(p[i + x]);
    }
    e->key[e->klen] = 0;
    return j;
}

/* Parses one statement: its kind, the setting's key (lower case unless quoted) and, for a
 * SET, the text to replay. 0: not a session command this file follows. */
static int parse_cmd(const uint8_t *p, size_t n, struct sentry *e)
{
    while (n > 0 && (p[n - 1] == 0 || is_space(p[n - 1]) || p[n - 1] == ';'))
        n--; /* the NUL, trailing blanks and one or more ';' */
    /* one statement only: a ';' inside would be a second one (or in a literal: not followed) */
    if (n == 0 || memchr(p, ';', n) != NULL)
        return 0;
    size_t i = skip_space(p, n, 0), k;
    int kind;
    if ((k = keyword(p + i, n - i, "prepare")) != 0 || (k = keyword(p + i, n - i, "deallocate"))) {
        int prep = lower(p[i]) == 'p';
        i = skip_space(p, n, i + k);
        if (prep && keyword(p + i, n - i, "transaction"))
            return 0; /* two-phase commit, not a statement */
        if (!prep && (k = keyword(p + i, n - i, "prepare")) != 0)
            i = skip_space(p, n, i + k);
        if (!prep && keyword(p + i, n - i, "all") && skip_space(p, n, i + 3) == n)
            return SK_CLEAR_PREP;
        size_t j = name_at(p, n, i, 0, e);
        if (j == 0)
            return 0;
        e->isprep = 1;
        if (!prep)
            return skip_space(p, n, j) == n ? SK_RESET : 0;
        if (n > SET_TEXT_MAX)
            return 0;
        e->text = (uint8_t *)p;
        e->tlen = (uint32_t)n;
        return SK_SET;
    }
    if ((k = keyword(p + i, n - i, "discard")) != 0) {
        i = skip_space(p, n, i + k);
        return keyword(p + i, n - i, "all") && skip_space(p, n, i + 3) == n ? SK_CLEAR : 0;
    }
    if ((k = keyword(p + i, n - i, "reset")) != 0)
        kind = SK_RESET;
    else if ((k = keyword(p + i, n - i, "set")) != 0)
        kind = SK_SET;
    else
        return 0;
    i = skip_space(p, n, i + k);
    if (kind == SK_SET) {
        if (keyword(p + i, n - i, "local") || keyword(p + i, n - i, "transaction") ||
            keyword(p + i, n - i, "constraints"))
            return 0; /* the transaction's, not the session's */
        if ((k = keyword(p + i, n - i, "session")) != 0) {
            size_t j = skip_space(p, n, i + k);
            if (keyword(p + j, n - j, "characteristics"))
                return 0;
            if (!keyword(p + j, n - j, "authorization"))
                i = j; /* SET SESSION name: the same as SET name */
        }
    } else if (keyword(p + i, n - i, "all") && skip_space(p, n, i + 3) == n) {
        return SK_CLEAR_SETS;
    }
    /* the setting's name: a word (SESSION AUTHORIZATION, TIME ZONE: two), or "quoted" */
    const char *alias = NULL;
    if (keyword(p + i, n - i, "time")) {
        alias = "timezone";
    } else if (keyword(p + i, n - i, "names")) {
        alias = "client_encoding";
    } else if (keyword(p + i, n - i, "schema")) {
        alias = "search_path";
    } else if ((k = keyword(p + i, n - i, "session")) != 0) {
        alias = "session_authorization";
    }
    if (alias != NULL) {
        e->klen = (uint32_t)strlen(alias);
        memcpy(e->key, alias, e->klen + 1);
    } else if (name_at(p, n, i, 1, e) == 0) {
        return 0;
    }
    if (kind == SK_SET) {
        if (n > SET_TEXT_MAX)
            return 0;
        e->text = (uint8_t *)p; /* borrowed: copied when kept */
        e->tlen = (uint32_t)n;
    } else {
        e->text = NULL;
        e->tlen = 0;
    }
    return kind;
}

/* ---- a connection's state --------------------------------------------------------------- */

/* arr (n elements of `size` bytes used of *cap) with room for one more, doubling from 4: the
 * array, perhaps moved, or NULL when out of memory (arr is then as it was). */
static void *grow(void *arr, uint32_t n, uint32_t *cap, size_t size)
{
    if (n < *cap)
        return arr;
    uint32_t c = *cap ? *cap * 2 : 4;
    void *m = realloc(arr, (size_t)c * size);
    if (m != NULL)
        *cap = c;
    return m;
}

static struct sstate *state_of(struct sw *sw, struct conn *c, int make);

static void entry_free(struct sentry *e)
{
    free(e->text);
    e->text = NULL;
}

static struct sentry *set_find(struct sset *s, const struct sentry *k)
{
    for (uint32_t i = 0; i < s->n; i++)
        if (s->e[i].isprep == k->isprep && s->e[i].klen == k->klen &&
            memcmp(s->e[i].key, k->key, k->klen) == 0)
            return &s->e[i];
    return NULL;
}

static void set_remove(struct sset *s, const struct sentry *k)
{
    struct sentry *e = set_find(s, k);
    if (e == NULL)
        return;
    s->hash -= e->h;
    entry_free(e);
    size_t i = (size_t)(e - s->e);
    memmove(e, e + 1, (s->n - i - 1) * sizeof(*e)); /* the client's order is the replay's */
    s->n--;
}

static void set_clear(struct sset *s)
{
    for (uint32_t i = 0; i < s->n; i++)
        entry_free(&s->e[i]);
    s->n = 0;
    s->hash = 0;
}

/* Only the settings (RESET ALL) or only the prepared statements (DEALLOCATE ALL). */
static void set_clear_kind(struct sset *s, uint8_t isprep)
{
    for (uint32_t i = 0; i < s->n;) {
        if (s->e[i].isprep != isprep) {
            i++;
            continue;
        }
        s->hash -= s->e[i].h;
        entry_free(&s->e[i]);
        memmove(&s->e[i], &s->e[i + 1], (s->n - i - 1) * sizeof(s->e[i]));
        s->n--;
    }
}

/* Puts a copy of e (an SK_SET) in s, in place of what its key had. -1: out of memory (s as
 * it was but without that key); 1: full (not kept). */
static int set_put(struct sset *s, const struct sentry *e)
{
    set_remove(s, e);
    if (s->n >= SETS_MAX)
        return 1;
    struct sentry *all = grow(s->e, s->n, &s->cap, sizeof(*all));
    if (all == NULL)
        return -1;
    s->e = all;
    struct sentry *d = &s->e[s->n];
    *d = *e;
    d->text = malloc(e->tlen ? e->tlen : 1);
    if (d->text == NULL)
        return -1;
    memcpy(d->text, e->text, e->tlen);
    s->n++;
    s->hash += d->h;
    return 0;
}

static int set_copy(struct sset *to, const struct sset *from)
{
    set_clear(to);
    for (uint32_t i = 0; i < from->n; i++)
        if (set_put(to, &from->e[i]) != 0)
            return -1;
    return 0;
}

/* ---- the client direction --------------------------------------------------------------- */

/* Is this key params.c's (a parameter the server reports and the switch already follows)? */
static int tracked_elsewhere(const struct sw *sw, const struct sentry *e)
{
    for (uint32_t i = 0; i < sw->ntracked; i++) {
        const struct ptrack *t = &sw->tracked[i];
        if (t->len != e->klen)
            continue;
        uint32_t x = 0;
        while (x < e->klen && lower((uint8_t)t->name[x]) == lower((uint8_t)e->key[x]))
            x++;
        if (x == e->klen)
            return 1;
    }
    return 0;
}

int sets_query(struct sw *sw, struct conn *c, struct conn *s, const uint8_t *sql, size_t n,
               uint32_t zs)
{
    (void)c;
    struct sentry e = {0};
    int kind = parse_cmd(sql, n, &e);
    if (kind == 0 || ((kind == SK_SET || kind == SK_RESET) && !e.isprep &&
                      tracked_elsewhere(sw, &e)))
        return 0;
    struct sstate *st = state_of(sw, s, 1);
    if (st == NULL)
        return -1;
    struct spend *pend = grow(st->pend, st->npend, &st->cappend, sizeof(*pend));
    if (pend == NULL)
        return -1;
    st->pend = pend;
    struct spend *pd = &st->pend[st->npend];
    pd->zs = zs;
    pd->kind = (uint8_t)kind;
    pd->ent = e;
    if (kind == SK_SET) {
        pd->ent.text = malloc(e.tlen);
        if (pd->ent.text == NULL)
            return -1;
        memcpy(pd->ent.text, e.text, e.tlen);
        pd->ent.h = hash_of(sw, &pd->ent);
    }
    st->npend++;
    return 0;
}

/* ---- the server direction --------------------------------------------------------------- */

void sets_server_error(struct sw *sw, struct conn *s)
{
    struct sstate *st = state_of(sw, s, 0);
    if (st != NULL)
        st->err = 1;
}

/* A ReadyForQuery (status already in s->sc.status): what its batch asked is now true, if the
 * batch had no error and ran outside a transaction block. */
void sets_server_rfq(struct sw *sw, struct conn *s)
{
    struct sstate *st = state_of(sw, s, 0);
    if (st == NULL)
        return;
    struct conn *c = s->peer;
    struct sstate *cs = c != NULL ? state_of(sw, c, 1) : NULL;
    int ok = !st->err && st->last_status == 'I' && s->sc.status == 'I';
    uint32_t keep = 0;
    for (uint32_t i = 0; i < st->npend; i++) {
        struct spend *pd = &st->pend[i];
        if (pd->zs > 0) {
            pd->zs--;
            st->pend[keep++] = *pd;
            continue;
        }
        if (ok && cs != NULL) {
            int r = 0;
            if (pd->kind == SK_CLEAR) {
                set_clear(&cs->mine);
                set_clear(&st->mine);
            } else if (pd->kind == SK_CLEAR_SETS || pd->kind == SK_CLEAR_PREP) {
                set_clear_kind(&cs->mine, pd->kind == SK_CLEAR_PREP);
                set_clear_kind(&st->mine, pd->kind == SK_CLEAR_PREP);
            } else if (pd->kind == SK_RESET) {
                set_remove(&cs->mine, &pd->ent);
                set_remove(&st->mine, &pd->ent);
            } else {
                r = set_put(&cs->mine, &pd->ent);
                if (r == 0)
                    r = set_put(&st->mine, &pd->ent);
            }
            if (r != 0) /* out of memory or full: the server's settings are no longer known */
                st->unknown = 1;
        }
        entry_free(&pd->ent);
    }
    st->npend = keep;
    st->err = 0;
    st->last_status = s->sc.status;
}

/* The server's pending commands are dropped: it is parked with its answers unknown, and what
 * it carries may be any of them. */
void sets_server_unsure(struct sw *sw, struct conn *s)
{
    struct sstate *st = state_of(sw, s, 0);
    if (st == NULL)
        return;
    for (uint32_t i = 0; i < st->npend; i++)
        entry_free(&st->pend[i].ent);
    if (st->npend > 0)
        st->unknown = 1;
    st->npend = 0;
}

/* DISCARD ALL ran on the server (the pooler's reset, or a client's): it carries nothing. */
void sets_server_cleared(struct sw *sw, struct conn *s)
{
    struct sstate *st = state_of(sw, s, 0);
    if (st != NULL) {
        set_clear(&st->mine);
        st->unknown = 0;
    }
}

/* Appends p[0..n) to q, growing it. */
static int append(uint8_t **q, size_t *len, size_t *cap, const void *p, size_t n)
{
    if (*len + n > *cap) {
        size_t c = *cap ? *cap : 256;
        while (c < *len + n)
            c *= 2;
        uint8_t *m = realloc(*q, c);
        if (m == NULL)
            return -1;
        *q = m;
        *cap = c;
    }
    memcpy(*q + *len, p, n);
    *len += n;
    return 0;
}

/* One Query message of its own: a statement that fails fails alone (a multi-statement Query
 * would roll the others back, the RESETs of what the last client left included). `a` then
 * `b` (quoted when `quote`: an identifier, its '"' doubled) make its text. */
static int add_query(uint8_t **q, size_t *len, size_t *cap, uint32_t *count, const char *a,
                     const void *b, size_t blen, int quote)
{
    size_t at = *len;
    uint8_t hdr[5] = {'Q', 0, 0, 0, 0};
    int rc = append(q, len, cap, hdr, 5);
    if (rc == 0)
        rc = append(q, len, cap, a, strlen(a));
    if (rc == 0 && quote)
        rc = append(q, len, cap, "\"", 1);
    const uint8_t *p = b;
    for (size_t x = 0; rc == 0 && x < blen; x++)
        rc = quote && p[x] == '"' ? append(q, len, cap, "\"\"", 2) : append(q, len, cap, &p[x], 1);
    if (rc == 0 && quote)
        rc = append(q, len, cap, "\"", 1);
    if (rc == 0)
        rc = append(q, len, cap, "", 1); /* its NUL */
    if (rc < 0)
        return -1;
    uint32_t mlen = (uint32_t)(*len - at - 1);
    (*q)[at + 1] = (uint8_t)(mlen >> 24);
    (*q)[at + 2] = (uint8_t)(mlen >> 16);
    (*q)[at + 3] = (uint8_t)(mlen >> 8);
    (*q)[at + 4] = (uint8_t)mlen;
    (*count)++;
    return 0;
}

/* At a link, before params.c's SET: the server is brought to the client's state by Queries
 * whose answers are swallowed. RESET (DEALLOCATE) of what only the server has, and DEALLOCATE
 * of a statement it has under the client's name with another text; then the client's
 * settings, then its statements, each as the client sent it and in its order. When the
 * server's state is unknown: SET SESSION AUTHORIZATION DEFAULT, RESET ALL and DEALLOCATE ALL
 * first (params.c then SETs every tracked value, ps.c prepares afresh). A failed one marks
 * the server's state unknown again (sets_replay_failed). */
int sets_link(struct sw *sw, struct conn *c, struct conn *s)
{
    struct sstate *cs = state_of(sw, c, 0), *ss = state_of(sw, s, 0);
    if (ss != NULL) {
        ss->last_status = 'I'; /* a link starts at a boundary */
        if (ss->npend > 0) /* never so at a boundary; if it were, they were another's */
            sets_server_unsure(sw, s);
    }
    int unknown = ss != NULL && ss->unknown;
    uint32_t cn = cs != NULL ? cs->mine.n : 0, sn = ss != NULL ? ss->mine.n : 0;
    if (!unknown && cn == sn &&
        (cs != NULL ? cs->mine.hash : 0) == (ss != NULL ? ss->mine.hash : 0))
        return 0;
    if (ss == NULL && (ss = state_of(sw, s, 1)) == NULL)
        return -1;
    uint8_t *q = NULL;
    size_t len = 0, cap = 0;
    uint32_t count = 0;
    int rc = 0;
    if (unknown) {
        rc = add_query(&q, &len, &cap, &count, "SET SESSION AUTHORIZATION DEFAULT", NULL, 0, 0);
        if (rc == 0)
            rc = add_query(&q, &len, &cap, &count, "RESET ALL", NULL, 0, 0);
        if (rc == 0)
            rc = add_query(&q, &len, &cap, &count, "DEALLOCATE ALL", NULL, 0, 0);
    }
    for (uint32_t i = 0; rc == 0 && !unknown && i < ss->mine.n; i++) {
        const struct sentry *e = &ss->mine.e[i];
        const struct sentry *m = cs != NULL ? set_find(&cs->mine, e) : NULL;
        if (m != NULL && (!e->isprep || m->h == e->h))
            continue;
        rc = add_query(&q, &len, &cap, &count, e->isprep ? "DEALLOCATE " : "RESET ", e->key,
                       e->klen, 1);
    }
    for (int prep = 0; prep < 2; prep++) /* settings first: a PREPARE may need search_path */
        for (uint32_t i = 0; rc == 0 && cs != NULL && i < cs->mine.n; i++) {
            const struct sentry *e = &cs->mine.e[i];
            if (e->isprep != prep)
                continue;
            const struct sentry *m = unknown ? NULL : set_find(&ss->mine, e);
            if (m != NULL && m->h == e->h)
                continue;
            rc = add_query(&q, &len, &cap, &count, "", e->text, e->tlen, 0);
        }
    if (rc == 0 && cs != NULL)
        rc = set_copy(&ss->mine, &cs->mine);
    else if (rc == 0)
        set_clear(&ss->mine);
    if (rc < 0) {
        free(q);
        ss->unknown = 1;
        return -1;
    }
    ss->unknown = 0;
    if (count == 0) { /* the same state after all */
        free(q);
        return 0;
    }
    rc = buf_append(&s->out, q, len);
    free(q);
    if (rc < 0) {
        ss->unknown = 1;
        return -1;
    }
    if (unknown) {
        params_forget(sw, s); /* RESET ALL: params.c SETs every value the client wants */
        ps_server_dropped(sw, s); /* DEALLOCATE ALL: ps.c prepares afresh */
    }
    s->swallow = (uint8_t)(s->swallow + count); /* <= 3 + 2 * SETS_MAX: fits */
    s->set_err = 0;
    return 0;
}

/* One of the switch's own swallowed queries failed (params_swallowed): what the server now
 * carries is not known, and its next link starts from RESET ALL. */
void sets_replay_failed(struct sw *sw, struct conn *s)
{
    struct sstate *st = state_of(sw, s, 0);
    if (st != NULL)
        st->unknown = 1;
}

/* What a client carries (SHOW CLIENTS): its settings' names and "PREPARE name" for its SQL
 * statements, ", "-separated, as far as they fit in out[0..cap) (cap > 0); the bytes written. */
size_t sets_describe(struct sw *sw, struct conn *c, char *out, size_t cap)
{
    struct sstate *st = state_of(sw, c, 0);
    size_t o = 0;
    for (uint32_t i = 0; st != NULL && i < st->mine.n; i++) {
        const struct sentry *e = &st->mine.e[i];
        size_t need = (o ? 2 : 0) + (e->isprep ? 8 : 0) + e->klen;
        if (o + need >= cap)
            break;
        if (o) {
            memcpy(out + o, ", ", 2);
            o += 2;
        }
        if (e->isprep) {
            memcpy(out + o, "PREPARE ", 8);
            o += 8;
        }
        memcpy(out + o, e->key, e->klen);
        o += e->klen;
    }
    out[o] = 0;
    return o;
}

uint32_t sets_count(struct sw *sw, struct conn *c)
{
    struct sstate *st = state_of(sw, c, 0);
    return st != NULL ? st->mine.n : 0;
}

/* ---- storage: hung off ps.c's per-connection state -------------------------------------- */

static struct sstate *state_of(struct sw *sw, struct conn *c, int make)
{
    struct sstate **at = (struct sstate **)ps_sets_slot(sw, c, make);
    if (at == NULL)
        return NULL;
    if (*at == NULL && make) {
        *at = calloc(1, sizeof(**at));
        if (*at != NULL)
            (*at)->last_status = 'I';
    }
    return *at;
}

void sets_free(void *p)
{
    struct sstate *st = p;
    if (st == NULL)
        return;
    set_clear(&st->mine);
    free(st->mine.e);
    for (uint32_t i = 0; i < st->npend; i++)
        entry_free(&st->pend[i].ent);
    free(st->pend);
    free(st);
}
