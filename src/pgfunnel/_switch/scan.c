/* scan.c: walks message headers of a byte stream read in arbitrary pieces and keeps the
 * transaction boundary: which client messages owe a ReadyForQuery, which open a batch. */
#include <string.h>

#include "scan.h"

static uint32_t be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* Frontend messages of a logged-in session. Anything else (password messages included: the
 * login is over) is refused in the pooler, as PgBouncer does, so that no client can make a
 * backend die of a protocol violation and be forked again. */
enum { K_UNKNOWN = 0, K_OWES, K_BATCH, K_COPY, K_TERMINATE, K_FLUSH };

static int client_kind(uint8_t type)
{
    switch (type) {
    case 'Q': /* Query */
    case 'S': /* Sync */
    case 'F': /* FunctionCall: answered by a ReadyForQuery of its own, like a Query */
        return K_OWES;
    case 'P': case 'B': case 'D': case 'E': case 'C':
        return K_BATCH;
    case 'H':
        /* Flush asks for what is owed so far and starts nothing: after a Sync (libpq's
         * pipeline mode sends one after each), the server is as free as before it. */
        return K_FLUSH;
    case 'd': case 'c': case 'f':
        /* Copy data belongs to the Query (or synced Execute) that started the COPY and owes
         * its ReadyForQuery already; outside a COPY the server ignores it. */
        return K_COPY;
    case 'X':
        return K_TERMINATE;
    default:
        return K_UNKNOWN;
    }
}

static int is_blank(uint8_t ch)
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v';
}

/* `word` (lower case) at p[0..n), in any case, not followed by a letter, digit or '_'. */
static int starts_word(const uint8_t *p, size_t n, const char *word, size_t k)
{
    if (n < k)
        return 0;
    for (size_t i = 0; i < k; i++) {
        uint8_t ch = p[i] >= 'A' && p[i] <= 'Z' ? (uint8_t)(p[i] + 32) : p[i];
        if (ch != (uint8_t)word[i])
            return 0;
    }
    if (n == k)
        return 1;
    uint8_t next = p[k];
    return !((next >= 'a' && next <= 'z') || (next >= 'A' && next <= 'Z') ||
             (next >= '0' && next <= '9') || next == '_' || next >= 0x80);
}

int scan_session_cmd(const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n && is_blank(p[i]))
        i++;
    return starts_word(p + i, n - i, "set", 3) || starts_word(p + i, n - i, "reset", 5) ||
           starts_word(p + i, n - i, "discard", 7) || starts_word(p + i, n - i, "prepare", 7) ||
           starts_word(p + i, n - i, "deallocate", 10);
}

/* `word` (lower case) at p[0..n), in any case? */
static int at_word(const uint8_t *p, size_t n, const char *word, size_t k)
{
    if (n < k)
        return 0;
    for (size_t i = 0; i < k; i++)
        if ((p[i] >= 'A' && p[i] <= 'Z' ? p[i] + 32 : p[i]) != (uint8_t)word[i])
            return 0;
    return 1;
}

/* Does p[0..n) call a session-level advisory lock function: pg_advisory_lock,
 * pg_try_advisory_lock, or their _shared forms, followed by '('? (An identifier such as
 * `advisory_locks`, or pg_advisory_xact_lock, is not one.) Every Query of a transaction pool
 * is looked at: memchr finds the underscores (most queries have few), and only around them are
 * bytes compared. */
static int has_advisory_lock(const uint8_t *p, size_t n)
{
    static const char word[] = "advisory_lock";
    const size_t before = 8, k = sizeof word - 1; /* "advisory" comes before the '_' */
    if (n < k)
        return 0;
    const uint8_t *end = p + n - (k - before - 1); /* one past the last place for the '_' */
    const uint8_t *u = p + before;
    while (u < end && (u = memchr(u, '_', (size_t)(end - u))) != NULL) {
        const uint8_t *w = u - before;
        size_t j = 0;
        while (j < k && (w[j] >= 'A' && w[j] <= 'Z' ? w[j] + 32 : w[j]) == (uint8_t)word[j])
            j++;
        u++;
        if (j != k)
            continue;
        /* what comes before: "pg_" or "pg_try_"; after: "_shared"?, blanks, '(' */
        size_t at = (size_t)(w - p);
        int pg = (at >= 3 && at_word(w - 3, 3, "pg_", 3)) ||
                 (at >= 7 && at_word(w - 7, 7, "pg_try_", 7));
        if (!pg)
            continue;
        size_t e = at + k;
        if (at_word(p + e, n - e, "_shared", 7))
            e += 7;
        while (e < n && is_blank(p[e]))
            e++;
        if (e < n && p[e] == '(')
            return 1;
    }
    return 0;
}

static size_t next_word(const uint8_t *p, size_t n, size_t i)
{
    while (i < n && !is_blank(p[i]))
        i++;
    while (i < n && is_blank(p[i]))
        i++;
    return i;
}

