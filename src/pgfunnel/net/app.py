"""The application object and `pgfunnel serve`: listeners, the janitor tick, applying actions."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import pwd
import resource
import signal
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from pgfunnel import __version__
from pgfunnel.admin.console import Console
from pgfunnel.config.ini import ConfigError
from pgfunnel.config.loader import Config, DatabaseConfig, load_config
from pgfunnel.net.client_conn import ClientConn
from pgfunnel.net.server_conn import ServerConn
from pgfunnel.pool.objects import Client, Server, ServerState
from pgfunnel.pool.scheduler import (
    Action,
    CloseClient,
    CloseServer,
    Connect,
    Database,
    FinishLogin,
    Link,
    Pooler,
    PoolSettings,
    RunQueries,
    User,
)
from pgfunnel.proto import messages as m
from pgfunnel.proto import sqlstate as ss
from pgfunnel.proto.auth import ScramSecret
from pgfunnel.proto.login import ServerLogin
from pgfunnel.proto.messages import ServerError
from pgfunnel.proto.strings import Msg, Reason

log = logging.getLogger("pgfunnel")

ADMIN_DATABASES = ("pgbouncer", "pgfunnel")
JANITOR_INTERVAL = 0.1  # seconds between janitor runs: the resolution of every timeout
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


class App:
    """Holds config, pools, listeners and counters; the one object passed down everywhere."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.config = config
        self.settings = config.settings
        self.pooler = Pooler(self._pool_settings)
        self.admin = Console(self)
        self.admin_clients: dict[Client, None] = {}
        self.logging_in: dict[ClientConn, None] = {}  # connections not yet authenticated
        self._stats_at = loop.time()
        self._stats_last: list[float] = [0, 0, 0, 0, 0, 0.0, 0]
        self.client_count = 0
        self.servers_listening: list[asyncio.AbstractServer] = []
        self._wall = time.time() - loop.time()
        self._janitor: asyncio.TimerHandle | None = None
        # ClientKeys recovered from clients' SCRAM logins, to log into servers as them.
        self._scram_keys: dict[str, bytes] = {}
        self.scram_derived: dict[str, ScramSecret] = {}  # plain userlist password -> secret
        self._apply_settings()

    def _apply_settings(self) -> None:
        s = self.settings
        self.max_packet_size = int(s.max_packet_size)
        self.ignore_startup_parameters = frozenset(s.ignore_startup_parameters)

    # --- clocks ------------------------------------------------------------------------------
    def now(self) -> float:
        return self.loop.time()

    def wall(self, t: float) -> float:
        return t + self._wall

    # --- config lookups ----------------------------------------------------------------------
    def userlist(self) -> dict[str, str]:
        return self.config.userlist

    def is_admin_user(self, user: str) -> bool:
        return user in self.settings.admin_users

    def _pool_settings(self, db: Database, user: User) -> PoolSettings:
        s = self.settings
        dbc: DatabaseConfig = db.config
        uc = user.config

        def pick(*values: Any) -> Any:
            for v in values:
                if v is not None:
                    return v
            return None

        def per_user(name: str) -> Any:
            return getattr(uc, name, None)

        return PoolSettings(
            pool_mode=pick(getattr(uc, "pool_mode", None), dbc.pool_mode, s.pool_mode),
            pool_size=pick(dbc.pool_size, getattr(uc, "pool_size", None), s.default_pool_size),
            min_pool_size=pick(dbc.min_pool_size, s.min_pool_size),
            reserve_pool_size=pick(
                dbc.reserve_pool, per_user("reserve_pool_size"), s.reserve_pool_size
            ),
            reserve_pool_timeout=s.reserve_pool_timeout,
            max_db_connections=pick(dbc.max_db_connections, s.max_db_connections),
            max_user_connections=pick(
                getattr(uc, "max_user_connections", None), s.max_user_connections
            ),
            server_lifetime=pick(dbc.server_lifetime, s.server_lifetime),
            server_idle_timeout=s.server_idle_timeout,
            server_connect_timeout=s.server_connect_timeout,
            server_login_retry=s.server_login_retry,
            server_reset_query=s.server_reset_query,
            server_reset_query_always=s.server_reset_query_always,
            # "<empty>" is PgBouncer's spelling for "send an empty query"; "" turns checks off.
            server_check_query=(
                None
                if not s.server_check_query
                else ""
                if s.server_check_query == "<empty>"
                else s.server_check_query
            ),
            server_check_delay=s.server_check_delay,
            query_timeout=pick(per_user("query_timeout"), s.query_timeout),
            query_wait_timeout=s.query_wait_timeout,
            client_idle_timeout=pick(per_user("client_idle_timeout"), s.client_idle_timeout),
            idle_transaction_timeout=pick(
                per_user("idle_transaction_timeout"), s.idle_transaction_timeout
            ),
        )

    def database(self, name: str) -> Database | None:
        db = self.pooler.databases.get(name)
        if db is not None:
            return db
        dbc = self.config.database(name)
        if dbc is None:
            return None
        db = Database(name, dbc)
        self.pooler.databases[name] = db
        return db

    def user(self, name: str) -> User:
        user = self.pooler.users.get(name)
        if user is None:
            user = User(name, self.config.users.get(name))
            self.pooler.users[name] = user
        return user

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

    def admit(self, conn: ClientConn, dbname: str, user: str) -> ServerError | None:
        """Decide whether this startup may go on to authentication."""
        client = conn.client
        if dbname in ADMIN_DATABASES:
            if user not in self.settings.admin_users and user not in self.settings.stats_users:
                if self.settings.auth_type != "any":
                    return ServerError("FATAL", ss.INVALID_AUTHORIZATION, Msg.ADMIN_DENIED)
            client.is_admin = True
            return None
        if self.client_count > self.settings.max_client_conn:
            return ServerError("FATAL", ss.PROTOCOL_VIOLATION, Reason.MAX_CLIENT_CONN)
        db = self.database(dbname)
        if db is None:
            msg = Msg.NO_SUCH_DATABASE.format(db=dbname)
            return ServerError("FATAL", ss.INVALID_CATALOG_NAME, msg)
        if db.disabled:
            msg = f"database does not allow connections: {dbname}"
            return ServerError("FATAL", ss.PROTOCOL_VIOLATION, msg)
        return None

    def authenticated(self, conn: ClientConn) -> None:
        self.logging_in.pop(conn, None)
        client = conn.client
        if client.is_admin:
            self.admin_clients[client] = None
            conn.finish_login(ADMIN_WELCOME)
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
        self.apply(self.pooler.client_authenticated(client, pool, self.now()))

    def wants_server(self, client: Client) -> None:
        self.apply(self.pooler.client_wants_server(client, self.now()))

    def client_gone(self, client: Client, reason: str | None) -> None:
        self.client_count -= 1
        self.logging_in.pop(client.conn, None)
        if reason:
            self._log_close(client, reason)
        if client.is_admin:
            self.admin_clients.pop(client, None)
            return
        self.apply(self.pooler.client_closed(client, self.now()))

    def cancel(self, pid: int, key: int) -> None:
        client = self.pooler.cancel_keys.get((pid, key))
        if client is None or client.link is None:
            return
        server = client.link
        if server.state is not ServerState.ACTIVE or server.conn is None:
            return
        self.loop.create_task(self._send_cancel(server))

    async def _send_cancel(self, server: Server) -> None:
        dbc: DatabaseConfig = server.pool.db.config
        try:
            if _is_unix(dbc.host):
                _, writer = await asyncio.open_unix_connection(
                    _unix_path(dbc.host, dbc.port, self.settings.unix_socket_dir)
                )
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
        self._log_server(server, "new connection to server")
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
        self._log_server(server, "closing because: %s", reason)
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
        if not conn.scanner.at_boundary or conn.pending:
            return  # half a message is on its way to this server: keep the link
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
                    self._log_server(server, "closing because: %s", action.reason)
                    server.conn.close()
            elif isinstance(action, CloseClient):
                conn: ClientConn = action.client.conn
                if action.error is not None:
                    conn.fail(action.error, action.reason)
                else:
                    conn.close(action.reason)
            elif isinstance(action, FinishLogin):
                client = action.client
                pool = client.pool
                assert pool is not None and pool.welcome is not None
                welcome = dict(pool.welcome)
                dbc: DatabaseConfig = pool.db.config
                for key, value in (
                    ("client_encoding", dbc.client_encoding),
                    ("DateStyle", dbc.datestyle),
                    ("TimeZone", dbc.timezone),
                ):
                    if value:
                        welcome[key] = value
                client.conn.finish_login(welcome)

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
        params: dict[str, str] = {}
        for key, value in (
            ("client_encoding", dbc.client_encoding),
            ("datestyle", dbc.datestyle),
            ("timezone", dbc.timezone),
        ):
            if value:
                params[key] = value
        login = ServerLogin(user, dbc.dbname, password, params, self._scram_keys.get(user))
        try:
            if _is_unix(dbc.host):
                path = _unix_path(dbc.host, dbc.port, self.settings.unix_socket_dir)
                await self.loop.create_unix_connection(
                    lambda: ServerConn(self, server, login, path), path
                )
            else:
                peer = f"{dbc.host}:{dbc.port}"
                await self.loop.create_connection(
                    lambda: ServerConn(self, server, login, peer), str(dbc.host), dbc.port
                )
        except OSError as exc:
            self.server_login_failed(server, None, f"connect failed: {exc.strerror or exc}")

    # --- the janitor -------------------------------------------------------------------------
    def _tick(self) -> None:
        try:
            now = self.now()
            timeout = float(self.settings.client_login_timeout)
            if timeout > 0:
                for conn in list(self.logging_in):
                    if now - conn.client.connect_time < timeout:
                        break
                    conn.fail(
                        ServerError("FATAL", ss.PROTOCOL_VIOLATION, Reason.CLIENT_LOGIN_TIMEOUT),
                        Reason.CLIENT_LOGIN_TIMEOUT,
                    )
            self.apply(self.pooler.maint(now))
            period = float(self.settings.stats_period)
            if period > 0 and now - self._stats_at >= period:
                self._log_stats(now - self._stats_at)
                self._stats_at = now
        except Exception:  # a bug in one tick must not stop every future timeout
            log.exception("janitor failed")
        self._janitor = self.loop.call_later(JANITOR_INTERVAL, self._tick)

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
            path = os.path.join(s.unix_socket_dir, f".s.PGSQL.{port}")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            srv = await self.loop.create_unix_server(lambda: ClientConn(self), path)
            with contextlib.suppress(OSError):
                os.chmod(path, int(s.unix_socket_mode))
            self.servers_listening.append(srv)
        if not self.servers_listening:
            raise ConfigError(self.config.path, 0, "no listen_addr and no unix_socket_dir")
        self._warm_forced_pools()
        self._janitor = self.loop.call_later(JANITOR_INTERVAL, self._tick)
        log.info("process up: pgfunnel %s, listening on %s port %d", __version__, addrs, port)

    async def stop(self) -> None:
        if self._janitor is not None:
            self._janitor.cancel()
        for srv in self.servers_listening:
            srv.close()
        for client in list(self.pooler.all_clients()) + list(self.admin_clients):
            client.conn.fail(
                ServerError("FATAL", ss.ADMIN_SHUTDOWN, Reason.SHUTDOWN), Reason.SHUTDOWN
            )
        for server in list(self.pooler.all_servers()):
            if server.conn is not None:
                server.conn.close()
        await asyncio.sleep(0)


