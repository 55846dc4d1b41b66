"""The application object: listeners, connection events turned into scheduler calls, the
actions that come back applied, and the janitor tick."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from pgfunnel import __version__
from pgfunnel._switch import Hazard, HazardsMode
from pgfunnel._switch import Kind as SwKind
from pgfunnel._switch import Reason as SwReason
from pgfunnel._switch import State as SwState
from pgfunnel.admin.console import Console
from pgfunnel.config.ini import ConfigError
from pgfunnel.config.loader import Config, DatabaseConfig
from pgfunnel.config.pools import PoolSettings, resolve_pool_settings
from pgfunnel.config.settings import Settings
from pgfunnel.config.tls import TlsSide
from pgfunnel.config.tls import side as tls_side
from pgfunnel.net import logfile
from pgfunnel.net.auth_query import AuthLookups
from pgfunnel.net.bridge import CLOSE_TEXT, Bridge
from pgfunnel.net.client_conn import ClientConn
from pgfunnel.net.commands import ADMIN_DATABASES, Commands
from pgfunnel.net.fast_login import FastLogins, Fleeting
from pgfunnel.net.server_conn import ServerConn
from pgfunnel.net.unixsock import is_unix, sockaddr, tcp_connect, unix_connect, unix_path
from pgfunnel.pool.objects import Client, ClientState, Server, ServerState
from pgfunnel.pool.scheduler import (
    Action,
    CloseClient,
    CloseServer,
    Connect,
    Database,
    EvictIdle,
    FinishLogin,
    HazardCount,
    Holder,
    MarkCloseNeeded,
    Pool,
    Pooler,
    Promote,
    RunQueries,
    User,
    pooler_error,
)
from pgfunnel.proto import messages as m
from pgfunnel.proto import sqlstate as ss
from pgfunnel.proto.auth import ScramSecret
from pgfunnel.proto.login import ServerLogin
from pgfunnel.proto.messages import ServerError
from pgfunnel.proto.strings import HAZARD_TEXT, Msg, Reason, Refusal

log = logging.getLogger("pgfunnel")
HAZARD_ROWS_MAX = 10_000  # SHOW HAZARDS rows (database, user, application_name, hazard)

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
        self._auth_infos: dict[tuple[str, str, str], tuple[str, str, str]] = {}  # shared
        self._stats_at = time.monotonic()
        self._stats_last: list[float] = [0, 0, 0, 0, 0, 0.0, 0]
        self.client_count = 0
        # track_extra_parameters: fixed for the process (PgBouncer reads it at start only)
        for name in m.track_parameters(self.settings.track_extra_parameters):
            log.warning("track_extra_parameters: %s left out: 32 tracked parameters at most", name)
        self.bridge = Bridge(self)  # the switch, which owns every socket
        self.servers_listening: list[int] = []  # the switch's TCP listeners (listen_addr)
        self.unix_listening: int | None = None  # and the unix socket's (unix_socket_dir)
        self.unix_path: str | None = None
        self._wall = time.time() - time.monotonic()
        self._stamp = 0.0  # stamp(): the float it hands out this millisecond
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
        # query_wait_notify: queue places from this janitor tick's snapshot (see deadline).
        self._places: dict[Pool, dict[Client, int]] = {}
        self._shutdown_task: asyncio.Task[None] | None = None  # waits for the last one to go
        self.signal_task: asyncio.Task[None] | None = None  # SIGUSR1's wait for the servers
        self.stopping = asyncio.Event()  # set when the process should exit now
        self.exit_code = 0  # 1 when it goes down on an error (PgBouncer's die())
        self.refused: dict[str, int] = {}  # clients refused before reaching a pool, by reason
        # Logins into a pool, by where they ran: in the switch on a route, or in Python.
        self.logins: dict[str, int] = {"switch": 0, "pooler": 0}
        self.prepared: dict[int, int] = {}
        self.tls: dict[int, str] = {}  # SHOW's `tls` column by connection id (last refresh)
        self.carried: set[int] = set()  # clients carrying session settings (last refresh)
        # pooling_hazards: per (database, user, application_name, hazard) the count, the
        # action in force at the last one, and when (SHOW HAZARDS); (client, hazard) logged
        self.hazards: dict[tuple[str, str, str, str], HazardCount] = {}
        self._hazards_logged: set[tuple[int, int]] = set()
        self.metrics: Any = None  # pgfunnel.metrics.MetricsServer when metrics_addr is set
        self.fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self._limit_bites = [0, 0]  # since the last log line: logins evicted, sockets refused
        self._limit_logged = -LIMIT_LOG_EVERY
        self.fast = FastLogins(self)  # the routes of the logins the switch runs alone
        # The TLS contexts in the switch, as configured (None: not yet): apply_tls
        self.tls_sides: dict[bool, TlsSide | None] = {True: None, False: None}
        self._apply_settings()

    def _apply_settings(self) -> None:
        s = self.settings
        self.max_packet_size = int(s.max_packet_size)
        self.ignore_startup_parameters = frozenset(s.ignore_startup_parameters)
        self.fast.settings_changed()

    # --- clocks ------------------------------------------------------------------------------
    def now(self) -> float:
        # Not loop.time(): uvloop's clock ticks in whole milliseconds, too coarse for the
        # per-query times SHOW STATS reports.
        return time.monotonic()

    def stamp(self, t: float = 0.0) -> float:
        """now() (or `t`, on its clock) to the millisecond, as one float object per
        millisecond: what a client keeps from its login (connect_time) is shared by the logins
        of a burst instead of costing each idle client a float of its own (PgBouncer, too,
        stamps from a cached clock)."""
        if not t:
            t = self.now()
        if abs(t - self._stamp) >= 0.001:
            self._stamp = t
        return self._stamp

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
        self.refresh()
        return self.pooler.holders(self.now(), limit, db)

    def client_hazard(self, client: Client, hazard: int, mode: int) -> None:
        """A client did what transaction pooling cannot keep (the switch's HAZARD event):
        counted per application, logged once per client and kind."""
        try:
            kind, action = Hazard(hazard), HazardsMode(mode)
        except ValueError:
            return
        pool = client.pool
        if pool is None:
            return
        app = client.params.get("application_name", client.app_name)
        key = (pool.db.name, pool.user.name, app, kind.label)
        seen = self.hazards.get(key)
        if seen is None and len(self.hazards) >= HAZARD_ROWS_MAX:
            # application names are the clients' choice: a bounded table, the rest together
            key = (pool.db.name, pool.user.name, "(others)", kind.label)
            seen = self.hazards.get(key)
        if seen is None:
            seen = self.hazards[key] = HazardCount()
        seen.count += 1
        seen.action = action.name.lower()
        seen.last = time.time()
        pool.stats.hazards[kind.label] = pool.stats.hazards.get(kind.label, 0) + 1
        if (client.sid, hazard) in self._hazards_logged:
            return
        if len(self._hazards_logged) > 100_000:
            self._hazards_logged.clear()  # bounded: a client may be told twice, never leak
        self._hazards_logged.add((client.sid, hazard))
        what = HAZARD_TEXT[kind.label]
        then = {
            HazardsMode.WARN: "its server keeps it for the next client",
            HazardsMode.REFUSE: "refused with SQLSTATE 0A000",
            HazardsMode.PIN: "the client keeps its server until it leaves",
        }[action]
        log.warning(
            "C-%#x: %s/%s@%s:%s %s cannot survive transaction pooling "
            "(application_name=%r): pooling_hazards=%s: %s",
            client.id,
            client.dbname,
            client.username,
            client.addr,
            client.port,
            what,
            app,
            action.name.lower(),
            then,
        )

    def count_refusal(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    # --- logging -----------------------------------------------------------------------------
    def log_client(self, client: Client, fmt: str, *args: Any) -> None:
        if self.settings.log_connections and log.isEnabledFor(logging.INFO):
            text = ("C-%#x: %s/%s@%s:%s " + fmt) % (
                client.id,
                client.dbname,
                client.username,
                client.addr,
                client.port,
                *args,
            )
            logfile.info(text)

    def log_login(self, ident: int, db: str, user: str, addr: str, port: int, tls: str) -> None:
        """The login line of a login the switch ran (log_client's, without a Client)."""
        if self.settings.log_connections and log.isEnabledFor(logging.INFO):
            logfile.info(
                f"C-{ident:#x}: {db}/{user}@{addr}:{port} "
                f"login attempt: db={db} user={user} tls={tls or 'no'}"
            )

    def log_close(self, client: Client | Fleeting, reason: str) -> None:
        if client.state is ClientState.LOGIN and self.auth_lookups.quiet_failure(
            client.addr, reason, self.now()
        ):
            return  # repeated login failures from one address: one line per period
        if self.settings.log_disconnections and log.isEnabledFor(logging.INFO):
            age = int(self.now() - client.connect_time)
            text = (
                f"C-{client.id:#x}: {client.dbname or '(nodb)'}/{client.username or '(nouser)'}"
                f"@{client.addr}:{client.port} closing because: {reason} (age={age}s)"
            )
            logfile.info(text)

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

    def client_cap(self) -> int:
        """How many client sockets may stay open: max_client_conn, or fewer where the fd
        limit leaves less room (then some is kept free for new logins)."""
        return min(int(self.settings.max_client_conn), self._fd_room() - FD_SPARE)

    def login_cap(self) -> int:
        """How many sockets may be in login at once: what the fd limit leaves beside the
        logged-in clients and the servers (the switch accepts no more; 0: no cap)."""
        if self.fd_limit == resource.RLIM_INFINITY:
            return 0
        logged_in = self.client_count - len(self.logging_in)
        return max(FD_SPARE, self._fd_room() - logged_in)

    def login_cap_reached(self) -> None:
        """The switch stopped accepting at the login cap: the oldest silent sockets past their
        grace make room (the listener resumes shortly after)."""
        now = self.now()
        if self._evict_logins(now, FD_SPARE):
            self._log_limit(now)
        self.bridge.sw.set_login_cap(self.login_cap())

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
                self.remember_scram_key(server_user, conn.auth.client_key)
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

    def client_gone(self, client: Client, reason: str | None) -> None:
        self.client_count -= 1
        self.logging_in.pop(client.conn, None)
        if reason:
            self.log_close(client, reason)
        if client.is_admin:
            self.admin_clients.pop(client, None)
            self.admin.session_closed(client)
            return
        self.apply(self.pooler.client_closed(client, self.now()))

    def cancel(self, pid: int, key: int) -> None:
        # The key is the connection's switch id under a keyed permutation (cancelkey.c): no
        # table maps keys to clients, and a key names no one once its client has gone.
        sw = self.bridge.sw
        sid = sw.cancel_target(pid, key)
        if not sid:
            return
        client = self.bridge.clients.get(sid)
        if client is None:
            # A console session (a talker), or a client still logging in: nothing runs to cancel.
            for admin in self.admin_clients:
                if admin.sid == sid and admin.conn is not None:
                    admin.conn.cancel_admin()
                    return
            return
        try:
            peer = sw.peer_of(client.sid)
        except KeyError:
            return  # gone meanwhile
        if peer:
            server = self.bridge.servers.get(peer)
            if server is not None and server.pid:
                self.loop.create_task(self._send_cancel(server))
            return
        # Queued: its queries are answered with 57014 and dropped, and it leaves the queue,
        # still connected. (PgBouncer ignores such a cancel and the query runs later.) One
        # error and ReadyForQuery per Query/Sync it sent; messages after its last Sync (a
        # batch still open) get the error alone, as PostgreSQL skips to the client's next Sync.
        # The switch queues the answers in the same step (a byte the client sends meanwhile
        # could otherwise link it to a server first). -1: not waiting, or half a message held.
        sw.cancel_wait(client.sid, m.error_response(ss.QUERY_CANCELED, Msg.QUERY_CANCELED))

    def linked_server(self, client: Client) -> Server | None:
        """The server the switch has linked to `client` right now, if any."""
        if self.bridge.clients.get(client.sid) is not client:
            return None  # not in a pool (logging in, a console session, gone)
        try:
            peer = self.bridge.sw.peer_of(client.sid)
        except KeyError:
            return None
        return self.bridge.servers.get(peer) if peer else None

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
        self.fast.pool_changed(server.pool)

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
        actions: list[Action] = []
        if server.state is not ServerState.CLOSED:
            actions = self.pooler.server_closed(server, reason, self.now())
            self._log_server_close(server, reason)
        server.close_reason = reason
        self._close_server_conn(server)
        self.apply(actions)

    def _close_server_conn(self, server: Server) -> None:
        if server.sid in self.bridge.talkers and server.conn is not None:
            server.conn.close()  # Terminate, then close; connection_lost finds it closed
        else:
            self.bridge.close_server(server, m.terminate())

    def internal_done(self, server: Server, ok: bool) -> None:
        self.apply(self.pooler.internal_done(server, ok, self.now()))

    # --- events from the switch --------------------------------------------------------------
    def promote_client(self, conn: ClientConn, early: bytes) -> None:
        """A logged-in client's welcome is written: the switch carries it from now on."""
        client = conn.client
        self.logging_in.pop(conn, None)
        auth = conn.auth
        if auth is not None and auth.done:
            info = (str(auth.label), str(auth.hba_line), str(auth.source or ""))
            # One tuple per distinct method/line/source, shared by the clients that have it.
            client.auth_info = self.shared_auth_info(info)
        transport = conn.transport
        assert transport is not None
        ok = self.bridge.promote_client(client, transport, early)
        client.conn = None
        if not ok:
            self.client_gone(client, Reason.CLIENT_EOF)
            return
        self.logins["pooler"] += 1
        self.fast.offer(conn, client)

    def shared_auth_info(self, info: tuple[str, str, str]) -> tuple[str, str, str]:
        """One tuple per distinct (method, hba line, source), shared by the clients that have it."""
        return self._auth_infos.setdefault(info, info)

    def remember_scram_key(self, user: str, client_key: bytes) -> None:
        """A ClientKey recovered from a client's SCRAM login: servers of `user` log in with it."""
        self._scram_keys[user] = client_key

    def fail_client(self, client: Client, error: ServerError | None, reason: str) -> None:
        """Close a client (with `error` first, if any), wherever it is."""
        if client.state is ClientState.CLOSED:
            return
        conn = client.conn
        if conn is not None:
            if error is not None:
                conn.fail(error, reason)
            else:
                conn.close(reason)
            return
        final = error.encode(severity="FATAL") if error is not None else b""
        self.bridge.close_client(client, final)
        self.client_gone(client, reason)

    def fleeting_closed(self, client: Fleeting, why: SwReason, data: bytes) -> None:
        """A client the switch logged in, closed in the same drain (FastLogins.logged_in):
        counted and logged as client_gone would, with no pool or scheduler to tell."""
        if why is SwReason.UNKNOWN_TYPE:
            self._log_unknown_type(client, data)
        self.client_count -= 1
        self.log_close(client, CLOSE_TEXT.get(why, Reason.CLIENT_EOF))

    def switch_client_closed(self, client: Client, why: SwReason, data: bytes) -> None:
        if why is SwReason.UNKNOWN_TYPE:
            self._log_unknown_type(client, data)
        self.client_gone(client, CLOSE_TEXT.get(why, Reason.CLIENT_EOF))

    def _log_unknown_type(self, client: Client | Fleeting, data: bytes) -> None:
        kind = data[0] if data else 0
        log.error(
            "C-%#x: %s/%s@%s:%s unknown pkt from client: %d/%#x",
            client.id,
            client.dbname,
            client.username,
            client.addr,
            client.port,
            kind,
            kind,
        )

    def switch_server_closed(self, server: Server, why: SwReason) -> None:
        if server.state is ServerState.CLOSED:
            return
        self.server_gone(server, CLOSE_TEXT.get(why, Reason.SERVER_CLOSED))

    def pool_waiters(self, pool: Pool, waiting: int) -> None:
        now = self.now()
        if self.shutting_down == "WAIT_FOR_SERVERS":
            self.refresh()
            self._close_waiting_for_shutdown()
            return
        if pool.login_failed_until > now and not pool.server_count:
            self.refresh()
        self.apply(self.pooler.pool_waiters(pool, waiting, now))

    def server_attention(self, server: Server, why: SwReason) -> None:
        """The switch parked a server whose client left it in a state only the pooler can
        judge: clean it (ROLLBACK, the reset query) and give it back, or close it."""
        names = {
            SwReason.SESSION_END: "session_end",
            SwReason.DIRTY_TXN: "dirty_txn",
            SwReason.DIRTY_BUSY: "dirty_busy",
            SwReason.CLOSE_NEEDED: "close_needed",
            SwReason.CHECK_NEEDED: "check_needed",
            SwReason.RESET_NEEDED: "reset_needed",
            SwReason.DIRTY_PARTIAL: "dirty_partial",
            SwReason.PLAN_CHANGED: "plan_changed",
            SwReason.PINNED_END: "pinned_end",
        }
        now = self.now()
        if why not in (SwReason.DIRTY_BUSY, SwReason.DIRTY_PARTIAL) and (
            server.state is not ServerState.CLOSED
        ):
            self.pooler.mirror_server(server, ServerState.USED)
        actions = self.pooler.server_attention(server, names.get(why, "dirty_busy"), now)
        talks = any(isinstance(a, RunQueries | Promote) and a.server is server for a in actions)
        if talks and not self._talk(server):
            return
        self.apply(actions)

    def _talk(self, server: Server) -> bool:
        """Take a parked server back from the switch to run the pooler's own queries on it."""
        try:
            values = self.bridge.sw.params(server.sid)
            if not self.bridge.sw.talk(server.sid):
                return False  # gone: its CLOSED event is on its way
        except (KeyError, ValueError):
            self.close_server(server, Reason.CLIENT_GONE_BUSY)
            return False
        self.bridge.servers.pop(server.sid, None)
        server.tracked = {name: values.get(name, "") for name in server.tracked}
        conn: ServerConn = server.conn
        conn.talk(self.bridge.talk_to_server(server.sid, conn, conn.peer))
        return True

    def deadline(self, sid: int, pool: Pool | None, why: SwReason) -> None:
        """A timeout the switch watches passed; the pooler decides and acts through `expire`,
        which does nothing if the connection has moved on meanwhile."""
        if pool is None:
            return
        now = self.now()
        s = pool.settings
        sw = self.bridge.sw
        if why is SwReason.RESERVE:
            pool.reserve_due = True
            self.apply(self.pooler.pool_waiters(pool, pool.sw_waiting, now))
            return
        if why in (SwReason.SERVER_IDLE, SwReason.SERVER_LIFETIME):
            server = self.bridge.servers.get(sid)
            talking = self.bridge.talkers.get(sid)
            if server is None and why is SwReason.SERVER_LIFETIME and talking is not None:
                # Running the pooler's own queries: marked now, closed when they end.
                server = getattr(talking.talker, "server", None)
            if server is None:
                return
            if why is SwReason.SERVER_LIFETIME:
                server.lifetime_over = True
                sw.expire(sid, why)  # closed when its client lets go: ATTENTION CLOSE_NEEDED
                return
            if pool.server_count <= s.min_pool_size:
                return
            if sw.expire(sid, why, m.terminate()):
                self.bridge.servers.pop(sid, None)
                self.pooler.count_timeout(pool, Reason.IDLE_TIMEOUT)
                self._log_server_close(server, Reason.IDLE_TIMEOUT)
                self.apply(self.pooler.server_closed(server, Reason.IDLE_TIMEOUT, now))
            return
        client = self.bridge.clients.get(sid)
        if client is None:
            return
        if why is SwReason.QUERY_WAIT_NOTIFY:
            # Waiters that queued together reach their notice together: one snapshot per
            # janitor interval gives them all their places (not one snapshot each).
            if not self._places:  # none since the janitor's last tick: snapshot once
                self.refresh()
            places = self._places.get(pool)
            if places is None:
                queue = self.pooler.queued(pool)
                places = self._places[pool] = {c: i for i, c in enumerate(queue, 1)}
            position = places.get(client, len(places))
            message, detail = self.pooler.wait_notice(
                pool, position, len(places), s.query_wait_notify
            )
            sw.expire(sid, why, m.notice_response(message, detail=detail))
            return
        held: Server | None = None
        if why is SwReason.QUERY_WAIT:
            action = self.pooler.wait_timeout(client, pool, now, s.query_wait_timeout)
            reason, error = action.reason, action.error
        elif why is SwReason.CLIENT_IDLE:
            reason = Reason.CLIENT_IDLE_TIMEOUT
            error = pooler_error(reason)
        else:
            reason = Reason.QUERY_TIMEOUT if why is SwReason.QUERY else Reason.IDLE_TX_TIMEOUT
            error = pooler_error(reason)
            held = self.linked_server(client)
        assert error is not None
        if not sw.expire(sid, why, error.encode(severity="FATAL")):
            return  # it moved on meanwhile (got its server, sent a query): nothing happened
        self.pooler.count_timeout(pool, reason)
        self.bridge.clients.pop(sid, None)
        self.client_gone(client, reason)
        if held is not None:  # closed with it (only that ends a query or a transaction)
            self.bridge.servers.pop(held.sid, None)
            self._log_server_close(held, reason)
            self.apply(self.pooler.server_closed(held, reason, now))

    # --- applying actions --------------------------------------------------------------------
    def apply(self, actions: Iterable[Action]) -> None:
        for action in actions:
            if isinstance(action, Promote):
                server = action.server
                if not self.bridge.promote_server(server):
                    self.server_gone(server, Reason.SERVER_CLOSED)
            elif isinstance(action, Connect):
                self.loop.create_task(self._connect(action.server))
            elif isinstance(action, RunQueries):
                action.server.internal += len(action.queries)
                action.server.conn.write(b"".join(m.query(q) for q in action.queries))
            elif isinstance(action, CloseServer):
                server = action.server
                server.close_reason = action.reason
                if server.conn is not None or server.sid:
                    self._log_server_close(server, action.reason)
                    self._close_server_conn(server)
            elif isinstance(action, CloseClient):
                if action.reason is Reason.LOGIN_FAILING:
                    self.count_refusal(Refusal.SERVER_LOGIN_FAILING)
                self.fail_client(action.client, action.error, action.reason)
            elif isinstance(action, EvictIdle):
                if self.take_idle(action.server, Reason.EVICTED):
                    self.apply(self.pooler.evicted(action.pool, self.now()))
            elif isinstance(action, MarkCloseNeeded):
                self.bridge.sw.set_close_needed(action.server.sid)
            elif isinstance(action, FinishLogin):
                client = action.client
                pool = client.pool
                assert pool is not None and client.conn is not None
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
                peer, local = path, ("", 0)
            else:
                sock = await tcp_connect(self.loop, str(dbc.host), int(dbc.port))
                peer = f"{dbc.host}:{dbc.port}"
                here = sock.getsockname()
                local = (str(here[0]), int(here[1]))
        except OSError as exc:
            self.server_login_failed(server, None, f"connect failed: {exc.strerror or exc}")
            return
        if server.state is ServerState.CLOSED:  # connect timeout, KILL, ... meanwhile
            sock.close()
            return
        # The switch owns the socket from here; Python talks the login through it. Over TCP
        # it asks for TLS first as server_tls_sslmode says (never on a unix socket, as libpq).
        side = self.tls_sides[False]
        tls_mode = side.mode if side is not None and not is_unix(dbc.host) else 0
        sid = self.bridge.sw.connect_server(
            sock.detach(),
            self.bridge.pool_id(pool),
            b"",
            tls_mode,
            None if is_unix(dbc.host) else str(dbc.host),
        )
        server.sid = sid
        conn = ServerConn(self, server, login, peer, local)
        conn.connection_made(self.bridge.talk_to_server(sid, conn, peer))

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
        self._places.clear()  # query_wait_notify's queue places: one snapshot per tick at most
        try:
            self.bridge.drain()  # counts as of now: the logins and closes the switch let wait
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
            excess = self.client_count - self.client_cap()
            if excess > 0 and self.logging_in:
                # Silent sockets opened faster than the grace let them be evicted at accept.
                if self._evict_logins(now, excess):
                    self._log_limit(now)
            self.bridge.sw.set_login_cap(self.login_cap())
            self.fast.tick()
            self.sync_pools()
            if self.shutting_down == "WAIT_FOR_SERVERS":
                if any(p.sw_waiting for p in self.pooler.pools.values()):
                    self.refresh()
                self._close_waiting_for_shutdown()  # those queued since by any path
            self._close_paused_idle()
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

    # --- reading the switch ------------------------------------------------------------------
    def sync_pools(self) -> None:
        """Per pool, what the switch counts (its queue, the oldest wait, the traffic totals):
        one snapshot row per pool, cheap enough for every janitor tick."""
        pools = self.bridge.pools
        for snap in self.bridge.sw.pools():
            pool = pools.get(snap.pool)
            if pool is None:
                continue
            pool.sw_waiting = snap.cl_waiting
            pool.sw_maxwait = snap.maxwait_us / 1e6
            if not snap.cl_waiting:
                pool.reserve_due = False
            st = pool.stats
            st.xact_count = snap.xact_count
            st.query_count = snap.query_count
            st.bytes_in = snap.bytes_received
            st.bytes_out = snap.bytes_sent
            st.xact_time = snap.xact_time_us / 1e6
            st.query_time = snap.query_time_us / 1e6
            st.wait_time = snap.wait_time_us / 1e6
            st.wait_buckets = list(snap.wait_hist)
            st.wait_count = sum(snap.wait_hist)
            st.server_assignment_count = snap.assign_count
            st.client_parse_count = snap.client_parse_count
            st.server_parse_count = snap.server_parse_count
            st.bind_count = snap.bind_count

    def refresh(self) -> None:
        """Read the switch's connection snapshot into the pool objects (states, links, what
        each client is owed, waits): what SHOW, /metrics, the status page and the holders
        report, read just before they report it. O(connections): not per transaction.
        The logins and closes the switch has not woken Python for yet are handled first."""
        self.bridge.drain()
        self.sync_pools()
        bridge = self.bridge
        now = self.now()
        wall_now = time.time()
        pooler = self.pooler
        queues: dict[Pool, list[tuple[int, Client]]] = {}
        prepared: dict[int, int] = {}
        carried: set[int] = set()
        for row in bridge.sw.conns():
            if row.prepared:
                prepared[row.conn] = row.prepared
            if row.carried:
                carried.add(row.conn)
            if row.kind == SwKind.CLIENT:
                client = bridge.clients.get(row.conn)
                if client is None:
                    continue
                waiting = row.state == SwState.CL_WAITING
                pooler.mirror_client(client, ClientState.WAITING if waiting else ClientState.ACTIVE)
                client.expect_rfq = row.owed
                client.request_time = now - max(0.0, wall_now - row.request_time_us / 1e6)
                client.link = bridge.servers.get(row.peer) if row.peer else None
                if waiting and client.pool is not None:
                    client.wait_start = now - row.wait_us / 1e6
                    queues.setdefault(client.pool, []).append((row.wait_us, client))
            elif row.kind == SwKind.SERVER:
                server = bridge.servers.get(row.conn)
                if server is None:
                    continue
                state = {
                    SwState.SV_IDLE: ServerState.IDLE,
                    SwState.SV_ACTIVE: ServerState.ACTIVE,
                }.get(SwState(row.state), ServerState.USED)
                pooler.mirror_server(server, state)
                if row.tx_status:
                    server.tx_status = row.tx_status.encode()
                linked = bridge.clients.get(row.peer) if row.peer else None
                server.link = linked
                since = now - max(0.0, wall_now - row.request_time_us / 1e6)
                server.request_time = since
                if state is ServerState.IDLE:
                    server.idle_since = since
                if row.link_us:
                    server.link_time = now - max(0.0, wall_now - row.link_us / 1e6)
                if row.xact_us:
                    server.xact_start = now - max(0.0, wall_now - row.xact_us / 1e6)
        for pool in pooler.pools.values():
            queue = sorted(queues.get(pool, []), key=lambda item: -item[0])
            pool.waiting = deque(client for _, client in queue)
        for client in bridge.clients.values():
            if client.link is not None and client.link.link is not client:
                client.link = None
        self.prepared = prepared
        self.carried = carried
        # TLS descriptions (SHOW's `tls` column), asked only when some side may use TLS
        sides = self.tls_sides.values()
        self.tls = bridge.sw.tls_infos() if any(t is not None and t.mode for t in sides) else {}

    def carries(self, sid: int) -> str:
        return self.bridge.sw.carries(sid) if sid in self.carried else ""

    def prepared_mem(self) -> tuple[int, int, int, int]:
        return tuple(self.bridge.sw.ps_mem())  # type: ignore[return-value]

    def pause_pools(self, db: Database, on: bool) -> None:
        """PAUSE / RESUME in the switch: a paused pool links no client to a server."""
        for pool in self.pooler.db_pools(db):
            pid = self.bridge.pool_ids.get(pool)
            if pid is not None:
                self.bridge.sw.pause(pid, on)
        if on:
            self._close_paused_idle()

    def retune(self) -> None:
        """RELOAD or SET changed settings: every pool's limits, mode and timeouts afresh."""
        self.fast.clear()
        self.pooler.retune()
        for pool in self.pooler.pools.values():
            self.bridge.apply_settings(pool)

    def _close_paused_idle(self) -> None:
        """PAUSE closes a paused database's servers as they go idle (the switch keeps them in
        its idle stack; `detach` takes back only an idle one, so a server being handed out
        meanwhile is never cut)."""
        for pool in self.pooler.pools.values():
            if not pool.db.paused or pool.server_count == 0:
                continue
            for row in self.bridge.sw.conns():
                if row.pool != self.bridge.pool_ids.get(pool) or row.state != SwState.SV_IDLE:
                    continue
                server = self.bridge.servers.get(row.conn)
                if server is not None:
                    self.take_idle(server, Reason.PAUSE_MODE)

    def take_idle(self, server: Server, reason: str) -> bool:
        """Close an idle server the switch holds; False if it is not idle any more."""
        # In the switch, atomically: only if idle now, and its Terminate through its TLS
        if not self.bridge.sw.end_idle(server.sid, m.terminate()):
            return False
        self.bridge.servers.pop(server.sid, None)
        self._log_server_close(server, reason)
        self.apply(self.pooler.server_closed(server, reason, self.now()))
        return True

    def _log_holders(self, now: float) -> None:
        """Once per queue: when a pool's clients have waited HOLDERS_LOG_AFTER seconds, one
        line names the clients holding its servers longest (who to look at, and why)."""
        # A copy: refresh() below drains the switch's events, and one may add a pool.
        for pool in list(self.pooler.pools.values()):
            wait = pool.oldest_wait(now)
            if wait < HOLDERS_LOG_AFTER:
                if wait == 0:
                    pool.holders_logged = False
                continue
            if pool.holders_logged:
                continue
            pool.holders_logged = True
            self.refresh()
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

    # --- TLS -------------------------------------------------------------------------------
    def apply_tls(self, settings: Settings) -> dict[bool, str]:
        """Build the switch's TLS contexts from `settings`, reading the key, certificate and
        CA files again (RELOAD loads renewed certificates): new connections use them, those up
        keep theirs. Per side (True: clients) that could not be built, why (its path
        included): that side keeps its old context. A server side whose settings changed
        replaces the servers as they are released (PgBouncer's reconnect on a TLS change)."""
        failed: dict[bool, str] = {}
        for clients in (True, False):
            want = tls_side(settings, clients)
            try:
                self.bridge.sw.tls_configure(
                    want.side,
                    want.mode,
                    want.protocols,
                    want.dhe,
                    want.key_file or None,
                    want.cert_file or None,
                    want.ca_file or None,
                    want.ciphers or None,
                    want.ciphers13 or None,
                    want.ecdhcurve or None,
                )
            except ValueError as exc:
                failed[clients] = str(exc)
                continue
            old = self.tls_sides[clients]
            self.tls_sides[clients] = want
            if not clients and old is not None and old != want:
                log.info("server TLS settings changed: servers are replaced as they are released")
                now = self.now()
                for db in self.pooler.databases.values():
                    self.apply(self.pooler.reconnect(db, now))
        return failed

    def tls_text(self, sid: int) -> str:
        """The login line's and SHOW's TLS description of a connection ("" without TLS)."""
        if not sid:
            return ""
        try:
            return self.bridge.sw.tls_info(sid)
        except KeyError:
            return ""

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        if s.metrics_addr:  # first: ready to be scraped by the time clients can connect
            from pgfunnel.metrics import MetricsServer

            self.metrics = MetricsServer(self)
            await self.metrics.start()
        self.bridge.start()
        for clients, why in self.apply_tls(s).items():
            side = "client" if clients else "server"
            raise ConfigError(self.config.path, 0, f"{side} TLS configuration failed: {why}")
        self.bridge.sw.set_login_cap(self.login_cap())
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
        """Open the TCP listeners of listen_addr and the unix socket, handed to the switch,
        which accepts on them; returns the addresses."""
        s = self.settings
        port = int(s.listen_port)
        raw = s.listen_addr
        addrs = [a.strip() for a in (raw.split(",") if isinstance(raw, str) else raw) if a.strip()]
        backlog = int(s.listen_backlog)
        socks: list[tuple[socket.socket, str]] = []
        unix: tuple[socket.socket, str] | None = None
        try:
            for addr in addrs:
                host = None if addr == "*" else addr
                infos = await self.loop.getaddrinfo(
                    host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
                )
                for family, kind, proto, _, sa in dict.fromkeys(infos):
                    sock = socket.socket(family, kind, proto)
                    socks.append((sock, f"{sa[0]!s}:{sa[1]!s}"))
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if family == socket.AF_INET6:
                        # One socket per family, as asyncio's create_server does.
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    sock.bind(sa)
                    sock.listen(backlog)
                    sock.setblocking(False)
            if s.unix_socket_dir:
                path = unix_path(None, port, s.unix_socket_dir)
                abstract = path.startswith("@")  # no file to remove, chmod or unlink at exit
                if not abstract:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                usock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                unix = (usock, path)
                usock.bind(sockaddr(path))
                usock.listen(backlog)
                usock.setblocking(False)
                if not abstract:
                    self.unix_path = path
                    with contextlib.suppress(OSError):
                        os.chmod(path, int(s.unix_socket_mode))
        except BaseException:
            for sock, _ in socks:
                sock.close()
            if unix is not None:
                unix[0].close()
            raise
        for sock, label in socks:
            self.servers_listening.append(self.bridge.listen(sock, label))
        if unix is not None:
            self.unix_listening = self.bridge.listen(unix[0], unix[1])
        if not self.servers_listening and self.unix_listening is None:
            raise ConfigError(self.config.path, 0, "no listen_addr and no unix_socket_dir")
        return addrs

    async def stop(self) -> None:
        if self._janitor is not None:
            self._janitor.cancel()
        for lid in self.servers_listening:
            self.bridge.close_listener(lid)
        if self.unix_listening is not None:
            self.bridge.close_listener(self.unix_listening)
            if self.unix_path is not None:  # as PgBouncer: the socket file goes with us
                with contextlib.suppress(OSError):
                    os.unlink(self.unix_path)
        if self.metrics is not None:
            await self.metrics.stop()
        # Every client the switch has logged in, also those whose LOGGED_IN waits (lazy):
        # each gets the shutdown error and its line, none is dropped silently.
        self.fast.clear()
        self.bridge.drain()
        error = ServerError("FATAL", ss.ADMIN_SHUTDOWN, Reason.SHUTDOWN)
        for client in list(self.pooler.all_clients()) + list(self.admin_clients):
            self.fail_client(client, error, Reason.SHUTDOWN)
        for conn in list(self.logging_in):
            conn.fail(error, Reason.SHUTDOWN)
        for server in list(self.pooler.all_servers()):
            self._close_server_conn(server)
        self.auth_lookups.close()
        await asyncio.sleep(0.05)  # the switch writes the goodbyes
        self.bridge.stop()
