"""The pure pool scheduler: who gets which server, when to open or close one; time is passed in.

Every decision returns a list of actions for the net layer to carry out; nothing here touches a
socket or reads a clock. Objects move between states only through `_set_client_state` and
`_set_server_state`, which keep the per-pool lists and counters right and refuse illegal moves.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pgfunnel.config.pools import PoolSettings
from pgfunnel.pool.objects import Client, ClientState, Server, ServerState
from pgfunnel.proto import sqlstate as ss
from pgfunnel.proto.messages import TRACKED_PARAMS, ServerError
from pgfunnel.proto.strings import Msg, Reason

# --- actions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Promote:
    """Hand a clean, logged-in `server` to the switch: to its pool's first waiter, else idle."""

    server: Server


@dataclass(frozen=True)
class EvictIdle:
    """At a database/user cap: close `server` if the switch still has it idle, then open
    for `pool` (the room is only there once the close happened: the switch may have handed
    the server out meanwhile)."""

    server: Server
    pool: Pool


@dataclass(frozen=True)
class MarkCloseNeeded:
    """RECONNECT / RELOAD: the switch reuses `server` no more (closed once its client lets
    go; at once if idle)."""

    server: Server


@dataclass(frozen=True)
class Connect:
    """Open a connection for `server` (in LOGIN state) and log it in."""

    server: Server


@dataclass(frozen=True)
class RunQueries:
    """Run the pooler's own queries on `server` (reset, check, rollback); report internal_done."""

    server: Server
    queries: tuple[str, ...]


@dataclass(frozen=True)
class CloseServer:
    server: Server
    reason: str


@dataclass(frozen=True)
class CloseClient:
    """Disconnect `client`, sending `error` first when there is one."""

    client: Client
    reason: str
    error: ServerError | None = None


@dataclass(frozen=True)
class FinishLogin:
    """The pool now knows its server parameters: complete this client's login."""

    client: Client


Action = (
    Promote
    | EvictIdle
    | MarkCloseNeeded
    | Connect
    | RunQueries
    | CloseServer
    | CloseClient
    | FinishLogin
)


@dataclass
class Database:
    """A [databases] entry and the server connections all its pools hold."""

    name: str
    config: Any  # pgfunnel.config.loader.DatabaseConfig; Any keeps pool/ free of config types
    server_count: int = 0
    paused: bool = False
    disabled: bool = False


@dataclass
class User:
    name: str
    config: Any = None  # UserConfig or None
    server_count: int = 0


@dataclass
class Backoff:
    """Login back-pressure of one pool after the server said "not now" (53300, restarts)."""

    failures: int = 0
    retry_at: float = 0.0
    since: float = 0.0
    error: ServerError | None = None  # the last transient refusal
    granted: int | None = None  # servers the server let us keep when it refused the next one
    last_failure: float = 0.0

    @property
    def active(self) -> bool:
        return self.failures > 0


class Pool:
    """One (database, user) pool: its waiting clients (FIFO) and servers (idle reused LIFO)."""

    def __init__(self, db: Database, user: User, settings: PoolSettings) -> None:
        self.db = db
        self.user = user
        self.settings = settings
        self.clients: dict[ClientState, dict[Client, None]] = {s: {} for s in ClientState}
        self.waiting: deque[Client] = deque()  # FIFO of WAITING clients (may hold stale entries)
        self.servers: dict[ServerState, dict[Server, None]] = {s: {} for s in ServerState}
        self.welcome: dict[str, str] | None = None  # the server parameters new clients are shown
        self.backoff = Backoff()
        self.login_failed_until = 0.0  # non-transient failure: refuse new clients until then
        self.login_error: ServerError | None = None
        self.stats = PoolStats()
        # The counts of the last complete stats_period, and its length: SHOW STATS' averages.
        self.last_period = PoolStats()
        self.period_seconds = 0.0
        self._period_start = PoolStats()
        self.server_total = 0
        self.holders_logged = False  # the holders line was logged for the current queue
        # Read from the switch, which owns the queue: its length (WAITERS events, each janitor
        # tick), the oldest wait, and whether reserve_pool_timeout has passed for it.
        self.sw_waiting = 0
        self.sw_maxwait = 0.0
        self.reserve_due = False

    def roll_period(self, seconds: float) -> None:
        """A stats_period ended: its counts become the averages' source."""
        now = self.stats.copy()
        self.last_period = now.delta(self._period_start)
        self.period_seconds = seconds
        self._period_start = now

    @property
    def key(self) -> tuple[str, str]:
        return (self.db.name, self.user.name)

    def __repr__(self) -> str:
        return f"{self.db.name}/{self.user.name}"

    @property
    def server_count(self) -> int:
        """Servers the pool holds in any state but CLOSED (kept by the state choke point)."""
        return self.server_total

    def waiting_clients(self) -> Iterator[Client]:
        for client in self.waiting:
            if client.state is ClientState.WAITING and client.pool is self:
                yield client

    def oldest_wait(self, now: float) -> float:
        oldest = self.sw_maxwait if self.sw_waiting else 0.0
        for client in self.clients[ClientState.WAITING_LOGIN]:
            return max(oldest, now - client.wait_start)
        return oldest

    def demand(self) -> int:
        """Servers wanted beyond those already coming: waiting clients minus logins in flight."""
        return (
            self.sw_waiting
            + len(self.clients[ClientState.WAITING_LOGIN])
            - len(self.servers[ServerState.LOGIN])
            - len(self.servers[ServerState.TESTED])
        )


