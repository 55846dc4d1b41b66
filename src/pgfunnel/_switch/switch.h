/* switch.h: the structures shared by the switch's files (loop, conn, pool, stats, module). */
#ifndef SWITCH_SWITCH_H
#define SWITCH_SWITCH_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "scan.h"

enum kind { KIND_CLIENT = 1, KIND_SERVER = 2, KIND_LISTENER = 3 /* login.c: accepts */ };

/* One enum for both sides, as PgBouncer's cl_* / sv_* lists; conn_set_state is the only
 * place that changes it. */
enum state {
    ST_NEW = 0,
    CL_ACTIVE,  /* logged in, holds no server, nothing waits to be sent */
    CL_WAITING, /* in its pool's FIFO queue */
    CL_LINKED,  /* holds a server */
    CL_CLOSING, /* writing its last bytes */
    SV_IDLE,    /* on its pool's LIFO stack */
    SV_ACTIVE,  /* linked to a client */
    SV_PARKED,  /* reported to Python, not read, in no list */
    CL_LOGIN,   /* accepted, logging in: messages go up to Python (login.c); in no pool yet */
    SV_LOGIN,   /* connecting or logging in: messages go up to Python (login.c) */
    SV_TALK,    /* taken from idle/parked for the pooler's own queries: messages go up */
    ST_DEAD,
    ST_COUNT
};

enum mode { MODE_SESSION = 0, MODE_TRANSACTION = 1, MODE_STATEMENT = 2 };

enum ev_kind {
    EV_WAITERS = 1,
    EV_CLOSED = 2,
    EV_ATTENTION = 3,
    EV_ACCEPTED = 4,     /* login.c: a client accepted (pool: the listener's id) */
    EV_LISTEN_ERROR = 5, /* login.c: a listener paused (conn: its id, reason: errno) */
    EV_MESSAGE = 6,      /* login.c: whole login messages in `data` */
};

/* EV_MESSAGE's reason: flags. */
#define MSG_UNTYPED 1       /* bit 0: an untyped packet (startup, SSL/GSS request, cancel) */
#define MSG_MORE_BUFFERED 2 /* bit 1: bytes already followed an SSLRequest/GSSENCRequest */

enum reason {
    R_NONE = 0,
    R_CLIENT_TERMINATE,
    R_CLIENT_EOF,
    R_SERVER_EOF,
    R_IO_ERROR,
    R_BAD_PACKET,
    R_TOO_BIG,
    R_UNKNOWN_TYPE,
    R_LONG_TX,
    R_IDLE_DATA,
    R_SERVER_GONE,
    R_SESSION_END,
    R_DIRTY_TXN,
    R_DIRTY_BUSY,
    R_CLOSE_NEEDED,
    R_CONNECT_FAILED, /* login.c: the server's connect() failed (errno in the event) */
};

#define WAIT_BUCKETS 14 /* 13 bounds and +Inf */
extern const int64_t wait_bounds_us[WAIT_BUCKETS - 1];

/* A byte buffer: [start, scanned) is whole enough to send, [scanned, end) waits for the rest
 * of a header. `done` counts the bytes ever sent out of it (absolute stream offsets). */
struct buf {
    uint8_t *data;
    uint32_t alloc, start, scanned, end;
    uint64_t done;
};

struct pool;

struct conn {
    uint64_t id;
    int fd;
    uint8_t kind, state;
    uint8_t readable, writable; /* edge-triggered: set by epoll, cleared on EAGAIN/short I/O */
    uint8_t stalled;            /* its last read found no room: resume when room is made */
    uint8_t hup;                /* the peer hung up: read to EOF, a short read is not the end */
    uint8_t scheduled;          /* on the loop's to-do list */
    uint8_t close_needed;
    uint8_t close_reason;
    uint8_t quiet; /* closed by Python: no EV_CLOSED */
    uint8_t login_phase;  /* login.c: LP_* (what the next message looks like) */
    uint8_t login_sent;   /* login.c: passed up, not read_next'ed yet */
    uint8_t connecting;   /* login.c: a server's connect() not yet confirmed */
    uint8_t inet;         /* listener: TCP (accepted clients get TCP_NODELAY) */
    int err;              /* the errno of an IO_ERROR/CONNECT_FAILED close */
    uint8_t park_reason;  /* server: why it was last parked (R_DIRTY_BUSY: no talk) */
    struct pool *pool;
    struct conn *peer;
    struct conn *qprev, *qnext; /* the idle stack or the wait queue */
    struct conn *todo_next, *dead_next;
    struct buf out;  /* bytes to write to this socket (read from its peer in place) */
    struct buf hold; /* client: bytes read while it holds no server */
    struct scan sc;  /* the stream read from this socket */
    struct track tr; /* client: what its server owes it */
    uint64_t stmt_abs; /* client: out's offset where the current statement's answer starts */
    int64_t connect_wall, request_wall; /* µs, CLOCK_REALTIME */
    int64_t wait_start, query_start, xact_start; /* µs, CLOCK_MONOTONIC */
};

