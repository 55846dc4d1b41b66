/* switch.h: the structures shared by the switch's files (loop, conn, pool, stats, module). */
#ifndef SWITCH_SWITCH_H
#define SWITCH_SWITCH_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

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
    EV_PARAMS_FAILED = 4, /* params.c: the switch's SET failed on a server */
    EV_DEADLINE = 5,      /* timers.c: a timeout passed (reason: R_QUERY_WAIT..R_RESERVE) */
    EV_ACCEPTED = 6,      /* login.c: a client accepted (pool: the listener's id) */
    EV_LISTEN_ERROR = 7,  /* login.c: a listener paused (conn: its id, reason: errno) */
    EV_MESSAGE = 8,       /* login.c: whole login messages in `data` */
    EV_LOGGED_IN = 9,     /* fastlogin.c: a login the switch ran on a route is in its pool */
    EV_LOGIN_ENDED = 10,  /* fastlogin.c: such a login failed or its client left */
    EV_HAZARD = 11,       /* ps.c: a client did what transaction pooling cannot keep (reason:
                           * enum hazard | the pool's pooling_hazards << 8) */
};

/* pooling_hazards: what the switch does when a client does what transaction pooling cannot
 * keep (ps.c), besides telling Python */
enum { HAZARDS_WARN = 0, HAZARDS_REFUSE = 1, HAZARDS_PIN = 2 };

/* Or'ed into a posted kind: Python need not wake for this event alone (a login or close of a
 * pooled client: it logs and counts them). It hears it with the next event that wakes it, when
 * LAZY_MAX events wait, or LAZY_US after it came, whichever is first (loop.c). */
#define EV_LAZY 0x80
#define LAZY_US 50000
#define LAZY_MAX 256

/* EV_ACCEPTED's reason: flags. */
#define ACCEPTED_SSL_ANSWERED 1 /* fastlogin.c answered an SSLRequest 'N' before handing over */
#define ACCEPTED_TLS 2          /* ... or TLS is up on it (an SSLRequest answered 'S', or direct) */
/* EV_LOGIN_ENDED's reason: the close reason, and this bit once a password was asked for. */
#define LOGIN_ENDED_ASKED 0x100

/* EV_MESSAGE's reason: flags. */
#define MSG_UNTYPED 1       /* bit 0: an untyped packet (startup, SSL/GSS request, cancel) */
#define MSG_MORE_BUFFERED 2 /* bit 1: bytes already followed an SSLRequest/GSSENCRequest */
#define MSG_TLS 4           /* bit 2: the connection is encrypted (tls.c) */

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
    /* deadlines (timers.c), in the order of struct timeouts and conn.dl_at */
    R_QUERY_WAIT,
    R_QUERY_WAIT_NOTIFY,
    R_QUERY,
    R_IDLE_TRANSACTION,
    R_CLIENT_IDLE,
    R_SERVER_IDLE,
    R_SERVER_LIFETIME,
    R_RESERVE, /* pool-level: no conn, no dl_at slot */
    R_CONNECT_FAILED, /* login.c: the server's connect() failed (errno in the event) */
    R_CHECK_NEEDED,   /* pool.c: idle longer than the pool's check delay: Python checks it */
    R_RESET_NEEDED,   /* pool.c: released in a reset_always pool: Python resets it */
    R_DIRTY_PARTIAL,  /* pool.c: its client left mid-message or with a batch open (no Sync) */
    R_AUTH_FAILED,    /* fastlogin.c: the password did not match */
    R_LOGIN_TIMEOUT,  /* fastlogin.c: client_login_timeout passed in the exchange */
    R_PLAN_CHANGED,   /* ps.c: "cached plan must not change result type": closed at release */
    R_PINNED_END,     /* pool.c: a client pinned by a hazard (HAZARDS_PIN) left its server */
    R_TLS_FAILED,     /* tls.c: the handshake failed, or a server refused TLS it had to use
                       * (the event's data says why) */
};
#define DL_FIRST R_QUERY_WAIT
#define DL_CONN_COUNT (R_SERVER_LIFETIME - R_QUERY_WAIT + 1)