def _is_unix(host: str | None) -> bool:
    return not host or host.startswith("/")


def _unix_path(host: str | None, port: int, default_dir: str = "/tmp") -> str:
    """A database without host uses a socket in unix_socket_dir, as PgBouncer does."""
    directory = host or default_dir or "/tmp"
    return os.path.join(directory, f".s.PGSQL.{port}")


# --- `pgfunnel serve` -----------------------------------------------------------------------
class _Formatter(logging.Formatter):
    """PgBouncer's log line: `2024-04-19 14:21:06.654 UTC [pid] LOG message`."""

    LEVELS: ClassVar[dict[str, str]] = {
        "DEBUG": "DEBUG",
        "INFO": "LOG",
        "WARNING": "WARNING",
        "ERROR": "ERROR",
    }

    def format(self, record: logging.LogRecord) -> str:
        t = time.gmtime(record.created)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", t) + f".{int(record.msecs):03d} UTC"
        level = self.LEVELS.get(record.levelname, record.levelname)
        text = f"{stamp} [{os.getpid()}] {level} {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _setup_logging(config: Config, quiet: bool, verbose: int, daemon: bool) -> None:
    root = logging.getLogger("pgfunnel")
    root.handlers.clear()
    level = logging.DEBUG if (int(config.settings.verbose) + verbose) > 0 else logging.INFO
    root.setLevel(level)
    fmt = _Formatter()
    if config.settings.logfile:
        fh = logging.FileHandler(config.settings.logfile)
        fh.setFormatter(fmt)
        root.addHandler(fh)
    if not quiet and not daemon:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(fmt)
        root.addHandler(sh)
    root.propagate = False


