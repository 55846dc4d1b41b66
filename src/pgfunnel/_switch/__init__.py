"""The switch's Python face: typed events, snapshots and the command API of the native data plane.

The C extension `pgfunnel._switch._switch` carries logged-in connections in an epoll thread of
its own. This module names what crosses the seam: `Event` (up: what Python must decide),
`PoolSnapshot` / `ConnSnapshot` (read by SHOW and /metrics), and `SwitchAPI`, the commands
Python gives (down). `Switch` wraps the C object and turns its plain tuples into these types.
docs/switch.md describes the threads and the rules the switch enforces.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import IntEnum, IntFlag
from typing import NamedTuple, Protocol

from pgfunnel._switch import _switch as _native


class Mode(IntEnum):
    """A pool's pool_mode, as the switch enforces it."""

    SESSION = _native.MODE_SESSION
    TRANSACTION = _native.MODE_TRANSACTION
    STATEMENT = _native.MODE_STATEMENT


class EventKind(IntEnum):
    """What the switch reports up through its event fd."""

    # A client queued in a pool that has no idle server (once per episode: again only after the
    # pool's queue has emptied).
    WAITERS = _native.EV_WAITERS
    # The switch closed a connection (the fd is gone); `reason` says why.
    CLOSED = _native.EV_CLOSED
    # A server left its client in a state only Python can judge; it is parked: not read, in no
    # list, until Python closes or detaches it.
    ATTENTION = _native.EV_ATTENTION
    # The switch's SET of a client's tracked parameters failed on the server it linked (the
    # server keeps what it last reported, the client's queries go on): Python logs it, as
    # net/app.py internal_done does.
    PARAMS_FAILED = _native.EV_PARAMS_FAILED
    # A timeout set with set_timeouts passed (`reason` says which); once per episode. The
    # switch acts on none: Python decides, and acts through `expire` (see SwitchAPI.expire).
    DEADLINE = _native.EV_DEADLINE
    # A listener accepted a client (state CL_LOGIN, in no pool yet); `pool` is the listener's
    # id. Python counts it against max_client_conn.
    ACCEPTED = _native.EV_ACCEPTED
    # A listener stopped accepting (out of fds or memory: `reason` is the errno; `conn` the
    # listener) until listen_resume.
    LISTEN_ERROR = _native.EV_LISTEN_ERROR
    # Whole messages of a CL_LOGIN/SV_LOGIN/SV_TALK connection in `data`; `reason` holds
    # MessageFlag bits. Nothing more from it until read_next.
    MESSAGE = _native.EV_MESSAGE
    # A login the switch ran alone on a route (set_route) is in its pool, welcomed: `pool` is
    # the route's pool, `data` who it is (see LoggedIn.parse).
    LOGGED_IN = _native.EV_LOGGED_IN
    # Such a login ended without a welcome (a wrong password, the client left, a bad message,
    # client_login_timeout): `reason` the Reason plus LOGIN_ENDED_ASKED once a password was
    # asked for, `pool` the listener, `data` user, database, host and port. No CLOSED follows.
    LOGIN_ENDED = _native.EV_LOGIN_ENDED
    # A client did what transaction pooling cannot keep: reason = Hazard | HazardsMode << 8.
    HAZARD = _native.EV_HAZARD


_EVENT_KINDS: dict[int, EventKind] = {int(kind): kind for kind in EventKind}


