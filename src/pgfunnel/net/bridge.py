"""The bridge to the switch: the one place where net/ meets `pgfunnel._switch`.

The switch owns every client and server socket from accept (and, for servers, from the moment
Python has connected them) to close, and carries logged-in connections alone. Python talks on
a connection only while it needs judgement: a client's startup and authentication, the admin
console, a server's login and the pooler's own queries (connect_query, ROLLBACK, the reset and
check queries). For those, `SwitchTransport` stands in for an asyncio transport, so that
ClientConn and ServerConn speak the protocol as they always did; MESSAGE events feed their
`data_received`. Once Python is done, `promote` moves the connection into its pool, and from
then on only the switch's events (CLOSED, WAITERS, ATTENTION, DEADLINE) reach Python.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from typing import TYPE_CHECKING, Any, Protocol

from pgfunnel._switch import (
    ACCEPTED_SSL_ANSWERED,
    ACCEPTED_TLS,
    Event,
    EventKind,
    HazardsMode,
    MessageFlag,
    Mode,
    Switch,
    SwitchAPI,
)
from pgfunnel._switch import Reason as SwReason
from pgfunnel.net import logfile
from pgfunnel.proto import messages as m
from pgfunnel.proto import sqlstate as ss
from pgfunnel.proto.strings import Reason

if TYPE_CHECKING:
    from pgfunnel.net.app import App
    from pgfunnel.net.fast_login import Fleeting
    from pgfunnel.pool.objects import Client, Server
    from pgfunnel.pool.scheduler import Pool

log = logging.getLogger("pgfunnel")

# PostgreSQL's limit for a password or SASL message (PG_MAX_AUTH_TOKEN_LENGTH) and its length
# word; the switch's login_max is at least 10000 (a startup packet must fit).
LOGIN_MAX = 65535 + 5
LISTEN_RETRY = 0.2  # seconds before accepting again after EMFILE/ENFILE

MODES = {"session": Mode.SESSION, "transaction": Mode.TRANSACTION, "statement": Mode.STATEMENT}
HAZARDS_MODES = {"warn": HazardsMode.WARN, "refuse": HazardsMode.REFUSE, "pin": HazardsMode.PIN}

# Why the switch closed a connection, in PgBouncer's words (`closing because: ...`).
CLOSE_TEXT: dict[int, str] = {
    SwReason.CLIENT_TERMINATE: Reason.CLIENT_CLOSE,
    SwReason.CLIENT_EOF: Reason.CLIENT_EOF,
    SwReason.SERVER_EOF: Reason.SERVER_CLOSED,
    SwReason.IO_ERROR: Reason.SERVER_GONE,
    SwReason.BAD_PACKET: Reason.PROTOCOL,
    SwReason.TOO_BIG: Reason.PROTOCOL,
    SwReason.UNKNOWN_TYPE: Reason.UNKNOWN_PKT,
    SwReason.LONG_TX: Reason.LONG_TX,
    SwReason.IDLE_DATA: Reason.SERVER_GONE,
    SwReason.SERVER_GONE: Reason.SERVER_GONE,
}


# Events whose log lines may wait for the end of their run (logfile.held).
_HELD_KINDS = frozenset({EventKind.LOGGED_IN, EventKind.LOGIN_ENDED, EventKind.CLOSED})


class TlsFailed(ConnectionError):
    """A TLS handshake failed, or a server refused the TLS its sslmode requires: why, from
    the switch (OpenSSL's reason, the certificate check's)."""


class Talker(Protocol):
    """ClientConn or ServerConn: what the bridge calls on the object talking on a connection."""

    def connection_made(self, transport: Any) -> None: ...

    def data_received(self, data: bytes) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...


class SwitchTransport:
    """The few asyncio.Transport methods ClientConn and ServerConn use, on a connection the
    switch owns while Python talks on it. Reading is one MESSAGE at a time: the next is asked
    for once the last was handled, unless reading is paused (a client's bytes waiting for its
    pool's first server are bounded that way, as before)."""

    __slots__ = ("bridge", "closing", "extra", "paused", "read_owed", "sid", "talker", "tls")

    def __init__(self, bridge: Bridge, sid: int, talker: Talker, extra: dict[str, Any]) -> None:
        self.bridge = bridge
        self.sid = sid
        self.talker = talker
        self.extra = extra
        self.closing = False
        self.paused = False
        self.read_owed = False
        self.tls = False  # TLS is up on it (the switch said so with the message's flag)

    def write(self, data: bytes) -> None:
        if not self.closing and data:
            # ValueError: the switch closed it already (as asyncio, a write after that is lost).
            with contextlib.suppress(ValueError):
                self.bridge.sw.send(self.sid, data)

    def close(self, final: bytes = b"") -> None:
        """Close; the talker hears connection_lost as from asyncio. A client's queued bytes and
        `final` are written first; a server is closed at once, with `final` (its Terminate)
        when it is at a message boundary (Switch.close)."""
        if self.closing:
            return
        self.closing = True
        self.bridge.forget_talker(self.sid)
        self.bridge.sw.close(self.sid, final)
        self.bridge.loop.call_soon(self.talker.connection_lost, None)

    abort = close

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        if self.paused:
            self.paused = False
            if self.read_owed and not self.closing:
                self.read_owed = False
                self.bridge.sw.read_next(self.sid)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)

    def get_write_buffer_size(self) -> int:
        return 0  # the switch holds the bytes; SUSPEND asks the switch


