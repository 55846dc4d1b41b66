"""Logins the switch runs alone: the routes Python gives it, and what Python does with the
events that follow (the C side is src/pgfunnel/_switch/fastlogin.c).

A connection storm (a new connection per transaction: serverless functions, PHP, `pgbench
-C`) is mostly logins. Each login Python runs crosses between the switch's thread and the
asyncio loop four times (the startup packet, the password request, the password, the welcome).
So once Python has logged a client in the usual way, it may hand the switch a route for that
(database, user): the pool Python chose, the method and the secret Python would check with,
and the welcome. The next logins of the pair run in the switch's thread, and Python hears of
each once, after the fact, to keep its records (SHOW CLIENTS, cancel keys, the logs).

The decisions stay Python's: a route exists only where Python's own login would do exactly
what the route does, and Python drops every route whenever that could change (RELOAD and SET,
DISABLE, KILL, SUSPEND, SHUTDOWN, a pool whose parameters change). A route is only offered for
auth_type md5 or scram-sha-256 with the user's secret in auth_file; hba, trust, plain, peer,
auth_query, application_name_add_host and the admin console always go through Python. A
LOGGED_IN that raced a change is checked again here and closed if it should not have passed.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from pgfunnel._switch import (
    LOGIN_ENDED_ASKED,
    LoggedIn,
    RouteMethod,
    logged_in_head,
    login_ended_tls,
    login_ended_who,
)
from pgfunnel._switch import Reason as SwReason
from pgfunnel.net.bridge import CLOSE_TEXT
from pgfunnel.net.client_conn import TRACKED_PARAMS, shared_params
from pgfunnel.pool.objects import Client, ClientState
from pgfunnel.proto import sqlstate as ss
from pgfunnel.proto.auth import ScramSecret
from pgfunnel.proto.messages import ServerError
from pgfunnel.proto.strings import Msg, Reason, Refusal

if TYPE_CHECKING:
    from pgfunnel.net.app import App
    from pgfunnel.net.client_conn import ClientConn
    from pgfunnel.pool.scheduler import Pool

log = logging.getLogger("pgfunnel")

FAST_AUTH_TYPES = ("md5", "scram-sha-256")
# A login the switch holds that has sent nothing it can use (no startup packet yet) for this
# long goes to Python, which evicts silent sockets under max_client_conn and applies
# client_login_timeout to them.
SILENT_GRACE = 1.0
_LABELS = {RouteMethod.MD5: "md5", RouteMethod.SCRAM: "scram-sha-256"}


class Fleeting(NamedTuple):
    """A client the switch logged in that left in the same drain of events (LOGGED_IN, then
    CLOSED): what its close line needs, in place of a Client."""

    id: int  # the C-0x.. of its lines (Client.id)
    dbname: str
    username: str
    addr: str
    port: int
    connect_time: float
    state: ClientState = ClientState.LOGIN  # never in a pool's lists


@dataclass(frozen=True, slots=True)
class Route:
    """What a route was made from: checked again when a LOGGED_IN comes back."""

    pool: Pool
    secret: str  # the auth_file entry the switch checks against
    welcome: dict[str, str]  # the pool's parameters it shows
    app_name: str  # application_name of a client that names none


class FastLogins:
    """The routes given to the switch and the events of the logins it ran on them."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.enabled = False
        self.gen = 1
        self.routes: dict[tuple[str, str], Route] = {}
        # The routes of the previous generation: a login that started on one of them may
        # come back after a clear.
        self._old: dict[tuple[str, str], Route] = {}
        self._old_gen = 0

    # --- routes ------------------------------------------------------------------------------
    def settings_changed(self) -> None:
        s = self.app.settings
        self.enabled = s.auth_type in FAST_AUTH_TYPES and not s.application_name_add_host
        self.clear()

    def clear(self) -> None:
        """Drop every route: Python's next decision may differ from what they say."""
        self._old, self._old_gen = self.routes, self.gen
        self.routes = {}
        self.gen += 1
        self.app.bridge.sw.clear_routes()

    def offer(self, conn: ClientConn, client: Client) -> None:
        """A client Python logged in has just been handed to its pool: if the switch could
        have done the same alone, give it a route for the next logins of the pair."""
        app = self.app
        key = (client.dbname, client.username)
        if not self.enabled or key in self.routes or client.is_admin:
            return
        auth = conn.auth
        pool = client.pool
        if auth is None or auth.source != "auth_file" or auth.own_user or pool is None:
            return
        if pool.welcome is None or pool.db.disabled or app.suspended or app.shutting_down:
            return
        secret = app.userlist().get(client.username)
        found = auth.route_secret()
        pid = app.bridge.pool_ids.get(pool)
        if found is None or secret is None or pid is None:
            return
        dbc = pool.db.config
        app_name = getattr(dbc, "application_name", None) or ""
        welcome = dict(pool.welcome)
        blob = b"".join(
            name.encode() + b"\0" + value.encode() + b"\0" for name, value in welcome.items()
        )
        route_key = client.dbname.encode() + b"\0" + client.username.encode()
        kind, data = found
        try:
            if kind == "md5":
                assert isinstance(data, str)
                app.bridge.sw.set_route(
                    route_key,
                    pid,
                    RouteMethod.MD5,
                    self.gen,
                    md5=data.encode(),
                    welcome=blob,
                    app=app_name.encode(),
                )
            else:
                assert isinstance(data, ScramSecret)
                app.bridge.sw.set_route(
                    route_key,
                    pid,
                    RouteMethod.SCRAM,
                    self.gen,
                    iterations=data.iterations,
                    salt=data.salt,
                    stored=data.stored_key,
                    server=data.server_key,
                    welcome=blob,
                    app=app_name.encode(),
                )
        except ValueError as exc:  # a value the switch will not carry: Python goes on alone
            log.debug("no switch login for %s/%s: %s", client.dbname, client.username, exc)
            return
        self.routes[key] = Route(pool, secret, welcome, app_name)
        app.bridge.sw.set_fast_cap(max(0, app.client_cap()))

    def pool_changed(self, pool: Pool) -> None:
        """A server login of `pool` ended: if it changed the parameters its routes show,
        they go (the next Python login offers a new one)."""
        if any(r.pool is pool and r.welcome != pool.welcome for r in self.routes.values()):
            self.clear()

    def tick(self) -> None:
        """The janitor's: the cap under which the switch logs clients in, and the logins it
        holds that are silent or past client_login_timeout."""
        app = self.app
        sw = app.bridge.sw
        # client_cap() goes negative when the fd limit leaves no room: no switch logins then.
        sw.set_fast_cap(max(0, app.client_cap()) if self.enabled else 0)
        timeout = float(app.settings.client_login_timeout)
        msg = ServerError("FATAL", ss.PROTOCOL_VIOLATION, Reason.CLIENT_LOGIN_TIMEOUT).encode()
        sw.fast_expire(int(SILENT_GRACE * 1e6), int(timeout * 1e6) if timeout > 0 else 0, msg)

    # --- the switch's events -----------------------------------------------------------------
    def _route_of(self, key: tuple[str, str], gen: int) -> Route | None:
        if gen == self.gen:
            return self.routes.get(key)
        if gen == self._old_gen:
            return self._old.get(key)
        return None

    def _recheck(
        self, route: Route | None, database: str, user: str, pool: Pool | None
    ) -> ServerError | None:
        """None if Python would let this login in now, as it is; else the client's error."""
        app = self.app
        if route is None or pool is None or route.pool is not pool:
            return ServerError("FATAL", ss.INVALID_PASSWORD, Msg.LOGIN_RACED)
        db = app.pooler.databases.get(pool.db.name)
        if db is not pool.db or app.config.database(pool.db.name) is None:
            msg = Msg.NO_SUCH_DATABASE.format(db=database)
            return ServerError("FATAL", ss.INVALID_CATALOG_NAME, msg)
        if db.disabled:
            msg = f"database does not allow connections: {database}"
            return ServerError("FATAL", ss.PROTOCOL_VIOLATION, msg)
        if app.userlist().get(user) != route.secret:
            return ServerError("FATAL", ss.INVALID_PASSWORD, Msg.LOGIN_RACED)
        return None

    def _client(
        self, user: str, db: str, host: str, port: int, listener: int, sid: int, since: float
    ) -> Client:
        """The Client for a switch login: `sid` is the switch's id for its connection (the
        C-0x.. of its log lines), gone already when the login ended; `since`: its
        connect_time (App.stamp)."""
        app = self.app
        client = Client(None, sys.intern(host), port, since, sid)
        client.username, client.dbname = sys.intern(user), sys.intern(db)
        client.local_addr = app.bridge.listener_address(listener)
        return client

    def logged_in(
        self, sid: int, pid: int, data: bytes, at: float = 0.0, fleeting: bool = False
    ) -> None:
        """LOGGED_IN: the switch welcomed a client on a route and put it in its pool.
        `fleeting`: its CLOSED is in the same drain, so it is logged and counted and given no
        place in the pool's lists (an event handled between the two, a SHOW or a cancel, finds
        it gone, as it is in the switch already), and no Client: a Fleeting holds what its
        close line needs. A storm's logins (pgbench -C) are nearly all fleeting, so only the
        fields the login line and the recheck need are decoded for them."""
        app = self.app
        bridge = app.bridge
        user, db, host, port, gen, client_key, tls = logged_in_head(data)
        ident = (sid >> 32) & 0x7FFFFFFF
        since = app.stamp(at)
        app.log_login(ident, db, user, host, port, tls)
        route = self._route_of((db, user), gen)
        pool = bridge.pools.get(pid)
        error = self._recheck(route, db, user, pool)
        if error is not None or route is None or pool is None:
            assert error is not None
            bridge.sw.close(sid, error.encode(severity="FATAL"))  # quiet: no CLOSED follows
            app.log_close(Fleeting(ident, db, user, host, port, since), error.message)
            return
        if client_key and pool.user.name == user:
            app.remember_scram_key(user, client_key)
        app.client_count += 1
        app.logins["switch"] += 1
        if fleeting:
            intern = sys.intern
            bridge.fleeting[sid] = Fleeting(
                ident, intern(db), intern(user), intern(host), port, since
            )
            return
        info = LoggedIn.parse(data)
        client = self._client(user, db, host, port, info.listener, sid, since)
        own: dict[str, str] = {}
        for name, value in zip(TRACKED_PARAMS, info.own, strict=True):
            if value is not None:
                own[name] = sys.intern(value) if len(value) <= 64 else value
        client.app_name = own.get("application_name", "")
        own.setdefault("application_name", route.app_name)
        source = route.welcome
        client.params = shared_params(
            tuple(own[name] if name in own else source.get(name, "") for name in TRACKED_PARAMS)
        )
        label = _LABELS[info.method]
        auth_info = (label, "", "auth_file")
        client.auth_info = app.shared_auth_info(auth_info)
        app.pooler.client_welcomed(client, pool, at or app.now())
        bridge.clients[sid] = client

    def ended(self, sid: int, listener: int, why: int, data: bytes, at: float = 0.0) -> None:
        """LOGIN_ENDED: a login the switch ran failed or was left; no client exists for it.
        Logged and counted as Python's own login would have been."""
        app = self.app
        user, db, host, port = login_ended_who(data)
        client = self._client(user, db, host, port, listener, sid, app.stamp(at))
        reason = SwReason(why & ~LOGIN_ENDED_ASKED)
        tls_why, tls = login_ended_tls(data)
        if user:
            app.log_client(client, "login attempt: db=%s user=%s tls=%s", db, user, tls or "no")
        if reason is SwReason.TLS_FAILED:
            text = tls_why or "TLS handshake error"
        elif reason is SwReason.AUTH_FAILED:
            app.count_refusal(Refusal.AUTH_FAILED)
            text = f'password authentication failed for user "{user}"'
        elif reason is SwReason.LOGIN_TIMEOUT:
            app.count_refusal(Refusal.CLIENT_LOGIN_TIMEOUT)
            text = Reason.CLIENT_LOGIN_TIMEOUT
        else:
            text = CLOSE_TEXT.get(reason, Reason.CLIENT_EOF)
        app.log_close(client, text)