class Reason(IntEnum):
    """Why a connection closed or a server needs attention (texts are Python's, proto/strings)."""

    CLIENT_TERMINATE = _native.R_CLIENT_TERMINATE
    CLIENT_EOF = _native.R_CLIENT_EOF
    SERVER_EOF = _native.R_SERVER_EOF
    IO_ERROR = _native.R_IO_ERROR
    BAD_PACKET = _native.R_BAD_PACKET
    TOO_BIG = _native.R_TOO_BIG
    UNKNOWN_TYPE = _native.R_UNKNOWN_TYPE
    LONG_TX = _native.R_LONG_TX
    IDLE_DATA = _native.R_IDLE_DATA
    SERVER_GONE = _native.R_SERVER_GONE
    # Attention reasons: the server's client is gone (or it was marked close_needed).
    SESSION_END = _native.R_SESSION_END
    DIRTY_TXN = _native.R_DIRTY_TXN
    DIRTY_BUSY = _native.R_DIRTY_BUSY
    CLOSE_NEEDED = _native.R_CLOSE_NEEDED
    # Deadline reasons (EventKind.DEADLINE). `conn` is the client for the first five (the one
    # Python sends the error to), the server for SERVER_IDLE and SERVER_LIFETIME, 0 for RESERVE.
    QUERY_WAIT = _native.R_QUERY_WAIT  # waited in the queue longer than query_wait
    QUERY_WAIT_NOTIFY = _native.R_QUERY_WAIT_NOTIFY  # waited longer than query_wait_notify
    QUERY = _native.R_QUERY  # its server has run the current query longer than query
    IDLE_TRANSACTION = _native.R_IDLE_TRANSACTION  # linked, owed nothing, status T or E
    CLIENT_IDLE = _native.R_CLIENT_IDLE  # holds no server, not queued, silent that long
    SERVER_IDLE = _native.R_SERVER_IDLE  # on the idle stack longer than server_idle
    SERVER_LIFETIME = _native.R_SERVER_LIFETIME  # connected longer than server_lifetime
    RESERVE = _native.R_RESERVE  # the pool's oldest waiter waited longer than reserve
    # A server's connect() failed (Event.errno says why).
    CONNECT_FAILED = _native.R_CONNECT_FAILED
    # Attention reasons of set_pool_checks: idle at least check_delay_us (Python runs the
    # server_check_query in talk mode and promotes it, or closes it); released by its client
    # in a reset_always pool (Python runs server_reset_query in talk mode and promotes it).
    CHECK_NEEDED = _native.R_CHECK_NEEDED
    RESET_NEEDED = _native.R_RESET_NEEDED
    DIRTY_PARTIAL = _native.R_DIRTY_PARTIAL  # left mid-message or with a batch open: close it
    # LOGIN_ENDED reasons of the logins the switch runs (with CLIENT_EOF, IO_ERROR, BAD_PACKET,
    # TOO_BIG): the password did not match; client_login_timeout passed.
    AUTH_FAILED = _native.R_AUTH_FAILED
    LOGIN_TIMEOUT = _native.R_LOGIN_TIMEOUT
    # Attention: a server said "cached plan must not change result type" (a DDL changed a
    # prepared statement's result): closed at its release, its statements with it.
    PLAN_CHANGED = _native.R_PLAN_CHANGED
    # Attention: a client pinned to its server by a hazard (pooling_hazards=pin) left it: its
    # session's state (a lock, a LISTEN, a temporary table) is there until a reset.
    PINNED_END = _native.R_PINNED_END
    # Closed: a TLS handshake failed, or a server refused the TLS its sslmode requires; the
    # event's data says why (`Event.text`).
    TLS_FAILED = _native.R_TLS_FAILED


class Hazard(IntEnum):
    """What cannot survive transaction pooling (the switch's scan_hazard)."""

    ADVISORY_LOCK = _native.HZ_ADVISORY_LOCK
    LISTEN = _native.HZ_LISTEN
    TEMP_TABLE = _native.HZ_TEMP
    HOLD_CURSOR = _native.HZ_HOLD_CURSOR

    @property
    def label(self) -> str:
        return self.name.lower()


class HazardsMode(IntEnum):
    """pooling_hazards, as the switch acts on it."""

    WARN = _native.HAZARDS_WARN
    REFUSE = _native.HAZARDS_REFUSE
    PIN = _native.HAZARDS_PIN


class MessageFlag(IntFlag):
    """The `reason` bits of a MESSAGE event."""

    # Bytes were already buffered after an SSLRequest/GSSENCRequest: the client did not wait
    # for the answer (CVE-2021-23214): refuse them.
    MORE_BUFFERED = _native.MSG_MORE_BUFFERED
    # An untyped packet (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest), alone.
    UNTYPED = _native.MSG_UNTYPED
    # The connection is encrypted: TLS is up (after tls_accept, or a client's direct TLS).
    TLS = _native.MSG_TLS


class RouteMethod(IntEnum):
    """How a route's logins prove their password."""

    MD5 = _native.FAST_MD5
    SCRAM = _native.FAST_SCRAM


# ACCEPTED's reason bit: the switch answered an SSLRequest 'N' before it handed the login over.
ACCEPTED_SSL_ANSWERED = _native.ACCEPTED_SSL_ANSWERED
# ACCEPTED's reason bit: TLS is up on the login it hands over (SSLRequest answered 'S', or a
# client's direct TLS).
ACCEPTED_TLS = _native.ACCEPTED_TLS

# tls_configure's sides and protocol bits (an sslmode is its index in TLS_MODES).
TLS_CLIENTS = 0
TLS_SERVERS = 1
TLS_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
TLS_PROTOCOLS = {
    "tlsv1.0": _native.TLS_PROTO_1_0,
    "tlsv1.1": _native.TLS_PROTO_1_1,
    "tlsv1.2": _native.TLS_PROTO_1_2,
    "tlsv1.3": _native.TLS_PROTO_1_3,
}
TLS_DHE = ("none", "auto", "legacy")
# LOGIN_ENDED's reason bit: a password had been asked for.
LOGIN_ENDED_ASKED = _native.LOGIN_ENDED_ASKED