struct stats {
    uint64_t xact_count, query_count, bytes_recv, bytes_sent;
    uint64_t xact_us, query_us, wait_us;
    uint64_t wait_hist[WAIT_BUCKETS];
};

struct pool {
    int64_t id;
    uint8_t mode;
    uint8_t waiters_reported; /* EV_WAITERS sent; again only once the queue has emptied */
    struct conn *idle;        /* LIFO stack, through qnext */
    struct conn *wq_head, *wq_tail;
    uint32_t n[ST_COUNT];
    struct stats st;
    struct pool *next;
};

struct event {
    uint64_t conn;
    int64_t pool;
    uint32_t reason;
    uint8_t kind;
    uint8_t *data; /* malloc'ed (EV_MESSAGE; errno text of a failed close), or NULL */
    uint32_t len;
};

struct sw {
    pthread_mutex_t lock; /* the loop holds it while it handles a batch; commands take it */
    pthread_t thread;
    int running, stopping;
    int epfd, wake_fd, ev_fd;
    uint32_t bufsize, max_packet;
    uint32_t login_max;       /* login.c: most bytes buffered / one message in login */
    struct pool login_pool;   /* login.c: clients not promoted yet (id -1, not listed) */
    struct conn **slots;
    uint32_t nslots, slot_hint;
    uint32_t gen;
    struct pool *pools;
    struct event *evq;
    size_t nev, evcap;
    struct conn *todo_head, *todo_tail, *dead;
    struct buf msg_unsupported, msg_long_tx, msg_server_gone;
    int64_t now_mono, now_wall;
};

/* loop.c: the only file that calls epoll */
int loop_init(struct sw *sw);
void loop_fini(struct sw *sw);
int loop_add(struct sw *sw, struct conn *c);
void loop_del(struct sw *sw, struct conn *c);
void loop_wake(struct sw *sw);
void loop_once(struct sw *sw, int timeout_ms);
int loop_start(struct sw *sw);
void loop_stop(struct sw *sw);
void sw_post(struct sw *sw, uint8_t kind, uint64_t conn, int64_t pool, uint32_t reason);
int sw_post_data(struct sw *sw, uint8_t kind, uint64_t conn, int64_t pool, uint32_t reason,
                 const uint8_t *data, size_t len);
void sw_drop_events(struct sw *sw);
void sw_clock(struct sw *sw);

/* conn.c */
struct conn *conn_new(struct sw *sw, int fd, uint8_t kind, struct pool *pool);
struct conn *conn_find(struct sw *sw, uint64_t id);
void conn_set_state(struct conn *c, uint8_t state);
void conn_service(struct sw *sw, struct conn *c);
void conn_schedule(struct sw *sw, struct conn *c);
void conn_destroy(struct sw *sw, struct conn *c, uint8_t reason, int report);
void conn_close_with(struct sw *sw, struct conn *c, const uint8_t *msg, size_t len,
                     uint8_t reason);
void conn_server_gone(struct sw *sw, struct conn *s, uint8_t reason);
void conn_free_dead(struct sw *sw);
int buf_append(struct buf *b, const uint8_t *p, size_t n);
void buf_free(struct buf *b);
void conn_client_held(struct sw *sw, struct conn *c);

/* pool.c */
struct pool *pool_find(struct sw *sw, int64_t id);
struct pool *pool_add(struct sw *sw, int64_t id, uint8_t mode);
void pool_wants_server(struct sw *sw, struct conn *c);
void pool_release(struct sw *sw, struct conn *s);
void pool_check_release(struct sw *sw, struct conn *s);
void pool_client_left(struct sw *sw, struct conn *c);
void pool_unlist(struct sw *sw, struct conn *c);
void pool_park(struct sw *sw, struct conn *s, uint8_t reason);

/* login.c: listeners, accept, connect completion and login framing */
enum login_phase { LP_UNTYPED = 0, LP_TYPED = 1, LP_SERVER = 2 };
enum login_stop { LOGIN_MORE = 0, LOGIN_BAD = 1, LOGIN_TOO_BIG = 2 };
#define MAX_STARTUP_PACKET 10000 /* PostgreSQL's MAX_STARTUP_PACKET_LENGTH */
size_t login_frame(uint8_t *phase, const uint8_t *p, size_t n, uint32_t max_len, int *stop,
                   uint32_t *flags, uint8_t *status);
void login_accept(struct sw *sw, struct conn *l);
int login_connecting(struct sw *sw, struct conn *c);
int login_service(struct sw *sw, struct conn *c);
struct conn *login_listen(struct sw *sw, int fd);
struct conn *login_connect(struct sw *sw, int fd, struct pool *p);
const char *login_promote(struct sw *sw, struct conn *c, struct pool *p);
void login_read_next(struct sw *sw, struct conn *c);
const char *login_talk(struct sw *sw, struct conn *s);

/* stats.c */
void stats_wait(struct stats *st, int64_t us);
void stats_rfq(struct sw *sw, struct conn *s, uint8_t status);
void stats_request(struct sw *sw, struct conn *s);

#endif