def _daemonize() -> None:
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)


def _switch_user(name: str) -> None:
    pw = pwd.getpwnam(name)
    os.setgid(pw.pw_gid)
    os.initgroups(name, pw.pw_gid)
    os.setuid(pw.pw_uid)


def serve_main(args: argparse.Namespace) -> int:
    if args.reboot:
        print(
            "pgfunnel: -R/--reboot (online restart) is not supported; "
            "restart pgfunnel normally or use SHUTDOWN WAIT_FOR_CLIENTS with so_reuseport",
            file=sys.stderr,
        )
        return 1
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"pgfunnel: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"pgfunnel: cannot read config: {exc}", file=sys.stderr)
        return 1
    if args.daemon and not (config.settings.pidfile and config.settings.logfile):
        print("pgfunnel: -d/--daemon needs pidfile and logfile in the config", file=sys.stderr)
        return 1
    user = args.user or config.settings.user
    if user:
        if os.geteuid() != 0:
            print("pgfunnel: -u/--user needs to start as root", file=sys.stderr)
            return 1
        try:
            _switch_user(user)
        except (KeyError, PermissionError) as exc:
            print(f"pgfunnel: cannot switch to user {user}: {exc}", file=sys.stderr)
            return 1
    if args.daemon:
        _daemonize()
    _setup_logging(config, args.quiet, args.verbose, args.daemon)
    for warning in config.unsupported:
        log.warning("%s", warning)
    if config.settings.pidfile:
        Path(config.settings.pidfile).write_text(f"{os.getpid()}\n")
    try:
        return _run(config)
    finally:
        if config.settings.pidfile:
            with contextlib.suppress(OSError):
                os.unlink(config.settings.pidfile)


def _raise_fd_limit(config: Config) -> None:
    """Each client and server is a file descriptor: lift the soft limit toward the hard one so
    max_client_conn is reachable (Debian's default soft limit is 1024)."""
    want = int(config.settings.max_client_conn) + 2 * int(config.settings.default_pool_size) + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < want:
            log.warning(
                "file descriptor limit %d is below what max_client_conn=%s needs (%d)",
                new,
                config.settings.max_client_conn,
                want,
            )


def _run(config: Config) -> int:
    _raise_fd_limit(config)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # uvloop is a declared dependency; this keeps odd platforms alive
        runner = asyncio.Runner()
    with runner:
        return runner.run(_main(config))


async def _main(config: Config) -> int:
    loop = asyncio.get_running_loop()
    app = App(config, loop)
    try:
        await app.start()
    except (OSError, ConfigError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("got signal, shutting down")
    await app.stop()
    return 0