# Upper bounds (seconds) of the wait-time histogram buckets; the last bucket is +Inf.
WAIT_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


@dataclass
class PoolStats:
    """Running totals for SHOW STATS and the metrics endpoint (times in seconds)."""

    xact_count: int = 0
    query_count: int = 0
    bytes_in: int = 0  # from clients
    bytes_out: int = 0  # to clients
    xact_time: float = 0.0  # summed durations of transactions (first query to ReadyForQuery 'I')
    query_time: float = 0.0  # summed durations of queries (sent to ReadyForQuery)
    wait_time: float = 0.0  # summed waits of clients that got a server or gave up waiting
    wait_count: int = 0
    server_assignment_count: int = 0  # times a server was given to a client
    # max_prepared_statements: clients' named Parses, Parses sent to servers, named Binds
    client_parse_count: int = 0
    server_parse_count: int = 0
    bind_count: int = 0
    refused_53300: int = 0
    login_failures: int = 0
    login_refusals: dict[str, int] = field(default_factory=dict)  # SQLSTATE -> server logins
    timeouts: dict[str, int] = field(default_factory=dict)  # reason -> clients/servers closed
    hazards: dict[str, int] = field(default_factory=dict)  # hazard -> statements (pooling_hazards)
    wait_buckets: list[int] = field(default_factory=lambda: [0] * (len(WAIT_BUCKETS) + 1))

    def count_wait(self, waited: float) -> None:
        self.wait_time += waited
        self.wait_count += 1
        buckets = self.wait_buckets
        for i, bound in enumerate(WAIT_BUCKETS):
            if waited <= bound:
                buckets[i] += 1
                return
        buckets[-1] += 1

    def delta(self, before: PoolStats) -> PoolStats:
        """The counts since `before` (the plain numeric totals; for stats_period averages)."""
        return PoolStats(
            xact_count=self.xact_count - before.xact_count,
            query_count=self.query_count - before.query_count,
            bytes_in=self.bytes_in - before.bytes_in,
            bytes_out=self.bytes_out - before.bytes_out,
            xact_time=self.xact_time - before.xact_time,
            query_time=self.query_time - before.query_time,
            wait_time=self.wait_time - before.wait_time,
            wait_count=self.wait_count - before.wait_count,
            server_assignment_count=self.server_assignment_count - before.server_assignment_count,
            client_parse_count=self.client_parse_count - before.client_parse_count,
            server_parse_count=self.server_parse_count - before.server_parse_count,
            bind_count=self.bind_count - before.bind_count,
            refused_53300=self.refused_53300 - before.refused_53300,
            login_failures=self.login_failures - before.login_failures,
        )

    def copy(self) -> PoolStats:
        return self.delta(PoolStats())


@dataclass
class HazardCount:
    """SHOW HAZARDS: how often one application of one pool did one thing transaction pooling
    cannot keep, what pooling_hazards did the last time, and when (wall clock)."""

    count: int = 0
    action: str = ""
    last: float = 0.0


@dataclass(frozen=True)
class Holder:
    """A client holding a server connection, for SHOW HOLDERS, the status page and the log."""

    client: Client
    server: Server
    state: str  # "active", "idle in transaction", "idle in transaction (aborted)", "idle"
    held: float  # seconds since the server was given to the client
    xact: float  # seconds since the running transaction started (0 when none)

    @property
    def application_name(self) -> str:
        return self.client.params.get("application_name", self.client.app_name)


class IllegalStateChange(RuntimeError):
    """A bug: an object was asked to move between states that have no edge between them."""


_CLIENT_EDGES: dict[ClientState, frozenset[ClientState]] = {
    ClientState.LOGIN: frozenset(
        {ClientState.WAITING_LOGIN, ClientState.ACTIVE, ClientState.CLOSED}
    ),
    ClientState.WAITING_LOGIN: frozenset({ClientState.ACTIVE, ClientState.CLOSED}),
    ClientState.ACTIVE: frozenset({ClientState.WAITING, ClientState.CLOSED}),
    ClientState.WAITING: frozenset({ClientState.ACTIVE, ClientState.CLOSED}),
    ClientState.CLOSED: frozenset(),
}
_SERVER_EDGES: dict[ServerState, frozenset[ServerState]] = {
    # LOGIN -> TESTED: the database's connect_query runs before any client sees the server.
    ServerState.LOGIN: frozenset({ServerState.IDLE, ServerState.TESTED, ServerState.CLOSED}),
    ServerState.IDLE: frozenset({ServerState.ACTIVE, ServerState.TESTED, ServerState.CLOSED}),
    ServerState.ACTIVE: frozenset(
        {ServerState.IDLE, ServerState.USED, ServerState.TESTED, ServerState.CLOSED}
    ),
    ServerState.USED: frozenset({ServerState.TESTED, ServerState.CLOSED}),
    ServerState.TESTED: frozenset({ServerState.IDLE, ServerState.CLOSED}),
    ServerState.CLOSED: frozenset(),
}