#define WAIT_BUCKETS 14 /* 13 bounds and +Inf */
extern const int64_t wait_bounds_us[WAIT_BUCKETS - 1];

/* A byte buffer: [start, scanned) is whole enough to send, [scanned, end) waits for the rest
 * of a header. `done` counts the bytes ever sent out of it (absolute stream offsets). */
struct buf {
    uint8_t *data;
    uint32_t alloc, start, scanned, end;
    uint64_t done;
};

/* tls.c: conn.tls bits */
#define TLS_ON 1               /* it has a struct tlsc (preamble, handshake or up) */
#define TLS_UP 2               /* reads and writes go through its SSL */
#define TLS_READ_WANTS_OUT 4   /* its SSL_read wants the socket writable */
#define TLS_WRITE_WANTS_IN 8   /* its SSL_write wants the socket readable */
#define TLS_WHY_MAX 200        /* a failure's text */
/* sslmodes, in PgBouncer's order (a mode >= REQUIRE insists on TLS) */
enum { TLS_MODE_DISABLE = 0, TLS_MODE_ALLOW, TLS_MODE_PREFER, TLS_MODE_REQUIRE,
       TLS_MODE_VERIFY_CA, TLS_MODE_VERIFY_FULL };
enum { TLS_SIDE_CLIENTS = 0, TLS_SIDE_SERVERS = 1 };
enum { TLS_DHE_NONE = 0, TLS_DHE_AUTO = 1, TLS_DHE_LEGACY = 2 };
#define TLS_PROTO_1_0 1
#define TLS_PROTO_1_1 2
#define TLS_PROTO_1_2 4
#define TLS_PROTO_1_3 8
/* What Python gives for a side's context (tls_configure); strings may be NULL or "". */
struct tls_conf {
    int side;
    uint8_t mode;
    uint32_t protocols; /* TLS_PROTO_* bits */
    uint8_t dhe;
    const char *key_file, *cert_file, *ca_file, *ciphers, *ciphers13, *ecdhcurve;
};
struct ssl_ctx_st;
struct tls_side {
    struct ssl_ctx_st *ctx; /* NULL: none configured */
    uint8_t mode;
};
struct tlsc;

struct pool;
struct pset;
struct flogin;
struct route;

/* fastlogin.c: what Python gives for a route (set_route); the switch copies it. */
#define FAST_MD5 1
#define FAST_SCRAM 2
#define FAST_SALT_MAX 64
struct fast_route {
    const uint8_t *key; /* database NUL user */
    uint32_t klen;
    uint8_t method;
    int64_t pool;
    uint64_t gen; /* Python's generation of its routes, echoed in LOGGED_IN */
    uint8_t md5[32]; /* FAST_MD5: hex of md5(password || user), PostgreSQL's secret */
    uint32_t iterations, salt_len; /* FAST_SCRAM: the secret's */
    uint8_t salt[FAST_SALT_MAX];
    uint8_t stored[32], server[32];
    const uint8_t *welcome; /* the pool's parameters: name NUL value NUL, in its order */
    uint32_t wlen;
    const uint8_t *app; /* application_name of a client that names none */
    uint32_t alen;
};

#define CONN_SLOTS_MAX ((1u << 30) - 1) /* ids keep slot + 1 below 2^30 (cancelkey.c) */
#define SPARE_MAX 32               /* spare read buffers kept ... */
#define SPARE_BYTES (2u << 20)     /* ... and 2 MiB of them at most, whatever buffer_size */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define ASAN_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define ASAN_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#include <sanitizer/asan_interface.h>
#define ASAN_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define ASAN_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#endif
#endif
#ifndef ASAN_POISON
#define ASAN_POISON(p, n) ((void)(p), (void)(n))
#define ASAN_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

/* params.c: tracked startup parameters (names as PostgreSQL reports them). */
#define PARAM_MAX_TRACKED 32
#define PARAM_NAME_MAX 63    /* NAMEDATALEN - 1 */
#define PARAM_VALUE_MAX 4096 /* bytes of a value the switch keeps (see docs/switch.md) */
#define PARAM_MSG_MAX (PARAM_NAME_MAX + 1 + PARAM_VALUE_MAX + 1)
struct ptrack {
    char name[PARAM_NAME_MAX + 1];
    uint32_t len;
};

