"""One client connection while Python talks on it: startup and authentication, then either
the admin console, or the hand-over to the switch (`promote`), which carries it from then on."""

from __future__ import annotations

import asyncio
import logging
import sys
from enum import Enum
from typing import TYPE_CHECKING

from pgfunnel._switch import PARAM_VALUE_MAX as TRACKED_VALUE_MAX
from pgfunnel._switch import TLS_MODES
from pgfunnel.net.bridge import TlsFailed
from pgfunnel.pool.objects import Client
from pgfunnel.proto import messages as m
from pgfunnel.proto import sqlstate as ss
from pgfunnel.proto.auth import AuthFailed, ClientAuth
from pgfunnel.proto.framing import (
    CancelRequest,
    GSSENCRequest,
    MessageReader,
    ProtocolViolation,
    SSLRequest,
    StartupMessage,
    UnsupportedProtocol,
    read_startup_packet,
)
from pgfunnel.proto.messages import ServerError
from pgfunnel.proto.strings import Msg, Reason, Refusal

if TYPE_CHECKING:
    from pgfunnel.net.app import App
    from pgfunnel.net.bridge import SwitchTransport

log = logging.getLogger("pgfunnel")

_PENDING_PAUSE = 1 << 20  # stop reading a client that sent this much before its login ended
# PostgreSQL's limit for a password or SASL message (PG_MAX_AUTH_TOKEN_LENGTH), plus the
# length word itself: a login-phase message may not make an unauthenticated peer cost more.
AUTH_MAX_MESSAGE = 65535 + 4

TRACKED_PARAMS = m.TRACKED_PARAMS  # the same list, filled at startup (track_extra_parameters)
_CANONICAL = m.TRACKED_CANON
_ALWAYS_ACCEPTED = {"user", "database", "replication"}


# Clients with the same values share one read-only dict: most of a pool's clients have the
# same encoding, DateStyle, zone and name. Bounded: emptied when full (values stay correct,
# only the sharing starts again).
_PARAMS_SHARED: dict[tuple[str, ...], dict[str, str]] = {}
_PARAMS_SHARED_MAX = 4096
_INTERN_MAX = 64  # startup values up to this long are interned (names, zones, encodings)


def shared_params(values: tuple[str, ...]) -> dict[str, str]:
    """The client's tracked parameters (TRACKED_PARAMS order), as a dict no one mutates."""
    shared = _PARAMS_SHARED.get(values)
    if shared is None:
        if len(_PARAMS_SHARED) >= _PARAMS_SHARED_MAX:
            _PARAMS_SHARED.clear()
        shared = _PARAMS_SHARED[values] = dict(zip(TRACKED_PARAMS, values, strict=True))
    return shared


_TLS_REQUIRE = TLS_MODES.index("require")  # and stronger: a TCP client in clear is refused


class Phase(Enum):
    STARTUP = 1
    AUTH = 2
    WAIT_LOGIN = 3
    FORWARD = 4
    ADMIN = 5
    CLOSED = 6