_BACKOFF_BASE = 0.05  # first retry after a transient refusal, doubled per failure
# The states of a server the switch holds (idle, linked, or parked for the pooler), as last read.
IN_SWITCH = (ServerState.IDLE, ServerState.ACTIVE, ServerState.USED)
# How long the pooler's own queries may take when server_connect_timeout is 0 (off): a server
# that never answers them must still give its pool slot back.
_INTERNAL_QUERY_TIMEOUT = 15.0


class Pooler:
    """All pools and the decisions over them. The net layer reports events; actions come back."""

    def __init__(
        self,
        settings_for: Callable[[Database, User], PoolSettings],
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.settings_for = settings_for
        self.rng = rng
        self.pools: dict[tuple[str, str], Pool] = {}
        self.databases: dict[str, Database] = {}
        self.users: dict[str, User] = {}

    # --- objects -----------------------------------------------------------------------------
    def get_pool(self, db: Database, user: User) -> Pool:
        key = (db.name, user.name)
        pool = self.pools.get(key)
        if pool is None:
            pool = Pool(db, user, self.settings_for(db, user))
            self.pools[key] = pool
        return pool

    def all_clients(self) -> Iterator[Client]:
        for pool in self.pools.values():
            for state, members in pool.clients.items():
                if state is not ClientState.CLOSED:
                    yield from members

    def all_servers(self) -> Iterator[Server]:
        for pool in self.pools.values():
            for state, members in pool.servers.items():
                if state is not ServerState.CLOSED:
                    yield from members

    def holders(self, now: float, limit: int | None = None, db: str | None = None) -> list[Holder]:
        """Clients holding a server connection, the longest held first."""
        found: list[Holder] = []
        for pool in self.pools.values():
            if db is not None and pool.db.name != db:
                continue
            for server in pool.servers[ServerState.ACTIVE]:
                client = server.link
                if client is None:
                    continue
                tx = server.tx_status
                if client.expect_rfq > 0:
                    state = "active"
                elif tx == b"T":
                    state = "idle in transaction"
                elif tx == b"E":
                    state = "idle in transaction (aborted)"
                else:
                    state = "idle"
                in_xact = tx != b"I" or client.expect_rfq > 0
                found.append(
                    Holder(
                        client,
                        server,
                        state,
                        now - server.link_time,
                        now - server.xact_start if in_xact else 0.0,
                    )
                )
        found.sort(key=lambda h: h.held, reverse=True)
        return found if limit is None else found[:limit]

    # --- the choke points --------------------------------------------------------------------
    def _set_client_state(self, client: Client, new: ClientState, now: float) -> None:
        old = client.state
        if new not in _CLIENT_EDGES[old]:
            raise IllegalStateChange(f"{client}: client {old.name} -> {new.name}")
        pool = client.pool
        if pool is not None:
            pool.clients[old].pop(client, None)
            if new is not ClientState.CLOSED:
                pool.clients[new][client] = None
            if new is ClientState.WAITING:
                client.wait_start = now
                pool.waiting.append(client)
            elif old is ClientState.WAITING:
                pool.stats.count_wait(now - client.wait_start)
        client.state = new

    def _set_server_state(self, server: Server, new: ServerState, now: float) -> None:
        old = server.state
        if new not in _SERVER_EDGES[old]:
            raise IllegalStateChange(f"{server}: server {old.name} -> {new.name}")
        pool = server.pool
        pool.servers[old].pop(server, None)
        if new is ServerState.CLOSED:
            pool.db.server_count -= 1
            pool.user.server_count -= 1
            pool.server_total -= 1
        else:
            pool.servers[new][server] = None
        if new is ServerState.IDLE:
            server.idle_since = now
        elif new is ServerState.TESTED:
            server.tested_since = now
            server.internal_error = None
        server.state = new

    # --- the mirror of the switch ------------------------------------------------------------
    # Which client holds which server, the queues and the idle stacks live in the switch; what
    # SHOW, /metrics and the holders report is read from its snapshots into these objects just
    # before (net/app.py refresh). These move an object between its pool's state dicts without
    # the edge checks: they copy a fact, they do not make one.
    def mirror_client(self, client: Client, state: ClientState) -> None:
        pool = client.pool
        if pool is None or client.state is state or client.state is ClientState.CLOSED:
            return
        pool.clients[client.state].pop(client, None)
        pool.clients[state][client] = None
        client.state = state

    def mirror_server(self, server: Server, state: ServerState) -> None:
        if server.state is state or server.state not in IN_SWITCH:
            return
        pool = server.pool
        pool.servers[server.state].pop(server, None)
        pool.servers[state][server] = None
        server.state = state

    # --- clients -----------------------------------------------------------------------------
    def client_authenticated(self, client: Client, pool: Pool, now: float) -> list[Action]:
        """A client passed authentication: finish its login now, or once a server told us its
        parameters (the pool has never logged in yet)."""
        client.pool = pool
        pool.clients[ClientState.LOGIN][client] = None
        if pool.login_failed_until > now and pool.login_error is not None and not pool.welcome:
            return [self._refuse_for_failed_login(client, pool, now)]
        if pool.welcome is not None:
            self._set_client_state(client, ClientState.ACTIVE, now)
            return [FinishLogin(client)]
        self._set_client_state(client, ClientState.WAITING_LOGIN, now)
        client.wait_start = now
        return self._launch(pool, now)

    def client_welcomed(self, client: Client, pool: Pool, now: float) -> None:
        """A client the switch logged in alone on a route (net/fast_login.py): it is in its
        pool already, welcomed with the pool's parameters (a route exists only for a pool that
        has them), as client_authenticated's FinishLogin would have done."""
        client.pool = pool
        pool.clients[ClientState.LOGIN][client] = None
        self._set_client_state(client, ClientState.ACTIVE, now)

    def _refuse_for_failed_login(self, client: Client, pool: Pool, now: float) -> CloseClient:
        assert pool.login_error is not None
        err = pool.login_error
        return CloseClient(
            client,
            Reason.LOGIN_FAILING,
            ServerError("FATAL", err.sqlstate, err.message, Reason.LOGIN_FAILING, err.hint),
        )

    def client_closed(self, client: Client, now: float) -> list[Action]:
        """The client went away (or we closed it). Its server, if it held one, the switch
        judges (back to the pool at a boundary, else an ATTENTION event)."""
        if client.state is ClientState.CLOSED:
            return []
        self._set_client_state(client, ClientState.CLOSED, now)
        client.link = None
        return []

    # --- servers -----------------------------------------------------------------------------
    def pool_waiters(self, pool: Pool, waiting: int, now: float) -> list[Action]:
        """The switch queued clients in a pool that has no idle server: open servers for them,
        within every limit that applies. `waiting` is the switch's queue length now."""
        pool.sw_waiting = waiting
        if pool.login_failed_until > now and pool.login_error is not None:
            if not pool.server_count:
                # No server will come for server_login_retry: the queued clients hear why.
                return [self._refuse_for_failed_login(c, pool, now) for c in self.queued(pool)]
        if pool.db.paused:
            return []
        return self._launch(pool, now)

    def queued(self, pool: Pool) -> list[Client]:
        """The clients in the pool's queue as last read from the switch."""
        return list(pool.waiting_clients())

    def _limit(self, pool: Pool, now: float) -> int:
        s = pool.settings
        limit = s.pool_size
        if s.reserve_pool_size and (
            pool.reserve_due or pool.oldest_wait(now) >= s.reserve_pool_timeout
        ):
            limit += s.reserve_pool_size
        return limit

    def _launch(self, pool: Pool, now: float) -> list[Action]:
        """Open servers for waiting clients, within every limit that applies."""
        actions: list[Action] = []
        want = pool.demand()
        while want > 0:
            if not self._may_open(pool, now, actions):
                break
            actions.append(Connect(self._new_server(pool, now)))
            want -= 1
        return actions

    def _may_open(self, pool: Pool, now: float, actions: list[Action]) -> bool:
        s = pool.settings
        if pool.db.paused:
            return False
        if pool.servers[ServerState.LOGIN]:
            # One login in flight per pool, as PgBouncer: a burst before the server's limit is
            # known would fork backends that the server then refuses, and while they exist
            # they take the process slots kept for superusers. The next login starts as soon
            # as this one ends (server_login_ok / server_login_failed).
            return False
        bo = pool.backoff
        if bo.active and now < bo.retry_at:
            return False  # and only on the backoff schedule
        if pool.login_failed_until > now:
            return False
        if pool.server_count >= self._limit(pool, now):
            return False
        db, user = pool.db, pool.user
        if s.max_db_connections and db.server_count >= s.max_db_connections:
            self._evict(pool, lambda p: p.db is db and p is not pool, actions)
            return False
        if s.max_user_connections and user.server_count >= s.max_user_connections:
            self._evict(pool, lambda p: p.user is user and p is not pool, actions)
            return False
        return True

    def evicted(self, pool: Pool, now: float) -> list[Action]:
        """An EvictIdle for `pool` closed its server: the room it made is `pool`'s now."""
        return self._launch(pool, now)

    def _evict(self, pool: Pool, match: Callable[[Pool], bool], actions: list[Action]) -> bool:
        """At a database/user cap: close the longest-idle server of a sibling pool to make room
        for `pool` (which opens once the close is done, never alongside it)."""
        best: Server | None = None
        for other in self.pools.values():
            if not match(other):
                continue
            for server in other.servers[ServerState.IDLE]:
                if best is None or server.idle_since < best.idle_since:
                    best = server
                break  # dicts keep insertion order: the first idle one is the oldest
        if best is None:
            return False
        actions.append(EvictIdle(best, pool))
        return True

    def _new_server(self, pool: Pool, now: float) -> Server:
        server = Server(pool, now)
        pool.servers[ServerState.LOGIN][server] = None
        pool.db.server_count += 1
        pool.user.server_count += 1
        pool.server_total += 1
        return server

    def _close_server(self, server: Server, reason: str, now: float) -> CloseServer:
        if server.state is not ServerState.CLOSED:
            self._set_server_state(server, ServerState.CLOSED, now)
        server.close_reason = reason
        return CloseServer(server, reason)

    def server_login_ok(self, server: Server, params: dict[str, str], now: float) -> list[Action]:
        pool = server.pool
        server.params = dict(params)
        server.tracked = {name: params.get(name, "") for name in TRACKED_PARAMS}
        server.connect_time = now
        bo = pool.backoff
        recovering = bo.active or bo.granted is not None
        bo.failures = 0
        bo.retry_at = now
        # While below pool_size after a refusal, keep probing one login at a time: a burst
        # would mostly be refused again and push the next retry far out.
        if recovering and pool.server_count < pool.settings.pool_size:
            bo.granted = pool.server_count
        else:
            bo.granted = None
        pool.login_failed_until = 0.0
        pool.login_error = None
        actions: list[Action] = []
        connect_query = getattr(pool.db.config, "connect_query", None)
        if connect_query:
            # As PgBouncer: run it before any client may use the server. Clients waiting for
            # the pool's first login see the parameters as they are after it.
            server.setup = True
            self._set_server_state(server, ServerState.TESTED, now)
            actions.append(RunQueries(server, (connect_query,)))
        else:
            actions += self._ready(server, now)
        actions += self._launch(pool, now)  # the next login, if clients still wait
        return actions

    def _ready(self, server: Server, now: float) -> list[Action]:
        """A freshly logged-in server is usable: it welcomes waiting logins and goes idle."""
        pool = server.pool
        actions: list[Action] = []
        # The newest login's parameters: after a RELOAD changes the entry's client_encoding,
        # datestyle or timezone, new clients are shown what the new servers report.
        pool.welcome = dict(server.params)
        for client in list(pool.clients[ClientState.WAITING_LOGIN]):
            self._set_client_state(client, ClientState.ACTIVE, now)
            actions.append(FinishLogin(client))
        actions += self._to_idle(server, now)
        return actions

    def _connect_query_failed(self, server: Server, now: float) -> list[Action]:
        """connect_query failed (or left a transaction open): the server is closed and the
        failure is treated as a failed login, so clients hear why instead of waiting on a pool
        that can never serve them. (PgBouncer logs the error and uses the server anyway.)"""
        err = server.internal_error
        if err is None:
            err = ServerError(
                "FATAL", ss.PROTOCOL_VIOLATION, "it left a transaction open", None, None
            )
        reason = f"{Reason.CONNECT_QUERY_FAILED}: {err.sqlstate} {err.message}"
        error = ServerError(
            "FATAL",
            err.sqlstate,
            f"{Reason.CONNECT_QUERY_FAILED}: {err.message}",
            err.detail,
            err.hint,
        )
        return [
            self._close_server(server, reason, now),
            *self.server_login_failed(server, error, now),
        ]

    def server_login_failed(
        self, server: Server, error: ServerError | None, now: float, network: str = ""
    ) -> list[Action]:
        """A login failed: `error` is the server's ErrorResponse, or None for a network failure
        (then `network` says what happened). Transient refusals become back-pressure."""
        pool = server.pool
        if server.state is not ServerState.CLOSED:
            self._set_server_state(server, ServerState.CLOSED, now)
        pool.stats.login_failures += 1
        code = error.sqlstate if error is not None else ss.CONNECTION_FAILURE
        pool.stats.login_refusals[code] = pool.stats.login_refusals.get(code, 0) + 1
        actions: list[Action] = []
        if error is None or error.sqlstate in ss.TRANSIENT_LOGIN_STATES:
            bo = pool.backoff
            if not bo.active:
                bo.since = now
            # Logins that were already in flight when the last refusal came count with it:
            # one burst refused together is one failure, not a dozen doublings of the delay.
            if server.connect_time >= bo.last_failure or not bo.active:
                bo.failures += 1
            bo.last_failure = now
            if error is None:
                error = ServerError("FATAL", ss.CONNECTION_FAILURE, network or "server unreachable")
            bo.error = error
            if error.sqlstate == ss.TOO_MANY_CONNECTIONS:
                pool.stats.refused_53300 += 1
                bo.granted = pool.server_count
            cap = max(pool.settings.server_login_retry, _BACKOFF_BASE)
            delay = min(cap, _BACKOFF_BASE * 2 ** min(bo.failures - 1, 16))
            bo.retry_at = now + delay * (0.5 + 0.5 * self.rng())  # jitter spreads the probes
            return actions
        # A refusal that waiting will not cure (bad password, no such database): tell everyone
        # waiting now, and refuse new clients for server_login_retry, as PgBouncer does.
        pool.login_error = error
        pool.login_failed_until = now + pool.settings.server_login_retry
        fatal = ServerError("FATAL", error.sqlstate, error.message, error.detail, error.hint)
        for client in list(pool.clients[ClientState.WAITING_LOGIN]) + list(pool.waiting_clients()):
            actions.append(CloseClient(client, Reason.LOGIN_FAILED, fatal))
        return actions

    def server_attention(self, server: Server, why: str, now: float) -> list[Action]:
        """The switch parked a server its client left in a state only the pooler can judge
        (`why`: "session_end", "dirty_txn", "dirty_busy", "dirty_partial", "close_needed",
        "check_needed", "reset_needed", "plan_changed", "pinned_end"); it is in no list until
        it is cleaned and promoted again, or closed."""
        pool = server.pool
        s = pool.settings
        if server.state is ServerState.CLOSED:
            return []
        if why == "dirty_partial":
            # Half a message went to the server (the next one would be glued onto it), or a
            # batch without its Sync (its statements would run, and commit, with the next
            # client's): never reused.
            reason = server.close_reason or Reason.CLIENT_GONE_NOT_READY
            return [self._close_server(server, reason, now), *self._launch(pool, now)]
        if why == "dirty_busy" or not server.ready:
            # A query was in flight: nothing the pooler sends can be sure to land at a
            # message boundary.
            reason = server.close_reason or Reason.CLIENT_GONE_BUSY
            return [self._close_server(server, reason, now), *self._launch(pool, now)]
        if why == "pinned_end":
            # A client pinned by pooling_hazards=pin left: its session's state (a lock, a
            # LISTEN, a temporary table) is on the server, perhaps inside a transaction; a
            # ROLLBACK (a warning when there is none) and the reset query end it, or the
            # server goes.
            if not s.server_reset_query:
                reason = Reason.PINNED_END
                return [self._close_server(server, reason, now), *self._launch(pool, now)]
            self._set_server_state(server, ServerState.TESTED, now)
            return [RunQueries(server, ("ROLLBACK", s.server_reset_query))]
        if why == "plan_changed":
            # A prepared statement's result type changed under it (DDL): its cached plans
            # would fail the same way again; a new server prepares afresh.
            return [self._close_server(server, Reason.PLAN_CHANGED, now), *self._launch(pool, now)]
        if why == "close_needed" or server.lifetime_over or server.close_needed:
            reason = Reason.OBSOLETE if server.close_needed else Reason.LIFETIME
            return [self._close_server(server, reason, now), *self._launch(pool, now)]
        queries: list[str] = []
        if why == "check_needed":
            # Idle past server_check_delay: the check query before the next client uses it
            # (an empty string is PgBouncer's "<empty>": an empty query).
            if s.server_check_query is not None:
                queries.append(s.server_check_query)
        elif why == "dirty_txn":
            queries.append("ROLLBACK")
        if (
            why != "check_needed"
            and s.server_reset_query
            # Session mode resets however the client left: a session that ended inside a
            # transaction (DIRTY_TXN) carries its SETs and prepared statements all the same.
            and (s.server_reset_query_always or s.pool_mode == "session")
        ):
            queries.append(s.server_reset_query)
        self._set_server_state(server, ServerState.TESTED, now)
        if queries:
            return [RunQueries(server, tuple(queries))]
        return self.internal_done(server, True, now)

    def _to_idle(self, server: Server, now: float) -> list[Action]:
        """A clean server is free: back to the switch (to its pool's first waiter, else idle),
        unless RECONNECT/RELOAD or PAUSE want it closed (PgBouncer's "obsolete connection" and
        "pause mode")."""
        pool = server.pool
        if server.close_needed:
            return [self._close_server(server, Reason.OBSOLETE, now), *self._launch(pool, now)]
        if server.lifetime_over:
            return [self._close_server(server, Reason.LIFETIME, now), *self._launch(pool, now)]
        if pool.db.paused:
            return [self._close_server(server, Reason.PAUSE_MODE, now)]
        self._set_server_state(server, ServerState.IDLE, now)
        # The switch gives it to the first waiter: one fewer to open a server for, until the
        # next snapshot says how many wait (else every login would start one more).
        pool.sw_waiting = max(0, pool.sw_waiting - 1)
        return [Promote(server)]

    def internal_done(self, server: Server, ok: bool, now: float) -> list[Action]:
        """The pooler's own queries on `server` finished; an error means the server goes."""
        if server.state is ServerState.CLOSED:
            return []
        if server.setup:
            server.setup = False
            if not ok or server.tx_status != b"I":
                return self._connect_query_failed(server, now)
            return self._ready(server, now)
        if not ok or server.tx_status != b"I":
            return [
                self._close_server(server, Reason.RESET_FAILED, now),
                *self._launch(server.pool, now),
            ]
        return self._to_idle(server, now)

    def server_closed(self, server: Server, reason: str, now: float) -> list[Action]:
        """The server connection ended (it died, or we closed it)."""
        pool = server.pool
        actions: list[Action] = []
        if server.state is ServerState.LOGIN:
            return self.server_login_failed(server, None, now, reason)
        if server.state is not ServerState.CLOSED:
            self._set_server_state(server, ServerState.CLOSED, now)
            server.close_reason = reason
        # Its client, if it had one, the switch closed with server_gone (its own event).
        client = server.link
        if client is not None:
            client.link = None
            server.link = None
        if pool.demand() > 0:
            actions += self._launch(pool, now)
        return actions

    # --- admin commands (PAUSE, RECONNECT, KILL, ...) ----------------------------------------
    def db_pools(self, db: Database) -> list[Pool]:
        return [pool for pool in self.pools.values() if pool.db is db]

    def pause(self, db: Database, now: float) -> list[Action]:
        """PAUSE: no server is handed out; the net layer pauses the database's pools in the
        switch and closes their idle servers, now and as they are released. Clients stay
        connected and their queries wait."""
        db.paused = True
        return []

    def servers_of(self, db: Database) -> int:
        """Server connections the database's pools still hold (PAUSE waits for zero)."""
        return sum(pool.server_count for pool in self.db_pools(db))

    def resume(self, db: Database, now: float) -> list[Action]:
        db.paused = False
        actions: list[Action] = []
        for pool in self.db_pools(db):
            if pool.demand() > 0:
                actions += self._launch(pool, now)
        return actions

    def reconnect(self, db: Database, now: float) -> list[Action]:
        """RECONNECT: every server of the database is replaced, idle ones now, busy ones when
        their client releases them; nothing a client is using is cut."""
        actions: list[Action] = []
        for pool in self.db_pools(db):
            for state in (ServerState.LOGIN, ServerState.TESTED):
                for server in pool.servers[state]:
                    server.close_needed = True
            for state in IN_SWITCH:
                for server in pool.servers[state]:
                    if not server.close_needed:
                        server.close_needed = True
                        actions.append(MarkCloseNeeded(server))
        return actions

    def obsolete_servers(self, db: Database) -> int:
        """Servers RECONNECT or RELOAD marked and not yet closed (WAIT_CLOSE waits for zero)."""
        return sum(
            1
            for pool in self.db_pools(db)
            for state, servers in pool.servers.items()
            if state is not ServerState.CLOSED
            for server in servers
            if server.close_needed
        )

    def kill(self, db: Database, now: float, reason: str, error: ServerError) -> list[Action]:
        """KILL: the database is paused and every client and server of it dropped at once."""
        db.paused = True
        actions: list[Action] = []
        for pool in self.db_pools(db):
            for cstate in (ClientState.WAITING_LOGIN, ClientState.ACTIVE, ClientState.WAITING):
                for client in list(pool.clients[cstate]):
                    actions.append(CloseClient(client, reason, error))
            for state in (
                ServerState.LOGIN,
                ServerState.IDLE,
                ServerState.ACTIVE,
                ServerState.USED,
                ServerState.TESTED,
            ):
                for server in list(pool.servers[state]):
                    if server.link is not None:
                        server.link.link = None
                        server.link = None
                    actions.append(self._close_server(server, reason, now))
        return actions

    def retune(self) -> None:
        """RELOAD or SET changed settings: every pool takes its limits afresh."""
        for pool in self.pools.values():
            pool.settings = self.settings_for(pool.db, pool.user)

    def queue_position(self, client: Client) -> int:
        """1-based place of a waiting client in its pool's queue (0 when not waiting)."""
        pool = client.pool
        if pool is None or client.state is not ClientState.WAITING:
            return 0
        for i, other in enumerate(pool.waiting_clients(), 1):
            if other is client:
                return i
        return 0

    # --- the janitor -------------------------------------------------------------------------
    def maint(self, now: float) -> list[Action]:
        """Timeouts, lifetimes, warm pools and login retries: called a few times a second."""
        actions: list[Action] = []
        for pool in list(self.pools.values()):
            actions += self._maint_pool(pool, now)
        return actions

    def _maint_pool(self, pool: Pool, now: float) -> list[Action]:
        """What the switch does not watch: clients waiting for their pool's first server
        login, server logins and the pooler's own queries (both in Python's hands), the warm
        pool and login retries. Everything else times out through the switch's deadlines."""
        s = pool.settings
        actions: list[Action] = []
        if s.query_wait_timeout > 0:
            for client in list(pool.clients[ClientState.WAITING_LOGIN]):
                if now - client.wait_start >= s.query_wait_timeout:
                    self.count_timeout(pool, Reason.QUERY_WAIT_TIMEOUT)
                    actions.append(self.wait_timeout(client, pool, now, now - client.wait_start))
        for server in list(pool.servers[ServerState.LOGIN]):
            if (
                s.server_connect_timeout > 0
                and now - server.connect_time >= s.server_connect_timeout
            ):
                actions.append(CloseServer(server, Reason.CONNECT_TIMEOUT))
                actions += self.server_login_failed(server, None, now, Reason.CONNECT_TIMEOUT)
        # The pooler's own queries (connect_query, reset, check, rollback): a server that does
        # not answer them never comes back, so it must not hold its pool slot forever.
        tested = pool.servers[ServerState.TESTED]
        if tested:
            bound = s.server_connect_timeout or _INTERNAL_QUERY_TIMEOUT
            for server in list(tested):
                if now - server.tested_since >= bound:
                    actions.append(self._close_server(server, Reason.INTERNAL_QUERY_TIMEOUT, now))
                    if server.setup:
                        actions += self.server_login_failed(
                            server, None, now, Reason.INTERNAL_QUERY_TIMEOUT
                        )
        # Warm pool (min_pool_size) and login retries under back-pressure.
        if not pool.db.paused:  # DISABLE refuses new clients; connected ones are still served
            if pool.demand() > 0:
                actions += self._launch(pool, now)
            elif (
                s.min_pool_size
                and pool.server_count < s.min_pool_size
                and pool.login_failed_until <= now
                and (not pool.backoff.active or now >= pool.backoff.retry_at)
                and not pool.servers[ServerState.LOGIN]
            ):
                if self._may_open(pool, now, actions):
                    actions.append(Connect(self._new_server(pool, now)))
        return actions

    def wait_notice(self, pool: Pool, position: int, total: int, waited: float) -> tuple[str, str]:
        """query_wait_notify's NOTICE (message, detail), with the client's place in the queue
        (PgBouncer 1.25 sends the notice without a place)."""
        s = pool.settings
        why = f"all {pool.server_count} server connections of pool_size {s.pool_size} are busy"
        bo = pool.backoff
        if bo.active and bo.error is not None:
            why = f"the server refused new connections ({bo.error.message})"
        return (
            f"{Msg.QUEUED} (position {position} of {total} in the queue of {pool})",
            f"waited {waited:.1f} s: {why}; query_wait_timeout={s.query_wait_timeout:g} s",
        )

    def count_timeout(self, pool: Pool, reason: str) -> None:
        pool.stats.timeouts[reason] = pool.stats.timeouts.get(reason, 0) + 1

    def wait_timeout(self, client: Client, pool: Pool, now: float, waited: float) -> CloseClient:
        """query_wait_timeout ran out: the client's close and error (under back-pressure the
        error names the server's limit). Counted by the caller once the close is certain."""
        bo = pool.backoff
        if bo.active and bo.error is not None:
            err = bo.error
            if err.sqlstate == ss.TOO_MANY_CONNECTIONS:
                limit = ss.describe_53300(err.message)
                return CloseClient(
                    client,
                    Reason.QUERY_WAIT_TIMEOUT,
                    ServerError(
                        "FATAL",
                        ss.TOO_MANY_CONNECTIONS,
                        f"no server connection available: the server refused new connections "
                        f"({limit}) and this client waited {waited:.1f} s "
                        f"(query_wait_timeout={pool.settings.query_wait_timeout:g})",
                        detail=f"server said: {err.message}; the pool holds "
                        f"{pool.server_count} of pool_size {pool.settings.pool_size}",
                        hint=ss.hint_53300(err.message),
                    ),
                )
            return CloseClient(
                client,
                Reason.QUERY_WAIT_TIMEOUT,
                ServerError(
                    "FATAL",
                    err.sqlstate,
                    f"no server connection available: cannot reach the server "
                    f"({err.message}); this client waited {waited:.1f} s "
                    f"(query_wait_timeout={pool.settings.query_wait_timeout:g})",
                    hint="Check that PostgreSQL is running and reachable from the pooler.",
                ),
            )
        return CloseClient(
            client,
            Reason.QUERY_WAIT_TIMEOUT,
            pooler_error(
                Reason.QUERY_WAIT_TIMEOUT,
                detail=f"waited {waited:.1f} s for one of pool_size={pool.settings.pool_size} "
                "servers, all busy",
                hint="Raise pool_size if the server has room, or find the clients holding "
                "servers with SHOW CLIENTS.",
            ),
        )


def pooler_error(reason: str, detail: str | None = None, hint: str | None = None) -> ServerError:
    return ServerError("FATAL", ss.PROTOCOL_VIOLATION, reason, detail, hint)
