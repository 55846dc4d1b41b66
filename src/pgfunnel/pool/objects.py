"""Client and server connection objects with their state enums (PgBouncer's vocabulary)."""

from __future__ import annotations

import itertools
from enum import IntEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pgfunnel.pool.scheduler import Pool
    from pgfunnel.proto.messages import ServerError

_ids = itertools.count(1)


class ClientState(IntEnum):
    """cl_* states. IntEnum because members key the per-pool dicts on the hot path and Enum's
    hash is Python code; values must stay distinct (equal values would make aliases)."""

    LOGIN = 1  # authenticating, not yet in a pool's lists
    WAITING_LOGIN = 2  # authenticated, waiting for a first server's parameters
    ACTIVE = 3  # logged in: linked to a server, or idle between transactions
    WAITING = 4  # queued for a server
    CLOSED = 5

    @property
    def label(self) -> str:
        return self.name.lower()


class ServerState(IntEnum):
    """sv_* states; SHOW SERVERS prints `label`."""

    LOGIN = 1
    IDLE = 2
    ACTIVE = 3  # linked to a client
    USED = 4  # released, needs its reset query before reuse
    TESTED = 5  # running server_reset_query / server_check_query / a rollback
    CLOSED = 6

    @property
    def label(self) -> str:
        return self.name.lower()


class Client:
    """One client connection as the scheduler sees it; `conn` is the net layer's object."""

    __slots__ = (
        "addr",
        "app_name",
        "auth_info",
        "conn",
        "connect_time",
        "dbname",
        "expect_rfq",
        "is_admin",
        "link",
        "local_addr",
        "params",
        "pool",
        "port",
        "request_time",
        "sid",
        "state",
        "username",
        "wait_start",
    )

    def __init__(self, conn: Any, addr: str, port: int, now: float, sid: int = 0) -> None:
        self.conn = conn
        self.addr = addr
        self.port = port
        self.local_addr: tuple[str, int] = ("", 0)
        self.connect_time = now
        self.request_time = now
        self.wait_start = 0.0
        self.state = ClientState.LOGIN
        self.pool: Pool | None = None
        self.link: Server | None = None
        self.dbname = ""
        self.username = ""
        self.app_name = ""
        self.params: dict[str, str] = {}
        self.expect_rfq = 0  # ReadyForQuery messages still owed for what the client sent
        self.is_admin = False
        self.sid = sid  # the switch's id for this connection: its id everywhere
        # How it logged in (method, hba file:line, secret source), kept when its login
        # object goes (SHOW CLIENTS, SHOW USERS).
        self.auth_info = ("", "", "")

    @property
    def id(self) -> int:
        """What logs (C-0x...), SHOW CLIENTS' id and KILL_CLIENT call it: the generation half of
        its switch id, the switch's count of connections made (an int4, as PgBouncer's id), so
        an idle client holds no second number. SHOW CLIENTS' ptr shows the whole switch id."""
        return (self.sid >> 32) & 0x7FFFFFFF

    def __repr__(self) -> str:
        return f"C-{self.id:#x}"


class Server:
    """One server (backend) connection as the scheduler sees it."""

    __slots__ = (
        "close_needed",
        "close_reason",
        "conn",
        "connect_time",
        "id",
        "idle_since",
        "internal",
        "internal_error",
        "key",
        "lifetime_over",
        "link",
        "link_time",
        "local",
        "params",
        "pid",
        "pool",
        "query_start",
        "ready",
        "request_time",
        "setup",
        "sid",
        "state",
        "tested_since",
        "tracked",
        "tx_status",
        "xact_start",
    )

    def __init__(self, pool: Pool, now: float) -> None:
        self.id = next(_ids)
        self.pool = pool
        self.conn: Any = None
        self.connect_time = now
        self.request_time = now
        self.idle_since = now
        self.query_start = 0.0
        self.xact_start = 0.0  # when the running transaction's first query went out
        self.link_time = 0.0  # when the current client was given this server
        self.state = ServerState.LOGIN
        self.link: Client | None = None
        self.params: dict[str, str] = {}
        # The TRACKED_PARAMS subset of params, same keys as Client.params, so that "does this
        # server already have the client's settings?" is one dict comparison.
        self.tracked: dict[str, str] = {}
        self.pid = 0
        self.key = 0
        self.tx_status = b"I"  # from the last ReadyForQuery
        self.internal = 0  # ReadyForQuery messages owed to the pooler's own queries
        self.internal_error: ServerError | None = None  # the first error one of them raised
        self.setup = False  # running the database's connect_query: not yet usable by clients
        self.tested_since = 0.0  # when it entered TESTED (the pooler's own queries time out)
        self.ready = True  # False once the server can no longer be trusted for reuse
        self.close_needed = False  # RECONNECT / RELOAD: close instead of reusing once released
        self.close_reason = ""
        self.sid = 0  # the switch's id for this connection
        self.lifetime_over = False  # server_lifetime passed: closed once its client lets go
        self.local: tuple[str, int] = ("", 0)  # its local address (SHOW SERVERS)

    def __repr__(self) -> str:
        return f"S-{self.id:#x}"
