"""The admin commands and the lifecycle the console and the signals share: pause, resume,
disable, enable, reconnect, kill, suspend, shutdown, reload and SET, each once."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from pgfunnel.admin.host import AdminError
from pgfunnel.config.ini import ConfigError
from pgfunnel.config.settings import SETTINGS, Settings, parse_value
from pgfunnel.config.tls import problems as tls_problems
from pgfunnel.net import logfile
from pgfunnel.net.bridge import Bridge
from pgfunnel.net.client_conn import ClientConn
from pgfunnel.net.config_check import load_checked
from pgfunnel.net.server_conn import ServerConn
from pgfunnel.pool.objects import ClientState
from pgfunnel.proto import sqlstate as ss
from pgfunnel.proto.messages import ServerError
from pgfunnel.proto.strings import Msg, Reason

if TYPE_CHECKING:
    from pgfunnel.config.loader import Config
    from pgfunnel.config.settings import Settings
    from pgfunnel.net.auth_query import AuthLookups
    from pgfunnel.net.fast_login import FastLogins
    from pgfunnel.pool.objects import Client, Server
    from pgfunnel.pool.scheduler import Action, Database, Pooler
    from pgfunnel.proto.auth import ScramSecret

log = logging.getLogger("pgfunnel")

ADMIN_DATABASES = ("pgbouncer", "pgfunnel")  # the admin console's database names
CONFIG_FILE_ERROR = "F0000"


class Commands(Protocol):
    """The commands, inherited by App (`class App(Commands)`), which the console calls through
    admin.host.Host and the signals directly.

    A Protocol subclassed explicitly: the members without a body below are what the commands
    read and change on the App, so mypy checks them against App's own, and App cannot be built
    without them. The state they change (paused, suspended, shutting down) stays App's
    attributes, which the console, the janitor and the connections read."""

    # --- what the commands need of the App ---------------------------------------------------
    loop: asyncio.AbstractEventLoop
    config: Config
    settings: Settings
    pooler: Pooler
    logging_in: dict[ClientConn, None]
    admin_clients: dict[Client, None]
    servers_listening: list[int]
    bridge: Bridge
    auth_lookups: AuthLookups
    fast: FastLogins
    scram_derived: dict[str, ScramSecret]
    paused_all: bool
    _paused_dbs: set[str]
    suspended: bool
    shutting_down: str | None
    _shutdown_task: asyncio.Task[None] | None
    stopping: asyncio.Event
    exit_code: int

    def now(self) -> float: ...

    def database(self, name: str) -> Database | None: ...

    def apply(self, actions: Iterable[Action]) -> None: ...

    def close_server(self, server: Server, reason: str) -> None: ...

    def fail_client(self, client: Client, error: ServerError | None, reason: str) -> None: ...

    def refresh(self) -> None: ...

    def pause_pools(self, db: Database, on: bool) -> None: ...

    def retune(self) -> None: ...

    async def wait_until(self, done: Callable[[], bool]) -> None: ...

    def _apply_settings(self) -> None: ...

    def apply_tls(self, settings: Settings) -> dict[bool, str]: ...

    # --- the commands ------------------------------------------------------------------------
    def _db_arg(self, name: str, verb: str, register: bool = True) -> Database:
        """The database a command names. `register` False is PgBouncer's find_database
        (ENABLE, RESUME db): a name only the `*` fallback would create is no such database,
        rather than a new database registered by the command."""
        if name in ADMIN_DATABASES:
            raise AdminError(ss.PROTOCOL_VIOLATION, f"cannot {verb} admin db: {name}")
        db = None
        if name != "*" and (
            register or name in self.pooler.databases or name in self.config.databases
        ):
            db = self.database(name)
        if db is None:
            raise AdminError(ss.PROTOCOL_VIOLATION, f"no such database: {name}")
        return db

    async def pause(self, db: str | None) -> None:
        """PAUSE [db]: hand out no servers and close them as they are released; returns when
        the database (or every database) holds none. Clients stay connected and wait."""
        await self.wait_until(self.begin_pause(db))

    def begin_pause(self, db: str | None, command: bool = True) -> Callable[[], bool]:
        """PAUSE's effect, at once; returns the test of "every server released" to wait on.
        `command` False: SIGUSR1, which logs its own line."""
        if self.paused_all or self.suspended:
            raise AdminError(ss.PROTOCOL_VIOLATION, "already suspended/paused")
        now = self.now()
        if db is None:
            if command:
                log.info("PAUSE command issued")
            self.paused_all = True
            for d in list(self.pooler.databases.values()):
                self.apply(self.pooler.pause(d, now))
                self.pause_pools(d, True)
            return lambda: (
                not self.paused_all
                or all(self.pooler.servers_of(d) == 0 for d in self.pooler.databases.values())
            )
        log.info("PAUSE '%s' command issued", db)
        target = self._db_arg(db, "pause")
        self._paused_dbs.add(target.name)
        self.apply(self.pooler.pause(target, now))
        self.pause_pools(target, True)
        return lambda: not target.paused or self.pooler.servers_of(target) == 0

    def resume(self, db: str | None, command: bool = True) -> None:
        """RESUME [db]; `command` False: SIGUSR2, which logs its own line."""
        now = self.now()
        if db is None:
            if command:
                log.info("RESUME command issued")
            if self.shutting_down is not None:
                # As PgBouncer (1.23 on): a shutdown cannot be undone; its listeners are gone.
                raise AdminError(ss.PROTOCOL_VIOLATION, "pooler is shutting down")
            if not (self.paused_all or self.suspended):
                raise AdminError(ss.PROTOCOL_VIOLATION, "pooler is not paused/suspended")
            self.paused_all = False
            if self.suspended:
                self._unsuspend()
            for d in list(self.pooler.databases.values()):
                if d.paused and d.name not in self._paused_dbs:
                    self.pause_pools(d, False)
                    self.apply(self.pooler.resume(d, now))
            return
        log.info("RESUME '%s' command issued", db)
        target = self._db_arg(db, "resume", register=False)
        if not target.paused:
            raise AdminError(ss.PROTOCOL_VIOLATION, f"database {db} is not paused")
        self._paused_dbs.discard(target.name)
        if not self.paused_all:
            self.pause_pools(target, False)
            self.apply(self.pooler.resume(target, now))

    def disable(self, db: str) -> None:
        log.info("DISABLE '%s' command issued", db)
        self._db_arg(db, "disable").disabled = True
        self.fast.clear()

    def enable(self, db: str) -> None:
        log.info("ENABLE '%s' command issued", db)
        self._db_arg(db, "enable", register=False).disabled = False

    def reconnect(self, db: str | None) -> None:
        now = self.now()
        if db is None:
            log.info("RECONNECT command issued")
            targets = list(self.pooler.databases.values())
        else:
            log.info("RECONNECT '%s' command issued", db)
            targets = [self._db_arg(db, "reconnect")]
        self.auth_lookups.clear()
        for target in targets:
            self.apply(self.pooler.reconnect(target, now))

    async def wait_close(self, db: str | None) -> None:
        if db is None:
            log.info("WAIT_CLOSE command issued")
            targets = list(self.pooler.databases.values())
        else:
            log.info("WAIT_CLOSE '%s' command issued", db)
            targets = [self._db_arg(db, "wait in")]
        await self.wait_until(lambda: all(self.pooler.obsolete_servers(t) == 0 for t in targets))

    def kill(self, db: str) -> None:
        """KILL db: drop every client and server of the database now; it stays paused, so
        clients that connect meanwhile wait for RESUME."""
        if self.paused_all or self.suspended:
            raise AdminError(ss.PROTOCOL_VIOLATION, "already suspended/paused")
        log.info("KILL '%s' command issued", db)
        target = self._db_arg(db, "kill")
        self._paused_dbs.add(target.name)
        self.fast.clear()
        error = ServerError(
            "FATAL", ss.ADMIN_SHUTDOWN, Reason.DB_REMOVED, Msg.KILLED.format(db=target.name)
        )
        self.pause_pools(target, True)
        self.refresh()
        self.apply(self.pooler.kill(target, self.now(), Reason.DB_REMOVED, error))

    def kill_client(self, client_id: int) -> None:
        log.info("KILL_CLIENT %d command issued", client_id)
        candidates = [
            *self.pooler.all_clients(),
            *(conn.client for conn in self.logging_in),
            *self.admin_clients,
        ]
        for client in candidates:
            if client.id == client_id:
                # PgBouncer's disconnect_client(..., "admin forced disconnect"): that text
                # as the client's error and the logged reason.
                reason = Reason.ADMIN_KILL_CLIENT
                error = ServerError("FATAL", ss.PROTOCOL_VIOLATION, reason)
                self.fail_client(client, error, reason)
                return
        raise AdminError(ss.PROTOCOL_VIOLATION, f"client not found: {client_id}")

    async def suspend(self) -> None:
        """SUSPEND: stop reading every client and server socket and return once everything
        already read has been written out (PgBouncer's step before an online restart). A
        connection whose buffer has not drained after suspend_timeout is dropped."""
        if self.paused_all or self.suspended:
            raise AdminError(ss.PROTOCOL_VIOLATION, "already suspended/paused")
        if self._paused_dbs:
            raise AdminError(ss.PROTOCOL_VIOLATION, "cannot suspend with paused databases")
        log.info("SUSPEND command issued")
        self.suspended = True
        self.fast.clear()
        sw = self.bridge.sw
        sw.suspend(True)  # the switch reads no socket and goes on writing what it holds

        def flushed() -> bool:
            return not self.suspended or not sw.unflushed()

        timeout = float(self.settings.suspend_timeout)
        try:
            async with asyncio.timeout(timeout if timeout > 0 else None):
                await self.wait_until(flushed)
        except TimeoutError:
            stuck = sw.unflushed()
            log.warning(
                "SUSPEND: %d connections still unflushed after suspend_timeout=%gs, dropping them",
                len(stuck),
                timeout,
            )
            for sid in stuck:
                self._drop_unflushed(sid)

    def _drop_unflushed(self, sid: int) -> None:
        bridge = self.bridge
        client = bridge.clients.get(sid)
        if client is not None:
            self.fail_client(client, None, Reason.SUSPEND_TIMEOUT)
            return
        server = bridge.servers.get(sid)
        if server is not None:
            self.close_server(server, Reason.SUSPEND_TIMEOUT)
            return
        talker = bridge.talkers.get(sid)
        if talker is None:
            return
        conn = talker.talker
        if isinstance(conn, ClientConn):
            conn.close(Reason.SUSPEND_TIMEOUT)
        elif isinstance(conn, ServerConn):
            self.close_server(conn.server, Reason.SUSPEND_TIMEOUT)

    def _unsuspend(self) -> None:
        self.suspended = False
        self.bridge.sw.suspend(False)

    def shutdown(self, mode: str | None) -> None:
        """SHUTDOWN: exit now; SHUTDOWN WAIT_FOR_SERVERS / WAIT_FOR_CLIENTS: see
        begin_shutdown. A second one during a shutdown changes what it waits for, as in
        PgBouncer."""
        mode = (mode or "").upper() or None
        if mode not in (None, "WAIT_FOR_SERVERS", "WAIT_FOR_CLIENTS"):
            raise AdminError(ss.PROTOCOL_VIOLATION, f"invalid SHUTDOWN mode: {mode}")
        if mode is None:
            log.info("SHUTDOWN command issued")
            self.stopping.set()
            return
        log.info("SHUTDOWN %s command issued", mode)
        if self.suspended:
            # Sockets are not being read, so nobody could ever leave: exit now.
            log.info("SHUTDOWN %s while suspended: exiting now", mode)
            self.stopping.set()
            return
        self.begin_shutdown(mode)

    def begin_shutdown(self, mode: str) -> None:
        """WAIT_FOR_SERVERS (SIGINT): stop listening, pause, exit once every server is
        released; WAIT_FOR_CLIENTS (SIGTERM): stop listening, keep serving, exit once every
        client has left. Nothing undoes it (RESUME and SIGUSR2 are refused)."""
        first = self.shutting_down is None
        self.shutting_down = mode
        self.fast.clear()
        if first:
            # As PgBouncer: the TCP listeners close; the unix socket stays until the process
            # exits, so the admin console can still be reached to watch the drain.
            for lid in self.servers_listening:
                self.bridge.close_listener(lid)
            self.servers_listening = []
        if mode == "WAIT_FOR_SERVERS":
            if not self.paused_all:
                self.paused_all = True
                now = self.now()
                for d in list(self.pooler.databases.values()):
                    self.apply(self.pooler.pause(d, now))
                    self.pause_pools(d, True)
            self.refresh()
            self._close_waiting_for_shutdown()
        if first:
            self._shutdown_task = self.loop.create_task(self._shutdown_when_done())

    async def _shutdown_when_done(self) -> None:
        def done() -> bool:
            if self.shutting_down == "WAIT_FOR_SERVERS":
                return not any(True for _ in self.pooler.all_servers())
            return not any(True for _ in self.pooler.all_clients())

        await self.wait_until(done)
        if self.shutting_down == "WAIT_FOR_SERVERS":
            log.info("server connections dropped, exiting")
        else:
            log.info("client connections dropped, exiting")
        self.stopping.set()

    def _close_waiting_for_shutdown(self) -> None:
        """WAIT_FOR_SERVERS hands out no server again: as PgBouncer, a client waiting for one
        (or, via wants_server, starting a new transaction) is closed at once."""
        for pool in list(self.pooler.pools.values()):
            for state in (ClientState.WAITING, ClientState.WAITING_LOGIN):
                for client in list(pool.clients[state]):
                    self._close_for_shutdown(client)

    def _close_for_shutdown(self, client: Client) -> None:
        reason = Reason.SERVER_SHUTTING_DOWN
        self.fail_client(client, ServerError("FATAL", ss.PROTOCOL_VIOLATION, reason), reason)

    def die(self, message: str) -> None:
        """PgBouncer's die(): a FATAL line and exit 1, at once."""
        log.critical("%s", message)
        self.exit_code = 1
        self.stopping.set()

    def reload(self, command: bool = True) -> None:
        """RELOAD (`command`) / SIGHUP: read the config and auth file again. A broken file
        changes nothing: the cause (file:line) is logged, then PgBouncer's lines, and the
        console gets PgBouncer's error with the cause as its DETAIL. Databases are marked and
        swept: a changed entry gets fresh servers as the old ones are released, a removed one
        is dropped."""
        if command:
            log.info("RELOAD command issued")
        try:
            new = load_checked(self.config.path)
        except (ConfigError, OSError) as exc:
            log.error("%s", exc)
            log.warning("config file loading failed")
            if command:
                log.error("RELOAD Failed, see logs for more details")
            raise AdminError(
                CONFIG_FILE_ERROR,
                "RELOAD failed, see logs for additional details",
                detail=f"{exc}; the old configuration stays in use",
            ) from None
        keep: dict[str, object] = {}
        for name, spec in SETTINGS.items():
            old_value, new_value = self.settings.get(name), new.settings.get(name)
            if not spec.reloadable and old_value != new_value:
                log.warning("%s cannot be changed on reload; restart pgfunnel to apply it", name)
                keep[name] = old_value
        # New certificates and keys are read now; a side that cannot be built keeps its old
        # context and its old settings, so that what is shown is what serves.
        tls_failed = self.apply_tls(new.settings)
        for clients, why in tls_failed.items():
            log.error("TLS configuration could not be reloaded, keeping old configuration: %s", why)
            prefix = "client_tls" if clients else "server_tls"
            for name in SETTINGS:
                if name.startswith(prefix):
                    keep[name] = self.settings.get(name)
        settings = new.settings.with_values(keep) if keep else new.settings
        self.config = dataclasses.replace(new, settings=settings)
        self.settings = settings
        self._apply_settings()
        self.scram_derived.clear()
        self.auth_lookups.clear()
        now = self.now()
        for name, db in list(self.pooler.databases.items()):
            dbc = self.config.database(name)
            if dbc is None:
                log.warning(
                    "dropping database '%s' as it does not exist anymore or inactive auto-database",
                    name,
                )
                error = ServerError("FATAL", ss.INVALID_CATALOG_NAME, Reason.DB_REMOVED)
                self.apply(self.pooler.kill(db, now, Reason.DB_REMOVED, error))
                del self.pooler.databases[name]
                for key in [k for k, p in self.pooler.pools.items() if p.db is db]:
                    del self.pooler.pools[key]
            elif dbc != db.config:
                log.info("database %s changed: its servers are replaced as they are released", name)
                db.config = dbc
                self.apply(self.pooler.reconnect(db, now))
        for name, user in self.pooler.users.items():
            user.config = self.config.users.get(name)
        self.retune()
        # The file logrotate left in the old one's place, or the file a changed setting names.
        logfile.reopen(self.settings.logfile)
        for warning in self.config.unsupported:
            log.warning("%s", warning)
        if tls_failed:
            if command:
                log.error("RELOAD Failed, see logs for more details")
            raise AdminError(
                CONFIG_FILE_ERROR,
                "RELOAD failed, see logs for additional details",
                detail="; ".join(tls_failed.values()) + "; the old TLS configuration stays in use",
            )

    def set_setting(self, name: str, value: str) -> None:
        """SET key = value: a reloadable [pgbouncer] setting, checked as the ini reader does."""
        spec = SETTINGS.get(name)
        if spec is None:
            raise AdminError(ss.PROTOCOL_VIOLATION, f"SET failed: unknown setting {name}")
        if not spec.reloadable:
            raise AdminError(
                ss.PROTOCOL_VIOLATION,
                f"SET failed: {name} cannot be changed while running; edit the config file "
                "and restart pgfunnel",
            )
        try:
            parsed = parse_value(name, value)
        except ValueError as exc:
            raise AdminError(ss.PROTOCOL_VIOLATION, f"SET failed: {exc}") from None
        if "_tls" in name or name == "auth_type":
            # TLS takes effect with the setting, or the setting is refused
            want = self.settings.with_values({name: parsed})
            for _, why in tls_problems(want):
                raise AdminError(ss.PROTOCOL_VIOLATION, f"SET failed: {why}")
            failed = self.apply_tls(want)
            if failed:
                for why in self.apply_tls(self.settings).values():  # the other side goes back
                    log.error("TLS configuration could not be restored: %s", why)
                raise AdminError(ss.PROTOCOL_VIOLATION, f"SET failed: {'; '.join(failed.values())}")
            if name.startswith("server_tls"):
                self.auth_lookups.clear()  # lookup connections opened under the old settings
        log.info("SET %s=%s", name, value)
        self.settings = self.settings.with_values({name: parsed})
        self.config = dataclasses.replace(self.config, settings=self.settings)
        self._apply_settings()
        self.retune()
        if name == "logfile":
            logfile.reopen(self.settings.logfile)
