/* scan.c: walks message headers of a byte stream read in arbitrary pieces and keeps the
 * transaction boundary: which client messages owe a ReadyForQuery, which open a batch. */
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
           starts_word(p + i, n - i, "discard", 7);
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
            int held = type == 'P' || ((s->ps & SCAN_PS_STMTS) &&
                                       (type == 'B' || type == 'D' || type == 'C'));
            if (type == 'Q') {
                uint32_t peek = len - 4 < SCAN_PEEK ? len - 4 : SCAN_PEEK;
                if (n - off - 5 < peek)
                    return off;
                held = scan_session_cmd(p + off + 5, peek);
            }
            if (held && n - off - 1 < len)
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