class LoggedIn(NamedTuple):
    """A LOGGED_IN event's data."""

    user: str
    database: str
    host: str  # "unix" for a unix socket
    port: int
    listener: int  # the listener that accepted it
    cancel_pid: int
    cancel_key: int
    method: RouteMethod
    gen: int  # the generation given to set_route
    client_key: bytes  # SCRAM's recovered ClientKey, b"" for md5
    tls: str  # the TLS description (SHOW's `tls` column), "" in clear
    own: tuple[str | None, ...]  # per tracked parameter, the client's startup value or None

    @classmethod
    def parse(cls, data: bytes) -> LoggedIn:
        parts = data.split(b"\0")
        user, db, host, port, listener, pid, key, method, gen, ckey, tls = parts[:11]
        own = tuple(p[1:].decode() if p.startswith(b"=") else None for p in parts[11:-1])
        return cls(
            user.decode(),
            db.decode(),
            host.decode(),
            int(port),
            int(listener),
            int(pid),
            int(key),
            RouteMethod(int(method)),
            int(gen),
            bytes.fromhex(ckey.decode()),
            tls.decode(),
            own,
        )


def logged_in_head(data: bytes) -> tuple[str, str, str, int, int, bytes, str]:
    """What a LOGGED_IN's login line and route check need, without its parameters (a
    connection storm's logins, which leave at once): (user, database, host, port, gen,
    client_key, tls), as LoggedIn.parse reads them."""
    user, db, host, port, _, _, _, _, gen, ckey, tls = data.split(b"\0", 11)[:11]
    return (
        user.decode(),
        db.decode(),
        host.decode(),
        int(port),
        int(gen),
        bytes.fromhex(ckey.decode()),
        tls.decode(),
    )


def login_ended_who(data: bytes) -> tuple[str, str, str, int]:
    """A LOGIN_ENDED event's data: (user, database, host, port); names may be empty."""
    user, db, host, port = (data.split(b"\0") + [b""] * 4)[:4]  # empty: out of memory
    return user.decode(), db.decode(), host.decode(), int(port or b"0")


def login_ended_tls(data: bytes) -> tuple[str, str]:
    """A LOGIN_ENDED event's last fields: why TLS failed ("" for any other end), and the TLS
    description of the connection ("" in clear)."""
    parts = [*data.split(b"\0"), b"", b""]  # empty: out of memory
    return parts[4].decode(errors="replace"), parts[5].decode(errors="replace")


class Kind(IntEnum):
    CLIENT = _native.KIND_CLIENT
    SERVER = _native.KIND_SERVER


class State(IntEnum):
    """A connection's state in the switch (PgBouncer's cl_*/sv_* lists)."""

    CL_ACTIVE = _native.CL_ACTIVE  # logged in, no server, nothing to send
    CL_WAITING = _native.CL_WAITING  # in its pool's FIFO queue
    CL_LINKED = _native.CL_LINKED  # holds a server
    CL_CLOSING = _native.CL_CLOSING  # writing its last bytes, then closed
    SV_IDLE = _native.SV_IDLE  # on its pool's LIFO idle stack
    SV_ACTIVE = _native.SV_ACTIVE  # linked to a client
    SV_PARKED = _native.SV_PARKED  # reported with ATTENTION, waiting for Python
    CL_LOGIN = _native.CL_LOGIN  # accepted, logging in (messages go up), in no pool yet
    SV_LOGIN = _native.SV_LOGIN  # connecting or logging in (messages go up)
    SV_TALK = _native.SV_TALK  # running the pooler's own queries (messages go up)


class Event(NamedTuple):
    kind: EventKind
    conn: int  # 0 for WAITERS; the listener for LISTEN_ERROR
    pool: int  # the listener for ACCEPTED; LOGIN_POOL for a client not promoted yet
    reason: int  # a Reason for CLOSED/ATTENTION/DEADLINE; the queue length for WAITERS; MessageFlag
    # bits for MESSAGE; the errno for LISTEN_ERROR
    # MESSAGE: the whole messages; CLOSED IO_ERROR/CONNECT_FAILED: errno text; CLOSED
    # UNKNOWN_TYPE: the refused type byte; else b""
    data: bytes = b""
    # When the switch posted it (time.monotonic()'s clock): a pooled client's login or close
    # may reach Python some milliseconds later (EV_LAZY in switch.h), and is logged as of then.
    at: float = 0.0

    @property
    def errno(self) -> int:
        """The errno of a LISTEN_ERROR, or of a CLOSED with IO_ERROR/CONNECT_FAILED; else 0."""
        if self.kind is EventKind.LISTEN_ERROR:
            return self.reason
        if (
            self.kind is EventKind.CLOSED
            and self.reason in (Reason.IO_ERROR, Reason.CONNECT_FAILED)
            and self.data
        ):
            return int(self.data)
        return 0

    @property
    def packet_type(self) -> int:
        """The type byte a CLOSED UNKNOWN_TYPE refused (PgBouncer's `unknown pkt from
        client: %d/%#x`); -1 for any other event."""
        if self.kind is EventKind.CLOSED and self.reason == Reason.UNKNOWN_TYPE and self.data:
            return self.data[0]
        return -1


