"""Texts people grep for: disconnect reasons ("closing because: ...") and client error messages.

Where PgBouncer has a text for the same event, it is PgBouncer's, so that dashboards, log
alerts and runbooks written for PgBouncer keep matching.
"""

from __future__ import annotations


class Reason:
    """Disconnect reasons, logged as `closing because: <reason> (age=...)`."""

    CLIENT_CLOSE = "client close request"
    CLIENT_EOF = "client unexpected eof"
    QUERY_WAIT_TIMEOUT = "query_wait_timeout"
    CLIENT_IDLE_TIMEOUT = "client_idle_timeout"
    CLIENT_LOGIN_TIMEOUT = "client_login_timeout"
    IDLE_TX_TIMEOUT = "idle transaction timeout"
    QUERY_TIMEOUT = "query timeout"
    LIFETIME = "server lifetime over"
    IDLE_TIMEOUT = "server idle timeout"
    CONNECT_TIMEOUT = "connect timeout"
    SERVER_GONE = "server conn crashed?"
    SERVER_CLOSED = "server closed the connection unexpectedly"
    CLIENT_GONE_BUSY = "client disconnected with query in progress"
    # The client left in the middle of a message, or with a transaction the pooler cannot end.
    CLIENT_GONE_NOT_READY = "client disconnect while server was not ready"
    # pgfunnel's own: the pooler's queries (connect_query, reset, check, rollback) got no answer
    # within server_connect_timeout.
    INTERNAL_QUERY_TIMEOUT = "server did not answer the pooler's own query (server_connect_timeout)"
    CONNECT_QUERY_FAILED = "connect_query failed"
    RESET_FAILED = "server reset query failed"
    EVICTED = "evicted"
    MAX_CLIENT_CONN = "no more connections allowed (max_client_conn)"
    LOGIN_FAILING = "server login has been failing, try again later (server_login_retry)"
    LOGIN_FAILED = "server login failed"
    LONG_TX = "Long transactions not allowed"
    SHUTDOWN = "pgbouncer shutting down"
    SERVER_SHUTTING_DOWN = "server shutting down"  # WAIT_FOR_SERVERS: no server for a new query
    DB_REMOVED = "database removed"
    OBSOLETE = "obsolete connection"  # RECONNECT, or a RELOAD that changed the database
    PAUSE_MODE = "pause mode"
    # pgfunnel's own: a prepared statement's result type changed (DDL) on this server; a new
    # server prepares it afresh (max_prepared_statements).
    PLAN_CHANGED = "cached plan must not change result type"
    # pgfunnel's own: a client pinned to its server by pooling_hazards=pin left, and there is no
    # server_reset_query to end what its session left there.
    PINNED_END = "pinned session ended without server_reset_query"
    ADMIN_KILL_CLIENT = "admin forced disconnect"  # KILL_CLIENT: also the client's error text
    SUSPEND_TIMEOUT = "suspend_timeout"  # SUSPEND: not flushed within suspend_timeout
    UNSUPPORTED_PKT = "unsupported pkt type"
    UNKNOWN_PKT = "unknown pkt"  # a message type a client may not send (PgBouncer's text)
    PROTOCOL = "protocol error"


# What cannot survive transaction pooling (pooling_hazards), by the switch's Hazard label.
HAZARD_TEXT = {
    "advisory_lock": "a session-level advisory lock",
    "listen": "LISTEN",
    "temp_table": "a temporary table",
    "hold_cursor": "a cursor WITH HOLD",
}


class Refusal:
    """Fixed keys for clients refused before they reach a pool (metrics labels: never text a
    client chose)."""

    MAX_CLIENT_CONN = "max_client_conn"
    NO_SUCH_DATABASE = "no_such_database"
    DISABLED = "database_disabled"
    ADMIN_DENIED = "admin_not_allowed"
    AUTH_FAILED = "auth_failed"
    CLIENT_LOGIN_TIMEOUT = "client_login_timeout"
    SERVER_LOGIN_FAILING = "server_login_failing"


class Msg:
    """Client-facing error texts."""

    NO_SUCH_DATABASE = "no such database: {db}"
    # A login the switch ran on a route (net/fast_login.py) that a change made meanwhile
    # (RELOAD of the auth file, say) would have refused or sent elsewhere.
    LOGIN_RACED = "the pooler's configuration changed during this login; connect again"
    NO_SUCH_USER = 'password authentication failed for user "{user}"'
    ADMIN_DENIED = "not allowed"
    SSL_UNSUPPORTED = "server does not support SSL, but SSL was required"
    # TLS (PgBouncer's texts): client_tls_sslmode require and up, to a TCP client in clear;
    # bytes a client sent after its SSLRequest before the answer (CVE-2021-23214)
    SSL_REQUIRED = "SSL required"
    DATA_AFTER_SSL_REQUEST = "received unencrypted data after SSL request"
    UNSUPPORTED_STARTUP = "unsupported startup parameter: {name}"
    PARAM_TOO_LONG = 'invalid value for parameter "{name}": over {limit} bytes'
    BAD_PROTOCOL = "unsupported frontend protocol {major}.{minor}: server supports 3.0"
    NO_USER = "no username supplied"
    ADMIN_EXTENDED = "the admin console supports only the simple query protocol"
    QUEUED = "No server connection available in postgres backend, client being queued"
    KILLED = "database killed by the admin console (KILL {db})"
    ADMIN_WAIT_CANCELED = "canceling statement due to user request"
    QUERY_CANCELED = "canceling statement due to user request"  # PostgreSQL's text for 57014
    ADMIN_WAIT_CANCELED_HINT = "The wait was canceled; what the command started goes on."
    PAUSE_WAIT_CANCELED_HINT = "The wait was canceled; PAUSE stays until RESUME."
    SUSPEND_WAIT_CANCELED_HINT = "The wait was canceled; SUSPEND stays until RESUME."
    WAIT_CLOSE_CANCELED_HINT = (
        "The wait was canceled; the servers RECONNECT or RELOAD marked still close as they "
        "are released."
    )