/* params.c: one tracked parameter's value on a connection. `known` 0: a client has no wish
 * for it (nothing is SET), a server's value is unknown (any wish differs from it). */
/* One tracked value. Most (UTF8, ISO, MDY, on, a zone, an application's name) fit inline, so
 * that an idle client's values cost no allocation of their own and a link's copy no malloc. */
#define PVAL_INLINE 19
struct pval {
    uint8_t *heap; /* the value when longer than PVAL_INLINE bytes, else NULL */
    uint32_t len;
    uint8_t known;
    uint8_t small[PVAL_INLINE];
};

static inline const uint8_t *pval_bytes(const struct pval *v)
{
    return v->heap != NULL ? v->heap : v->small;
}

/* params.c: a server's stream as params.c walks it after scan.c: the current message, and
 * the body of a ParameterStatus copied out as it passes (bounded). */
struct pwalk {
    uint32_t rem;   /* body bytes of the current message still to come */
    uint8_t type;   /* its type */
    uint8_t over;   /* a ParameterStatus too long to keep */
    uint32_t len;   /* bytes of its body in buf */
    uint8_t *buf;   /* PARAM_MSG_MAX bytes, allocated at the first ParameterStatus */
};

struct conn {
    uint64_t id;
    int fd;
    int err; /* the errno of an IO_ERROR/CONNECT_FAILED close */
    /* the byte-sized fields together, so that no padding sits between them */
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
    uint8_t park_reason;  /* server: why it was last parked (R_DIRTY_BUSY: no talk) */
    uint8_t bad_type;     /* client: the refused type byte (UNKNOWN_TYPE's event data) */
    uint8_t swallow;      /* server: answers to the switch's own SET query still to swallow */
    uint8_t set_err;      /* server: that answer held an ErrorResponse */
    uint8_t cut;          /* server: its stream stops inside a client's message (no Terminate) */
    uint8_t pinned;       /* client: keeps its server until it leaves (HAZARDS_PIN) */
    uint8_t tls;          /* tls.c: TLS_* bits (0: none; its state is in sw->tls_of) */
    uint32_t ps;          /* ps.c: its prepared statements (an index: 0 none; in padding) */
    int64_t link_wall;    /* server: CLOCK_REALTIME µs of its link to its current client */
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
    /* params.c: tracked values, sw->ntracked each, NULL until first needed. A client's (its
     * wishes) are a set shared by every client with the same ones, never written in place;
     * a server's own are what it is believed to have, then what it last reported. */
    struct pval *pv;
    struct pwalk pw;
    uint64_t pmatch;  /* server: the id of the client set its values were last found to
                       * satisfy (0: none); any change to its values clears it */
    int64_t connect_mono; /* server: when it connected (Python may say), for server_lifetime */
    int64_t idle_since;   /* client: its last read or release; server: pushed idle */
    int64_t dl_at[DL_CONN_COUNT]; /* per deadline: the episode start it was reported for */
    struct flogin *fl; /* client: the login fastlogin.c runs, or NULL */
};

struct stats {
    uint64_t xact_count, query_count, bytes_recv, bytes_sent;
    uint64_t xact_us, query_us, wait_us;
    uint64_t wait_hist[WAIT_BUCKETS];
    uint64_t assign_count; /* servers given to clients (SHOW STATS' server_assignment_count) */
    /* ps.c: named Parse messages of clients, Parses the switch sent to servers, named Binds */
    uint64_t client_parse_count, server_parse_count, bind_count;
};

/* A pool's timeouts in µs (0: off), indexed as the deadline reasons from R_QUERY_WAIT. */
struct timeouts {
    int64_t us[R_RESERVE - R_QUERY_WAIT + 1];
};

