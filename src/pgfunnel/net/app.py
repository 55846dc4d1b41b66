"""The application object: listeners, connection events turned into scheduler calls, the
actions that come back applied, and the janitor tick."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from pgfunnel import __version__
from pgfunnel.admin.console import Console
from pgfunnel.config.ini import ConfigError
from pgfunnel.config.loader import Config, DatabaseConfig
from pgfunnel.config.pools import PoolSettings, resolve_pool_settings
from pgfunnel.net.auth_query import AuthLookups
from pgfunnel.net.client_conn import ClientConn
from pgfunnel.net.commands import ADMIN_DATABASES, Commands
from pgfunnel.net.server_conn import ServerConn
from pgfunnel.net.unixsock import is_unix, sockaddr, unix_connect, unix_path
from pgfunnel.pool.objects import Client, ClientState, Server, ServerState
from pgfunnel.pool.scheduler import (
    Action,
    CloseClient,
    CloseServer,
    Connect,
    Database,
    FinishLogin,
    Holder,
    Link,
    Notify,
    Pool,
    Pooler,
    RunQueries,
    User,
)
from pgfunnel.proto import messages as m
from pgfunnel.proto import sqlstate as ss
from pgfunnel.proto.auth import ScramSecret
from pgfunnel.proto.login import ServerLogin
from pgfunnel.proto.messages import ServerError
from pgfunnel.proto.strings import Msg, Reason, Refusal

log = logging.getLogger("pgfunnel")

JANITOR_INTERVAL = 0.1  # seconds between janitor runs: the resolution of every timeout
HOLDERS_LOG_AFTER = 5.0  # a queue this old gets one log line naming the top holders
HOLDERS_LOGGED = 3
# File descriptors kept beyond the clients' for the admin console, the metrics endpoint, the
# listeners and the log: a flood of client sockets must leave a way in to see and fix it.
FD_RESERVE = 48
# A socket that has not logged in this long may be closed to make room for a new one when
# the client limit is reached; younger ones are left their chance to log in.
EVICT_GRACE = 1.0
LIMIT_LOG_EVERY = 10.0  # seconds between log lines saying the client limit bites
FD_SPARE = 16  # under the fd limit, room the janitor keeps free for new logins
ADMIN_WELCOME = {
    "server_version": "1.25.1/bouncer",
    "server_encoding": "UTF8",
    "client_encoding": "UTF8",
    "DateStyle": "ISO",
    "TimeZone": "UTC",
    "standard_conforming_strings": "on",
    "integer_datetimes": "on",
    "IntervalStyle": "postgres",
    "application_name": "",
    "is_superuser": "off",
}
_ADMIN_WELCOME = m.Welcome(ADMIN_WELCOME)


class App(Commands):
    """Holds config, pools, listeners and counters; the one object passed down everywhere.
    Its admin commands and lifecycle (pause ... reload) are `Commands`, in net/commands.py."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.config = config
        self.settings = config.settings
        self.pooler = Pooler(self._pool_settings)
        self.admin = Console(self)
        self.admin_clients: dict[Client, None] = {}
        self.logging_in: dict[ClientConn, None] = {}  # connections not yet authenticated
        self._stats_at = time.monotonic()
        self._stats_last: list[float] = [0, 0, 0, 0, 0, 0.0, 0]
        self.client_count = 0
        self.servers_listening: list[asyncio.AbstractServer] = []  # TCP (listen_addr)
        self.unix_listening: asyncio.AbstractServer | None = None  # unix_socket_dir
        self.unix_path: str | None = None
        self._wall = time.time() - time.monotonic()
        self._janitor: asyncio.TimerHandle | None = None
        # ClientKeys recovered from clients' SCRAM logins, to log into servers as them.
        self._scram_keys: dict[str, bytes] = {}
        self.scram_derived: dict[str, ScramSecret] = {}  # plain userlist password -> secret
        # Each pool's welcome, encoded once (welcome_of); gone with the pool.
        self._welcomes: weakref.WeakKeyDictionary[Pool, m.Welcome] = weakref.WeakKeyDictionary()
        self.auth_lookups = AuthLookups(self)  # methods, auth_query pools and their secrets
        self.started_at = time.monotonic()
        self.paused_all = False  # PAUSE without a database, SIGUSR1
        self._paused_dbs: set[str] = set()  # PAUSE db / KILL db: outlive a global RESUME
        self.suspended = False
        self.shutting_down: str | None = None
        self._shutdown_task: asyncio.Task[None] | None = None  # waits for the last one to go
        self.signal_task: asyncio.Task[None] | None = None  # SIGUSR1's wait for the servers
        self.stopping = asyncio.Event()  # set when the process should exit now
        self.exit_code = 0  # 1 when it goes down on an error (PgBouncer's die())
        self.refused: dict[str, int] = {}  # clients refused before reaching a pool, by reason
        self.metrics: Any = None  # pgfunnel.metrics.MetricsServer when metrics_addr is set
        self.fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self._limit_bites = [0, 0]  # since the last log line: logins evicted, sockets refused
        self._limit_logged = -LIMIT_LOG_EVERY
        self._apply_settings()

    def _apply_settings(self) -> None:
        s = self.settings
        self.max_packet_size = int(s.max_packet_size)
        self.ignore_startup_parameters = frozenset(s.ignore_startup_parameters)

    # --- clocks ------------------------------------------------------------------------------
    def now(self) -> float:
        # Not loop.time(): uvloop's clock ticks in whole milliseconds, too coarse for the
        # per-query times SHOW STATS reports.
        return time.monotonic()

    def wall(self, t: float) -> float:
        return t + self._wall

    async def wait_until(self, done: Callable[[], bool]) -> None:
        """The commands that wait (PAUSE, WAIT_CLOSE, SUSPEND, SIGUSR1) poll at the janitor's
        resolution: what they wait for changes only through events and ticks."""
        while not done():
            await asyncio.sleep(JANITOR_INTERVAL)

    # --- config lookups ----------------------------------------------------------------------
    def userlist(self) -> dict[str, str]:
        return self.config.userlist

    def is_admin_user(self, user: str) -> bool:
        return user in self.settings.admin_users

    def _pool_settings(self, db: Database, user: User) -> PoolSettings:
        return resolve_pool_settings(self.settings, db.config, user.config)

    def database(self, name: str) -> Database | None:
        db = self.pooler.databases.get(name)
        if db is not None:
            return db
        dbc = self.config.database(name)
        if dbc is None:
            return None
        db = Database(name, dbc)
        db.paused = self.paused_all
        self.pooler.databases[name] = db
        return db

    def user(self, name: str) -> User:
        user = self.pooler.users.get(name)
        if user is None:
            user = User(name, self.config.users.get(name))
            self.pooler.users[name] = user
        return user

    def holders(self, limit: int | None = None, db: str | None = None) -> list[Holder]:
        return self.pooler.holders(self.now(), limit, db)

    def count_refusal(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    # --- logging -----------------------------------------------------------------------------
    def log_client(self, client: Client, fmt: str, *args: Any) -> None:
        if self.settings.log_connections and log.isEnabledFor(logging.INFO):
            log.info(
                "C-%#x: %s/%s@%s:%s " + fmt,
                client.id,
                client.dbname,
                client.username,
                client.addr,
                client.port,
                *args,
            )

    def _log_close(self, client: Client, reason: str) -> None:
        if client.state is ClientState.LOGIN and self.auth_lookups.quiet_failure(
            client.addr, reason, self.now()
        ):
            return  # repeated login failures from one address: one line per period
        if self.settings.log_disconnections and log.isEnabledFor(logging.INFO):
            log.info(
                "C-%#x: %s/%s@%s:%s closing because: %s (age=%ds)",
                client.id,
                client.dbname or "(nodb)",
                client.username or "(nouser)",
                client.addr,
                client.port,
                reason,
                self.now() - client.connect_time,
            )

    def _log_server_new(self, server: Server) -> None:
        if self.settings.log_connections and log.isEnabledFor(logging.INFO):
            local = server.conn.addresses()[2] if server.conn is not None else ("", 0)
            origin = f"{local[0]}:{local[1]}" if local[0] else "unix socket"
            self._log_server(server, "new connection to server (from %s)", origin)

    def _log_server_close(self, server: Server, reason: str) -> None:
        if self.settings.log_disconnections and log.isEnabledFor(logging.INFO):
            age = self.now() - server.connect_time
            self._log_server(server, "closing because: %s (age=%ds)", reason, age)

    def _log_server(self, server: Server, fmt: str, *args: Any) -> None:
        if log.isEnabledFor(logging.INFO):
            addr = server.conn.peer if server.conn is not None else "?"
            log.info(
                "S-%#x: %s/%s@%s " + fmt,
                server.id,
                server.pool.db.name,
                server.pool.user.name,
                addr,
                *args,
            )

    # --- events from client connections ------------------------------------------------------
    def client_opened(self, conn: ClientConn) -> None:
        if self.suspended and conn.transport is not None:
            conn.transport.pause_reading()  # read once RESUME comes
        self.client_count += 1
        self.logging_in[conn] = None  # oldest first: client_login_timeout scans from the front
        if self.client_count > int(self.settings.max_client_conn) or (
            self.client_count > self.fd_limit - FD_RESERVE
        ):
            self._make_room(conn)

    def _fd_room(self) -> int:
        """How many client sockets the file descriptor limit leaves room for."""
        if self.fd_limit == resource.RLIM_INFINITY:
            return 1 << 62
        servers = sum(pool.server_total for pool in self.pooler.pools.values())
        return self.fd_limit - FD_RESERVE - servers

    def _client_cap(self) -> int:
        """How many client sockets may stay open: max_client_conn, or fewer where the fd
        limit leaves less room (then some is kept free for new logins)."""
        return min(int(self.settings.max_client_conn), self._fd_room() - FD_SPARE)

    def _make_room(self, new: ClientConn) -> None:
        """Over max_client_conn (or the fd limit): every socket counts, logged in or not. The
        oldest one that has not logged in for EVICT_GRACE goes, so that silent sockets cannot
        fill the process; with none such, a socket over the fd limit is refused at once.
        Logged-in clients are never closed here; a new client over max_client_conn that does
        log in gets PgBouncer's error for it at its startup packet."""
        now = self.now()
        if not self._evict_logins(now, 1, spare=new) and self.client_count > self._fd_room():
            self._limit_bites[1] += 1
            self.count_refusal(Refusal.MAX_CLIENT_CONN)
            new.fail(
                ServerError("FATAL", ss.PROTOCOL_VIOLATION, Reason.MAX_CLIENT_CONN),
                Reason.MAX_CLIENT_CONN,
            )
        self._log_limit(now)

    def _evict_logins(self, now: float, count: int, spare: ClientConn | None = None) -> int:
        """Close up to `count` of the oldest sockets not logged in for EVICT_GRACE."""
        victims: list[ClientConn] = []
        for conn in self.logging_in:
            if len(victims) >= count or now - conn.client.connect_time < EVICT_GRACE:
                break  # oldest first: the rest are younger still
            if conn is not spare:
                victims.append(conn)
        for conn in victims:
            self._limit_bites[0] += 1
            self.count_refusal(Refusal.MAX_CLIENT_CONN)
            conn.fail(
                ServerError("FATAL", ss.PROTOCOL_VIOLATION, Reason.MAX_CLIENT_CONN),
                Reason.MAX_CLIENT_CONN,
            )
        return len(victims)

    def _log_limit(self, now: float) -> None:
        if now - self._limit_logged < LIMIT_LOG_EVERY:
            return
        self._limit_logged = now
        evicted, refused = self._limit_bites
        self._limit_bites = [0, 0]
        log.warning(
            "client limit reached: %d client sockets (%d not logged in), max_client_conn=%s, "
            "room for %d under the fd limit %s; closed %d logins older than %.0fs, refused "
            "%d new sockets",
            self.client_count,
            len(self.logging_in),
            self.settings.max_client_conn,
            max(self._fd_room(), 0),
            self.fd_limit,
            evicted,
            EVICT_GRACE,
            refused,
        )

    def admit(self, conn: ClientConn, dbname: str, user: str) -> ServerError | None:
        """Decide whether this startup may go on to authentication."""
        verdict = self._admit(conn, dbname, user)
        if verdict is None:
            return None
        key, error = verdict
        self.count_refusal(key)
        return error

    def _admit(self, conn: ClientConn, dbname: str, user: str) -> tuple[str, ServerError] | None:
        """None to go on, or (a fixed refusal key for the metrics, the client's error)."""
        client = conn.client
        if dbname in ADMIN_DATABASES:
            # admin_users/stats_users are checked once the client has authenticated, so the
            # refusal cannot tell a stranger which names are privileged.
            client.is_admin = True
            return None
        if self.client_count > self.settings.max_client_conn:
            error = ServerError("FATAL", ss.PROTOCOL_VIOLATION, Reason.MAX_CLIENT_CONN)
            return Refusal.MAX_CLIENT_CONN, error
        # Look without creating: a database made from `*` is created only once its client has
        # authenticated, so unauthenticated logins cannot add pools, series and page sections.
        db = self.pooler.databases.get(dbname)
        if db is None and self.config.database(dbname) is None:
            msg = Msg.NO_SUCH_DATABASE.format(db=dbname)
            return Refusal.NO_SUCH_DATABASE, ServerError("FATAL", ss.INVALID_CATALOG_NAME, msg)
        if db is not None and db.disabled:
            msg = f"database does not allow connections: {dbname}"
            return Refusal.DISABLED, ServerError("FATAL", ss.PROTOCOL_VIOLATION, msg)
        return None

    def authenticated(self, conn: ClientConn) -> None:
        self.logging_in.pop(conn, None)
        client = conn.client
        if client.is_admin:
            s = self.settings
            own = conn.auth is not None and conn.auth.own_user
            allowed = client.username in s.admin_users + s.stats_users
            if not (own or allowed or s.auth_type == "any"):
                self.count_refusal(Refusal.ADMIN_DENIED)
                conn.fail(
                    ServerError("FATAL", ss.INVALID_AUTHORIZATION, Msg.ADMIN_DENIED),
                    Msg.ADMIN_DENIED,
                )
                return
            self.admin_clients[client] = None
            conn.finish_login(_ADMIN_WELCOME)
            return
        db = self.database(client.dbname)
        if db is None:  # removed by a reload while this client authenticated
            conn.fail(
                ServerError(
                    "FATAL",
                    ss.INVALID_CATALOG_NAME,
                    Msg.NO_SUCH_DATABASE.format(db=client.dbname),
                ),
                Reason.DB_REMOVED,
            )
            return
        server_user = db.config.user or client.username
        user = self.user(server_user)
        if conn.auth is not None and conn.auth.client_key is not None:
            if server_user == client.username:
                self._scram_keys[server_user] = conn.auth.client_key
        pool = self.pooler.get_pool(db, user)
        log.debug(
            "C-%#x: %s/%s@%s:%s authenticated, pool %s/%s",
            client.id,
            client.dbname,
            client.username,
            client.addr,
            client.port,
            db.name,
            user.name,
        )
        self.apply(self.pooler.client_authenticated(client, pool, self.now()))

    def wants_server(self, client: Client) -> None:
        if self.shutting_down == "WAIT_FOR_SERVERS":
            self._close_for_shutdown(client)  # a new transaction: no server is handed out
            return
        self.apply(self.pooler.client_wants_server(client, self.now()))

    def client_gone(self, client: Client, reason: str | None) -> None:
        self.client_count -= 1
        self.logging_in.pop(client.conn, None)
        if reason:
            self._log_close(client, reason)
        if client.is_admin:
            self.admin_clients.pop(client, None)
            self.admin.session_closed(client)
            self.pooler.cancel_keys.pop(client.cancel_key, None)
            return
        self.apply(self.pooler.client_closed(client, self.now()))

    def cancel(self, pid: int, key: int) -> None:
        client = self.pooler.cancel_keys.get((pid, key))
        if client is not None and client.is_admin:
            client.conn.cancel_admin()
            return
        if client is None:
            return
        if client.link is None:
            client.conn.cancel_queued()  # a query waiting in the queue is dropped, not run
            return
        server = client.link
        if server.state is not ServerState.ACTIVE or server.conn is None:
            return
        self.loop.create_task(self._send_cancel(server))

    async def _send_cancel(self, server: Server) -> None:
        dbc: DatabaseConfig = server.pool.db.config
        try:
            if is_unix(dbc.host):
                path = unix_path(dbc.host, dbc.port, self.settings.unix_socket_dir)
                if not path:
                    return  # no unix_socket_dir: the server it would reach cannot exist
                sock = await unix_connect(self.loop, path)
                _, writer = await asyncio.open_unix_connection(sock=sock)
            else:
                _, writer = await asyncio.open_connection(dbc.host, dbc.port)
            writer.write(m.cancel_request(server.pid, server.key))
            await writer.drain()
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        except OSError as exc:
            log.warning("S-%#x: could not send cancel request: %s", server.id, exc)

    # --- events from server connections ------------------------------------------------------
    def server_login_ok(self, server: Server, params: dict[str, str]) -> None:
        if server.state is ServerState.CLOSED:
            if server.conn is not None:
                server.conn.close()
            return
        self._log_server_new(server)
        log.debug("S-%#x: login done, backend pid %d", server.id, server.pid)
        self.apply(self.pooler.server_login_ok(server, params, self.now()))

    def server_login_failed(self, server: Server, error: ServerError | None, reason: str) -> None:
        if server.state is ServerState.CLOSED:
            return
        server.close_reason = Reason.LOGIN_FAILED
        if error is not None:
            log.warning(
                "S-%#x: %s/%s server login failed: %s %s",
                server.id,
                server.pool.db.name,
                server.pool.user.name,
                error.sqlstate,
                error.message,
            )
        else:
            log.warning(
                "S-%#x: %s/%s server login failed: %s",
                server.id,
                server.pool.db.name,
                server.pool.user.name,
                reason,
            )
        self.apply(self.pooler.server_login_failed(server, error, self.now(), reason))

    def server_gone(self, server: Server, reason: str) -> None:
        if server.state is ServerState.CLOSED and server.link is None:
            return  # whoever closed it logged why
        self._log_server_close(server, reason)
        self.apply(self.pooler.server_closed(server, reason, self.now()))

    def close_server(self, server: Server, reason: str) -> None:
        client = server.link
        actions: list[Action] = []
        if server.state is not ServerState.CLOSED:
            actions = self.pooler.server_closed(server, reason, self.now())
        server.close_reason = reason
        if server.conn is not None:
            server.conn.close()
        if client is not None and not actions:
            client.conn.close(reason)
        self.apply(actions)

    def transaction_boundary(self, client: Client, server: Server) -> None:
        """The linked client has every answer it asked for: release per the pool mode."""
        pool = server.pool
        mode = pool.settings.pool_mode
        if mode == "session":
            return
        if server.tx_status != b"I":
            return  # statement mode never gets here: ServerConn stops at a 'T' first
        conn: ClientConn = client.conn
        scanner = conn.scanner
        if scanner.in_body or scanner.batch or conn.pending:
            # Half a message is on its way to this server, or the client has sent part of an
            # extended-protocol batch after its last Sync: keep the link until its Sync.
            return
        self.apply(self.pooler.release_server(server, self.now()))

    def long_transaction(self, client: Client, server: Server) -> None:
        """Statement pooling and the server opened a transaction: as PgBouncer, the client
        gets the reason instead of that ReadyForQuery, and the server is not reused."""
        server.ready = False
        server.close_reason = Reason.LONG_TX
        client.conn.fail(
            ServerError("FATAL", ss.PROTOCOL_VIOLATION, Reason.LONG_TX), Reason.LONG_TX
        )

    def internal_done(
        self, server: Server, ok: bool, rest: bytes, events: list[tuple[int, bytes | None, int]]
    ) -> None:
        client = server.link
        if client is not None:
            if not ok:
                log.warning("S-%#x: could not apply the client's parameters", server.id)
            server.conn.forward_rest(rest, events)
            return
        self.apply(self.pooler.internal_done(server, ok, self.now()))

    # --- applying actions --------------------------------------------------------------------
    def apply(self, actions: Iterable[Action]) -> None:
        for action in actions:
            if isinstance(action, Link):
                self._link(action.client, action.server)
            elif isinstance(action, Connect):
                self.loop.create_task(self._connect(action.server))
            elif isinstance(action, RunQueries):
                action.server.internal += len(action.queries)
                action.server.conn.write(b"".join(m.query(q) for q in action.queries))
            elif isinstance(action, CloseServer):
                server = action.server
                server.close_reason = action.reason
                if server.conn is not None:
                    self._log_server_close(server, action.reason)
                    server.conn.close()
            elif isinstance(action, CloseClient):
                if action.reason is Reason.LOGIN_FAILING:
                    self.count_refusal(Refusal.SERVER_LOGIN_FAILING)
                conn: ClientConn = action.client.conn
                if action.error is not None:
                    conn.fail(action.error, action.reason)
                else:
                    conn.close(action.reason)
            elif isinstance(action, Notify):
                transport = action.client.conn.transport
                if transport is not None:
                    transport.write(m.notice_response(action.message, detail=action.detail))
            elif isinstance(action, FinishLogin):
                client = action.client
                pool = client.pool
                assert pool is not None
                client.conn.finish_login(self.welcome_of(pool))

    def welcome_of(self, pool: Pool) -> m.Welcome:
        """What the pool's new clients are shown: the parameters its newest server login
        reported, not the [databases] text (datestyle=German is "German, DMY" on the server,
        and the client must track the same value). Encoded once per pool; built again when a
        server login reports other values."""
        welcome = pool.welcome
        assert welcome is not None
        cached = self._welcomes.get(pool)
        if cached is None or cached.source != welcome:
            cached = self._welcomes[pool] = m.Welcome(welcome)
        return cached

    def _link(self, client: Client, server: Server) -> None:
        conn: ClientConn = client.conn
        sconn: ServerConn = server.conn
        wanted = client.params
        if wanted != server.tracked:
            have = server.tracked
            sets = [
                f"SET {name} = {m.quote_literal(value)}"
                for name, value in wanted.items()
                if have.get(name) != value
            ]
            server.tracked = dict(wanted)
            if sets:
                server.internal += 1
                sconn.write(m.query("; ".join(sets)))
        data = conn.flush_pending()
        if data:
            sconn.write(data)
        server.query_start = self.now()

    async def _connect(self, server: Server) -> None:
        pool = server.pool
        dbc: DatabaseConfig = pool.db.config
        user = pool.user.name
        password = dbc.password if dbc.password else self.config.userlist.get(user)
        if password is None:
            password = self.auth_lookups.secrets.get(user)  # found by auth_query
        params: dict[str, str] = {}
        for key, value in (
            ("client_encoding", dbc.client_encoding),
            ("datestyle", dbc.datestyle),
            ("timezone", dbc.timezone),
        ):
            if value:
                params[key] = value
        login = ServerLogin(user, dbc.dbname, password, params, self._scram_keys.get(user))
        log.debug(
            "S-%#x: %s/%s launching new connection to %s:%s",
            server.id,
            pool.db.name,
            user,
            dbc.host,
            dbc.port,
        )
        try:
            if is_unix(dbc.host):
                path = unix_path(dbc.host, dbc.port, self.settings.unix_socket_dir)
                if not path:
                    self._no_unix_dir(server)
                    return
                sock = await unix_connect(self.loop, path)
                try:
                    await self.loop.create_unix_connection(
                        lambda: ServerConn(self, server, login, path), sock=sock
                    )
                except BaseException:
                    sock.close()  # not handed over: ours to close
                    raise
            else:
                peer = f"{dbc.host}:{dbc.port}"
                await self.loop.create_connection(
                    lambda: ServerConn(self, server, login, peer), str(dbc.host), dbc.port
                )
        except OSError as exc:
            self.server_login_failed(server, None, f"connect failed: {exc.strerror or exc}")

    def _no_unix_dir(self, server: Server) -> None:
        """A database without host while unix_socket_dir is empty: PgBouncer's log line, and
        the waiting clients are told at once (it is not a server that may come back)."""
        name = server.pool.db.name
        log.error("unix socket dir not configured: %s", name)
        error = ServerError(
            "FATAL",
            ss.CONNECTION_FAILURE,
            f"unix socket dir not configured: {name}",
            hint="Give the database a host= in [databases], or set unix_socket_dir.",
        )
        self.server_login_failed(server, error, "cannot connect")

    # --- the janitor -------------------------------------------------------------------------
    def _tick(self) -> None:
        try:
            if self.suspended:
                # As PgBouncer's janitor: nothing at all while every socket is held, not even
                # client_login_timeout (a login cannot progress while its socket is not read).
                self._janitor = self.loop.call_later(JANITOR_INTERVAL, self._tick)
                return
            now = self.now()
            timeout = float(self.settings.client_login_timeout)
            if timeout > 0:
                for conn in list(self.logging_in):
                    if now - conn.client.connect_time < timeout:
                        break
                    self.count_refusal(Refusal.CLIENT_LOGIN_TIMEOUT)
                    conn.fail(
                        ServerError("FATAL", ss.PROTOCOL_VIOLATION, Reason.CLIENT_LOGIN_TIMEOUT),
                        Reason.CLIENT_LOGIN_TIMEOUT,
                    )
            excess = self.client_count - self._client_cap()
            if excess > 0 and self.logging_in:
                # Silent sockets opened faster than the grace let them be evicted at accept.
                if self._evict_logins(now, excess):
                    self._log_limit(now)
            if self.shutting_down == "WAIT_FOR_SERVERS":
                self._close_waiting_for_shutdown()  # those queued since by any path
            self.apply(self.pooler.maint(now))
            self._log_holders(now)
            period = float(self.settings.stats_period)
            if period > 0 and now - self._stats_at >= period:
                for pool in self.pooler.pools.values():
                    pool.roll_period(now - self._stats_at)
                self._log_stats(now - self._stats_at)
                self._stats_at = now
        except Exception:  # a bug in one tick must not stop every future timeout
            log.exception("janitor failed")
        self._janitor = self.loop.call_later(JANITOR_INTERVAL, self._tick)

    def _log_holders(self, now: float) -> None:
        """Once per queue: when a pool's clients have waited HOLDERS_LOG_AFTER seconds, one
        line names the clients holding its servers longest (who to look at, and why)."""
        for pool in self.pooler.pools.values():
            wait = pool.oldest_wait(now)
            if wait < HOLDERS_LOG_AFTER:
                if wait == 0:
                    pool.holders_logged = False
                continue
            if pool.holders_logged:
                continue
            pool.holders_logged = True
            # This pool's own holders: filtered before the top is taken, since the database's
            # other pools (other users) may hold it longer.
            top = [h for h in self.pooler.holders(now, None, pool.db.name) if h.server.pool is pool]
            named = "; ".join(
                f"{h.application_name or '(no application_name)'} C-{h.client.id:#x} "
                f"{h.client.username}@{h.client.addr}:{h.client.port} {h.state} "
                f"for {h.held:.1f}s (server pid {h.server.pid})"
                for h in top[:HOLDERS_LOGGED]
            )
            log.warning(
                "%s: %d client(s) waiting, oldest %.1fs, all %d servers held; top holders: %s",
                pool,
                len(pool.clients[ClientState.WAITING])
                + len(pool.clients[ClientState.WAITING_LOGIN]),
                wait,
                pool.server_count,
                named or "none (servers are logging in)",
            )

    def _warm_forced_pools(self) -> None:
        """As PgBouncer: a database with a forced user has a known pool before any client
        arrives, so min_pool_size can open its servers at startup (the janitor does the work)."""
        for name, dbc in self.config.databases.items():
            if name == "*" or not dbc.user:
                continue
            db = self.database(name)
            if db is not None:
                pool = self.pooler.get_pool(db, self.user(dbc.user))
                if pool.settings.min_pool_size:
                    log.info("%s: keeping %d servers warm", pool, pool.settings.min_pool_size)

    def _log_stats(self, elapsed: float) -> None:
        """PgBouncer's periodic `stats:` line, totals over all pools since the last one."""
        totals = [0, 0, 0, 0, 0, 0.0, 0]
        for pool in self.pooler.pools.values():
            st = pool.stats
            for i, v in enumerate(
                (st.xact_count, st.query_count, st.bytes_in, st.bytes_out, st.wait_count)
            ):
                totals[i] += v
            totals[5] += st.wait_time
            totals[6] += st.refused_53300
        last = self._stats_last
        self._stats_last = totals
        if not self.settings.log_stats:
            return
        d = [a - b for a, b in zip(totals, last, strict=True)]
        waits = d[4] or 1
        log.info(
            "stats: %d xacts/s, %d queries/s, in %d B/s, out %d B/s, wait %d us, "
            "server refusals (53300) %d",
            d[0] / elapsed,
            d[1] / elapsed,
            d[2] / elapsed,
            d[3] / elapsed,
            d[5] / waits * 1e6,
            d[6],
        )

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        if s.metrics_addr:  # first: ready to be scraped by the time clients can connect
            from pgfunnel.metrics import MetricsServer

            self.metrics = MetricsServer(self)
            await self.metrics.start()
        addrs = await self._listen()
        self._warm_forced_pools()
        self._janitor = self.loop.call_later(JANITOR_INTERVAL, self._tick)
        log.info(
            "process up: pgfunnel %s, listening on %s port %d",
            __version__,
            addrs,
            int(s.listen_port),
        )

    async def _listen(self) -> list[str]:
        """Open the TCP listeners of listen_addr and the unix socket; returns the addresses."""
        s = self.settings
        port = int(s.listen_port)
        raw = s.listen_addr
        addrs = [a.strip() for a in (raw.split(",") if isinstance(raw, str) else raw) if a.strip()]
        for addr in addrs:
            host = None if addr == "*" else addr
            srv = await self.loop.create_server(
                lambda: ClientConn(self),
                host,
                port,
                reuse_address=True,
                backlog=int(s.listen_backlog),
            )
            self.servers_listening.append(srv)
        if s.unix_socket_dir:
            path = unix_path(None, port, s.unix_socket_dir)
            abstract = path.startswith("@")  # no file to remove, chmod or unlink at exit
            if not abstract:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            self.unix_listening = await self.loop.create_unix_server(
                lambda: ClientConn(self), sockaddr(path)
            )
            if not abstract:
                self.unix_path = path
                with contextlib.suppress(OSError):
                    os.chmod(path, int(s.unix_socket_mode))
        if not self.servers_listening and self.unix_listening is None:
            raise ConfigError(self.config.path, 0, "no listen_addr and no unix_socket_dir")
        return addrs

    async def stop(self) -> None:
        if self._janitor is not None:
            self._janitor.cancel()
        for srv in self.servers_listening:
            srv.close()
        if self.unix_listening is not None:
            self.unix_listening.close()
            if self.unix_path is not None:  # as PgBouncer: the socket file goes with us
                with contextlib.suppress(OSError):
                    os.unlink(self.unix_path)
        if self.metrics is not None:
            await self.metrics.stop()
        for client in list(self.pooler.all_clients()) + list(self.admin_clients):
            client.conn.fail(
                ServerError("FATAL", ss.ADMIN_SHUTDOWN, Reason.SHUTDOWN), Reason.SHUTDOWN
            )
        for server in list(self.pooler.all_servers()):
            if server.conn is not None:
                server.conn.close()
        self.auth_lookups.close()
        await asyncio.sleep(0)
