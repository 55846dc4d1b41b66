/* loop.c: the switch's thread and its epoll set (the only file with event-loop calls, so that
 * kqueue can follow), the wake-up from Python and the event fd Python watches. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "switch.h"

#define MAX_EVENTS 256

int loop_init(struct sw *sw)
{
    pthread_mutex_init(&sw->evlock, NULL);
    sw->lazy_ms = -1;
    sw->epfd = epoll_create1(EPOLL_CLOEXEC);
    sw->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    sw->ev_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    sw->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (sw->epfd < 0 || sw->wake_fd < 0 || sw->ev_fd < 0 || sw->timer_fd < 0)
        return -1;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.ptr = NULL};
    if (epoll_ctl(sw->epfd, EPOLL_CTL_ADD, sw->wake_fd, &ev) < 0)
        return -1;
    /* Registered once, disarmed: it ticks only while some pool has a timeout. */
    struct epoll_event tev = {.events = EPOLLIN | EPOLLET, .data.ptr = &sw->timer_fd};
    return epoll_ctl(sw->epfd, EPOLL_CTL_ADD, sw->timer_fd, &tev);
}

/* Arms (every tick_ms) or disarms the deadline timer; called with the lock held, from either
 * thread (a set_timeouts). */
int loop_timer(struct sw *sw, int on)
{
    if (sw->timer_on == !!on)
        return 0;
    struct itimerspec its = {0};
    if (on) {
        its.it_interval.tv_sec = sw->tick_ms / 1000;
        its.it_interval.tv_nsec = (long)(sw->tick_ms % 1000) * 1000000L;
        its.it_value = its.it_interval;
    }
    if (timerfd_settime(sw->timer_fd, 0, &its, NULL) < 0)
        return -1;
    sw->timer_on = !!on;
    return 0;
}

/* SUSPEND (on): no pooled connection is read; what the buffers hold is still written.
 * Listeners and connections in login or talk mode go on (login.c): the console stays
 * reachable, and a client that logs in meanwhile waits in its pool, unread. Epoll's edges keep setting `readable` meanwhile (only a read clears it), so
 * resuming (off) runs every connection whose flag is set: nothing readable is forgotten. */
void loop_suspend(struct sw *sw, int on)
{
    int was = sw->suspended;
    sw->suspended = on != 0;
    if (on || !was)
        return;
    for (uint32_t i = 0; i < sw->nslots; i++) {
        struct conn *c = sw->slots[i];
        if (c != NULL && c->fd >= 0 && c->readable)
            conn_schedule(sw, c);
    }
}

void loop_fini(struct sw *sw)
{
    if (sw->epfd >= 0)
        close(sw->epfd);
    if (sw->wake_fd >= 0)
        close(sw->wake_fd);
    if (sw->ev_fd >= 0)
        close(sw->ev_fd);
    if (sw->timer_fd >= 0)
        close(sw->timer_fd);
    sw->epfd = sw->wake_fd = sw->ev_fd = sw->timer_fd = -1;
    pthread_mutex_destroy(&sw->evlock);
}

/* Edge-triggered, every interest at once, registered once: no epoll_ctl per transaction. */
int loop_add(struct sw *sw, struct conn *c)
{
    struct epoll_event ev = {
        .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
        .data.ptr = c,
    };
    return epoll_ctl(sw->epfd, EPOLL_CTL_ADD, c->fd, &ev);
}

void loop_del(struct sw *sw, struct conn *c)
{
    epoll_ctl(sw->epfd, EPOLL_CTL_DEL, c->fd, NULL);
}

void loop_wake(struct sw *sw)
{
    uint64_t one = 1;
    ssize_t n = write(sw->wake_fd, &one, sizeof(one));
    (void)n; /* a full counter already means "wake up" */
}

