"""The v3 protocol by hand over a socket, for what well-behaved drivers never send."""

from __future__ import annotations

import socket
import struct

from pgfunnel.proto import messages as m


def recv_exact(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def read_message(sock: socket.socket) -> tuple[bytes, bytes] | None:
    """One message (type, payload), or None once the peer has closed."""
    try:
        header = recv_exact(sock, 5)
    except ConnectionResetError:
        return None
    if header is None:
        return None
    length = struct.unpack("!i", header[1:])[0]
    payload = recv_exact(sock, length - 4)
    if payload is None:
        return None
    return header[:1], payload


def error_fields(payload: bytes) -> dict[str, str]:
    return {p[:1].decode(): p[1:].decode() for p in payload.split(b"\0") if p}


def startup(user: str, database: str, **params: str) -> bytes:
    return m.startup_message({"user": user, "database": database, **params})


def raw_login(port: int, database: str, user: str = "postgres") -> socket.socket:
    """A trust login by hand; returns the socket once ReadyForQuery arrived."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(30)
    sock.sendall(startup(user, database))
    while (msg := read_message(sock)) is not None:
        if msg[0] == b"E":
            sock.close()
            raise AssertionError(error_fields(msg[1]))
        if msg[0] == b"Z":
            return sock
    sock.close()
    raise AssertionError("connection closed during login")


def read_until(sock: socket.socket, kind: bytes, count: int = 1) -> list[tuple[bytes, bytes]]:
    """Messages up to and including the `count`-th of `kind` (the socket's timeout bounds a
    hang, which then fails the test)."""
    messages = []
    while (msg := read_message(sock)) is not None:
        messages.append(msg)
        if msg[0] == kind:
            count -= 1
            if count == 0:
                return messages
    raise AssertionError(f"connection closed before {kind!r}: {messages}")


def read_until_closed(sock: socket.socket) -> list[tuple[bytes, bytes]]:
    messages = []
    while (msg := read_message(sock)) is not None:
        messages.append(msg)
    return messages


def run_raw(sock: socket.socket, sql: str) -> list[tuple[bytes, bytes]]:
    """Send one simple Query and read up to its ReadyForQuery."""
    sock.sendall(m.query(sql))
    return read_until(sock, b"Z")


def rows(messages: list[tuple[bytes, bytes]]) -> list[list[str | None]]:
    """The DataRows of an answer, as text."""
    out = []
    for kind, payload in messages:
        if kind != b"D":
            continue
        (n,) = struct.unpack_from("!h", payload)
        pos = 2
        row: list[str | None] = []
        for _ in range(n):
            (size,) = struct.unpack_from("!i", payload, pos)
            pos += 4
            if size < 0:
                row.append(None)
            else:
                row.append(payload[pos : pos + size].decode())
                pos += size
        out.append(row)
    return out


# --- extended protocol, one message at a time ------------------------------------------------
def parse(sql: str, name: str = "") -> bytes:
    return m.message(b"P", m.cstr(name) + m.cstr(sql) + struct.pack("!h", 0))


def bind(portal: str = "", statement: str = "") -> bytes:
    return m.message(b"B", m.cstr(portal) + m.cstr(statement) + struct.pack("!hhh", 0, 0, 0))


def describe_portal(portal: str = "") -> bytes:
    return m.message(b"D", b"P" + m.cstr(portal))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return m.message(b"E", m.cstr(portal) + struct.pack("!i", max_rows))


def sync() -> bytes:
    return m.message(b"S")


def flush() -> bytes:
    return m.message(b"H")


def statement(sql: str) -> bytes:
    """Parse, Bind, Describe and Execute of one statement, without Sync or Flush."""
    return parse(sql) + bind() + describe_portal() + execute()
