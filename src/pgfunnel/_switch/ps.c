/* ps.c: protocol-level named prepared statements through transaction and statement pooling
 * (max_prepared_statements). A client's Parse/Bind/Describe/Close name its own statements; a
 * server has them under the switch's names (PGFUNNEL_<n>, never reused in the process). On the way to
 * the server each of those messages is rewritten here, whole:
 *   - Parse of a named statement: the statement is the client's under that name. If the
 *     server has it already, a Close of a name that never exists takes its place, and its
 *     CloseComplete comes back to the client as the ParseComplete (the answer stays in order
 *     without the switch having to place an answer of its own). Else it is prepared under
 *     the server's next name.
 *   - Bind / Describe of a client's statement: its server name; a Parse of it goes first when
 *     this server lacks it (its ParseComplete is swallowed), after a Close of the least
 *     recently used one when the server holds max_prepared_statements (swallowed too).
 *   - Close of a client's statement: forgotten by the client; the server keeps it for the
 *     next client, and answers a Close of the never-existing name in order.
 * Every ParseComplete and CloseComplete of the server is matched, in order, to a queue entry
 * (pass, swallow, or pass as ParseComplete); a ReadyForQuery drops the entries of its batch
 * left unanswered (an error skipped them), and a Parse that never completed is forgotten. A
 * server whose state is unsure (its client left mid-batch) forgets what was in flight; one
 * that reports "cached plan must not change result type" is closed at its release. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "switch.h"

/* One distinct statement (the Parse body after its name), shared by every client and server
 * that has it. */
struct pstmt {
    struct pstmt *next; /* chain in sw->stab */
    uint64_t hash;
    uint32_t refs, len;
    uint8_t body[]; /* query NUL, parameter count, parameter types */
};

/* A client's statement under its own name. */
struct pcent {
    struct pstmt *st;
    uint64_t hash;
    uint32_t nlen;
    uint8_t name[];
};

struct pcli {
    struct pcent **tab; /* open addressing, linear probing, NULL: empty */
    uint32_t size, count;
    void *sets; /* sets.c: its session settings */
};

/* A statement prepared on a server. */
struct psent {
    struct pstmt *st; /* NULL: empty slot */
    uint64_t used;    /* the server's clock at its last use (LRU) */
    uint64_t no;      /* its name: PGFUNNEL_<no> (never reused in the process) */
    uint8_t pending;  /* its Parse was sent, ParseComplete not seen yet */
};

enum { QA_PASS = 0, QA_SWALLOW = 1, QA_TO_PARSE = 2 };

/* An answer the server owes: ParseComplete ('1') or CloseComplete ('3'). */
struct psq {
    struct pstmt *st; /* a Parse's statement: confirmed on this server by its '1' */
    uint32_t zs;      /* ReadyForQuery messages that come before it */
    uint8_t expect, action;
};

struct psrv {
    struct psent *tab; /* open addressing on the statement pointer */
    uint32_t size, count;
    struct psq *q; /* a ring */
    uint32_t qhead, qlen, qcap;
    uint8_t plan_changed;
    uint64_t clock;
    void *sets; /* sets.c: the session settings it carries, and those in flight */
};

/* Never the name of a statement the switch prepares (sw->ps_seq starts them at 1). */
static const char NONE_NAME[] = "PGFUNNEL_0";

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

