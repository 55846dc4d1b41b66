"""Fixtures for the switch's tests: a started Switch, socket pairs speaking PostgreSQL v3 bytes.

PGFUNNEL_SWITCH_SO names another build of the extension (the ASan+UBSan one of
scripts/switch_build.sh) to load in place of the one in the source tree.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator

import pytest

_so = os.environ.get("PGFUNNEL_SWITCH_SO")
if _so:
    _spec = importlib.util.spec_from_file_location("pgfunnel._switch._switch", _so)
    assert _spec is not None and _spec.loader is not None
    _mod = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_mod)
    sys.modules["pgfunnel._switch._switch"] = _mod
    # This interpreter has the sanitizer runtime already; the tools the tests start (initdb,
    # postgres, psql) must not inherit it (postgres hangs under it).
    os.environ.pop("LD_PRELOAD", None)

from pgfunnel._switch import Event, Switch  # noqa: E402
from pgfunnel.proto import messages as m  # noqa: E402
from pgfunnel.throwaway import SUPERUSER, Cluster  # noqa: E402

UNSUPPORTED = m.error_response("08P01", "unsupported pkt type", severity="FATAL")
LONG_TX = m.error_response("08P01", "Long transactions not allowed", severity="FATAL")
SERVER_GONE = m.error_response("08006", "server conn crashed?", severity="FATAL")


def make_switch(**kwargs: int) -> Switch:
    return Switch(unsupported_pkt=UNSUPPORTED, long_tx=LONG_TX, server_gone=SERVER_GONE, **kwargs)


@pytest.fixture
def switch() -> Iterator[Switch]:
    sw = make_switch()
    sw.start()
    yield sw
    sw.stop()


# Our ends of the socket pairs a test made, closed after it (warnings are errors).
_opened: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_our_ends() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


def pair() -> tuple[socket.socket, int]:
    """Our end (blocking, with a timeout) and the fd to hand to the switch."""
    ours, theirs = socket.socketpair()
    ours.settimeout(5)
    _opened.append(ours)
    return ours, theirs.detach()


def wait_for(pred: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.002)


class Events:
    """Collects the switch's events as a test polls for them."""

    def __init__(self, sw: Switch) -> None:
        self.sw = sw
        self.seen: list[Event] = []

    def poll(self) -> list[Event]:
        self.seen += self.sw.events()
        return self.seen

    def wait(self, pred: Callable[[Event], bool], timeout: float = 5.0) -> Event:
        found: list[Event] = []

        def check() -> bool:
            found[:] = [e for e in self.poll() if pred(e)]
            return bool(found)

        wait_for(check, timeout)
        return found[0]


def read_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise EOFError(f"EOF after {len(out)} of {n} bytes")
        out += chunk
    return out


def read_msg(sock: socket.socket) -> tuple[bytes, bytes]:
    head = read_exact(sock, 5)
    length = int.from_bytes(head[1:], "big")
    return head[:1], read_exact(sock, length - 4)


def read_until_z(sock: socket.socket) -> list[tuple[bytes, bytes]]:
    msgs = []
    while True:
        msg = read_msg(sock)
        msgs.append(msg)
        if msg[0] == b"Z":
            return msgs


def assert_eof(sock: socket.socket) -> bytes:
    """Reads to EOF; returns what came before it."""
    out = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return out
        out += chunk


def assert_silent(sock: socket.socket, wait: float = 0.1) -> None:
    sock.settimeout(wait)
    try:
        data = sock.recv(65536)
    except TimeoutError:
        return
    finally:
        sock.settimeout(5)
    raise AssertionError(f"unexpected bytes: {data!r}")


def pg_login(cluster: Cluster, user: str = SUPERUSER) -> socket.socket:
    """A server connection logged in over the cluster's unix socket (trust), as the pooler's
    Python login would hand it to the switch: its ReadyForQuery read."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(cluster.sockdir / f".s.PGSQL.{cluster.port}"))
    sock.sendall(m.startup_message({"user": user, "database": "postgres"}))
    for kind, payload in read_until_z(sock):
        if kind == b"E":
            raise AssertionError(f"login failed: {payload!r}")
        if kind == b"R":
            assert payload[:4] == b"\0\0\0\0", "the test cluster trusts its unix socket"
    return sock
