/* pool.c: per pool the idle servers (a LIFO stack) and the waiting clients (a FIFO queue),
 * linking, and the hand-off of a released server to the next waiter without leaving C. */
#include <stdlib.h>
#include <string.h>

#include "switch.h"

struct pool *pool_find(struct sw *sw, int64_t id)
{
    for (struct pool *p = sw->pools; p != NULL; p = p->next)
        if (p->id == id)
            return p;
    return NULL;
}

struct pool *pool_add(struct sw *sw, int64_t id, uint8_t mode)
{
    struct pool *p = pool_find(sw, id);
    if (p != NULL) {
        p->mode = mode; /* a RELOAD may change pool_mode; it applies at the next link */
        return p;
    }
    p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    p->id = id;
    p->mode = mode;
    p->check_delay = -1;
    p->next = sw->pools;
    sw->pools = p;
    return p;
}

/* ---- the lists -------------------------------------------------------------------------- */

static void idle_push(struct pool *p, struct conn *s)
{
    s->qprev = NULL;
    s->qnext = p->idle;
    if (p->idle != NULL)
        p->idle->qprev = s;
    else
        p->idle_tail = s;
    p->idle = s;
}

static void wq_push(struct pool *p, struct conn *c)
{
    c->qnext = NULL;
    c->qprev = p->wq_tail;
    if (p->wq_tail != NULL)
        p->wq_tail->qnext = c;
    else
        p->wq_head = c;
    p->wq_tail = c;
}

/* Takes a connection out of the idle stack or the wait queue, wherever it is. */
void pool_unlist(struct sw *sw, struct conn *c)
{
    struct pool *p = c->pool;
    (void)sw;
    if (c->state != SV_IDLE && c->state != CL_WAITING)
        return;
    /* Not in its list (taken off already, its state not changed yet): nothing to do. A second
     * unlist of the head must not take the rest of the list with it. */
    if (c->qprev == NULL && (c->state == SV_IDLE ? p->idle : p->wq_head) != c)
        return;
    if (c->state == SV_IDLE) {
        if (c->qprev != NULL)
            c->qprev->qnext = c->qnext;
        else
            p->idle = c->qnext;
        if (c->qnext != NULL)
            c->qnext->qprev = c->qprev;
        else
            p->idle_tail = c->qprev;
    } else if (c->state == CL_WAITING) {
        if (c->qprev != NULL)
            c->qprev->qnext = c->qnext;
        else
            p->wq_head = c->qnext;
        if (c->qnext != NULL)
            c->qnext->qprev = c->qprev;
        else
            p->wq_tail = c->qprev;
        if (p->wq_head == NULL)
            p->waiters_reported = p->reserve_reported = 0;
    } else {
        return;
    }
    c->qprev = c->qnext = NULL;
}

/* ---- linking ---------------------------------------------------------------------------- */

/* Gives server s to client c. What c sent while it had no server goes first. */
static void link(struct sw *sw, struct conn *c, struct conn *s)
{
    if (c->state == CL_WAITING) {
        stats_wait(&c->pool->st, sw->now_mono - c->wait_start);
        pool_unlist(sw, c);
        c->wait_start = 0;
    }
    conn_set_state(c, CL_LINKED);
    conn_set_state(s, SV_ACTIVE);
    c->pool->st.assign_count++;
    c->peer = s;
    s->peer = c;
    c->stmt_abs = c->out.done + (c->out.end - c->out.start);
    s->query_start = s->xact_start = sw->now_mono;
    s->request_wall = s->link_wall = sw->now_wall;
    /* the client's session settings first (sets.c: a RESET ALL there makes params.c SET
     * every tracked value), then its tracked parameters */
    if ((c->ps != 0 || s->ps != 0) && sets_link(sw, c, s) < 0) {
        conn_server_gone(sw, s, R_IO_ERROR);
        return;
    }
    if (params_link(sw, c, s) < 0) {
        conn_server_gone(sw, s, R_IO_ERROR);
        return;
    }
    struct buf *h = &c->hold;
    struct buf *o = &s->out;
    uint32_t held = h->end - h->start;
    uint32_t injected = o->end - o->start; /* the switch's own SETs, before the client's bytes */
    if (held > 0) {
        /* The server's buffer is empty here (a release needs it so); the hold buffer is
         * bounded by the same size. */
        uint32_t whole = h->scanned - h->start;
        if (buf_append(o, h->data + h->start, held) < 0) {
            conn_server_gone(sw, s, R_IO_ERROR);
            return;
        }
        o->scanned = o->end - held + whole;
    }
    buf_drop(sw, h);
    conn_schedule(sw, s);
    conn_schedule(sw, c);
    if (c->sc.ps)
        conn_client_linked(sw, c, s, injected); /* held messages ps.c rewrites for s */
}

