/* fuzz_scan.c: libFuzzer harness over the switch's framing and boundary code (scan.c).
 *
 * The input is a byte stream plus a seed for how it is split into reads. The stream is scanned
 * twice per direction: in one piece, and in pieces through a buffer that keeps what a call did
 * not consume, as conn.c does. Both must agree on every ReadyForQuery, the stop and its offset
 * and the final boundary state; the unconsumed rest is never more than a header. The same
 * bytes go through the SQL looks of a transaction pool (scan_hazard, scan_session_cmd,
 * scan_wants_whole), which must stay inside them. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "scan.h"

#define CHECK(cond)                                                                          \
    do {                                                                                     \
        if (!(cond))                                                                         \
            __builtin_trap();                                                                \
    } while (0)

struct outcome {
    struct scan sc;
    struct track tr;
    int stop;
    size_t stop_at; /* absolute offset of the stop, or the bytes consumed on SCAN_MORE */
    uint32_t nrfq;
    size_t rfq_at[64];
    uint8_t rfq_status[64];
};

static size_t run(int server, struct outcome *o, const uint8_t *p, size_t n, uint32_t max,
                  size_t base)
{
    size_t off = 0;
    for (;;) {
        int stop;
        size_t used = server ? scan_server(&o->sc, &o->tr, p + off, n - off, max, &stop)
                             : scan_client(&o->sc, &o->tr, p + off, n - off, max, &stop);
        CHECK(used <= n - off);
        off += used;
        if (stop == SCAN_RFQ) {
            CHECK(server);
            if (o->nrfq < 64) {
                o->rfq_at[o->nrfq] = base + off;
                o->rfq_status[o->nrfq] = o->sc.status;
            }
            o->nrfq++;
            continue;
        }
        o->stop = stop;
        return off;
    }
}

static void whole(int server, struct outcome *o, const uint8_t *p, size_t n, uint32_t max)
{
    memset(o, 0, sizeof(*o));
    o->sc.status = 'I';
    size_t off = run(server, o, p, n, max, 0);
    o->stop_at = off;
    if (o->stop == SCAN_MORE)
        CHECK(n - off < 6); /* at most a header (or a ReadyForQuery without its status) */
}

static void pieces(int server, struct outcome *o, const uint8_t *p, size_t n, uint32_t max,
                   uint32_t seed)
{
    uint8_t buf[64];
    size_t held = 0, fed = 0;
    memset(o, 0, sizeof(*o));
    o->sc.status = 'I';
    while (fed < n) {
        seed = seed * 1103515245u + 12345u;
        size_t take = 1 + (seed >> 16) % 17;
        if (take > n - fed)
            take = n - fed;
        if (take > sizeof(buf) - held)
            take = sizeof(buf) - held;
        memcpy(buf + held, p + fed, take);
        size_t len = held + take;
        size_t base = fed - held;
        fed += take;
        size_t off = run(server, o, buf, len, max, base);
        if (o->stop != SCAN_MORE) {
            o->stop_at = base + off;
            return;
        }
        held = len - off;
        CHECK(held < 6);
        memmove(buf, buf + off, held);
    }
    o->stop_at = n - held;
}

static void compare(const struct outcome *a, const struct outcome *b)
{
    CHECK(a->stop == b->stop);
    CHECK(a->stop_at == b->stop_at);
    CHECK(a->nrfq == b->nrfq);
    for (uint32_t i = 0; i < a->nrfq && i < 64; i++) {
        CHECK(a->rfq_at[i] == b->rfq_at[i]);
        CHECK(a->rfq_status[i] == b->rfq_status[i]);
    }
    CHECK(a->sc.status == b->sc.status);
    CHECK(a->tr.owed == b->tr.owed);
    CHECK(a->tr.batch == b->tr.batch);
    if (a->stop == SCAN_MORE)
        CHECK(a->sc.skip == b->sc.skip);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    uint32_t seed = data[0];
    uint32_t max = data[1] & 1 ? 0x7fffffffu : 16u + data[1];
    const uint8_t *p = data + 2;
    size_t n = size - 2;
    /* The SQL looks (ps.c, sets.c): pure, read only within p[0..n), any bytes */
    int hz = scan_hazard(p, n);
    CHECK(hz >= HZ_NONE && hz <= HZ_HOLD_CURSOR);
    CHECK(scan_session_cmd(p, n) <= 1);
    if (n >= 5) {
        uint32_t len = ((uint32_t)p[1] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 8) | p[4];
        int w = scan_wants_whole(data[1], p[0], len, p + 5, n - 5);
        CHECK(w >= -1 && w <= 1);
    }
    for (int server = 0; server < 2; server++) {
        struct outcome a, b;
        whole(server, &a, p, n, max);
        pieces(server, &b, p, n, max, seed);
        compare(&a, &b);
        /* A release is only ever possible at a message boundary of both directions. */
        struct scan other = {.skip = 0, .status = 'I'};
        if (scan_may_release(server ? &other : &a.sc, 0, server ? &a.sc : &other, 0, &a.tr))
            CHECK(a.sc.skip == 0 && a.tr.owed == 0 && !a.tr.batch);
    }
    return 0;
}
