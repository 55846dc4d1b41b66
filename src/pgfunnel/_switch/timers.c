/* timers.c: the deadline sweep: on each timer tick, finds the connections whose timeout has
 * passed and reports each passed deadline once per episode (Python decides what follows). */
#include "switch.h"

#define SLOT(reason) ((reason) - DL_FIRST)

/* The timestamp a deadline measures from, for the episode `c` is in now; 0 when the deadline
 * does not apply to its present state. An episode is one value of that timestamp: a new
 * wait, query, release or idle push gives a new (later) value, and with it a new episode. */
static int64_t episode_start(const struct conn *c, uint8_t reason)
{
    const struct conn *s;
    switch (reason) {
    case R_QUERY_WAIT:
    case R_QUERY_WAIT_NOTIFY:
        return c->state == CL_WAITING ? c->wait_start : 0;
    case R_CLIENT_IDLE:
        /* A client holding no server and not queued, as PgBouncer: a linked client (session
         * mode) is never "idle", query_timeout and idle_transaction_timeout cover it. */
        return c->state == CL_ACTIVE ? c->idle_since : 0;
    case R_QUERY:
        /* Running: the server owes an answer, or an extended-protocol batch is open. */
        if (c->state != CL_LINKED || c->peer == NULL || (c->tr.owed == 0 && !c->tr.batch))
            return 0;
        return c->peer->query_start;
    case R_IDLE_TRANSACTION:
        /* Owed nothing, inside a transaction (T or E): since its last answer or the client's
         * last bytes, whichever came later. */
        if (c->state != CL_LINKED || c->peer == NULL || c->tr.owed != 0 || c->tr.batch)
            return 0;
        s = c->peer;
        if (s->sc.status == 'I')
            return 0;
        return s->query_start > c->idle_since ? s->query_start : c->idle_since;
    case R_SERVER_IDLE:
        return c->state == SV_IDLE ? c->idle_since : 0;
    case R_SERVER_LIFETIME:
        /* Once per server: Python marks it close_needed (or closes it). A server in talk
         * mode (login.c) ages too: marked, it is parked when promoted back. */
        if ((c->state != SV_IDLE && c->state != SV_ACTIVE && c->state != SV_TALK) ||
            c->close_needed)
            return 0;
        return c->connect_mono;
    default:
        return 0;
    }
}

/* Reports `reason` for `c` if its timeout has passed in this episode and it was not reported
 * yet; returns 1 if the timeout has passed (reported now or before). */
static int check(struct sw *sw, struct conn *c, uint8_t reason)
{
    int64_t limit = c->pool->to.us[SLOT(reason)];
    if (limit <= 0)
        return 0;
    int64_t start = episode_start(c, reason);
    if (start == 0 || sw->now_mono - start < limit)
        return 0;
    if (c->dl_at[SLOT(reason)] != start) {
        c->dl_at[SLOT(reason)] = start;
        sw_post(sw, EV_DEADLINE, c->id, c->pool->id, reason);
    }
    return 1;
}

/* The wait queue is FIFO, the idle stack LIFO, so both are ordered by the timestamp their
 * deadline measures from: each walk starts at the oldest end and stops at the first one
 * whose timeout has not passed. What it passes over was reported already (Python has not
 * acted yet, or chose not to: a notice, min_pool_size), so a walk costs the deadlines passed. */
static void sweep_pool(struct sw *sw, struct pool *p)
{
    const int64_t *to = p->to.us;
    if (to[SLOT(R_QUERY_WAIT)] > 0 || to[SLOT(R_QUERY_WAIT_NOTIFY)] > 0) {
        for (struct conn *c = p->wq_head; c != NULL; c = c->qnext) {
            int passed = check(sw, c, R_QUERY_WAIT);
            passed |= check(sw, c, R_QUERY_WAIT_NOTIFY);
            if (!passed)
                break;
        }
    }
    if (to[SLOT(R_SERVER_IDLE)] > 0) {
        for (struct conn *s = p->idle_tail; s != NULL; s = s->qprev)
            if (!check(sw, s, R_SERVER_IDLE))
                break;
    }
    /* The reserve pool: once per queue episode (again after the queue has emptied), as
     * EV_WAITERS; the oldest waiter is the queue's head. */
    int64_t reserve = to[SLOT(R_RESERVE)];
    if (reserve > 0 && !p->reserve_reported && p->wq_head != NULL &&
        sw->now_mono - p->wq_head->wait_start >= reserve) {
        p->reserve_reported = 1;
        sw_post(sw, EV_DEADLINE, 0, p->id, R_RESERVE);
    }
}

