/* scan.h: the PostgreSQL v3 framing and transaction boundary, pure (no sockets, no clock). */
#ifndef SWITCH_SCAN_H
#define SWITCH_SCAN_H

#include <stddef.h>
#include <stdint.h>

/* Why a scan call stopped. SCAN_MORE: every byte it could judge was consumed; what remains (a
 * partial header, or a partial ReadyForQuery) waits for the next read. */
enum scan_stop {
    SCAN_MORE = 0,
    SCAN_RFQ,          /* server: one whole ReadyForQuery consumed (status in scan.status) */
    SCAN_TERMINATE,    /* client: a Terminate starts at the returned offset */
    SCAN_BAD_LENGTH,   /* a length below 4, or a fixed-size message of the wrong size */
    SCAN_TOO_BIG,      /* a length over max_packet_size */
    SCAN_UNKNOWN_TYPE, /* client: a message type the pooler refuses */
    SCAN_STMT,         /* client, scan.ps: a whole Parse/Bind/Describe/Close starts at the
                        * returned offset (not consumed: ps.c rewrites it) */
    SCAN_PS,           /* server, scan.ps: a ParseComplete/CloseComplete starts there */
};

#define SCAN_PS_LINKED 1 /* stop at what ps.c must see (SCAN_STMT) */
#define SCAN_PS_HOLD 2   /* no server yet: hold it whole, and consume it */
#define SCAN_PS_STMTS 4  /* named prepared statements are tracked */
#define SCAN_PEEK 24     /* body bytes of a Query looked at for a session command */
#define SCAN_HOLD_MAX 8192 /* a Query up to this long is held whole and looked at for hazards */

/* What cannot survive transaction pooling (scan_hazard), as EV_HAZARD reports it. */
enum hazard {
    HZ_NONE = 0,
    HZ_ADVISORY_LOCK, /* a session-level advisory lock (pg_advisory_lock, pg_try_...) */
    HZ_LISTEN,        /* LISTEN */
    HZ_TEMP,          /* CREATE TEMP(ORARY) ... */
    HZ_HOLD_CURSOR,   /* DECLARE ... WITH HOLD */
};

/* One direction of one connection: where it is inside the stream of messages. */
struct scan {
    uint32_t skip;  /* body bytes of the current message still to come */
    uint8_t status; /* server direction: the last ReadyForQuery status ('I', 'T', 'E') */
    /* client (SCAN_PS_*): what ps.c/sets.c follow: a session command (a Query or Parse
     * starting with SET, RESET or DISCARD), and with SCAN_PS_STMTS every Parse/Bind/Describe/
     * Close, is held until whole, then stopped at (SCAN_STMT, SCAN_PS_LINKED) or consumed (no
     * server yet: rewritten at the link); server: ParseComplete/CloseComplete are awaited */
    uint8_t ps;
};

/* What a client is owed by its server: the transaction boundary. */
struct track {
    uint32_t owed; /* ReadyForQuery messages the server still has to send */
    uint8_t batch; /* a message was forwarded since the last Sync or Query */
};

/* Each returns how many bytes of p[0..n) are consumed: safe to forward as they are. On an error
 * or Terminate the return value is the offending message's offset and nothing of it is
 * consumed. A header is never consumed before all its 5 bytes are there; a body may be consumed
 * in parts (it is forwarded as it arrives, and `skip` says how much is still to come). */
size_t scan_client(struct scan *s, struct track *t, const uint8_t *p, size_t n,
                   uint32_t max_len, int *stop);
size_t scan_server(struct scan *s, struct track *t, const uint8_t *p, size_t n,
                   uint32_t max_len, int *stop);

/* Does this SQL start (after blanks) with SET, RESET, DISCARD, PREPARE or DEALLOCATE? */
int scan_session_cmd(const uint8_t *p, size_t n);
/* The first thing in this SQL that cannot survive transaction pooling, or HZ_NONE. */
int scan_hazard(const uint8_t *p, size_t n);
/* Must this client message (type, length word, the first `avail` bytes of its body) be held
 * whole and handed to ps.c/sets.c under scan flags `ps`? 1 yes, 0 no, -1 not known until
 * more of its body is there. */
int scan_wants_whole(uint8_t ps, uint8_t type, uint32_t len, const uint8_t *body, size_t avail);

/* May the server be given to another client? Only when nothing is owed, the last
 * ReadyForQuery said idle, no batch is open and no message is half-way in either direction
 * (held: bytes read but not yet scanned, a partial header). */
int scan_may_release(const struct scan *client, size_t client_held, const struct scan *server,
                     size_t server_held, const struct track *t);

#endif
