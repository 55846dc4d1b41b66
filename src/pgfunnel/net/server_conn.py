"""One server (backend) connection while Python talks on it: its login, and the pooler's own
queries (connect_query, ROLLBACK after a dropped client, the reset and check queries). In
between, the switch carries it; see net/bridge.py."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pgfunnel.net.bridge import TlsFailed
from pgfunnel.pool.objects import Server, ServerState
from pgfunnel.proto import messages as m
from pgfunnel.proto import sqlstate as ss
from pgfunnel.proto.auth import ServerAuthError
from pgfunnel.proto.framing import MessageReader, ProtocolViolation
from pgfunnel.proto.login import LoginFailed, ServerLogin
from pgfunnel.proto.messages import ServerError
from pgfunnel.proto.strings import Reason

if TYPE_CHECKING:
    from pgfunnel.net.app import App

_Z = m.READY_FOR_QUERY
_S = m.PARAMETER_STATUS
_E = m.ERROR_RESPONSE


class ServerConn:
    __slots__ = (
        "app",
        "internal_ok",
        "local",
        "login",
        "peer",
        "reader",
        "server",
        "transport",
    )

    def __init__(
        self, app: App, server: Server, login: ServerLogin, peer: str, local: tuple[str, int]
    ) -> None:
        self.app = app
        self.server = server
        self.login: ServerLogin | None = login
        self.reader = MessageReader()
        self.transport: Any = None  # a bridge.SwitchTransport while Python talks on it
        self.internal_ok = True
        self.peer = peer
        self.local = local
        server.conn = self

    # --- what the bridge calls ---------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        assert self.login is not None
        if self.server.state is ServerState.CLOSED:  # connect timeout fired meanwhile
            transport.close()
            return
        self.transport.write(self.login.start())

    def talk(self, transport: Any) -> None:
        """The switch handed the server back for the pooler's own queries."""
        self.transport = transport
        self.reader = MessageReader()

    def data_received(self, data: bytes) -> None:
        if self.login is not None:
            self._login_data(data)
            return
        self.reader.feed(data)
        try:
            while (msg := self.reader.next()) is not None:
                self._internal_message(*msg)
        except ProtocolViolation as exc:
            self.app.close_server(self.server, f"{Reason.PROTOCOL}: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        server = self.server
        self.transport = None
        if self.login is not None:
            self.login = None
            if isinstance(exc, TlsFailed):
                # A certificate that does not verify, a server without TLS for a mode that
                # requires it: waiting will not cure it, the clients hear why (08001).
                error = ServerError("FATAL", ss.SQLCLIENT_UNABLE_TO_CONNECT, str(exc))
                self.app.server_login_failed(server, error, str(exc))
                return
            reason = f"connection lost during login: {exc}" if exc else Reason.SERVER_CLOSED
            self.app.server_login_failed(server, None, reason)
            return
        self.app.server_gone(server, server.close_reason or Reason.SERVER_CLOSED)

    # --- phases ------------------------------------------------------------------------------
    def _login_data(self, data: bytes) -> None:
        login = self.login
        assert login is not None and self.transport is not None
        self.reader.feed(data)
        try:
            while (msg := self.reader.next()) is not None:
                reply = login.receive(*msg)
                if reply:
                    self.transport.write(reply)
                if login.done:
                    self.login = None
                    rest = self.reader.take_rest()
                    self.server.pid = login.result.pid
                    self.server.key = login.result.key
                    self.app.server_login_ok(self.server, login.result.params)
                    if rest:
                        self.data_received(rest)
                    return
        except LoginFailed as exc:
            self.login = None
            self.app.server_login_failed(self.server, exc.error, "")
            self.transport.close()
        except (ServerAuthError, ProtocolViolation, ValueError) as exc:
            self.login = None
            self.app.server_login_failed(self.server, None, f"login failed: {exc}")
            self.transport.close()

    def _param(self, payload: bytes) -> None:
        name, value = m.parse_parameter_status(payload)
        self.server.params[name] = value
        if name in self.server.tracked:
            self.server.tracked[name] = value

    def _internal_message(self, kind: int, payload: bytes) -> None:
        """The answers to the pooler's own queries: errors noted, parameters tracked, and at
        the last ReadyForQuery the scheduler hears how it went."""
        server = self.server
        if kind == _E:
            self.internal_ok = False
            if server.internal_error is None:
                server.internal_error = m.parse_error_fields(payload)
        elif kind == _S:
            self._param(payload)
        elif kind == _Z:
            server.tx_status = payload
            server.internal -= 1
            if server.internal <= 0:
                server.internal = 0
                ok, self.internal_ok = self.internal_ok, True
                self.app.internal_done(server, ok)

    def addresses(self) -> tuple[str, int, tuple[str, int]]:
        """(server addr, port, (local addr, port)) for SHOW SERVERS."""
        if ":" in self.peer and not self.peer.startswith("/"):
            host, _, port = self.peer.rpartition(":")
            return (host, int(port), self.local)
        return ("unix", 0, ("", 0))

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            # Logged in: the session ends with Terminate, which the switch writes as it closes
            # the socket (a write queued first would be dropped with it).
            self.transport.close(m.terminate() if self.login is None else b"")
