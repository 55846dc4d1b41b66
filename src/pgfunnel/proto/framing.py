"""Message framing for the login phases: whole messages and the untyped startup packet.

Forwarded streams are framed by the switch (`pgfunnel._switch`, scan.c)."""

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


class ProtocolViolation(Exception):
    """The peer sent bytes that are not a v3 message stream (bad length, oversized packet)."""


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
