"""Message framing: a header scanner for forwarded byte streams and the startup-packet reader."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pgfunnel.proto.messages import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    PROTOCOL_V3,
    SSL_REQUEST_CODE,
)

_HDR = struct.Struct("!Bi")
_I32 = struct.Struct("!i")

# One event per message the owner asked about: (type, payload or None, end offset in the chunk).
Event = tuple[int, bytes | None, int]


class ProtocolViolation(Exception):
    """The peer sent bytes that are not a v3 message stream (bad length, oversized packet)."""


class UnknownMessage(ProtocolViolation):
    """A message type the receiving side does not accept (PgBouncer: "unknown pkt")."""

    def __init__(self, kind: int) -> None:
        super().__init__(f"unknown pkt: {kind}/{kind:#x}")
        self.kind = kind


# Flags of a watch table entry. REPORT and CAPTURE keep their old values (1 and 2).
REPORT = 1  # report (type, None, end)
CAPTURE = 2  # report (type, payload, end), the payload assembled across chunks
OPENS = 4  # the message opens an extended-protocol batch (Parse, Bind, Execute, ...)
CLOSES = 8  # the message ends the batch: the server answers it with ReadyForQuery
EMPTY = 16  # the message has no body (length must be 4): Sync, Flush, CopyDone, Terminate
STOP = 32  # stop scanning after this message (Terminate: nothing after it counts)
FORBID = 64  # not a message this side may send: ProtocolViolation (UnknownMessage)


class Scanner:
    """Walks message headers in a byte stream fed chunk by chunk, without copying bodies.

    `watch` is a 256-entry table of flags (above). The forwarding layer writes each chunk on
    as it is and acts only on the events, so an ordinary DataRow costs one header read and no
    allocation. Beside the events it keeps what the pooler must know at its rare decisions:
    `batch` (a message that opens an extended-protocol batch was seen since the last one that
    closes it), `in_body` (part of a message body has gone by) and `partial_header` (up to four
    bytes of a header not complete yet, which a forwarder holds back rather than pass on).
    """

    __slots__ = ("_capture", "_hdr", "_kind", "_max", "_skip", "batch", "watch")

    def __init__(self, watch: bytes | bytearray, max_packet_size: int = 2**31 - 1) -> None:
        if len(watch) != 256:
            raise ValueError("watch table must have 256 entries")
        self.watch = bytes(watch)
        self._max = max_packet_size
        self._skip = 0  # body bytes of the current message still to pass
        self._kind = 0  # type of the message whose body is being passed
        self._hdr = b""  # a header split across chunks
        self._capture: bytearray | None = None  # payload being assembled (CAPTURE)
        self.batch = False

    @staticmethod
    def table(
        report: bytes = b"",
        capture: bytes = b"",
        opens: bytes = b"",
        closes: bytes = b"",
        empty: bytes = b"",
        stop: bytes = b"",
        allowed: bytes | None = None,
    ) -> bytes:
        """A watch table. `allowed`, when given, lists every type the peer may send; any
        other type is refused at its header, before a byte of it is passed on."""
        t = bytearray(256)
        for kind in report:
            t[kind] |= REPORT
        for kind in capture:
            t[kind] = (t[kind] & ~REPORT) | CAPTURE
        for flag, kinds in ((OPENS, opens), (CLOSES, closes), (EMPTY, empty), (STOP, stop)):
            for kind in kinds:
                t[kind] |= flag
        if allowed is not None:
            ok = set(allowed)
            for kind in range(256):
                if kind not in ok:
                    t[kind] = FORBID
        return bytes(t)

    @property
    def at_boundary(self) -> bool:
        """True when everything fed so far ends exactly at a message boundary."""
        return self._skip == 0 and not self._hdr

    @property
    def in_body(self) -> bool:
        """True while a message whose header was complete has body bytes still to come."""
        return self._skip != 0

    @property
    def partial_header(self) -> bytes:
        """The bytes of a header that the next chunk must complete (b"" most of the time)."""
        return self._hdr

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event] | None:
        """Scan one chunk; returns the watched messages that ended in it, or None if none did."""
        if self._skip or self._hdr:
            return self._feed_resume(data)
        return self._scan(data, 0, None)

    def _scan(
        self, data: bytes | bytearray | memoryview, pos: int, events: list[Event] | None
    ) -> list[Event] | None:
        """The hot loop: whole messages from `pos`, starting at a message boundary."""
        n = len(data)
        watch = self.watch
        unpack = _HDR.unpack_from
        limit = self._max
        while pos < n:
            if n - pos < 5:
                self._hdr = bytes(data[pos:])
                return events
            kind, length = unpack(data, pos)
            w = watch[kind]
            if length < 4 or length > limit or w >= EMPTY:
                self._check(kind, length, w)
            end = pos + 1 + length
            if w & (OPENS | CLOSES):
                self.batch = not w & CLOSES
            if end > n:
                self._kind = kind
                self._skip = end - n
                if w & CAPTURE:
                    self._capture = bytearray(data[pos + 5 :])
                return events
            if w & 3:
                ev = (kind, bytes(data[pos + 5 : end]) if w & CAPTURE else None, end)
                if events is None:
                    events = [ev]
                else:
                    events.append(ev)
                if w & STOP:
                    return events
            pos = end
        return events

    def _check(self, kind: int, length: int, w: int) -> None:
        """The rare header checks, out of the hot loop: raise on a header to refuse."""
        if w & FORBID:
            raise UnknownMessage(kind)
        if length < 4 or length > self._max or (w & EMPTY and length != 4):
            raise ProtocolViolation(self._violation(kind, length))

    def _feed_resume(self, data: bytes | bytearray | memoryview) -> list[Event] | None:
        """Finish a message (or header) that the previous chunk left open, then scan on."""
        events: list[Event] | None = None
        n = len(data)
        pos = 0
        skip = self._skip
        if skip:
            if skip > n:
                self._skip = skip - n
                if self._capture is not None:
                    self._capture += data
                return None
            pos = skip
            self._skip = 0
            cap = self._capture
            w = self.watch[self._kind]
            if cap is not None:
                cap += data[:pos]
                self._capture = None
                events = [(self._kind, bytes(cap), pos)]
            elif w & 3:
                events = [(self._kind, None, pos)]
            if w & STOP:
                return events
        else:
            need = 5 - len(self._hdr)
            if n < need:
                self._hdr += bytes(data)
                return None
            header = self._hdr + bytes(data[:need])
            kind, length = _HDR.unpack(header)
            ev = self._start(kind, length, data, need, n)
            self._hdr = b""
            if ev is not None:
                events = [ev]
                if self.watch[kind] & STOP:
                    return events
            if self._skip:
                return events
            pos = need + length - 4
        return self._scan(data, pos, events)

    def _start(
        self, kind: int, length: int, data: bytes | bytearray | memoryview, pos: int, n: int
    ) -> Event | None:
        """Begin a message whose header came split; returns its event if it ends in this chunk."""
        w = self.watch[kind]
        if length < 4 or length > self._max or w >= EMPTY:
            self._check(kind, length, w)
        if w & (OPENS | CLOSES):
            self.batch = not w & CLOSES
        body = length - 4
        end = pos + body
        if end > n:
            self._kind = kind
            self._skip = end - n
            if w & CAPTURE:
                self._capture = bytearray(data[pos:])
            return None
        if not w & 3:
            return None
        return (kind, bytes(data[pos:end]) if w & CAPTURE else None, end)

    def _violation(self, kind: int, length: int) -> str:
        if length > self._max:
            return f"oversized packet: {length} bytes (max_packet_size={self._max})"
        return f"bad packet header: type {kind!r} length {length}"


class MessageReader:
    """Collects whole messages from a stream for the login phases, where every message matters."""

    __slots__ = ("_buf", "_max")

    def __init__(self, max_packet_size: int = 2**31 - 1) -> None:
        self._buf = bytearray()
        self._max = max_packet_size

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next(self) -> tuple[int, bytes] | None:
        buf = self._buf
        if len(buf) < 5:
            return None
        kind, length = _HDR.unpack_from(buf, 0)
        if length < 4 or length > self._max:
            raise ProtocolViolation(f"bad packet header: type {kind} length {length}")
        if len(buf) < length + 1:
            return None
        payload = bytes(buf[5 : length + 1])
        del buf[: length + 1]
        return kind, payload

    def take_rest(self) -> bytes:
        rest = bytes(self._buf)
        self._buf.clear()
        return rest


# --- the untyped first packet of a connection -----------------------------------------------
@dataclass(frozen=True)
class StartupMessage:
    params: dict[str, str]


@dataclass(frozen=True)
class SSLRequest:
    code = SSL_REQUEST_CODE


@dataclass(frozen=True)
class GSSENCRequest:
    code = GSSENC_REQUEST_CODE


@dataclass(frozen=True)
class CancelRequest:
    pid: int
    key: int


@dataclass(frozen=True)
class UnsupportedProtocol:
    version: int


StartupPacket = StartupMessage | SSLRequest | GSSENCRequest | CancelRequest | UnsupportedProtocol

MAX_STARTUP_PACKET = 10000  # PostgreSQL's own limit for a startup packet


def read_startup_packet(buf: bytearray) -> tuple[StartupPacket, int] | None:
    """Decode the first packet if it is complete: (packet, bytes consumed), else None."""
    if len(buf) < 8:
        return None
    length = _I32.unpack_from(buf, 0)[0]
    if length < 8 or length > MAX_STARTUP_PACKET:
        raise ProtocolViolation(f"bad startup packet length {length}")
    if len(buf) < length:
        return None
    code = _I32.unpack_from(buf, 4)[0]
    if code == SSL_REQUEST_CODE:
        return SSLRequest(), length
    if code == GSSENC_REQUEST_CODE:
        return GSSENCRequest(), length
    if code == CANCEL_REQUEST_CODE:
        if length != 16:
            raise ProtocolViolation("bad cancel request length")
        pid, key = struct.unpack_from("!ii", buf, 8)
        return CancelRequest(pid, key), length
    if code >> 16 != 3:
        return UnsupportedProtocol(code), length
    if code != PROTOCOL_V3 and code & 0xFFFF > 0:
        # 3.x minor versions: we speak 3.0 and ignore _pq_ options, as PostgreSQL 15 does.
        pass
    parts = bytes(buf[8:length]).split(b"\0")
    params: dict[str, str] = {}
    for i in range(0, len(parts) - 1, 2):
        key = parts[i].decode(errors="replace")
        if not key:
            break
        params[key] = parts[i + 1].decode(errors="replace")
    return StartupMessage(params), length
