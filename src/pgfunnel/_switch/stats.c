/* stats.c: the per-pool counters (transactions, queries, bytes, times, the wait histogram). */
#include "switch.h"

/* The bounds of pool.scheduler.WAIT_BUCKETS, in µs; a test keeps the two equal. */
const int64_t wait_bounds_us[WAIT_BUCKETS - 1] = {
    1000, 5000, 10000, 50000, 100000, 500000, 1000000, 2500000, 5000000, 10000000, 30000000,
    60000000, 120000000,
};

static uint64_t since(int64_t now, int64_t then)
{
    return then > 0 && now > then ? (uint64_t)(now - then) : 0;
}

void stats_wait(struct stats *st, int64_t us)
{
    if (us < 0)
        us = 0;
    st->wait_us += (uint64_t)us;
    int i = 0;
    while (i < WAIT_BUCKETS - 1 && us > wait_bounds_us[i])
        i++;
    st->wait_hist[i]++;
}

/* A ReadyForQuery ends a query; one that says idle ends a transaction. */
void stats_rfq(struct sw *sw, struct conn *s, uint8_t status)
{
    struct stats *st = &s->pool->st;
    int64_t now = sw->now_mono;
    st->query_count++;
    st->query_us += since(now, s->query_start);
    s->query_start = now; /* a pipelined next query runs from here */
    if (status == 'I') {
        st->xact_count++;
        st->xact_us += since(now, s->xact_start);
        s->xact_start = now;
    }
}

/* The client starts a request on an idle link: time it from here, not from the last answer. */
void stats_request(struct sw *sw, struct conn *s)
{
    s->query_start = sw->now_mono;
    if (s->sc.status == 'I')
        s->xact_start = sw->now_mono;
}