class Bridge:
    """The Switch and the map from its connection ids to Python's objects."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.loop = app.loop
        s = app.settings
        gone = m.error_response(ss.CONNECTION_FAILURE, Reason.SERVER_GONE, severity="FATAL")
        self.sw: SwitchAPI = Switch(
            unsupported_pkt=m.error_response(
                ss.PROTOCOL_VIOLATION, Reason.UNKNOWN_PKT, severity="FATAL"
            ),
            long_tx=m.error_response(ss.PROTOCOL_VIOLATION, Reason.LONG_TX, severity="FATAL"),
            server_gone=gone,
            max_packet_size=int(s.max_packet_size),
            tracked=m.TRACKED_PARAMS,
            login_max=LOGIN_MAX,
        )
        self.talkers: dict[int, SwitchTransport] = {}  # connections Python talks on
        self.clients: dict[int, Client] = {}  # promoted clients
        self.servers: dict[int, Server] = {}  # servers in a pool
        self.listeners: dict[int, str] = {}  # listener id -> its address, for the logs
        self.pool_ids: dict[Pool, int] = {}
        self.pools: dict[int, Pool] = {}
        self._next_pool = 1
        self._local: dict[int, tuple[str, int]] = {}  # listener id -> its bound address
        self._draining = False
        # Switch logins whose CLOSED is in the same drain (`_handle`): logged and counted, and
        # nothing else, until that CLOSED (a connection storm's logins, mostly).
        self._closing: set[int] = set()
        self.fleeting: dict[int, Fleeting] = {}
        self._wall_offset = 0.0

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.sw.start()
        self.loop.add_reader(self.sw.fileno(), self.drain)

    def stop(self) -> None:
        self.loop.remove_reader(self.sw.fileno())
        self.sw.stop()

    def listen(self, sock: socket.socket, label: str) -> int:
        local = sock.getsockname()
        lid = self.sw.listen(sock.detach())
        self.listeners[lid] = label
        if isinstance(local, tuple):
            self._local[lid] = (str(local[0]), int(local[1]))
        return lid

    def close_listener(self, lid: int) -> None:
        if self.listeners.pop(lid, None) is not None:
            self.sw.close(lid)

    # --- pools -------------------------------------------------------------------------------
    def pool_id(self, pool: Pool) -> int:
        pid = self.pool_ids.get(pool)
        if pid is None:
            pid = self._next_pool
            self._next_pool += 1
            self.pool_ids[pool] = pid
            self.pools[pid] = pool
            self.sw.add_pool(pid, MODES[pool.settings.pool_mode])
            self.apply_settings(pool)
            if pool.db.paused:
                self.sw.pause(pid, True)
        return pid

    def apply_settings(self, pool: Pool) -> None:
        """The pool's mode and timeouts, in the switch (at creation, RELOAD, SET)."""
        pid = self.pool_ids.get(pool)
        if pid is None:
            return
        s = pool.settings
        self.sw.add_pool(pid, MODES[s.pool_mode])

        def us(seconds: float) -> int:
            return int(seconds * 1_000_000) if seconds > 0 else 0

        self.sw.set_timeouts(
            pid,
            query_wait=us(s.query_wait_timeout),
            query_wait_notify=us(s.query_wait_notify),
            query=us(s.query_timeout),
            idle_transaction=us(s.idle_transaction_timeout),
            client_idle=us(s.client_idle_timeout),
            server_idle=us(s.server_idle_timeout),
            server_lifetime=us(s.server_lifetime),
            reserve=us(s.reserve_pool_timeout) if s.reserve_pool_size else 0,
        )
        # server_check_delay 0 checks before every use; no server_check_query, never.
        check = -1 if s.server_check_query is None else int(s.server_check_delay * 1_000_000)
        self.sw.set_pool_checks(pid, check_delay_us=check, reset_always=s.server_reset_query_always)
        self.sw.set_pool_prepared(pid, s.max_prepared_statements)
        self.sw.set_pool_hazards(pid, HAZARDS_MODES[s.pooling_hazards])

    # --- talking -----------------------------------------------------------------------------
    def forget_talker(self, sid: int) -> None:
        self.talkers.pop(sid, None)

    def talk_to_server(self, sid: int, talker: Talker, peer: str) -> SwitchTransport:
        t = SwitchTransport(self, sid, talker, {"peername": peer})
        self.talkers[sid] = t
        return t

    def promote_client(self, client: Client, transport: SwitchTransport, pending: bytes) -> bool:
        """A logged-in client joins its pool; from now on the switch carries it."""
        pool = client.pool
        assert pool is not None
        sid = transport.sid
        self.talkers.pop(sid, None)
        transport.closing = True  # the transport is done: nothing more goes through it
        try:
            if not self.sw.promote(sid, self.pool_id(pool), params=client.params, pending=pending):
                return False  # it left meanwhile: its CLOSED event is on its way
        except ValueError as exc:  # a value the switch cannot keep (refused at startup)
            log.error("C-%#x: cannot hand the client to its pool: %s", client.id, exc)
            gone = m.error_response(ss.PROTOCOL_VIOLATION, str(exc), severity="FATAL")
            self.sw.close(sid, gone)  # quiet: the caller counts it gone
            return False
        self.clients[sid] = client
        return True

    def promote_server(self, server: Server) -> bool:
        transport = self.talkers.pop(server.sid, None)
        if transport is not None:
            transport.closing = True
        if not self.sw.promote(server.sid, self.pool_id(server.pool), params=server.tracked):
            return False
        self.servers[server.sid] = server
        return True

    # --- events ------------------------------------------------------------------------------
    def drain(self) -> None:
        """Handle every event the switch has queued, in order. The switch wakes Python for
        them, except for pooled clients' logins and closes, which it lets wait a few ms
        (EV_LAZY in switch.h): whatever reads the switch's state for itself (the janitor,
        `App.refresh`) drains first. A drain started by a handler of this one does nothing,
        so that no event is handled before one that came earlier."""
        if self._draining:
            return
        try:
            events = self.sw.events()
        except Exception:  # the switch is stopped
            return
        self._draining = True
        try:
            self._handle(events)
        finally:
            self._draining = False

    def _handle(self, events: list[Event]) -> None:
        closed = EventKind.CLOSED
        self._closing = {ev.conn for ev in events if ev.kind is closed}
        # Lines logged for an event carry the time the switch posted it, which may be up to
        # LAZY_US before now: so the log's times follow its order. The clocks' offset as of now.
        self._wall_offset = time.time() - time.monotonic()
        try:
            self._handle_all(events)
        finally:
            logfile.event_time(None)
            self._closing = set()
            self.fleeting.clear()  # their CLOSED was in this drain

    def _handle_all(self, events: list[Event]) -> None:
        i, n = 0, len(events)
        while i < n:
            if events[i].kind not in _HELD_KINDS:
                self._safe_event(events[i])
                i += 1
                continue
            # A run of logins and closes: their log lines in one write per handler at its end.
            # Anything that answers someone (the console, a login Python talks) logs at once,
            # before its answer goes out.
            with logfile.held():
                while i < n and events[i].kind in _HELD_KINDS:
                    self._safe_event(events[i])
                    i += 1

    def _safe_event(self, ev: Event) -> None:
        logfile.event_time(ev.at + self._wall_offset if ev.at else None)
        try:
            self._event(ev)
        except Exception:
            log.exception("switch event %s failed", ev)

    def _event(self, ev: Event) -> None:
        kind = ev.kind
        if kind is EventKind.MESSAGE:
            t = self.talkers.get(ev.conn)
            if t is None:
                return
            if ev.reason & MessageFlag.TLS:
                t.tls = True
            t.talker.data_received(ev.data)
            if not t.closing and self.talkers.get(ev.conn) is t:
                if t.paused:
                    t.read_owed = True
                else:
                    self.sw.read_next(ev.conn)
        elif kind is EventKind.ACCEPTED:
            self._accepted(ev.conn, ev.pool, ev.reason)
        elif kind is EventKind.LOGGED_IN:
            fleeting = ev.conn in self._closing  # it left already: no pool entry for it
            self.app.fast.logged_in(ev.conn, ev.pool, ev.data, ev.at, fleeting)
        elif kind is EventKind.LOGIN_ENDED:
            self.app.fast.ended(ev.conn, ev.pool, ev.reason, ev.data, ev.at)
        elif kind is EventKind.CLOSED:
            self._closed(ev)
        elif kind is EventKind.WAITERS:
            pool = self.pools.get(ev.pool)
            if pool is not None:
                # The queue as it is now, not as the event counted it: a client it counted may
                # have got a server since (one Python gave back meanwhile).
                self.app.pool_waiters(pool, self.sw.waiting(ev.pool))
        elif kind is EventKind.ATTENTION:
            server = self.servers.get(ev.conn)
            if server is not None:
                self.app.server_attention(server, SwReason(ev.reason))
        elif kind is EventKind.DEADLINE:
            self.app.deadline(ev.conn, self.pools.get(ev.pool), SwReason(ev.reason))
        elif kind is EventKind.HAZARD:
            client = self.clients.get(ev.conn)
            if client is not None:
                self.app.client_hazard(client, ev.reason & 0xFF, ev.reason >> 8)
        elif kind is EventKind.PARAMS_FAILED:
            log.warning("S-%#x: could not apply the client's parameters", ev.conn)
        elif kind is EventKind.LISTEN_ERROR:
            self._listen_error(ev.conn, ev.reason)

    def listener_address(self, listener: int) -> tuple[str, int]:
        """The address a listener is bound to ("", 0 for the unix socket)."""
        return self._local.get(listener, ("", 0))

    def _accepted(self, sid: int, listener: int, flags: int = 0) -> None:
        from pgfunnel.net.client_conn import ClientConn
        from pgfunnel.proto.framing import SSLRequest

        try:
            family, host, port, uid, _pid = self.sw.peer(sid)
        except KeyError:
            return  # it left before we heard of it (a port probe): nothing to undo
        extra: dict[str, Any] = {"sockname": self._local.get(listener, ("", 0))}
        if family == socket.AF_UNIX:
            extra["peername"] = host or ""
            extra["peer_uid"] = uid if uid >= 0 else None
        else:
            extra["peername"] = (host, port)
        conn = ClientConn(self.app)
        if flags & (ACCEPTED_SSL_ANSWERED | ACCEPTED_TLS):
            conn.negotiated.add(SSLRequest)  # the switch answered it before handing it over
        t = SwitchTransport(self, sid, conn, extra)
        t.tls = bool(flags & ACCEPTED_TLS)
        self.talkers[sid] = t
        conn.connection_made(t)

    def _closed(self, ev: Event) -> None:
        sid = ev.conn
        t = self.talkers.pop(sid, None)
        if t is not None:
            t.closing = True
            exc: ConnectionError | None = None
            if ev.reason == SwReason.TLS_FAILED:
                exc = TlsFailed(ev.data.decode(errors="replace") or "TLS failed")
            elif ev.reason not in (SwReason.CLIENT_EOF, SwReason.CLIENT_TERMINATE):
                exc = ConnectionError(CLOSE_TEXT.get(ev.reason, "connection closed"))
            t.talker.connection_lost(exc)
            return
        client = self.clients.pop(sid, None)
        if client is not None:
            self.app.switch_client_closed(client, SwReason(ev.reason), ev.data)
            return
        gone = self.fleeting.pop(sid, None)
        if gone is not None:
            self.app.fleeting_closed(gone, SwReason(ev.reason), ev.data)
            return
        server = self.servers.pop(sid, None)
        if server is not None:
            self.app.switch_server_closed(server, SwReason(ev.reason))

    def _listen_error(self, lid: int, errno_: int) -> None:
        import os

        def again() -> None:
            if lid in self.listeners:
                self.sw.listen_resume(lid)

        # Resume whatever happens below: a listener left paused would accept nothing again.
        self.loop.call_later(LISTEN_RETRY, again)
        if errno_ == 0:
            self.app.login_cap_reached()  # the switch's login cap, not an error
        else:
            label = self.listeners.get(lid, "?")
            log.warning("accept() failed on %s: %s", label, os.strerror(errno_))

    # --- commands on pooled connections ------------------------------------------------------
    def close_client(self, client: Client, final: bytes = b"") -> None:
        """Write `final` and close a promoted client; its bookkeeping is the caller's (the
        switch reports no CLOSED for a close Python asked for)."""
        if self.clients.pop(client.sid, None) is not None:
            self.sw.close(client.sid, final)

    def close_server(self, server: Server, final: bytes = b"") -> None:
        t = self.talkers.pop(server.sid, None)
        if t is not None:
            t.closing = True
        self.servers.pop(server.sid, None)
        if server.sid:
            self.sw.close(server.sid, final)
