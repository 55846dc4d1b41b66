"""One server (backend) connection: login, then forwarding its bytes to the linked client."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from pgfunnel.pool.objects import Client, Server, ServerState
from pgfunnel.proto import messages as m
from pgfunnel.proto.auth import ServerAuthError
from pgfunnel.proto.framing import Event, MessageReader, ProtocolViolation, Scanner
from pgfunnel.proto.login import LoginFailed, ServerLogin
from pgfunnel.proto.strings import Reason

if TYPE_CHECKING:
    from pgfunnel.net.app import App
    from pgfunnel.net.client_conn import ClientConn

# Server -> client: ReadyForQuery and ParameterStatus payloads matter; an ErrorResponse only
# matters while the pooler runs its own queries (its text is logged) or the server sits idle.
_WATCH = Scanner.table(capture=b"ZSE")
_Z = m.READY_FOR_QUERY
_S = m.PARAMETER_STATUS
_E = m.ERROR_RESPONSE


class ServerConn(asyncio.Protocol):
    __slots__ = (
        "app",
        "internal_ok",
        "login",
        "paused",
        "paused_client",
        "peer",
        "reader",
        "scanner",
        "server",
        "transport",
    )

    def __init__(self, app: App, server: Server, login: ServerLogin, peer: str) -> None:
        self.app = app
        self.server = server
        self.login: ServerLogin | None = login
        self.reader = MessageReader()
        self.scanner = Scanner(_WATCH)
        self.transport: asyncio.Transport | None = None
        self.internal_ok = True
        # The client whose full socket holds back our reading. Not `server.link`: the server
        # can be released (and linked again) while paused, and only that client resumes it.
        self.paused: ClientConn | None = None
        self.paused_client: ClientConn | None = None  # the client we stopped reading from
        self.peer = peer
        server.conn = self

    # --- asyncio callbacks -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        assert self.login is not None
        if self.server.state is ServerState.CLOSED:  # connect timeout fired meanwhile
            transport.close()
            return
        self.transport.write(self.login.start())

    def data_received(self, data: bytes) -> None:
        if self.login is not None:
            self._login_data(data)
            return
        server = self.server
        try:
            events = self.scanner.feed(data)
        except ProtocolViolation as exc:
            self.app.close_server(server, f"{Reason.PROTOCOL}: {exc}")
            return
        client = server.link
        if server.internal:
            self._internal_data(data, events)
            return
        if client is None:
            self._idle_data(events)
            return
        self._deliver(client, data, events)

    def _deliver(self, client: Client, data: bytes, events: list[Event] | None) -> None:
        """Forward server bytes to the linked client and account for its ReadyForQuerys."""
        server = self.server
        if events is not None and server.pool.settings.pool_mode == "statement":
            answered = 0  # end of the last statement answered in full before the offender
            for kind, payload, end in events:
                if kind == _Z:
                    if payload != b"I":
                        # Drop the answer of the statement that opened the transaction: the
                        # client gets the reason in its place, not a BEGIN that then breaks.
                        client.conn.transport.write(data[:answered])
                        self.app.long_transaction(client, server)
                        return
                    answered = end
        client.conn.transport.write(data)
        server.pool.stats.bytes_out += len(data)
        if events is not None:
            self._account(events)

    def _account(self, events: list[tuple[int, bytes | None, int]]) -> None:
        """Count the ReadyForQuery messages forwarded to the linked client; release at the end."""
        server = self.server
        client = server.link
        assert client is not None
        saw_z = False
        stats = server.pool.stats
        now = 0.0
        for kind, payload, _ in events:
            if kind == _Z:
                if not saw_z:
                    saw_z = True
                    now = self.app.now()
                client.expect_rfq -= 1
                stats.query_count += 1
                stats.query_time += now - server.query_start
                server.query_start = now  # a pipelined next query runs from here
                if payload == b"I":
                    stats.xact_count += 1
                    stats.xact_time += now - server.xact_start
                    server.xact_start = now
                server.tx_status = payload  # type: ignore[assignment]
            elif kind == _S:
                self._param(payload, client.params)
        if saw_z:
            server.request_time = now
            if client.expect_rfq <= 0:
                client.expect_rfq = 0
                self.app.transaction_boundary(client, server)
                if self.paused is not None and server.link is not client:
                    # Released in the very chunk that filled the client's socket: the next
                    # client of this server must find it reading.
                    self.unpause(self.paused)

    def connection_lost(self, exc: Exception | None) -> None:
        server = self.server
        self.transport = None
        if self.login is not None:
            self.login = None
            reason = f"connection lost during login: {exc}" if exc else Reason.SERVER_CLOSED
            self.app.server_login_failed(server, None, reason)
            return
        self.app.server_gone(server, server.close_reason or Reason.SERVER_CLOSED)

    def pause_writing(self) -> None:
        client = self.server.link
        if client is not None:
            self.paused_client = client.conn
            client.conn.pause_reading()

    def resume_writing(self) -> None:
        conn = self.paused_client
        if conn is not None:
            self.paused_client = None
            conn.resume_reading()

    def unpause(self, by: ClientConn) -> None:
        """`by` no longer holds our reading back (its socket drained, it left, or we were
        released from it); another client's pause stays."""
        if self.paused is by:
            self.paused = None
            if self.transport is not None and not self.app.suspended:
                self.transport.resume_reading()

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

    def _param(self, payload: bytes | None, client_params: dict[str, str] | None) -> None:
        if payload is None:
            return
        name, value = m.parse_parameter_status(payload)
        self.server.params[name] = value
        if name in self.server.tracked:
            self.server.tracked[name] = value
        if client_params is not None and name in client_params:
            client_params[name] = value  # the client SET it: it wants this value from now on

    def _internal_data(
        self, data: bytes, events: list[tuple[int, bytes | None, int]] | None
    ) -> None:
        """Swallow the answers to the pooler's own queries; pass on what follows them."""
        server = self.server
        if events is None:
            return
        for i, (kind, payload, end) in enumerate(events):
            if kind == _E:
                self.internal_ok = False
                if server.internal_error is None and payload is not None:
                    server.internal_error = m.parse_error_fields(payload)
            elif kind == _S:
                self._param(payload, None)
            elif kind == _Z:
                server.tx_status = payload  # type: ignore[assignment]
                server.internal -= 1
                if server.internal == 0:
                    ok, self.internal_ok = self.internal_ok, True
                    if not ok and server.link is not None:
                        # The SETs for the linked client failed, and a failed simple query
                        # applies none of them: what the server has is what it last reported.
                        tracked = server.params
                        server.tracked = {k: tracked.get(k, "") for k in server.tracked}
                    rest = data[end:]
                    after = [(k, p, e - end) for k, p, e in events[i + 1 :]]
                    self.app.internal_done(server, ok, rest, after)
                    return

    def _idle_data(self, events: list[tuple[int, bytes | None, int]] | None) -> None:
        """An unlinked server spoke: a parameter change is noted, an error means it is dying."""
        if events is None:
            return
        for kind, payload, _ in events:
            if kind == _S:
                self._param(payload, None)
            elif kind == _E:
                self.server.ready = False
                if self.server.state is ServerState.IDLE:
                    self.app.close_server(self.server, Reason.SERVER_GONE)
                return

    def forward_rest(self, data: bytes, events: list[Event]) -> None:
        """After the pooler's own queries, the rest of the chunk belongs to the linked client."""
        client = self.server.link
        if client is None or not data:
            return
        self._deliver(client, data, events or None)

    def addresses(self) -> tuple[str, int, tuple[str, int]]:
        """(server addr, port, (local addr, port)) for SHOW SERVERS."""
        if self.transport is None:
            return ("", 0, ("", 0))
        peer = self.transport.get_extra_info("peername")
        local = self.transport.get_extra_info("sockname")
        if isinstance(peer, tuple):
            loc = (str(local[0]), int(local[1])) if isinstance(local, tuple) else ("", 0)
            return (str(peer[0]), int(peer[1]), loc)
        return ("unix", 0, ("", 0))

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if self.login is None:
                self.transport.write(m.terminate())
            self.transport.close()