# The pool id the switch reports for a client accepted by a listener and not promoted yet.
LOGIN_POOL = -1
# A login message (typed) may be at most this long by default: PostgreSQL's auth token cap.
LOGIN_MAX = 65536


class PoolSnapshot(NamedTuple):
    pool: int
    mode: Mode
    cl_active: int  # logged in, not waiting (linked or not)
    cl_waiting: int
    sv_active: int
    sv_idle: int
    sv_parked: int
    maxwait_us: int  # how long the oldest waiter has waited
    xact_count: int
    query_count: int
    bytes_received: int  # from clients
    bytes_sent: int  # to clients
    xact_time_us: int
    query_time_us: int
    wait_time_us: int
    wait_hist: tuple[int, ...]  # counts per WAIT_BUCKETS_US bound, the last one +Inf
    paused: bool  # PAUSE: no client is linked to a server
    sv_login: int = 0  # connecting or logging in (SHOW POOLS' sv_login)
    sv_talk: int = 0  # running the pooler's own queries (talk: reset, ROLLBACK, check)
    assign_count: int = 0  # servers given to clients (SHOW STATS' server_assignment_count)
    # max_prepared_statements (ps.c): clients' named Parses, the Parses the switch sent to
    # servers, clients' Binds of named statements (SHOW STATS' *_parse_count, bind_count)
    client_parse_count: int = 0
    server_parse_count: int = 0
    bind_count: int = 0


class PreparedMem(NamedTuple):
    statements: int  # distinct statements (query text and parameter types), shared
    bytes: int  # their memory
    client_names: int  # clients' names for them
    server_statements: int  # statements prepared on servers


class ConnSnapshot(NamedTuple):
    conn: int
    kind: Kind
    pool: int
    state: State
    fd: int
    peer: int  # the linked connection, 0 if none
    connect_time_us: int  # wall clock (CLOCK_REALTIME), as SHOW CLIENTS/SERVERS print it
    request_time_us: int  # wall clock of the last read from it (servers: or of their link)
    wait_us: int  # how long it has waited in the queue, 0 if not waiting
    tx_status: str  # servers: the last ReadyForQuery status ('I', 'T', 'E'); clients: ''
    owed: int  # clients: ReadyForQuery messages owed by the server
    # SHOW HOLDERS, on both rows of a linked pair (0 otherwise), wall clock (CLOCK_REALTIME):
    link_us: int = 0  # when the server was given to its current client
    xact_us: int = 0  # the start of the transaction running on it (a request in flight or T/E)
    # named prepared statements (ps.c): a client's under its own names; those on a server
    prepared: int = 0
    # clients: the session settings and SQL statements it carries (sets.c)
    carried: int = 0


# Upper bounds (µs) of the wait histogram; the same buckets as pool.scheduler.WAIT_BUCKETS.
WAIT_BUCKETS_US: tuple[int, ...] = tuple(_native.WAIT_BUCKETS_US)

# The longest tracked parameter value (UTF-8 bytes) the switch keeps and re-applies.
PARAM_VALUE_MAX: int = _native.PARAM_VALUE_MAX

# Tracked parameter values: a mapping, or (name, value) pairs (names as ParameterStatus
# reports them).
Params = Mapping[str, str] | Sequence[tuple[str, str]]