/* The top of the idle stack, taken off it, or NULL. A top idle for server_check_delay or
 * longer is parked CHECK_NEEDED instead (Python runs the check query in talk mode and promotes
 * it back, or closes it) and NULL is returned: the client waits for that server (Python counts
 * it as coming, so no new one is opened for it). One check per pick, as PgBouncer. */
static struct conn *idle_take(struct sw *sw, struct pool *p)
{
    struct conn *s = p->idle;
    if (s == NULL)
        return NULL;
    if (p->check_delay >= 0 && sw->now_mono - s->idle_since >= p->check_delay) {
        pool_park(sw, s, R_CHECK_NEEDED);
        return NULL;
    }
    pool_unlist(sw, s);
    return s;
}

void pool_wants_server(struct sw *sw, struct conn *c)
{
    struct pool *p = c->pool;
    struct conn *s = p->paused ? NULL : idle_take(sw, p);
    if (s != NULL) {
        link(sw, c, s);
        return;
    }
    conn_set_state(c, CL_WAITING);
    c->wait_start = sw->now_mono;
    wq_push(p, c);
    if (!p->waiters_reported && !p->paused) {
        p->waiters_reported = 1;
        sw_post(sw, EV_WAITERS, 0, p->id, p->n[CL_WAITING]);
    }
}

void pool_park(struct sw *sw, struct conn *s, uint8_t reason)
{
    if (s->ps != 0)
        ps_server_unsure(sw, s); /* answers in flight: whether what they answer ran is unknown */
    pool_unlist(sw, s);
    s->peer = NULL;
    s->park_reason = reason;
    conn_set_state(s, SV_PARKED);
    sw_post(sw, EV_ATTENTION, s->id, s->pool->id, reason);
}

/* A server is free: to the first waiter, else on top of the idle stack. */
void pool_release(struct sw *sw, struct conn *s)
{
    struct pool *p = s->pool;
    s->peer = NULL;
    if (s->close_needed) {
        pool_park(sw, s, s->ps != 0 && ps_plan_changed(sw, s) ? R_PLAN_CHANGED : R_CLOSE_NEEDED);
        return;
    }
    struct conn *w = p->wq_head;
    if (w != NULL && !p->paused) {
        link(sw, w, s);
        return;
    }
    conn_set_state(s, SV_IDLE);
    s->idle_since = sw->now_mono; /* the stack stays ordered by it: server_idle_timeout */
    idle_push(p, s);
}

/* Transaction and statement mode: release the server once the transaction and any batch are
 * over and no message is half-way in either direction. */
void pool_check_release(struct sw *sw, struct conn *s)
{
    if (s->state != SV_ACTIVE || s->pool->mode == MODE_SESSION)
        return;
    struct conn *c = s->peer;
    if (c->pinned)
        return; /* HAZARDS_PIN: its session lives on this server until it leaves */
    if (s->out.start != s->out.end || s->swallow)
        return; /* client bytes not yet written to the server, or a partial header held, or
                 * the answer to the switch's SET still to come */
    if (!scan_may_release(&c->sc, s->out.end - s->out.scanned, &s->sc,
                          c->out.end - c->out.scanned, &c->tr))
        return;
    s->peer = NULL;
    c->peer = NULL;
    conn_set_state(c, CL_ACTIVE);
    c->idle_since = sw->now_mono; /* client_idle_timeout counts from here */
    if (c->out.start == c->out.end)
        buf_drop(sw, &c->out);
    pool_server_free(sw, s);
}

/* A client released its server at the boundary (transaction/statement mode): in a
 * reset_always pool (PgBouncer's server_reset_query_always) it is parked RESET_NEEDED for
 * Python's reset query, else released. */