/* Does some pool need the sweep over every connection (the deadlines of linked clients,
 * idle clients and server lifetimes follow no list's order)? */
static int needs_sweep(const struct pool *p)
{
    return p->to.us[SLOT(R_QUERY)] > 0 || p->to.us[SLOT(R_IDLE_TRANSACTION)] > 0 ||
           p->to.us[SLOT(R_CLIENT_IDLE)] > 0 || p->to.us[SLOT(R_SERVER_LIFETIME)] > 0;
}

void timers_tick(struct sw *sw)
{
    sw->ticks++;
    int sweep = 0;
    for (struct pool *p = sw->pools; p != NULL; p = p->next) {
        sweep_pool(sw, p);
        sweep |= needs_sweep(p);
    }
    if (!sweep)
        return;
    for (uint32_t i = 0; i < sw->nslots; i++) {
        struct conn *c = sw->slots[i];
        if (c == NULL)
            continue;
        switch (c->state) {
        case CL_ACTIVE:
            check(sw, c, R_CLIENT_IDLE);
            break;
        case CL_LINKED: /* one of the two applies, by what the server owes */
            check(sw, c, R_QUERY);
            check(sw, c, R_IDLE_TRANSACTION);
            break;
        case SV_IDLE:
        case SV_ACTIVE:
        case SV_TALK:
            check(sw, c, R_SERVER_LIFETIME);
            break;
        default:
            break;
        }
    }
}

/* New timeouts for a pool; the timer runs while any pool has one. Episodes already reported
 * stay reported: a changed timeout applies to the next ones (and to those not reported). */
int timers_set(struct sw *sw, struct pool *p, const struct timeouts *to)
{
    p->to = *to;
    int any = 0;
    for (struct pool *q = sw->pools; q != NULL && !any; q = q->next)
        for (size_t i = 0; i < sizeof(q->to.us) / sizeof(q->to.us[0]); i++)
            any |= q->to.us[i] > 0;
    return loop_timer(sw, any);
}

/* Python acts on a DEADLINE event, atomically, only if the episode it reported is still the
 * connection's current one: an event Python reads late (the waiter got its server, the idle
 * client sent a query, the idle server was taken) then does nothing and returns 0. Closes are
 * quiet (no EV_CLOSED): Python asked for them. Returns 1 if it acted, -1 on no memory. */
int timers_expire(struct sw *sw, struct conn *c, uint8_t reason, const uint8_t *msg, size_t len)
{
    if (reason < DL_FIRST || reason > R_SERVER_LIFETIME)
        return 0;
    int64_t start = episode_start(c, reason);
    if (start == 0 || c->dl_at[SLOT(reason)] != start)
        return 0;
    struct conn *s;
    switch (reason) {
    case R_QUERY_WAIT_NOTIFY:
        /* The client waits on: `msg` (a NoticeResponse) goes out, the wait goes on. */
        if (buf_append(&c->out, msg, len) < 0)
            return -1;
        conn_schedule(sw, c);
        return 1;
    case R_QUERY_WAIT:
    case R_CLIENT_IDLE:
        c->quiet = 1;
        conn_close_with(sw, c, msg, len, R_NONE);
        return 1;
    case R_QUERY:
    case R_IDLE_TRANSACTION:
        /* Only closing the server stops its query or ends its transaction (as PgBouncer); the
         * client gets `msg` and is closed after it. */
        s = c->peer;
        s->peer = NULL;
        c->peer = NULL;
        conn_set_state(c, CL_ACTIVE);
        c->quiet = 1;
        conn_close_with(sw, c, msg, len, R_NONE);
        conn_destroy(sw, s, R_NONE, 0);
        return 1;
    case R_SERVER_IDLE:
        conn_end_server(sw, c, msg, len); /* `msg`: its Terminate */
        return 1;
    case R_SERVER_LIFETIME:
        /* In use (or in talk mode): parked when released (promoted); idle: parked now.
         * Python gets ATTENTION CLOSE_NEEDED either way and closes it with its log line. */
        c->close_needed = 1;
        if (c->state == SV_IDLE)
            pool_park(sw, c, R_CLOSE_NEEDED);
        return 1;
    default:
        return 0;
    }
}