struct pool {
    int64_t id;
    uint8_t mode;
    uint8_t waiters_reported; /* EV_WAITERS sent; again only once the queue has emptied */
    uint8_t paused;           /* PAUSE: no client is linked to a server */
    uint8_t reserve_reported; /* R_RESERVE sent; again only once the queue has emptied */
    uint8_t reset_always;     /* a released server is parked RESET_NEEDED, never idle */
    int64_t check_delay;      /* µs idle before a server is parked CHECK_NEEDED; -1: never */
    uint32_t ps_max;          /* max_prepared_statements (0: named statements pass as sent) */
    uint8_t hazards;          /* pooling_hazards: HAZARDS_WARN, _REFUSE or _PIN */
    struct conn *idle;        /* LIFO stack, through qnext */
    struct conn *idle_tail;   /* its bottom: the longest idle */
    struct conn *wq_head, *wq_tail;
    uint32_t n[ST_COUNT];
    struct stats st;
    struct timeouts to;
    struct pool *next;
};

struct event {
    uint64_t conn;
    int64_t pool;
    uint32_t reason;
    uint8_t kind;
    uint8_t *data; /* malloc'ed (EV_MESSAGE; errno text of a failed close), or NULL */
    uint32_t len;
    int64_t at; /* when it was posted (CLOCK_MONOTONIC µs): Python may hear it LAZY_US later */
};