static uint64_t hash_bytes(const struct sw *sw, const uint8_t *p, size_t n)
{
    uint64_t h = 1469598103934665603ull ^ sw->pseed;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

static uint32_t ptr_hash(const void *p)
{
    uint64_t x = (uint64_t)(uintptr_t)p * 0x9e3779b97f4a7c15ull;
    return (uint32_t)(x >> 32);
}

/* ---- slots: a connection's ps state by index (struct conn has room for 32 bits, not a
 * pointer, without growing) ------------------------------------------------------------ */

static void *slot_get(const struct sw *sw, uint32_t idx)
{
    return idx != 0 && idx <= sw->ps_nslots ? sw->ps_slots[idx - 1] : NULL;
}

static uint32_t slot_new(struct sw *sw, void *p)
{
    for (uint32_t i = 0; i < sw->ps_nslots; i++) {
        uint32_t j = (sw->ps_hint + i) % sw->ps_nslots;
        if (sw->ps_slots[j] == NULL) {
            sw->ps_slots[j] = p;
            sw->ps_hint = j + 1;
            return j + 1;
        }
    }
    uint32_t n = sw->ps_nslots ? sw->ps_nslots * 2 : 64;
    void **s = realloc(sw->ps_slots, (size_t)n * sizeof(*s));
    if (s == NULL)
        return 0;
    memset(s + sw->ps_nslots, 0, (size_t)(n - sw->ps_nslots) * sizeof(*s));
    sw->ps_slots = s;
    uint32_t j = sw->ps_nslots;
    sw->ps_nslots = n;
    sw->ps_slots[j] = p;
    sw->ps_hint = j + 1;
    return j + 1;
}

static struct pcli *cli_of(struct sw *sw, struct conn *c, int make)
{
    struct pcli *pc = slot_get(sw, c->ps);
    if (pc != NULL || !make)
        return pc;
    pc = calloc(1, sizeof(*pc));
    if (pc == NULL)
        return NULL;
    c->ps = slot_new(sw, pc);
    if (c->ps == 0) {
        free(pc);
        return NULL;
    }
    return pc;
}

static struct psrv *srv_of(struct sw *sw, struct conn *s, int make)
{
    struct psrv *ps = slot_get(sw, s->ps);
    if (ps != NULL || !make)
        return ps;
    ps = calloc(1, sizeof(*ps));
    if (ps == NULL)
        return NULL;
    s->ps = slot_new(sw, ps);
    if (s->ps == 0) {
        free(ps);
        return NULL;
    }
    return ps;
}

/* sets.c keeps its state beside this file's, under the same index. */
void **ps_sets_slot(struct sw *sw, struct conn *c, int make)
{
    if (c->kind == KIND_CLIENT) {
        struct pcli *pc = cli_of(sw, c, make);
        return pc != NULL ? &pc->sets : NULL;
    }
    struct psrv *ps = srv_of(sw, c, make);
    return ps != NULL ? &ps->sets : NULL;
}

/* ---- statements ------------------------------------------------------------------------- */

static void stmt_unref(struct sw *sw, struct pstmt *st)
{
    if (st == NULL || --st->refs > 0)
        return;
    struct pstmt **pp = &sw->stab[st->hash & (sw->stab_size - 1)];
    while (*pp != st)
        pp = &(*pp)->next;
    *pp = st->next;
    sw->stab_count--;
    sw->stab_bytes -= sizeof(*st) + st->len;
    free(st);
}

/* The statement with this body, one more reference to it; NULL when out of memory. */
static struct pstmt *stmt_intern(struct sw *sw, const uint8_t *body, uint32_t len)
{
    uint64_t h = hash_bytes(sw, body, len);
    if (sw->stab_size > 0) {
        for (struct pstmt *st = sw->stab[h & (sw->stab_size - 1)]; st != NULL; st = st->next)
            if (st->hash == h && st->len == len && memcmp(st->body, body, len) == 0) {
                st->refs++;
                return st;
            }
    }
    if (sw->stab_count >= sw->stab_size) {
        uint32_t size = sw->stab_size ? sw->stab_size * 2 : 256;
        struct pstmt **tab = calloc(size, sizeof(*tab));
        if (tab == NULL)
            return NULL;
        for (uint32_t i = 0; i < sw->stab_size; i++) {
            struct pstmt *st = sw->stab[i];
            while (st != NULL) {
                struct pstmt *next = st->next;
                st->next = tab[st->hash & (size - 1)];
                tab[st->hash & (size - 1)] = st;
                st = next;
            }
        }
        free(sw->stab);
        sw->stab = tab;
        sw->stab_size = size;
    }
    struct pstmt *st = malloc(sizeof(*st) + len);
    if (st == NULL)
        return NULL;
    st->hash = h;
    st->refs = 1;
    st->len = len;
    memcpy(st->body, body, len);
    st->next = sw->stab[h & (sw->stab_size - 1)];
    sw->stab[h & (sw->stab_size - 1)] = st;
    sw->stab_count++;
    sw->stab_bytes += sizeof(*st) + len;
    return st;
}

/* ---- a client's names ------------------------------------------------------------------- */

static uint32_t cli_find_slot(const struct pcli *pc, const uint8_t *name, uint32_t nlen,
                              uint64_t h)
{
    uint32_t mask = pc->size - 1;
    for (uint32_t i = (uint32_t)h & mask;; i = (i + 1) & mask) {
        struct pcent *e = pc->tab[i];
        if (e == NULL || (e->hash == h && e->nlen == nlen && memcmp(e->name, name, nlen) == 0))
            return i;
    }
}

static struct pcent *cli_find(struct sw *sw, struct pcli *pc, const uint8_t *name,
                              uint32_t nlen)
{
    if (pc == NULL || pc->count == 0)
        return NULL;
    return pc->tab[cli_find_slot(pc, name, nlen, hash_bytes(sw, name, nlen))];
}

static int cli_grow(struct pcli *pc)
{
    uint32_t size = pc->size ? pc->size * 2 : 16;
    struct pcent **tab = calloc(size, sizeof(*tab));
    if (tab == NULL)
        return -1;
    struct pcli next = {tab, size, 0, pc->sets};
    for (uint32_t i = 0; i < pc->size; i++) {
        struct pcent *e = pc->tab[i];
        if (e != NULL) {
            tab[cli_find_slot(&next, e->name, e->nlen, e->hash)] = e;
            next.count++;
        }
    }
    free(pc->tab);
    *pc = next;
    return 0;
}

/* Names `st` for the client (a Parse), replacing what the name held. */
static int cli_set(struct sw *sw, struct pcli *pc, const uint8_t *name, uint32_t nlen,
                   struct pstmt *st)
{
    if ((pc->count + 1) * 4 > pc->size * 3 && cli_grow(pc) < 0)
        return -1;
    uint64_t h = hash_bytes(sw, name, nlen);
    uint32_t i = cli_find_slot(pc, name, nlen, h);
    struct pcent *e = pc->tab[i];
    if (e != NULL) {
        stmt_unref(sw, e->st);
        e->st = st;
        return 0;
    }
    e = malloc(sizeof(*e) + nlen);
    if (e == NULL)
        return -1;
    e->st = st;
    e->hash = h;
    e->nlen = nlen;
    memcpy(e->name, name, nlen);
    pc->tab[i] = e;
    pc->count++;
    sw->ps_client_count++;
    return 0;
}

/* Removes slot i, moving later entries of its probe run back (no tombstones). */
static void cli_remove_at(struct sw *sw, struct pcli *pc, uint32_t i)
{
    uint32_t mask = pc->size - 1;
    struct pcent *e = pc->tab[i];
    stmt_unref(sw, e->st);
    free(e);
    pc->tab[i] = NULL;
    pc->count--;
    sw->ps_client_count--;
    for (uint32_t j = (i + 1) & mask; pc->tab[j] != NULL; j = (j + 1) & mask) {
        struct pcent *m = pc->tab[j];
        uint32_t home = (uint32_t)m->hash & mask;
        /* m may move to i if i lies cyclically in [home, j) */
        if ((j > i && (home <= i || home > j)) || (j < i && home <= i && home > j)) {
            pc->tab[i] = m;
            pc->tab[j] = NULL;
            i = j;
        }
    }
}

static void cli_clear(struct sw *sw, struct pcli *pc)
{
    for (uint32_t i = 0; i < pc->size; i++) {
        if (pc->tab[i] != NULL) {
            stmt_unref(sw, pc->tab[i]->st);
            free(pc->tab[i]);
            pc->tab[i] = NULL;
            sw->ps_client_count--;
        }
    }
    pc->count = 0;
}

/* ---- a server's statements ------------------------------------------------------------- */

static uint32_t srv_find_slot(const struct psrv *ps, const struct pstmt *st)
{
    uint32_t mask = ps->size - 1;
    for (uint32_t i = ptr_hash(st) & mask;; i = (i + 1) & mask)
        if (ps->tab[i].st == NULL || ps->tab[i].st == st)
            return i;
}

static struct psent *srv_find(struct psrv *ps, const struct pstmt *st)
{
    if (ps->count == 0)
        return NULL;
    struct psent *e = &ps->tab[srv_find_slot(ps, st)];
    return e->st != NULL ? e : NULL;
}

static int srv_grow(struct psrv *ps)
{
    uint32_t size = ps->size ? ps->size * 2 : 16;
    struct psent *tab = calloc(size, sizeof(*tab));
    if (tab == NULL)
        return -1;
    struct psrv next = *ps;
    next.tab = tab;
    next.size = size;
    for (uint32_t i = 0; i < ps->size; i++)
        if (ps->tab[i].st != NULL)
            tab[srv_find_slot(&next, ps->tab[i].st)] = ps->tab[i];
    free(ps->tab);
    ps->tab = tab;
    ps->size = size;
    return 0;
}

static void srv_remove_at(struct sw *sw, struct psrv *ps, uint32_t i)
{
    uint32_t mask = ps->size - 1;
    stmt_unref(sw, ps->tab[i].st);
    ps->tab[i].st = NULL;
    ps->count--;
    sw->ps_server_count--;
    for (uint32_t j = (i + 1) & mask; ps->tab[j].st != NULL; j = (j + 1) & mask) {
        uint32_t home = ptr_hash(ps->tab[j].st) & mask;
        if ((j > i && (home <= i || home > j)) || (j < i && home <= i && home > j)) {
            ps->tab[i] = ps->tab[j];
            ps->tab[j].st = NULL;
            i = j;
        }
    }
}

static void srv_forget(struct sw *sw, struct psrv *ps, const struct pstmt *st)
{
    if (ps->count == 0)
        return;
    uint32_t i = srv_find_slot(ps, st);
    if (ps->tab[i].st != NULL)
        srv_remove_at(sw, ps, i);
}

/* An answer to expect; a Parse's entry holds a reference to its statement. */
static int q_push(struct psrv *ps, uint8_t expect, uint8_t action, struct pstmt *st, uint32_t zs)
{
    if (ps->qlen == ps->qcap) {
        uint32_t cap = ps->qcap ? ps->qcap * 2 : 8;
        struct psq *q = malloc((size_t)cap * sizeof(*q));
        if (q == NULL)
            return -1;
        for (uint32_t i = 0; i < ps->qlen; i++)
            q[i] = ps->q[(ps->qhead + i) % ps->qcap];
        free(ps->q);
        ps->q = q;
        ps->qcap = cap;
        ps->qhead = 0;
    }
    struct psq *e = &ps->q[(ps->qhead + ps->qlen) % ps->qcap];
    e->expect = expect;
    e->action = action;
    e->st = st;
    e->zs = zs;
    if (st != NULL)
        st->refs++;
    ps->qlen++;
    return 0;
}

static void q_pop(struct sw *sw, struct psrv *ps)
{
    stmt_unref(sw, ps->q[ps->qhead].st);
    ps->qhead = (ps->qhead + 1) % ps->qcap;
    ps->qlen--;
}

/* A Parse that never completed: the statement is not on the server. */
static void q_drop_head(struct sw *sw, struct psrv *ps)
{
    struct psq *e = &ps->q[ps->qhead];
    if (e->expect == '1' && e->st != NULL) {
        struct psent *se = srv_find(ps, e->st);
        if (se != NULL && se->pending)
            srv_forget(sw, ps, e->st);
    }
    q_pop(sw, ps);
}

/* ---- building what goes to the server --------------------------------------------------- */

/* The scratch buffer the replacement of one client message is built in. */
static uint8_t *out_room(struct sw *sw, size_t need)
{
    if (sw->ps_outlen + need > sw->ps_outcap) {
        size_t cap = sw->ps_outcap ? sw->ps_outcap : 1024;
        while (cap < sw->ps_outlen + need)
            cap *= 2;
        uint8_t *p = realloc(sw->ps_out, cap);
        if (p == NULL)
            return NULL;
        sw->ps_out = p;
        sw->ps_outcap = cap;
    }
    uint8_t *p = sw->ps_out + sw->ps_outlen;
    sw->ps_outlen += need;
    return p;
}

static int name_of(uint64_t no, char *out)
{
    return snprintf(out, 32, "PGFUNNEL_%llu", (unsigned long long)no);
}

/* A message: type, then the parts (lengths given), then the length word filled in. */
static int emit(struct sw *sw, uint8_t type, const uint8_t *a, size_t alen, const uint8_t *b,
                size_t blen, const uint8_t *c, size_t clen)
{
    size_t len = 4 + alen + blen + clen;
    if (len > UINT32_MAX - 1)
        return -1;
    uint8_t *p = out_room(sw, 1 + len);
    if (p == NULL)
        return -1;
    p[0] = type;
    put32(p + 1, (uint32_t)len);
    p += 5;
    if (alen)
        memcpy(p, a, alen);
    if (blen)
        memcpy(p + alen, b, blen);
    if (clen)
        memcpy(p + alen + blen, c, clen);
    return 0;
}

/* The entry of st on this server, preparing it first when it lacks it (and making room). */
static struct psent *srv_ensure(struct sw *sw, struct conn *s, struct psrv *ps,
                                struct pstmt *st, uint8_t parse_action, uint32_t zs)
{
    struct psent *e = srv_find(ps, st);
    if (e != NULL) {
        e->used = ++ps->clock;
        return e;
    }
    uint32_t max = s->pool->ps_max;
    if (max > 0 && ps->count >= max) {
        /* the least recently used one that is not in flight goes */
        struct psent *old = NULL;
        for (uint32_t i = 0; i < ps->size; i++) {
            struct psent *x = &ps->tab[i];
            if (x->st != NULL && !x->pending && (old == NULL || x->used < old->used))
                old = x;
        }
        if (old != NULL) {
            char nm[32];
            int nl = name_of(old->no, nm);
            const uint8_t kind = 'S';
            if (emit(sw, 'C', &kind, 1, (const uint8_t *)nm, (size_t)nl + 1, NULL, 0) < 0 ||
                q_push(ps, '3', QA_SWALLOW, NULL, zs) < 0)
                return NULL;
            srv_remove_at(sw, ps, (uint32_t)(old - ps->tab));
        }
    }
    if ((ps->count + 1) * 4 > ps->size * 3 && srv_grow(ps) < 0)
        return NULL;
    char nm[32];
    uint64_t no = ++sw->ps_seq;
    int nl = name_of(no, nm);
    if (emit(sw, 'P', (const uint8_t *)nm, (size_t)nl + 1, st->body, st->len, NULL, 0) < 0 ||
        q_push(ps, '1', parse_action, st, zs) < 0)
        return NULL;
    e = &ps->tab[srv_find_slot(ps, st)];
    e->st = st;
    st->refs++;
    e->no = no;
    e->pending = 1;
    e->used = ++ps->clock;
    ps->count++;
    sw->ps_server_count++;
    s->pool->st.server_parse_count++;
    return e;
}

/* The length of the NUL-terminated string at p[0..n), or -1 without its NUL. */
static long cstr(const uint8_t *p, size_t n)
{
    const uint8_t *z = memchr(p, 0, n);
    return z == NULL ? -1 : (long)(z - p);
}

#define REFUSAL_MAX 512
static const char *const HAZARD_TEXT[] = {
    "", "a session-level advisory lock", "LISTEN", "a temporary table", "a cursor WITH HOLD",
};

/* Something that cannot survive transaction pooling (scan_hazard): Python hears of it (it
 * counts it per application and logs it once per client); the pool's pooling_hazards says
 * what else happens: warn (nothing), pin (the client keeps its server until it leaves), or
 * refuse (the statement is replaced by one that fails with 0A000 and says why, so that the
 * error comes back in its place). Returns 1 to refuse. */
static int hazard_seen(struct sw *sw, struct conn *c, int hz)
{
    uint8_t mode = c->pool->hazards;
    sw_post(sw, EV_HAZARD, c->id, c->pool->id, (uint32_t)hz | ((uint32_t)mode << 8));
    if (mode == HAZARDS_PIN)
        c->pinned = 1;
    return mode == HAZARDS_REFUSE;
}

/* The statement that stands in for a refused one: its text and NUL into out; its length
 * with the NUL. */
static size_t refusal(int hz, char *out, size_t cap)
{
    int n = snprintf(out, cap,
                     "DO $pgfunnel$BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', MESSAGE = "
                     "'pgfunnel: %s cannot survive transaction pooling', HINT = 'pooling_hazards"
                     " = refuse in the pooler''s configuration refused it; a session pool keeps "
                     "it'; END$pgfunnel$",
                     HAZARD_TEXT[hz]);
    return n > 0 && (size_t)n < cap ? (size_t)n + 1 : 0;
}

/* Builds in sw->ps_out what goes to server s in place of client message m (type, whole body
 * of blen bytes). 0: built; 1: pass it unchanged; -1: out of memory. A malformed message
 * passes unchanged: the server answers it with an error (not a '1' or '3'), as it would
 * without the pooler. */
static int rewrite(struct sw *sw, struct conn *c, struct conn *s, uint8_t type,
                   const uint8_t *body, uint32_t blen, uint32_t zs)
{
    struct pool *p = c->pool;
    struct psrv *ps = srv_of(sw, s, 1);
    if (ps == NULL)
        return -1;
    if (type == 'Q') { /* a session command or a hazard (scan.c looked) */
        long ql = cstr(body, blen);
        if (ql < 0)
            return 1;
        if (sets_query(sw, c, s, body, (size_t)ql, zs) < 0)
            return -1;
        int hz = scan_hazard(body, (size_t)ql);
        char sql[REFUSAL_MAX];
        size_t n = hz != HZ_NONE && hazard_seen(sw, c, hz) ? refusal(hz, sql, sizeof sql) : 0;
        if (n == 0)
            return 1;
        return emit(sw, 'Q', (const uint8_t *)sql, n, NULL, 0, NULL, 0) < 0 ? -1 : 0;
    }
    int stmts = (c->sc.ps & SCAN_PS_STMTS) != 0;
    if (type == 'P') {
        long nlen = cstr(body, blen);
        if (nlen < 0)
            return 1;
        long ql = nlen == 0 ? cstr(body + 1, blen - 1) : -1;
        if (ql >= 0 && scan_session_cmd(body + 1, (size_t)ql) &&
            sets_query(sw, c, s, body + 1, (size_t)ql, zs) < 0)
            return -1;
        /* a hazard: noted; refused, the statement stands in for the client's text (its
         * parameter types kept), tracked like any other */
        const uint8_t *rest = body + nlen + 1;
        uint32_t rlen = blen - (uint32_t)nlen - 1;
        long tl = cstr(rest, rlen);
        int hz = tl >= 0 ? scan_hazard(rest, (size_t)tl) : HZ_NONE;
        uint8_t alt[REFUSAL_MAX + 512];
        if (hz != HZ_NONE && hazard_seen(sw, c, hz)) {
            size_t n = refusal(hz, (char *)alt, REFUSAL_MAX);
            size_t types = rlen - (size_t)tl - 1;
            if (n > 0 && types <= sizeof alt - n) {
                memcpy(alt + n, rest + tl + 1, types);
            } else if (n > 0) { /* more than 127 parameter types: none declared (refused) */
                alt[n] = alt[n + 1] = 0;
                types = 2;
            }
            if (n > 0) {
                rest = alt;
                rlen = (uint32_t)(n + types);
            }
        }
        int replaced = rest == alt;
        if (!stmts || nlen == 0) {
            /* the unnamed statement (the client's own business, on this server), or a name
             * the switch does not follow */
            if (stmts && q_push(ps, '1', QA_PASS, NULL, zs) < 0)
                return -1;
            if (!replaced)
                return 1;
            return emit(sw, 'P', body, (size_t)nlen + 1, rest, rlen, NULL, 0) < 0 ? -1 : 0;
        }
        p->st.client_parse_count++;
        struct pcli *pc = cli_of(sw, c, 1);
        if (pc == NULL)
            return -1;
        struct pstmt *st = stmt_intern(sw, rest, rlen);
        if (st == NULL)
            return -1;
        if (cli_set(sw, pc, body, (uint32_t)nlen, st) < 0) {
            stmt_unref(sw, st);
            return -1;
        }
        struct psent *e = srv_find(ps, st);
        if (e != NULL) {
            /* prepared here already: a Close that changes nothing answers in its place */
            e->used = ++ps->clock;
            const uint8_t kind = 'S';
            if (emit(sw, 'C', &kind, 1, (const uint8_t *)NONE_NAME, sizeof NONE_NAME, NULL,
                     0) < 0 ||
                q_push(ps, '3', QA_TO_PARSE, NULL, zs) < 0)
                return -1;
            return 0;
        }
        return srv_ensure(sw, s, ps, st, QA_PASS, zs) == NULL ? -1 : 0;
    }
    if (!stmts)
        return 1;
    if (type == 'B') {
        long plen = cstr(body, blen);
        if (plen < 0)
            return 1;
        const uint8_t *name = body + plen + 1;
        long nlen = cstr(name, blen - (uint32_t)plen - 1);
        if (nlen < 0)
            return 1;
        if (nlen == 0)
            return 1;
        struct pcent *ce = cli_find(sw, slot_get(sw, c->ps), name, (uint32_t)nlen);
        if (ce == NULL) /* not the client's: the server answers (it does not exist) */
            return 1;
        p->st.bind_count++;
        struct psent *e = srv_ensure(sw, s, ps, ce->st, QA_SWALLOW, zs);
        if (e == NULL)
            return -1;
        char nm[32];
        int nl = name_of(e->no, nm);
        const uint8_t *rest = name + nlen + 1;
        return emit(sw, 'B', body, (size_t)plen + 1, (const uint8_t *)nm, (size_t)nl + 1, rest,
                    blen - (size_t)(rest - body)) < 0
                   ? -1
                   : 0;
    }
    /* Describe and Close: 'S' or 'P', then a name */
    if (blen < 2 || (body[0] != 'S' && body[0] != 'P'))
        return 1;
    long nlen = cstr(body + 1, blen - 1);
    if (nlen < 0)
        return 1;
    struct pcent *ce = NULL;
    if (body[0] == 'S' && nlen > 0)
        ce = cli_find(sw, slot_get(sw, c->ps), body + 1, (uint32_t)nlen);
    if (type == 'C') {
        if (ce == NULL)
            return q_push(ps, '3', QA_PASS, NULL, zs) < 0 ? -1 : 1;
        struct pcli *pc = slot_get(sw, c->ps);
        cli_remove_at(sw, pc, cli_find_slot(pc, body + 1, (uint32_t)nlen, ce->hash));
        const uint8_t kind = 'S';
        if (emit(sw, 'C', &kind, 1, (const uint8_t *)NONE_NAME, sizeof NONE_NAME, NULL, 0) < 0 ||
            q_push(ps, '3', QA_PASS, NULL, zs) < 0)
            return -1;
        return 0;
    }
    if (ce == NULL)
        return 1;
    struct psent *e = srv_ensure(sw, s, ps, ce->st, QA_SWALLOW, zs);
    if (e == NULL)
        return -1;
    char nm[32];
    int nl = name_of(e->no, nm);
    const uint8_t kind = 'S';
    return emit(sw, 'D', &kind, 1, (const uint8_t *)nm, (size_t)nl + 1, NULL, 0) < 0 ? -1 : 0;
}

/* Replaces b's bytes [at, at + cut) with p[0..n), the bytes after them moved. */
static int buf_splice(struct buf *b, uint32_t at, uint32_t cut, const uint8_t *p, size_t n)
{
    uint32_t tail = b->end - (at + cut);
    if (n > cut) {
        size_t grow = n - cut;
        if (grow > UINT32_MAX - b->end)
            return -1;
        if (b->alloc - b->end < grow) {
            /* more memory; never a compaction, which would move the offsets a caller keeps
             * (conn_client_linked walks with its own) */
            uint8_t *q = realloc(b->data, (size_t)b->end + grow);
            if (q == NULL)
                return -1;
            b->data = q;
            b->alloc = b->end + (uint32_t)grow;
        }
    }
    memmove(b->data + at + n, b->data + at + cut, tail);
    memcpy(b->data + at, p, n);
    b->end = at + (uint32_t)n + tail;
    return 0;
}

long ps_client_msg(struct sw *sw, struct conn *c, struct conn *s, struct buf *dst, uint32_t at,
                   uint32_t zs)
{
    uint8_t *m = dst->data + at;
    uint32_t len = be32(m + 1); /* scan.c checked it: 4 <= len <= max_packet, all here */
    sw->ps_outlen = 0;
    int r = rewrite(sw, c, s, m[0], m + 5, len - 4, zs);
    if (r == 1)
        return (long)len + 1;
    if (r < 0)
        return r;
    size_t n = sw->ps_outlen;
    if (buf_splice(dst, at, len + 1, sw->ps_out, n) < 0)
        return -1;
    return (long)n;
}

int ps_server_waiting(struct sw *sw, const struct conn *s)
{
    const struct psrv *ps = slot_get(sw, s->ps);
    return ps != NULL && ps->qlen > 0;
}

int ps_server_msg(struct sw *sw, struct conn *s, struct buf *dst)
{
    struct psrv *ps = slot_get(sw, s->ps);
    uint8_t *m = dst->data + dst->scanned;
    if (ps == NULL || ps->qlen == 0)
        return 5;
    struct psq *e = &ps->q[ps->qhead];
    if (e->expect != m[0])
        return -1; /* the answers are out of step with what was sent: never reused */
    if (e->expect == '1' && e->st != NULL) {
        struct psent *se = srv_find(ps, e->st);
        if (se != NULL)
            se->pending = 0;
    }
    uint8_t action = e->action;
    q_pop(sw, ps);
    if (action == QA_TO_PARSE) {
        m[0] = '1';
        return 5;
    }
    if (action == QA_PASS)
        return 5;
    memmove(m, m + 5, dst->end - dst->scanned - 5);
    dst->end -= 5;
    s->pool->st.bytes_sent -= 5;
    return 0;
}

void ps_server_rfq(struct sw *sw, struct conn *s)
{
    struct psrv *ps = slot_get(sw, s->ps);
    if (ps == NULL)
        return;
    while (ps->qlen > 0 && ps->q[ps->qhead].zs == 0)
        q_drop_head(sw, ps);
    for (uint32_t i = 0; i < ps->qlen; i++)
        ps->q[(ps->qhead + i) % ps->qcap].zs--;
    if (ps->sets != NULL)
        sets_server_rfq(sw, s);
}

void ps_server_unsure(struct sw *sw, struct conn *s)
{
    struct psrv *ps = slot_get(sw, s->ps);
    if (ps == NULL)
        return;
    if (ps->sets != NULL)
        sets_server_unsure(sw, s);
    while (ps->qlen > 0)
        q_drop_head(sw, ps);
    /* a Parse whose answer was not awaited (out of memory on the way) */
    for (uint32_t i = 0; i < ps->size; i++)
        if (ps->tab[i].st != NULL && ps->tab[i].pending) {
            srv_remove_at(sw, ps, i);
            i = (uint32_t)-1; /* entries moved back: look again from the start */
        }
}

static void srv_clear(struct sw *sw, struct psrv *ps)
{
    for (uint32_t i = 0; i < ps->size; i++)
        if (ps->tab[i].st != NULL) {
            stmt_unref(sw, ps->tab[i].st);
            ps->tab[i].st = NULL;
            sw->ps_server_count--;
        }
    ps->count = 0;
}

/* The server's statements are gone (sets.c sent DEALLOCATE ALL). */
void ps_server_dropped(struct sw *sw, struct conn *s)
{
    struct psrv *ps = slot_get(sw, s->ps);
    if (ps != NULL)
        srv_clear(sw, ps);
}

/* A CommandComplete body (tag NUL) from server s, linked or in talk. */
void ps_server_tag(struct sw *sw, struct conn *s, const uint8_t *body, size_t n)
{
    static const char discard[] = "DISCARD ALL", dealloc[] = "DEALLOCATE ALL";
    int all = (n == sizeof discard && memcmp(body, discard, n) == 0) ||
              (n == sizeof dealloc && memcmp(body, dealloc, n) == 0);
    if (!all)
        return;
    struct psrv *ps = slot_get(sw, s->ps);
    if (ps != NULL)
        srv_clear(sw, ps);
    if (n == sizeof discard)
        sets_server_cleared(sw, s); /* its settings went too */
    /* The client asked for it: its statements are gone with the server's. */
    if (s->state == SV_ACTIVE && s->peer != NULL) {
        struct pcli *pc = slot_get(sw, s->peer->ps);
        if (pc != NULL)
            cli_clear(sw, pc);
    }
}

/* An ErrorResponse body from server s: a statement's result type changed under it (DDL). */
void ps_server_error(struct sw *sw, struct conn *s, const uint8_t *body, size_t n)
{
    static const char plan[] = "cached plan must not change result type";
    int code = 0, text = 0;
    size_t i = 0;
    while (i < n && body[i] != 0) {
        uint8_t f = body[i++];
        const uint8_t *v = body + i;
        const uint8_t *z = memchr(v, 0, n - i);
        if (z == NULL)
            return;
        size_t vl = (size_t)(z - v);
        if (f == 'C' && vl == 5 && memcmp(v, "0A000", 5) == 0)
            code = 1;
        if (f == 'M' && vl == sizeof plan - 1 && memcmp(v, plan, vl) == 0)
            text = 1;
        i += vl + 1;
    }
    if (code && text) {
        struct psrv *ps = slot_get(sw, s->ps);
        if (ps != NULL)
            ps->plan_changed = 1;
        s->close_needed = 1;
    }
}

int ps_plan_changed(struct sw *sw, const struct conn *s)
{
    const struct psrv *ps = slot_get(sw, s->ps);
    return ps != NULL && ps->plan_changed;
}

uint32_t ps_count(struct sw *sw, const struct conn *c)
{
    if (c->kind == KIND_CLIENT) {
        const struct pcli *pc = slot_get(sw, c->ps);
        return pc != NULL ? pc->count : 0;
    }
    const struct psrv *ps = slot_get(sw, c->ps);
    return ps != NULL ? ps->count : 0;
}

void ps_free(struct sw *sw, struct conn *c)
{
    void *p = slot_get(sw, c->ps);
    if (p == NULL)
        return;
    if (c->kind == KIND_CLIENT) {
        struct pcli *pc = p;
        cli_clear(sw, pc);
        free(pc->tab);
        sets_free(pc->sets);
    } else {
        struct psrv *ps = p;
        while (ps->qlen > 0)
            q_pop(sw, ps);
        srv_clear(sw, ps);
        sets_free(ps->sets);
        free(ps->tab);
        free(ps->q);
    }
    free(p);
    sw->ps_slots[c->ps - 1] = NULL;
    c->ps = 0;
}

void ps_fini(struct sw *sw)
{
    free(sw->ps_slots);
    sw->ps_slots = NULL;
    sw->ps_nslots = 0;
    free(sw->ps_out);
    sw->ps_out = NULL;
    sw->ps_outcap = sw->ps_outlen = 0;
    for (uint32_t i = 0; i < sw->stab_size; i++) {
        struct pstmt *st = sw->stab[i];
        while (st != NULL) {
            struct pstmt *next = st->next;
            free(st);
            st = next;
        }
    }
    free(sw->stab);
    sw->stab = NULL;
    sw->stab_size = sw->stab_count = 0;
    sw->stab_bytes = 0;
}