class SwitchAPI(Protocol):
    """What Python may ask of the switch: the narrow seam between the two planes."""

    def fileno(self) -> int:
        """The event fd: readable while events wait for `events()`."""
        ...

    def start(self) -> None: ...

    def stop(self) -> None:
        """Stop the thread and close every connection the switch still owns."""
        ...

    def add_pool(self, pool: int, mode: Mode) -> None: ...

    def add_client(
        self, fd: int, pool: int, pending: bytes = b"", params: Params | None = None
    ) -> int:
        """Hand in a logged-in client socket (the switch owns the fd from now on). `pending`:
        bytes already read from it after the login, taken as if the switch had read them;
        `params`: its tracked values (as set_params), in place before it can be linked."""
        ...

    def add_server(
        self, fd: int, pool: int, params: Params | None = None, connected_us: int = 0
    ) -> int:
        """Hand in a logged-in server: given to the pool's first waiter, else pushed idle.
        `params`: what its login reported (as set_params), in place before it is linked.
        `connected_us`: when it connected, in CLOCK_MONOTONIC µs (`time.monotonic_ns() //
        1000`), so that server_lifetime survives a detach and add_server again; 0: now."""
        ...

    def set_params(self, conn: int, params: Params) -> None:
        """Tracked values: a client's wishes (what Python showed it at login; a name not
        given: no wish), or what a server's login reported (a name not given: ""). Names not
        tracked are ignored; a value over 4096 UTF-8 bytes or holding a NUL is a ValueError."""
        ...

    def params(self, conn: int) -> dict[str, str]:
        """A client's wishes, or the values a server has now (unknown ones left out)."""
        ...

    def pause(self, pool: int, on: bool) -> None:
        """PAUSE (on): link no client to a server (waiters stay queued, released servers go
        idle, linked clients keep theirs until their boundary); off: serve the waiters FIFO."""
        ...

    def send(self, conn: int, data: bytes) -> None:
        """Queue bytes to a connection (a notice to a waiting client, say)."""
        ...

    def close(self, conn: int, final: bytes = b"") -> bool:
        """Write `final` (an ErrorResponse, say) and close; its server is judged as on EOF.
        False if the switch no longer has it (an EV_CLOSED for it is on its way)."""
        ...

    def detach(self, conn: int) -> tuple[int, bytes]:
        """Take an idle or parked server, or a client holding no server, back: its fd and
        (clients) the bytes read from it but not delivered. Not a TLS connection (its
        session lives in the switch): ValueError."""
        ...

    def end_idle(self, conn: int, final: bytes = b"") -> bool:
        """Close a server only if it is idle now, writing `final` (its Terminate) first, as
        the TLS session it may have allows. False: it is not idle (or gone)."""
        ...

    def tls_configure(
        self,
        side: int,
        mode: int,
        protocols: int,
        dhe: int,
        key_file: str | None,
        cert_file: str | None,
        ca_file: str | None,
        ciphers: str | None,
        ciphers13: str | None,
        ecdhcurve: str | None,
    ) -> None:
        """A new TLS context for clients (TLS_CLIENTS) or servers (TLS_SERVERS), built from
        the files now: new connections use it, those up keep theirs. ValueError (the reason
        and the path) if a file or setting is bad: the old context stays. mode 0: none."""
        ...

    def tls_accept(self, conn: int) -> bool:
        """Answer a login's SSLRequest 'S' and start its handshake; what it sends next comes
        up decrypted (MessageFlag.TLS). False: bytes came after its SSLRequest (refuse it)."""
        ...

    def tls_info(self, conn: int) -> str:
        """PgBouncer's `tls` column: protocol/cipher/ECDH=group, "" without TLS."""
        ...

    def tls_infos(self) -> dict[int, str]:
        """The `tls` column of every connection with TLS up."""
        ...

    def tls_peer(self, conn: int) -> tuple[str, bool] | None:
        """A TLS peer's certificate: its CommonName ("" if none) and whether it verified
        against the CA file; None: no certificate, or no TLS."""
        ...

    def set_close_needed(self, conn: int) -> bool:
        """Do not reuse this server: parked with CLOSE_NEEDED now if idle, else at release."""
        ...

    def set_timeouts(
        self,
        pool: int,
        *,
        query_wait: int = 0,
        query_wait_notify: int = 0,
        query: int = 0,
        idle_transaction: int = 0,
        client_idle: int = 0,
        server_idle: int = 0,
        server_lifetime: int = 0,
        reserve: int = 0,
    ) -> None:
        """The pool's timeouts in µs (0: off), replacing the previous ones (RELOAD, SET). While
        any pool has one, the switch sweeps every tick_ms and posts DEADLINE events."""
        ...

    def expire(self, conn: int, reason: Reason, final: bytes = b"") -> bool:
        """Act on a DEADLINE event if its episode is still the connection's current one (else
        nothing, False: the waiter got its server, the idle client sent a query...). QUERY_WAIT,
        CLIENT_IDLE: write `final` to the client and close it; QUERY, IDLE_TRANSACTION: the
        same, and close its server; QUERY_WAIT_NOTIFY: send `final` (a notice), the client
        waits on; SERVER_IDLE: close the server; SERVER_LIFETIME: as set_close_needed. Closes
        are quiet (no CLOSED event)."""
        ...

    def ticks(self) -> int:
        """Deadline sweeps run so far (0 while no pool has a timeout: no wake-ups)."""

    def listen(self, fd: int) -> int:
        """Hand in a bound, listening socket: the switch accepts on it (ACCEPTED events); the
        id closes it with close(id)."""
        ...

    def listen_resume(self, listener: int) -> None:
        """Accept again on a listener paused by a LISTEN_ERROR."""
        ...

    def set_login_cap(self, n: int) -> None:
        """Accept only while fewer than n clients are in login (0: no cap); at the cap a
        listener pauses with a LISTEN_ERROR whose errno is 0, until listen_resume."""
        ...

    def set_route(
        self,
        key: bytes,
        pool: int,
        method: RouteMethod,
        gen: int,
        *,
        md5: bytes = b"",
        iterations: int = 0,
        salt: bytes = b"",
        stored: bytes = b"",
        server: bytes = b"",
        welcome: bytes = b"",
        app: bytes = b"",
    ) -> None:
        """Let the switch run the logins of `key` (database NUL user) alone: the startup packet
        (protocol 3.0; user, database and the tracked parameters only), the password exchange
        (MD5: `md5`, the 32 hex digits of PostgreSQL's md5 secret; SCRAM: `iterations`, `salt`,
        `stored` and `server`, the secret's keys), then AuthenticationOk, `welcome`'s
        parameters (name NUL value NUL pairs, the pool's, in its order) with the client's own
        tracked values in their place, `app` as application_name when it names none, a
        BackendKeyData and ReadyForQuery, and the client into `pool`. A LOGGED_IN event follows
        (LOGIN_ENDED if it fails); anything else about a login goes to Python as before."""
        ...

    def clear_routes(self) -> None:
        """Drop every route (logins already past their startup packet finish on theirs)."""
        ...

    def routes(self) -> int:
        """How many routes are set."""
        ...

    def set_fast_cap(self, n: int) -> None:
        """The switch tries a login itself only while at most n client sockets are open (over
        it Python decides: max_client_conn, the fd limit). 0 at start."""
        ...

    def fast_expire(self, grace_us: int, timeout_us: int, msg: bytes) -> None:
        """A login the switch holds that has sent nothing it can use for grace_us goes to
        Python (ACCEPTED and what it sent); one still in its password exchange after
        timeout_us (> 0) gets `msg` and is closed (LOGIN_ENDED LOGIN_TIMEOUT)."""
        ...

    def connect_server(
        self,
        fd: int,
        pool: int,
        first: bytes = b"",
        tls_mode: int = 0,
        host: str | None = None,
    ) -> int:
        """Hand in a server socket on which connect() was called (EINPROGRESS is fine): state
        SV_LOGIN; `first` (the StartupMessage) and what `send` queues are written once it is
        connected; its messages come up. A failed connect is a CLOSED CONNECT_FAILED event
        (it may come before any send: `first` cannot miss). `tls_mode` (an index of
        TLS_MODES, > 0): the switch sends an SSLRequest first and, on 'S', runs the handshake
        (SNI and verify-full's check against `host`) before anything queued is written; on
        'N' a mode below require goes on in clear; a refusal or a failed handshake is a
        CLOSED TLS_FAILED event whose data says why."""
        ...

    def read_next(self, conn: int) -> bool:
        """Let the next login message(s) of this connection come up. False if it is gone."""
        ...

    def promote(
        self, conn: int, pool: int, params: Params | None = None, pending: bytes = b""
    ) -> bool:
        """Move a login into a pool: a client as add_client does (bytes read after its last
        passed-up message are kept), a server (login or talk) as add_server does (bytes after
        its last passed-up message close it: IDLE_DATA; its last ReadyForQuery must have said
        idle). `params`: its tracked values (as set_params), in place before it can be linked;
        `pending` (a client only): bytes Python received in MESSAGE events after the login,
        taken as read before what the switch still holds, as add_client's pending. False if it
        is gone; ValueError if it is not in login or talk."""
        ...

    def talk(self, conn: int) -> bool:
        """Take an idle or parked server (not DIRTY_BUSY) for the pooler's own queries: state
        SV_TALK; Python writes with `send`, its answers come up as MESSAGE events (read_next for
        more), then `promote` hands it back once its last ReadyForQuery said idle. False if it
        is gone."""
        ...

    def peer(self, conn: int) -> tuple[int, str, int, int, int]:
        """(family, host or unix path, port, uid, pid); uid/pid from SO_PEERCRED on unix
        sockets, -1 on TCP; port 0 on unix sockets."""
        ...

    def events(self) -> list[Event]: ...

    def pools(self) -> list[PoolSnapshot]: ...

    def waiting(self, pool: int) -> int:
        """The pool's queue length now (KeyError if unknown): a WAITERS event's count is
        read after the fact, when some of the clients it counted may have a server."""
        ...

    def peer_of(self, conn: int) -> int:
        """The linked connection's id, 0 if none (KeyError if unknown): where a cancel goes."""
        ...

    def cancel_key(self, conn: int) -> tuple[int, int]:
        """The (pid, key) of the BackendKeyData connection `conn` is given: its id under the
        switch's keyed permutation, so no table maps keys to clients."""
        ...

    def cancel_target(self, pid: int, key: int) -> int:
        """The id a cancel request's (pid, key) was made for, 0 if none can have been (whether
        that connection is still there is the caller's to look up)."""
        ...

    def suspend(self, on: bool) -> None:
        """SUSPEND (on): read no pooled connection (clients and servers in a pool) but go on
        writing what the buffers hold; listeners, logins and talk go on (a console session
        can log in and RESUME); deadlines are not swept meanwhile. Off: read everything that
        became readable meanwhile, sweep again."""
        ...

    def unflushed(self) -> list[int]:
        """The connections whose out buffer still holds bytes (SUSPEND waits for none)."""
        ...

    def cancel_wait(self, client: int, error: bytes = b"") -> int:
        """A CancelRequest for a client waiting in the queue: if its held bytes end at a message
        boundary, it leaves the queue (CL_ACTIVE, no server), its held bytes are dropped, and the
        answer is the ReadyForQuery messages it was owed (> 0), or -2: none owed (a batch was
        open); -1: nothing done (not waiting, or half a message held). KeyError if unknown.
        With `error` (the 57014 ErrorResponse), the switch queues the client's answers in the
        same step: `error` + ReadyForQuery per one owed, or `error` alone."""
        ...

    def set_pool_checks(
        self, pool: int, *, check_delay_us: int = -1, reset_always: bool = False
    ) -> None:
        """check_delay_us >= 0: an idle server idle that long is not linked but parked with
        ATTENTION CHECK_NEEDED (server_check_delay); -1: no checks. reset_always: a server
        released at its client's boundary (transaction/statement mode) is parked with
        ATTENTION RESET_NEEDED instead of going idle (server_reset_query_always)."""
        ...

    def conns(self) -> list[ConnSnapshot]: ...

    def set_pool_prepared(self, pool: int, max_prepared_statements: int) -> None:
        """max_prepared_statements for a transaction/statement pool: clients' named
        Parse/Bind/Describe/Close are rewritten so that each statement is prepared on whichever
        server the client lands on, at most that many per server (least recently used closed
        first). 0: named statements pass as sent. Applies from each client's next message."""
        ...

    def ps_mem(self) -> PreparedMem:
        """What the prepared statements hold (SHOW MEM)."""
        ...

    def carries(self, conn: int) -> str:
        """What a client carries (SHOW CLIENTS): its session settings' names and "PREPARE name"
        for its SQL statements, comma-separated ("" for an unknown id)."""
        ...

    def set_pool_hazards(self, pool: int, mode: HazardsMode) -> None:
        """pooling_hazards for a pool: what the switch does, besides a HAZARD event, when one
        of its clients does what transaction pooling cannot keep (it applies to the next)."""
        ...