void pool_server_free(struct sw *sw, struct conn *s)
{
    if (s->pool->reset_always && !s->close_needed)
        pool_park(sw, s, R_RESET_NEEDED);
    else
        pool_release(sw, s);
}

/* A client is leaving (or being closed): out of the queue, and its server judged. A server
 * that may hold this client's unfinished work never goes to another client. */
void pool_client_left(struct sw *sw, struct conn *c)
{
    if (c->state == CL_WAITING) {
        pool_unlist(sw, c);
        conn_set_state(c, CL_ACTIVE);
        return;
    }
    if (c->state != CL_LINKED)
        return;
    struct conn *s = c->peer;
    s->peer = NULL;
    c->peer = NULL;
    conn_set_state(c, CL_ACTIVE);
    /* A partial header at the tail was never sent: the server has not seen it. */
    s->out.end = s->out.scanned;
    int in_flight = c->sc.skip != 0 || s->sc.skip != 0 || c->out.scanned != c->out.end ||
                    s->out.start != s->out.end || s->swallow;
    uint8_t reason;
    s->cut = c->sc.skip != 0; /* the body of a message it has the header of never comes */
    if (c->sc.skip != 0 || c->tr.batch)
        reason = R_DIRTY_PARTIAL; /* PgBouncer's "client disconnect while server was not ready" */
    else if (in_flight || c->tr.owed != 0)
        reason = R_DIRTY_BUSY;
    else if (s->sc.status != 'I')
        reason = c->pinned ? R_PINNED_END : R_DIRTY_TXN; /* pinned: ROLLBACK, then the reset */
    else if (s->pool->mode == MODE_SESSION)
        reason = R_SESSION_END;
    else if (c->pinned)
        reason = R_PINNED_END; /* its session's state (a lock, a LISTEN...) is on the server */
    else
        reason = R_NONE;
    if (reason == R_NONE)
        pool_server_free(sw, s);
    else
        pool_park(sw, s, reason);
    /* Python judges what remains of this client's work on the server; the client's own
     * scan state goes with it. */
    c->tr.owed = 0;
    c->tr.batch = 0;
}

/* PAUSE (on) links no client to a server: waiters stay queued, released servers go idle, linked
 * clients keep theirs until their boundary. Resume (off) serves the waiters FIFO at once. */
void pool_pause(struct sw *sw, struct pool *p, int on)
{
    int was = p->paused;
    p->paused = on != 0;
    if (on || !was)
        return;
    /* Each server parked for its check is owed to one waiter: stop when every waiter has a
     * server or a check coming, or the stack is empty. */
    uint32_t checks = 0;
    while (p->wq_head != NULL && p->idle != NULL && checks < p->n[CL_WAITING]) {
        struct conn *s = idle_take(sw, p);
        if (s != NULL)
            link(sw, p->wq_head, s);
        else
            checks++;
    }
    if (p->wq_head != NULL) {
        p->waiters_reported = 1;
        sw_post(sw, EV_WAITERS, 0, p->id, p->n[CL_WAITING]);
    }
}

/* A CancelRequest for a client waiting in the queue (pgfunnel answers it; PgBouncer ignores
 * it): only at a message boundary (half a message cannot be dropped without breaking the
 * stream), it leaves the queue holding nothing, and Python answers what it was owed.
 * Returns the ReadyForQuery messages owed (> 0), -2 when none was owed (a batch was open:
 * the error alone), -1 when nothing was done (not waiting, or half a message held). */
int pool_cancel_wait(struct sw *sw, struct conn *c)
{
    if (c->kind != KIND_CLIENT || c->state != CL_WAITING || c->sc.skip != 0 ||
        c->hold.scanned != c->hold.end)
        return -1;
    pool_unlist(sw, c);
    conn_set_state(c, CL_ACTIVE);
    c->wait_start = 0;
    c->idle_since = sw->now_mono; /* client_idle_timeout counts from here */
    buf_free(&c->hold);
    int owed = c->tr.owed > (uint32_t)INT32_MAX ? INT32_MAX : (int)c->tr.owed;
    c->tr.owed = 0;
    c->tr.batch = 0;
    if (c->stalled) { /* it was not read while its hold buffer was full */
        c->stalled = 0;
        conn_schedule(sw, c);
    }
    return owed > 0 ? owed : -2;
}