int scan_hazard(const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n && is_blank(p[i]))
        i++;
    const uint8_t *q = p + i;
    size_t m = n - i;
    if (starts_word(q, m, "listen", 6))
        return HZ_LISTEN;
    if (starts_word(q, m, "create", 6)) {
        size_t j = next_word(p, n, i);
        if (starts_word(p + j, n - j, "global", 6) || starts_word(p + j, n - j, "local", 5))
            j = next_word(p, n, j);
        if (starts_word(p + j, n - j, "temp", 4) || starts_word(p + j, n - j, "temporary", 9))
            return HZ_TEMP;
    }
    if (starts_word(q, m, "declare", 7)) {
        for (size_t j = 0; j + 4 <= m; j++)
            if (starts_word(q + j, m - j, "with", 4) && (j == 0 || !((q[j - 1] | 32) >= 'a' &&
                                                                     (q[j - 1] | 32) <= 'z'))) {
                size_t k = next_word(q, m, j);
                if (k > j + 4 && starts_word(q + k, m - k, "hold", 4))
                    return HZ_HOLD_CURSOR;
            }
    }
    /* pg_advisory_lock, pg_advisory_lock_shared, pg_try_advisory_lock(_shared); the
     * transaction-level ones are pg_advisory_xact_lock... and end with the transaction */
    if (has_advisory_lock(p, n))
        return HZ_ADVISORY_LOCK;
    return HZ_NONE;
}

int scan_wants_whole(uint8_t ps, uint8_t type, uint32_t len, const uint8_t *body, size_t avail)
{
    if (type == 'P')
        return 1;
    if (type == 'B' || type == 'D' || type == 'C')
        return (ps & SCAN_PS_STMTS) != 0;
    if (type != 'Q' || len < 4)
        return 0;
    uint32_t size = len - 4;
    if (size <= SCAN_HOLD_MAX) { /* looked at whole: a session command or a hazard */
        if (avail < size)
            return -1;
        return scan_session_cmd(body, size) || scan_hazard(body, size) != HZ_NONE;
    }
    uint32_t peek = SCAN_PEEK;
    if (avail < peek)
        return -1;
    return scan_session_cmd(body, peek);
}

/* Skip what is left of the current message body. */
static size_t skip_body(struct scan *s, size_t n)
{
    size_t take = s->skip < n ? s->skip : n;
    s->skip -= (uint32_t)take;
    return take;
}

size_t scan_client(struct scan *s, struct track *t, const uint8_t *p, size_t n,
                   uint32_t max_len, int *stop)
{
    size_t off = skip_body(s, n);
    *stop = SCAN_MORE;
    while (s->skip == 0 && n - off >= 5) {
        uint8_t type = p[off];
        uint32_t len = be32(p + off + 1);
        int kind = client_kind(type);
        if (kind == K_UNKNOWN) {
            *stop = SCAN_UNKNOWN_TYPE;
            return off;
        }
        if (len < 4) {
            *stop = SCAN_BAD_LENGTH;
            return off;
        }
        if (len > max_len) {
            *stop = SCAN_TOO_BIG;
            return off;
        }
        if (kind == K_TERMINATE) {
            *stop = len == 4 ? SCAN_TERMINATE : SCAN_BAD_LENGTH;
            return off;
        }
        if (s->ps) {
            /* what ps.c/sets.c must see is held until whole; then, on a link, handed to them
             * before a byte of it is consumed, or consumed whole while there is no server */
            int held = scan_wants_whole(s->ps, type, len, p + off + 5, n - off - 5);
            if (held < 0 || (held && n - off - 1 < len))
                return off;
            if (held && (s->ps & SCAN_PS_LINKED)) {
                *stop = SCAN_STMT;
                return off;
            }
        }
        if (kind == K_OWES) {
            if (t->owed < UINT32_MAX)
                t->owed++;
            t->batch = 0;
        } else if (kind == K_BATCH) {
            t->batch = 1;
        }
        off += 5;
        s->skip = len - 4;
        off += skip_body(s, n - off);
    }
    return off;
}

size_t scan_server(struct scan *s, struct track *t, const uint8_t *p, size_t n,
                   uint32_t max_len, int *stop)
{
    size_t off = skip_body(s, n);
    *stop = SCAN_MORE;
    while (s->skip == 0 && n - off >= 5) {
        uint8_t type = p[off];
        uint32_t len = be32(p + off + 1);
        if (len < 4) {
            *stop = SCAN_BAD_LENGTH;
            return off;
        }
        if (len > max_len) {
            *stop = SCAN_TOO_BIG;
            return off;
        }
        if (type == 'Z') {
            /* Held until whole: the status decides what happens to the bytes around it. */
            if (len != 5) {
                *stop = SCAN_BAD_LENGTH;
                return off;
            }
            if (n - off < 6)
                return off;
            uint8_t status = p[off + 5];
            if (status != 'I' && status != 'T' && status != 'E') {
                *stop = SCAN_BAD_LENGTH;
                return off;
            }
            s->status = status;
            if (t->owed > 0)
                t->owed--;
            *stop = SCAN_RFQ;
            return off + 6;
        }
        if (s->ps && (type == '1' || type == '3') && len == 4) {
            *stop = SCAN_PS;
            return off;
        }
        off += 5;
        s->skip = len - 4;
        off += skip_body(s, n - off);
    }
    return off;
}

int scan_may_release(const struct scan *client, size_t client_held, const struct scan *server,
                     size_t server_held, const struct track *t)
{
    return t->owed == 0 && !t->batch && server->status == 'I' && client->skip == 0 &&
           server->skip == 0 && client_held == 0 && server_held == 0;
}