struct sw {
    pthread_mutex_t lock; /* the loop holds it while it handles a batch; commands take it */
    /* the event queue's own lock (taken inside `lock` by the loop; alone by events()): Python
     * drains events without waiting for the loop's batch to end */
    pthread_mutex_t evlock;
    uint8_t ev_signal; /* an event Python must hear soon came: the event fd is written at the
                        * end of the batch (or command), so Python wakes once per batch */
    uint8_t ev_awake;  /* the fd was written and Python has not drained the queue since */
    int64_t lazy_due;  /* a lazy event waits (EV_LAZY): the fd is written by then at the
                        * latest (monotonic µs; 0: none waits) */
    int lazy_ms;       /* under `lock`: the loop's epoll_wait limit for lazy_due, computed by
                        * sw_flush_events in the lock it already takes (-1: none) */
    pthread_t thread;
    int running, stopping;
    int epfd, wake_fd, ev_fd, timer_fd;
    uint32_t tick_ms;  /* the deadline sweep's period */
    uint8_t timer_on;  /* armed: some pool has a timeout */
    uint64_t ticks;    /* sweeps run (tests: no timeouts, no wake-ups) */
    uint32_t bufsize, max_packet;
    /* conn.c: read buffers (bufsize bytes) given back, reused before malloc: a client's buffer
     * is freed at the end of each transaction and wanted again at its next query. */
    uint8_t *spare[SPARE_MAX];
    uint32_t nspare;
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
    struct ptrack *tracked; /* params.c: the tracked parameter names, in SET order */
    uint32_t ntracked;
    struct pset **ptab;          /* params.c: clients' shared wanted values, interned */
    uint32_t ptab_size, ptab_count;
    uint64_t pset_seq;           /* params.c: the last id given to a set (never reused) */
    uint64_t pseed;              /* params.c: random, so that clients cannot aim at a chain */
    uint64_t cancel_secret[2];   /* cancelkey.c: the permutation's key, from the kernel */
    uint8_t suspended; /* SUSPEND: no pooled connection is read (logins and listeners go on) */
    uint32_t login_cap; /* login.c: accept while fewer clients are in login (0: no cap) */
    uint32_t nclients;  /* client sockets open (logged in or not) */
    /* fastlogin.c: Python's routes (a hash table of chains), the logins in progress, the cap
     * on clients under which the switch tries a login itself, and random bytes for salts
     * and nonces drawn a page at a time */
    struct route **rtab;
    uint32_t rtab_size, rtab_count;
    struct flogin *fast_head;
    uint32_t fast_cap;
    uint32_t rnd_have; /* unused bytes at the end of rnd */
    uint8_t rnd[512];
    /* ps.c: connections' statement state by index, the distinct statements (interned), the
     * scratch buffer a rewritten message is built in, and totals for SHOW MEM */
    void **ps_slots;
    uint32_t ps_nslots, ps_hint;
    struct pstmt **stab;
    uint32_t stab_size, stab_count;
    uint64_t stab_bytes;
    uint64_t ps_client_count, ps_server_count;
    uint64_t ps_seq; /* the last number in a server statement's name (PGFUNNEL_<n>) */
    uint8_t *ps_out;
    size_t ps_outcap, ps_outlen;
    /* tls.c: the contexts for clients and for servers, and each connection's TLS by slot
     * (allocated at the first TLS connection) */
    struct tls_side tls_cl, tls_sv;
    struct tlsc **tls_of;
    uint32_t tls_nslots;
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
void sw_flush_events(struct sw *sw, int now);
void sw_clock(struct sw *sw);
int loop_timer(struct sw *sw, int on);
void loop_suspend(struct sw *sw, int on);

/* conn.c */
struct conn *conn_new(struct sw *sw, int fd, uint8_t kind, struct pool *pool);
struct conn *conn_find(struct sw *sw, uint64_t id);
void conn_set_state(struct conn *c, uint8_t state);
void conn_service(struct sw *sw, struct conn *c);
void conn_schedule(struct sw *sw, struct conn *c);
void conn_destroy(struct sw *sw, struct conn *c, uint8_t reason, int report);
size_t fatal_protocol_error(uint8_t *out, size_t cap, const char *text);
void conn_close_with(struct sw *sw, struct conn *c, const uint8_t *msg, size_t len,
                     uint8_t reason);
void conn_server_gone(struct sw *sw, struct conn *s, uint8_t reason);
void conn_end_server(struct sw *sw, struct conn *s, const uint8_t *final, size_t len);
void conn_free_dead(struct sw *sw);
int conn_client_pending(struct sw *sw, struct conn *c, const uint8_t *p, size_t n);
int buf_append(struct buf *b, const uint8_t *p, size_t n);
void buf_free(struct buf *b);
void buf_drop(struct sw *sw, struct buf *b);
void buf_spares_free(struct sw *sw);
void conn_client_held(struct sw *sw, struct conn *c);
void conn_client_linked(struct sw *sw, struct conn *c, struct conn *s, uint32_t injected);

/* pool.c */
struct pool *pool_find(struct sw *sw, int64_t id);
struct pool *pool_add(struct sw *sw, int64_t id, uint8_t mode);
void pool_wants_server(struct sw *sw, struct conn *c);
void pool_release(struct sw *sw, struct conn *s);
void pool_check_release(struct sw *sw, struct conn *s);
void pool_client_left(struct sw *sw, struct conn *c);
void pool_unlist(struct sw *sw, struct conn *c);
void pool_park(struct sw *sw, struct conn *s, uint8_t reason);
void pool_pause(struct sw *sw, struct pool *p, int on);
int pool_cancel_wait(struct sw *sw, struct conn *c);
void pool_server_free(struct sw *sw, struct conn *s);

/* params.c */
int params_set_tracked(struct sw *sw, const char *const *names, const size_t *lens, size_t n);
void params_fini(struct sw *sw);
int params_set(struct sw *sw, struct conn *c, const uint8_t *const *names, const size_t *nlens,
               const uint8_t *const *values, const size_t *vlens, size_t n);
void params_free(struct sw *sw, struct conn *c);
int params_link(struct sw *sw, struct conn *c, struct conn *s);
void params_server_bytes(struct sw *sw, struct conn *s, const uint8_t *p, size_t n);
int params_idle_bytes(struct sw *sw, struct conn *s, const uint8_t *p, size_t n);
void params_swallowed(struct sw *sw, struct conn *s);
int params_valid_utf8(const uint8_t *p, size_t n);
void params_forget(struct sw *sw, struct conn *s);
int params_valid_value(const uint8_t *p, size_t n);
size_t quote_literal(const uint8_t *p, size_t n, uint8_t *out);

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
const char *login_promotable(const struct conn *c, int pending);
int login_promote(struct sw *sw, struct conn *c, struct pool *p, const uint8_t *pending,
                  size_t plen);
void login_read_next(struct sw *sw, struct conn *c);
const char *login_talk(struct sw *sw, struct conn *s);

/* cancelkey.c: a connection id <-> the (pid, key) of the BackendKeyData it is given */
int cancel_selftest(void);
int cancel_key_make(const struct sw *sw, uint64_t id, uint32_t *pid, uint32_t *key);
uint64_t cancel_key_id(const struct sw *sw, uint32_t pid, uint32_t key);

/* fastlogin.c */
int fast_route_set(struct sw *sw, const struct fast_route *spec);
void fast_routes_clear(struct sw *sw);
void fast_fini(struct sw *sw);
void fast_accept(struct sw *sw, struct conn *c, int64_t listener, const char *host, uint32_t port);
int fast_pass_up(struct sw *sw, struct conn *c);
int fast_closing(struct sw *sw, struct conn *c, uint8_t reason, const char *why);
void fast_drop(struct sw *sw, struct conn *c);
void fast_expire(struct sw *sw, int64_t grace_us, int64_t timeout_us, const uint8_t *msg,
                 size_t len);
size_t fast_b64_encode(const uint8_t *p, size_t n, char *out);
long fast_b64_decode(const uint8_t *p, size_t n, uint8_t *out, size_t cap);

/* ps.c */
long ps_client_msg(struct sw *sw, struct conn *c, struct conn *s, struct buf *dst, uint32_t at,
                   uint32_t zs);
int ps_server_waiting(struct sw *sw, const struct conn *s);
int ps_server_msg(struct sw *sw, struct conn *s, struct buf *dst);
void ps_server_rfq(struct sw *sw, struct conn *s);
void ps_server_unsure(struct sw *sw, struct conn *s);
void ps_server_tag(struct sw *sw, struct conn *s, const uint8_t *body, size_t n);
void ps_server_error(struct sw *sw, struct conn *s, const uint8_t *body, size_t n);
int ps_plan_changed(struct sw *sw, const struct conn *s);
uint32_t ps_count(struct sw *sw, const struct conn *c);
void ps_free(struct sw *sw, struct conn *c);
void ps_fini(struct sw *sw);
void **ps_sets_slot(struct sw *sw, struct conn *c, int make);
void ps_server_dropped(struct sw *sw, struct conn *s);

/* sets.c */
struct sstate;
int sets_query(struct sw *sw, struct conn *c, struct conn *s, const uint8_t *sql, size_t n,
               uint32_t zs);
void sets_server_error(struct sw *sw, struct conn *s);
void sets_server_rfq(struct sw *sw, struct conn *s);
void sets_server_unsure(struct sw *sw, struct conn *s);
void sets_server_cleared(struct sw *sw, struct conn *s);
int sets_link(struct sw *sw, struct conn *c, struct conn *s);
void sets_replay_failed(struct sw *sw, struct conn *s);
uint32_t sets_count(struct sw *sw, struct conn *c);
size_t sets_describe(struct sw *sw, struct conn *c, char *out, size_t cap);
void sets_free(void *st);

/* tls.c */
int tls_accept_start(struct sw *sw, struct conn *c);
int tls_direct_start(struct sw *sw, struct conn *c);
int tls_connect_start(struct sw *sw, struct conn *c, uint8_t mode, const char *host);
int tls_busy(struct sw *sw, struct conn *c);
void tls_end(struct sw *sw, struct conn *c, uint8_t reason);
const char *tls_failure(struct sw *sw, const struct conn *c);
void tls_fini(struct sw *sw);
ssize_t tls_read(struct sw *sw, struct conn *c, uint8_t *p, size_t n);
ssize_t tls_write(struct sw *sw, struct conn *c, const uint8_t *p, size_t n);

int tls_alpn_pick(const uint8_t *in, unsigned int inlen, const uint8_t **out, uint8_t *outlen);
struct ssl_ctx_st *tls_make_ctx(const struct tls_conf *cf, char *err, size_t cap);
void tls_set_ctx(struct sw *sw, int side, struct ssl_ctx_st *ctx, uint8_t mode);
size_t tls_describe(struct sw *sw, const struct conn *c, char *out, size_t cap);
int tls_peer(struct sw *sw, const struct conn *c, char *cn, size_t cap, int *verified);

/* stats.c */
void stats_wait(struct stats *st, int64_t us);
void stats_rfq(struct sw *sw, struct conn *s, uint8_t status);
void stats_request(struct sw *sw, struct conn *s);

/* timers.c */
int timers_set(struct sw *sw, struct pool *p, const struct timeouts *to);
void timers_tick(struct sw *sw);
int timers_expire(struct sw *sw, struct conn *c, uint8_t reason, const uint8_t *msg, size_t len);

#endif