class Switch:
    """The native switch with typed answers; see SwitchAPI for each command."""

    def __init__(
        self,
        *,
        unsupported_pkt: bytes,
        long_tx: bytes,
        server_gone: bytes,
        max_packet_size: int = 2**31 - 1,
        buffer_size: int = 65536,
        tracked: Sequence[str] = (),
        tick_ms: int = 100,
        login_max: int = LOGIN_MAX,
    ) -> None:
        self._sw = _native.Switch(
            unsupported_pkt=unsupported_pkt,
            long_tx=long_tx,
            server_gone=server_gone,
            max_packet_size=max_packet_size,
            buffer_size=buffer_size,
            tracked=tuple(tracked),
            tick_ms=tick_ms,
            login_max=login_max,
        )

    def fileno(self) -> int:
        return self._sw.fileno()

    def start(self) -> None:
        self._sw.start()

    def stop(self) -> None:
        self._sw.stop()

    def add_pool(self, pool: int, mode: Mode) -> None:
        self._sw.add_pool(pool, int(mode))

    def add_client(
        self, fd: int, pool: int, pending: bytes = b"", params: Params | None = None
    ) -> int:
        return self._sw.add_client(fd, pool, pending=pending, params=params)

    def add_server(
        self, fd: int, pool: int, params: Params | None = None, connected_us: int = 0
    ) -> int:
        return self._sw.add_server(fd, pool, params=params, connected_us=connected_us)

    def set_params(self, conn: int, params: Params) -> None:
        self._sw.set_params(conn, params)

    def params(self, conn: int) -> dict[str, str]:
        return self._sw.params(conn)

    def pause(self, pool: int, on: bool) -> None:
        self._sw.pause(pool, on)

    def send(self, conn: int, data: bytes) -> None:
        self._sw.send(conn, data)

    def close(self, conn: int, final: bytes = b"") -> bool:
        return self._sw.close(conn, final)

    def detach(self, conn: int) -> tuple[int, bytes]:
        return self._sw.detach(conn)

    def end_idle(self, conn: int, final: bytes = b"") -> bool:
        return self._sw.end_idle(conn, final)

    def tls_configure(
        self,
        side: int,
        mode: int,
        protocols: int,
        dhe: int,
        key_file: str | None,
        cert_file: str | None,
        ca_file: str | None,
        ciphers: str | None,
        ciphers13: str | None,
        ecdhcurve: str | None,
    ) -> None:
        self._sw.tls_configure(
            side, mode, protocols, dhe, key_file, cert_file, ca_file, ciphers, ciphers13, ecdhcurve
        )

    def tls_accept(self, conn: int) -> bool:
        return self._sw.tls_accept(conn)

    def tls_info(self, conn: int) -> str:
        return self._sw.tls_info(conn)

    def tls_infos(self) -> dict[int, str]:
        return self._sw.tls_infos()

    def tls_peer(self, conn: int) -> tuple[str, bool] | None:
        return self._sw.tls_peer(conn)

    def set_close_needed(self, conn: int) -> bool:
        return self._sw.set_close_needed(conn)

    def set_timeouts(
        self,
        pool: int,
        *,
        query_wait: int = 0,
        query_wait_notify: int = 0,
        query: int = 0,
        idle_transaction: int = 0,
        client_idle: int = 0,
        server_idle: int = 0,
        server_lifetime: int = 0,
        reserve: int = 0,
    ) -> None:
        self._sw.set_timeouts(
            pool,
            query_wait=query_wait,
            query_wait_notify=query_wait_notify,
            query=query,
            idle_transaction=idle_transaction,
            client_idle=client_idle,
            server_idle=server_idle,
            server_lifetime=server_lifetime,
            reserve=reserve,
        )

    def expire(self, conn: int, reason: Reason, final: bytes = b"") -> bool:
        return self._sw.expire(conn, int(reason), final)

    def ticks(self) -> int:
        return self._sw.ticks()

    def listen(self, fd: int) -> int:
        return self._sw.listen(fd)

    def listen_resume(self, listener: int) -> None:
        self._sw.listen_resume(listener)

    def set_login_cap(self, n: int) -> None:
        self._sw.set_login_cap(n)

    def set_route(
        self,
        key: bytes,
        pool: int,
        method: RouteMethod,
        gen: int,
        *,
        md5: bytes = b"",
        iterations: int = 0,
        salt: bytes = b"",
        stored: bytes = b"",
        server: bytes = b"",
        welcome: bytes = b"",
        app: bytes = b"",
    ) -> None:
        self._sw.set_route(
            key,
            pool,
            int(method),
            gen,
            md5=md5,
            iterations=iterations,
            salt=salt,
            stored=stored,
            server=server,
            welcome=welcome,
            app=app,
        )

    def clear_routes(self) -> None:
        self._sw.clear_routes()

    def routes(self) -> int:
        return self._sw.routes()

    def set_fast_cap(self, n: int) -> None:
        self._sw.set_fast_cap(n)

    def fast_expire(self, grace_us: int, timeout_us: int, msg: bytes) -> None:
        self._sw.fast_expire(grace_us, timeout_us, msg)

    def connect_server(
        self,
        fd: int,
        pool: int,
        first: bytes = b"",
        tls_mode: int = 0,
        host: str | None = None,
    ) -> int:
        return self._sw.connect_server(fd, pool, first, tls_mode, host)

    def read_next(self, conn: int) -> bool:
        return self._sw.read_next(conn)

    def promote(
        self, conn: int, pool: int, params: Params | None = None, pending: bytes = b""
    ) -> bool:
        return self._sw.promote(conn, pool, params=params, pending=pending)

    def talk(self, conn: int) -> bool:
        return self._sw.talk(conn)

    def peer(self, conn: int) -> tuple[int, str, int, int, int]:
        return self._sw.peer(conn)

    def events(self) -> list[Event]:
        kinds = _EVENT_KINDS  # a dict lookup: EventKind(k) costs a microsecond per event
        return [Event(kinds[k], c, p, r, d, a / 1e6) for k, c, p, r, d, a in self._sw.events()]

    def pools(self) -> list[PoolSnapshot]:
        return [
            PoolSnapshot(row[0], Mode(row[1]), *row[2:15], tuple(row[15]), *row[16:23])
            for row in self._sw.pools()
        ]

    def waiting(self, pool: int) -> int:
        return self._sw.waiting(pool)

    def conns(self) -> list[ConnSnapshot]:
        return [
            ConnSnapshot(c, Kind(k), p, State(s), fd, peer, ct, rt, w, tx, owed, lk, xa, ps, cr)
            for c, k, p, s, fd, peer, ct, rt, w, tx, owed, lk, xa, ps, cr in self._sw.conns()
        ]

    def peer_of(self, conn: int) -> int:
        return self._sw.peer_of(conn)

    def cancel_key(self, conn: int) -> tuple[int, int]:
        return self._sw.cancel_key(conn)

    def cancel_target(self, pid: int, key: int) -> int:
        return self._sw.cancel_target(pid, key)

    def suspend(self, on: bool) -> None:
        self._sw.suspend(on)

    def unflushed(self) -> list[int]:
        return self._sw.unflushed()

    def cancel_wait(self, client: int, error: bytes = b"") -> int:
        return self._sw.cancel_wait(client, error)

    def set_pool_checks(
        self, pool: int, *, check_delay_us: int = -1, reset_always: bool = False
    ) -> None:
        self._sw.set_pool_checks(pool, check_delay_us=check_delay_us, reset_always=reset_always)

    def set_pool_prepared(self, pool: int, max_prepared_statements: int) -> None:
        self._sw.set_pool_prepared(pool, max_prepared_statements)

    def ps_mem(self) -> PreparedMem:
        return PreparedMem(*self._sw.ps_mem())

    def set_pool_hazards(self, pool: int, mode: HazardsMode) -> None:
        self._sw.set_pool_hazards(pool, int(mode))

    def carries(self, conn: int) -> str:
        return self._sw.carries(conn)