static int64_t clock_us(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void sw_clock(struct sw *sw)
{
    sw->now_mono = clock_us(CLOCK_MONOTONIC);
    sw->now_wall = clock_us(CLOCK_REALTIME);
}

/* Queues an event for Python. The event fd becomes readable at the end of the batch, unless
 * Python was woken already and has not drained the queue yet. A kind or'ed with EV_LAZY wakes
 * nobody: sw_flush_events writes the fd LAZY_US later, or once LAZY_MAX events wait. A storm
 * of logins and closes thus costs Python one wake-up per few milliseconds, not two per login,
 * and Python still hears every event in the order it came. `data` is copied (a login message,
 * an errno's text). -1: no memory (the event is lost; a MESSAGE's caller closes the
 * connection). */
int sw_post_data(struct sw *sw, uint8_t kind, uint64_t conn, int64_t pool, uint32_t reason,
                 const uint8_t *data, size_t len)
{
    uint8_t *copy = NULL;
    int lazy = (kind & EV_LAZY) != 0;
    kind &= (uint8_t)~EV_LAZY;
    if (len > 0) {
        if (len > UINT32_MAX || (copy = malloc(len)) == NULL)
            return -1;
        memcpy(copy, data, len);
    }
    pthread_mutex_lock(&sw->evlock);
    if (sw->nev == sw->evcap) {
        size_t cap = sw->evcap ? sw->evcap * 2 : 64;
        struct event *q = realloc(sw->evq, cap * sizeof(*q));
        if (q == NULL) {
            pthread_mutex_unlock(&sw->evlock);
            free(copy);
            return -1;
        }
        sw->evq = q;
        sw->evcap = cap;
    }
    sw->evq[sw->nev++] = (struct event){.conn = conn, .pool = pool, .reason = reason,
                                        .kind = kind, .data = copy, .len = (uint32_t)len,
                                        .at = sw->now_mono};
    if (!lazy || sw->nev >= LAZY_MAX)
        sw->ev_signal = !sw->ev_awake;
    else if (sw->lazy_due == 0)
        sw->lazy_due = sw->now_mono + LAZY_US;
    pthread_mutex_unlock(&sw->evlock);
    return 0;
}

void sw_post(struct sw *sw, uint8_t kind, uint64_t conn, int64_t pool, uint32_t reason)
{
    /* Without memory the event is lost: Python still learns of it from the next snapshot. */
    (void)sw_post_data(sw, kind, conn, pool, reason, NULL, 0);
}

/* Makes the event fd readable if an event Python must hear came since the last call, or a lazy
 * one is due: at the end of each batch of the loop and of each Python command, not at each
 * event, so that Python is woken once for a batch. `now`: lazy events count as due (a command
 * runs in Python's thread, which is awake anyway, and the loop may sleep with no timeout). */
void sw_flush_events(struct sw *sw, int now)
{
    pthread_mutex_lock(&sw->evlock);
    int signal = sw->ev_signal || (!sw->ev_awake && sw->lazy_due != 0 &&
                                   (now || sw->now_mono >= sw->lazy_due));
    sw->ev_signal = 0;
    if (signal)
        sw->ev_awake = 1;
    int64_t due = sw->ev_awake ? 0 : sw->lazy_due;
    pthread_mutex_unlock(&sw->evlock);
    /* The loop's next epoll_wait lasts until then at most (rounded up to a millisecond). A
     * drain meanwhile can only make that wake-up a spurious one. */
    int64_t left = due - sw->now_mono;
    sw->lazy_ms = due == 0 ? -1 : left <= 0 ? 0 : (int)((left + 999) / 1000);
    if (signal) {
        uint64_t one = 1;
        ssize_t n = write(sw->ev_fd, &one, sizeof(one));
        (void)n; /* a full counter already means "readable" */
    }
}

/* Forgets the queued events (and their data): at shutdown, and in the fuzz harnesses. */
void sw_drop_events(struct sw *sw)
{
    for (size_t i = 0; i < sw->nev; i++)
        free(sw->evq[i].data);
    sw->nev = 0;
}

/* Runs the connections queued for another turn, only those queued before this call: one
 * that queues itself again waits for the next batch. */
static void run_todo(struct sw *sw)
{
    struct conn *last = sw->todo_tail;
    while (sw->todo_head != NULL) {
        struct conn *c = sw->todo_head;
        sw->todo_head = c->todo_next;
        if (sw->todo_head == NULL)
            sw->todo_tail = NULL;
        c->todo_next = NULL;
        c->scheduled = 0;
        conn_service(sw, c);
        if (c == last)
            break;
    }
}

/* One turn of the loop: wait (without the lock) for ready sockets, handle them, run the
 * to-do list, free what was closed. Called with the lock held; timeout_ms < 0: no limit (0
 * anyway while work is queued). */
void loop_once(struct sw *sw, int timeout_ms)
{
    struct epoll_event evs[MAX_EVENTS];
    int timeout = sw->todo_head != NULL ? 0 : timeout_ms;
    if (sw->lazy_ms >= 0 && (timeout < 0 || sw->lazy_ms < timeout))
        timeout = sw->lazy_ms; /* a lazy event falls due (set by sw_flush_events) */
    pthread_mutex_unlock(&sw->lock);
    int n = epoll_wait(sw->epfd, evs, MAX_EVENTS, timeout);
    pthread_mutex_lock(&sw->lock);
    sw_clock(sw);
    int tick = 0;
    for (int i = 0; i < n; i++) {
        if (evs[i].data.ptr == &sw->timer_fd) {
            uint64_t v;
            ssize_t r = read(sw->timer_fd, &v, sizeof(v));
            tick = r == (ssize_t)sizeof(v); /* overruns collapse into one sweep */
            continue;
        }
        struct conn *c = evs[i].data.ptr;
        if (c == NULL) {
            uint64_t v;
            ssize_t r = read(sw->wake_fd, &v, sizeof(v));
            (void)r;
            continue;
        }
        if (c->state == ST_DEAD)
            continue;
        uint32_t e = evs[i].events;
        if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
            c->readable = 1;
        if (e & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
            c->hup = 1;
        if (e & (EPOLLOUT | EPOLLHUP | EPOLLERR))
            c->writable = 1;
        if (c->tls & (TLS_READ_WANTS_OUT | TLS_WRITE_WANTS_IN)) {
            /* TLS: a read that had to write waits for EPOLLOUT, a write that had to read
             * for EPOLLIN (tls.c) */
            if ((e & EPOLLOUT) && (c->tls & TLS_READ_WANTS_OUT)) {
                c->readable = 1;
                c->tls &= (uint8_t)~TLS_READ_WANTS_OUT;
            }
            if ((e & EPOLLIN) && (c->tls & TLS_WRITE_WANTS_IN)) {
                c->writable = 1;
                c->tls &= (uint8_t)~TLS_WRITE_WANTS_IN;
            }
        }
        conn_service(sw, c);
    }
    run_todo(sw);
    if (tick && sw->timer_on && !sw->suspended)
        timers_tick(sw); /* after the batch: it reports, it changes nothing */
    conn_free_dead(sw);
    sw_flush_events(sw, 0);
}

static void *loop_main(void *arg)
{
    struct sw *sw = arg;
    pthread_mutex_lock(&sw->lock);
    while (!sw->stopping)
        loop_once(sw, -1);
    pthread_mutex_unlock(&sw->lock);
    return NULL;
}

int loop_start(struct sw *sw)
{
    sw->stopping = 0;
    int rc = pthread_create(&sw->thread, NULL, loop_main, sw);
    if (rc != 0) {
        errno = rc;
        return -1;
    }
    sw->running = 1;
    return 0;
}

/* Called without the lock held. */
void loop_stop(struct sw *sw)
{
    if (!sw->running)
        return;
    pthread_mutex_lock(&sw->lock);
    sw->stopping = 1;
    loop_wake(sw);
    pthread_mutex_unlock(&sw->lock);
    pthread_join(sw->thread, NULL);
    sw->running = 0;
}