class ClientConn:
    __slots__ = (
        "admin_task",
        "app",
        "auth",
        "buf",
        "client",
        "held",
        "negotiated",
        "paused",
        "phase",
        "reader",
        "startup",
        "tls",
        "transport",
    )

    def __init__(self, app: App) -> None:
        self.app = app
        self.transport: SwitchTransport | None = None
        self.phase = Phase.STARTUP
        self.buf = bytearray()
        self.reader = MessageReader(AUTH_MAX_MESSAGE)
        self.negotiated: set[type] = set()  # SSLRequest / GSSENCRequest, each answered once
        self.tls = False  # TLS is up (the switch runs it: src/pgfunnel/_switch/tls.c)
        self.auth: ClientAuth | None = None
        # The exchange's last message (AuthenticationOk, after SASLFinal for SCRAM), kept to go
        # out in one write with what follows it: the welcome when the pool is ready, else an
        # error or nothing. One send per login fewer, as PgBouncer's welcome_client does.
        self.held = b""
        self.startup: dict[str, str] = {}
        self.paused = False
        self.admin_task: asyncio.Future[bytes] | None = None  # a console command in progress
        self.client: Client = Client(self, "", 0, app.stamp())

    # --- asyncio callbacks -------------------------------------------------------------------
    def connection_made(self, transport: SwitchTransport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        client = self.client
        client.sid = transport.sid
        # No setsockopt(TCP_NODELAY) of our own: asyncio and uvloop both set it on every TCP
        # transport they accept, and asking for the socket object costs a getsockname.
        # Interned and shared where they repeat (an address, the listener's): an idle client
        # costs what it must and no more (10,000 of them are a benchmark target).
        if isinstance(peer, tuple):
            client.addr, client.port = sys.intern(str(peer[0])), int(peer[1])
        else:
            client.addr, client.port = "unix", 0
        local = transport.get_extra_info("sockname")
        if isinstance(local, tuple):
            client.local_addr = local  # the bridge's tuple for that listener
        self.app.client_opened(self)

    def data_received(self, data: bytes) -> None:
        if self.phase is Phase.STARTUP:
            self._startup_data(data)
        elif self.phase is Phase.AUTH:
            self._auth_data(data)
        elif self.phase is Phase.ADMIN:
            self._admin_data(data)
        elif self.phase is Phase.WAIT_LOGIN:
            # Pipelined before our ReadyForQuery; replayed after login. Bounded as a queued
            # client's bytes are: the pool's first server login may take its time.
            self.buf += data
            if len(self.buf) > _PENDING_PAUSE:
                self.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.admin_task is not None:
            self.admin_task.cancel()
        if self.phase is not Phase.CLOSED:
            self.phase = Phase.CLOSED
            # A failed TLS handshake says why (the switch's text: OpenSSL's reason)
            self._leave(str(exc) if isinstance(exc, TlsFailed) else Reason.CLIENT_EOF)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and self.paused:
            self.paused = False
            self.transport.resume_reading()  # SUSPEND holds pooled connections, not logins

    # --- startup and authentication ----------------------------------------------------------
    def _startup_data(self, data: bytes) -> None:
        self.buf += data
        if self.transport is not None and self.transport.tls and not self.tls:
            self.tls = True
            self.negotiated.add(SSLRequest)  # direct TLS: an SSLRequest now is a repeat
        while self.phase is Phase.STARTUP:
            try:
                parsed = read_startup_packet(self.buf)
            except ProtocolViolation as exc:
                self.fail(ServerError("FATAL", ss.PROTOCOL_VIOLATION, str(exc)), Reason.PROTOCOL)
                return
            if parsed is None:
                return
            packet, used = parsed
            del self.buf[:used]
            if isinstance(packet, SSLRequest | GSSENCRequest):
                if type(packet) in self.negotiated:
                    # As PostgreSQL: each may be asked once; a repeat is an unknown protocol.
                    code = packet.code
                    msg = Msg.BAD_PROTOCOL.format(major=code >> 16, minor=code & 0xFFFF)
                    self.fail(ServerError("FATAL", ss.FEATURE_NOT_SUPPORTED, msg), Reason.PROTOCOL)
                    return
                self.negotiated.add(type(packet))
                assert self.transport is not None
                if isinstance(packet, SSLRequest) and self._tls_offered():
                    # 'S' and the handshake, in the switch; bytes sent before the answer
                    # would be taken as sent over TLS (CVE-2021-23214): refused.
                    try:
                        started = not self.buf and self.app.bridge.sw.tls_accept(self.transport.sid)
                    except (KeyError, ValueError):  # gone, or TLS turned off meanwhile
                        started = False
                    if not started:
                        msg = Msg.DATA_AFTER_SSL_REQUEST
                        self.fail(ServerError("FATAL", ss.PROTOCOL_VIOLATION, msg), msg)
                    return
                self.transport.write(b"N")  # the client goes on in clear
                continue
            if isinstance(packet, CancelRequest):
                self.app.cancel(packet.pid, packet.key)
                self.close(None)
                return
            if isinstance(packet, UnsupportedProtocol):
                major, minor = packet.version >> 16, packet.version & 0xFFFF
                msg = Msg.BAD_PROTOCOL.format(major=major, minor=minor)
                self.fail(ServerError("FATAL", ss.FEATURE_NOT_SUPPORTED, msg), Reason.PROTOCOL)
                return
            assert isinstance(packet, StartupMessage)
            self._startup(packet.params)
            return

    def _tls_mode(self) -> int:
        """The client_tls_sslmode in force (an index of TLS_MODES; the switch's context, which
        a failed reload leaves as it was), 0 on the unix socket: no TLS there."""
        side = self.app.tls_sides[True]
        return side.mode if side is not None and self.client.addr != "unix" else 0

    def _tls_offered(self) -> bool:
        return self._tls_mode() > 0

    def _startup(self, params: dict[str, str]) -> None:
        app = self.app
        client = self.client
        if not self.tls and self._tls_mode() >= _TLS_REQUIRE:
            self.fail(
                ServerError("FATAL", ss.PROTOCOL_VIOLATION, Msg.SSL_REQUIRED), Msg.SSL_REQUIRED
            )
            return
        user = params.get("user", "")
        if not user:
            self.fail(ServerError("FATAL", ss.PROTOCOL_VIOLATION, Msg.NO_USER), Msg.NO_USER)
            return
        dbname = params.get("database") or user
        client.username, client.dbname = sys.intern(user), sys.intern(dbname)
        ignored = app.ignore_startup_parameters
        tracked: dict[str, str] = {}
        for key, value in params.items():
            canon = _CANONICAL.get(key.lower())
            if canon is not None:
                tracked[canon] = sys.intern(value) if len(value) <= _INTERN_MAX else value
            elif key not in _ALWAYS_ACCEPTED and key not in ignored:
                msg = Msg.UNSUPPORTED_STARTUP.format(name=key)
                self.fail(ServerError("FATAL", ss.PROTOCOL_VIOLATION, msg), msg)
                return
        if "replication" in params and params["replication"].lower() not in ("false", "off", "0"):
            msg = Msg.UNSUPPORTED_STARTUP.format(name="replication")
            self.fail(ServerError("FATAL", ss.PROTOCOL_VIOLATION, msg), msg)
            return
        client.app_name = tracked.get("application_name", "")
        if app.settings.application_name_add_host:
            # As PgBouncer: a client without a name is shown as "app".
            name = client.app_name or "app"
            tracked["application_name"] = f"{name} - {client.addr}:{client.port}"
            client.app_name = tracked["application_name"]
        for key, value in tracked.items():
            # The switch keeps and re-applies these; no real setting takes a value this long.
            if len(value.encode()) > TRACKED_VALUE_MAX:
                msg = Msg.PARAM_TOO_LONG.format(name=key, limit=TRACKED_VALUE_MAX)
                self.fail(ServerError("FATAL", ss.INVALID_PARAMETER_VALUE, msg), msg)
                return
        self.startup = tracked
        tls = (app.tls_text(client.sid) or "no") if self.tls else "no"
        app.log_client(client, "login attempt: db=%s user=%s tls=%s", dbname, user, tls)
        verdict = app.admit(self, dbname, user)
        if verdict is not None:
            self.fail(verdict, verdict.message)
            return
        # The method (auth_type, hba, peer) and the user's secret, perhaps from auth_query:
        # net/auth_query.py decides and calls begin_auth. Bytes arriving meanwhile wait in the
        # switch: a client is read only while Python expects a message from it (see
        # _authenticated).
        self.phase = Phase.WAIT_LOGIN
        self.pause_reading()
        app.auth_lookups.start(self, dbname, user)

    def begin_auth(self, auth: ClientAuth) -> None:
        """Start the password exchange `auth` (or admit at once: trust, any, peer)."""
        if self.phase is not Phase.WAIT_LOGIN or self.transport is None:
            return  # the client left while its user was looked up
        self.auth = auth
        self.phase = Phase.AUTH
        try:
            first = auth.start()
        except AuthFailed as exc:
            self.app.count_refusal(Refusal.AUTH_FAILED)
            self.fail(ServerError("FATAL", ss.INVALID_PASSWORD, str(exc)), str(exc))
            return
        if auth.done:
            self.held = first
            self._authenticated()
            return
        self.transport.write(first)
        if self.buf:
            early = bytes(self.buf)
            self.buf.clear()
            self._auth_data(early)
        if self.phase is Phase.AUTH:
            self.resume_reading()  # the password message, from the switch

    def _auth_data(self, data: bytes) -> None:
        self.reader.feed(data)
        auth = self.auth
        assert auth is not None and self.transport is not None
        try:
            while not auth.done and (msg := self.reader.next()) is not None:
                kind, payload = msg
                if kind != m.PASSWORD:
                    raise ProtocolViolation(f"expected a password message, got {chr(kind)!r}")
                out = auth.receive(payload)
                if auth.done:
                    self.held = out
                else:
                    self.transport.write(out)
        except AuthFailed as exc:
            self.app.count_refusal(Refusal.AUTH_FAILED)
            err = ServerError("FATAL", ss.INVALID_PASSWORD, str(exc))
            self.fail(err, str(exc))
            return
        except ProtocolViolation as exc:
            self.fail(ServerError("FATAL", ss.PROTOCOL_VIOLATION, str(exc)), Reason.PROTOCOL)
            return
        if auth.done:
            self._authenticated()

    def _authenticated(self) -> None:
        rest = self.reader.take_rest()
        if rest:
            self.buf += rest
        # Not read again until promoted (or in the console): a message asked for from the
        # switch could be on its way up when the promote goes down, and would be lost; the
        # promote scans what the switch holds instead. A query pipelined after the password
        # waits in the switch (bounded by its login buffer) or in the kernel.
        self.phase = Phase.WAIT_LOGIN
        self.pause_reading()
        self.app.authenticated(self)
        if self.held and self.transport is not None:
            # No welcome yet (the pool's first server login is on its way): AuthenticationOk
            # goes alone, as before.
            self.transport.write(self.held)
        self.held = b""

    def finish_login(self, welcome: m.Welcome) -> None:
        """Send the parameters, our cancel key and ReadyForQuery; then replay anything early."""
        client = self.client
        startup = self.startup
        own: dict[str, str] = {}  # what this client is shown in place of the pool's values
        for name in TRACKED_PARAMS:
            if name in startup:
                own[name] = startup[name]
            elif name == "application_name":
                # A client that names itself wins; else the [databases] entry's name, if any.
                pool = client.pool
                dbc = pool.db.config if pool is not None else None
                own[name] = getattr(dbc, "application_name", None) or ""
        source = welcome.source
        client.params = shared_params(
            tuple(own[name] if name in own else source.get(name, "") for name in TRACKED_PARAMS)
        )
        assert self.transport is not None
        # The switch's id under its keyed permutation: App.cancel turns a request back into it.
        pid, key = self.app.bridge.sw.cancel_key(self.transport.sid)
        out = [self.held]
        self.held = b""
        out += welcome.messages(own)
        out.append(m.backend_key_data(pid, key))
        out.append(m.ready_for_query())
        self.transport.write(b"".join(out))
        early = bytes(self.buf)
        self.buf.clear()
        if not client.is_admin:
            # The switch carries it from here, with what it sent before our ReadyForQuery.
            self.phase = Phase.FORWARD
            self.app.promote_client(self, early)
            return
        self.phase = Phase.ADMIN
        self.reader = MessageReader(self.app.max_packet_size)
        if early:
            self.data_received(early)
        if self.paused:
            self.resume_reading()

    # --- admin console -----------------------------------------------------------------------
    def _admin_data(self, data: bytes) -> None:
        self.reader.feed(data)
        if self.admin_task is None:
            self._admin_run()

    def _admin_run(self) -> None:
        """Answer console messages in order; a command that waits (PAUSE, WAIT_CLOSE, ...)
        holds the ones behind it until it completes."""
        try:
            while self.transport is not None and (msg := self.reader.next()) is not None:
                kind, payload = msg
                if kind == m.TERMINATE:
                    self.close(Reason.CLIENT_CLOSE)
                    return
                out = self.app.admin.handle(self, kind, payload)
                if not isinstance(out, bytes):
                    self.admin_task = asyncio.ensure_future(out)
                    self.admin_task.add_done_callback(self._admin_done)
                    return
                if out:
                    self.transport.write(out)
                if self.phase is Phase.CLOSED:
                    return
        except ProtocolViolation as exc:
            self.fail(ServerError("FATAL", ss.PROTOCOL_VIOLATION, str(exc)), Reason.PROTOCOL)

    def _admin_done(self, task: asyncio.Future[bytes]) -> None:
        self.admin_task = None
        if self.transport is None or self.phase is Phase.CLOSED:
            return
        if task.cancelled():
            # The wait stops; the state the command set (PAUSE, SUSPEND) stays until RESUME.
            out = m.error_response(
                ss.QUERY_CANCELED, Msg.ADMIN_WAIT_CANCELED, hint=Msg.ADMIN_WAIT_CANCELED_HINT
            )
            out += m.ready_for_query()
        else:
            out = task.result()  # the console turns AdminError into an ErrorResponse itself
        self.transport.write(out)
        self._admin_run()

    def cancel_admin(self) -> None:
        """A CancelRequest for this console session stops the command it is waiting in."""
        if self.admin_task is not None:
            self.admin_task.cancel()

    # --- closing -----------------------------------------------------------------------------
    def fail(self, error: ServerError, reason: str) -> None:
        """Send a FATAL error and close: used for every refusal, so clients see why."""
        if self.phase is Phase.FORWARD:
            return
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.held + error.encode(severity="FATAL"))
            self.held = b""
        self.close(reason)

    def close(self, reason: str | None) -> None:
        if self.phase is Phase.CLOSED or self.phase is Phase.FORWARD:
            return  # FORWARD: the switch has it (App.fail_client closes it there)
        self.phase = Phase.CLOSED
        transport = self.transport
        if transport is not None and self.held:
            transport.write(self.held)
            self.held = b""
        # Logged before the close: the switch's thread may end the socket at once, and
        # whoever sees the EOF may look for the `closing because` line.
        self._leave(reason)
        if transport is not None:
            transport.close()

    def _leave(self, reason: str | None) -> None:
        """Tell the App the client is gone."""
        self.app.client_gone(self.client, reason)
