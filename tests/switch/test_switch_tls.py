"""The switch's TLS (tls.c), driven directly: the answer to an SSLRequest and the handshake,
direct TLS and its ALPN, bytes both ways through TLS (records of every size, a megabyte
answer), the SSLRequest to a server and its answers, certificates that do not verify, and a
peer that sends garbage ending its own connection only. Python's ssl module is the far end.
Run under ASan+UBSan by scripts/switch_check.sh with the rest of tests/switch."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import ssl
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from pgfunnel._switch import (
    TLS_CLIENTS,
    TLS_MODES,
    TLS_PROTOCOLS,
    TLS_SERVERS,
    EventKind,
    MessageFlag,
    Mode,
    Reason,
    State,
    Switch,
)
from pgfunnel.proto import messages as m
from tests.switch.conftest import make_switch, read_until_z
from tests.switch.test_switch_login import Inbox

POOL = 5
SSL_REQUEST = struct.pack("!ii", 8, m.SSL_REQUEST_CODE)
STARTUP = m.startup_message({"user": "alice", "database": "db"})
WELCOME = m.auth_ok() + m.backend_key_data(1, 2) + m.ready_for_query()
TLS_TEXT = re.compile(r"^TLSv1\.[23]/[A-Z0-9_-]+(/ECDH=[A-Za-z0-9-]+)?$")
ALL = TLS_PROTOCOLS["tlsv1.2"] | TLS_PROTOCOLS["tlsv1.3"]


class Files:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = trustme.CA()
        self.ca_file = root / "ca.crt"
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    def leaf(self, name: str, *ids: str, cn: str | None = None) -> tuple[str, str]:
        cert = self.ca.issue_cert(*ids, common_name=cn)
        crt, key = self.root / f"{name}.crt", self.root / f"{name}.key"
        crt.write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
        cert.private_key_pem.write_to_path(str(key))
        return str(crt), str(key)


_ours: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_ours() -> Iterator[None]:
    yield
    while _ours:
        _ours.pop().close()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    return Files(tmp_path_factory.mktemp("swtls"))


def configure(
    sw: Switch, files: Files, *, side: int = TLS_CLIENTS, mode: str = "prefer", ca: bool = False
) -> None:
    crt, key = files.leaf("pooler", "localhost", "127.0.0.1")
    sw.tls_configure(
        side,
        TLS_MODES.index(mode),
        ALL,
        1,
        key if side == TLS_CLIENTS else None,
        crt if side == TLS_CLIENTS else None,
        str(files.ca_file) if ca else None,
        None,
        None,
        None,
    )


@pytest.fixture
def tls_switch(files: Files) -> Iterator[Switch]:
    sw = make_switch()
    configure(sw, files)
    sw.add_pool(POOL, Mode.TRANSACTION)
    sw.start()
    yield sw
    sw.stop()


def listener(sw: Switch) -> tuple[int, int]:
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.bind(("127.0.0.1", 0))
    ls.listen(64)
    ls.setblocking(False)
    port = ls.getsockname()[1]
    return port, sw.listen(ls.detach())


def client_ctx(files: Files, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(files.ca_file))
    if cert is not None:
        ctx.load_cert_chain(*cert)
    return ctx


def tls_login(
    sw: Switch, inbox: Inbox, files: Files, cert: tuple[str, str] | None = None
) -> tuple[ssl.SSLSocket, int]:
    """A client through SSLRequest, 'S' and the handshake; its startup packet came up."""
    port, lid = listener(sw)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    cid = inbox.take(lambda e: e.kind is EventKind.ACCEPTED and e.pool == lid).conn
    raw.sendall(SSL_REQUEST)
    ev = inbox.message(cid)
    assert (ev.data, ev.reason) == (SSL_REQUEST, MessageFlag.UNTYPED)
    assert sw.tls_accept(cid) is True
    assert raw.recv(1) == b"S"
    tls = client_ctx(files, cert).wrap_socket(raw, server_hostname="localhost")
    tls.sendall(STARTUP)
    ev = inbox.message(cid)
    assert ev.data == STARTUP
    assert ev.reason == MessageFlag.UNTYPED | MessageFlag.TLS
    return tls, cid


def test_ssl_request_handshake_and_a_megabyte_both_ways(tls_switch: Switch, files: Files) -> None:
    sw = tls_switch
    inbox = Inbox(sw)
    tls, cid = tls_login(sw, inbox, files)
    _ours.append(tls)
    assert TLS_TEXT.match(sw.tls_info(cid)), sw.tls_info(cid)
    assert sw.tls_peer(cid) is None  # no client certificate
    assert sw.tls_infos() == {cid: sw.tls_info(cid)}
    # A password message typed through TLS comes up as any other
    assert sw.read_next(cid)
    tls.sendall(m.password_message(b"pw"))
    assert inbox.message(cid).data == m.password_message(b"pw")
    sw.send(cid, WELCOME)  # the welcome Python writes, through TLS
    assert sw.promote(cid, POOL)
    ours, theirs = socket.socketpair()
    _ours.append(ours)
    ours.settimeout(10)
    sw.add_server(theirs.detach(), POOL)
    big = "x" * 1000
    query = m.query("SELECT big")
    tls.sendall(query)
    got = b""
    while len(got) < len(query):
        got += ours.recv(65536)
    assert got == query  # in clear on the server side
    row = m.data_row([big])
    answer = row * 1000 + m.command_complete("SELECT 1000") + m.ready_for_query()
    done = threading.Event()

    def serve() -> None:
        ours.sendall(answer)
        done.set()

    threading.Thread(target=serve).start()
    seen = b""
    tls.settimeout(10)
    while not seen.endswith(m.ready_for_query()) or len(seen) < len(WELCOME) + len(answer):
        chunk = tls.recv(1 << 16)
        assert chunk
        seen += chunk
    assert seen == WELCOME + answer
    assert done.wait(5)
    # many small queries, each answered, through the same TLS session
    for i in range(200):
        q = m.query(f"SELECT {i}")
        tls.sendall(q)
        got = b""
        while len(got) < len(q):
            got += ours.recv(65536)
        assert got == q
        ours.sendall(m.command_complete("SELECT 1") + m.ready_for_query())
        msgs = read_until_z(tls)  # type: ignore[arg-type]
        assert msgs[-1] == (b"Z", b"I")
    tls.close()
    inbox.closed(cid)
    ours.close()


def test_bytes_after_the_ssl_request_get_no_handshake(tls_switch: Switch) -> None:
    sw = tls_switch
    inbox = Inbox(sw)
    port, lid = listener(sw)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    cid = inbox.take(lambda e: e.kind is EventKind.ACCEPTED and e.pool == lid).conn
    raw.sendall(SSL_REQUEST + STARTUP)
    ev = inbox.message(cid)
    assert ev.reason & MessageFlag.MORE_BUFFERED
    assert sw.tls_accept(cid) is False  # the glued bytes would be read as TLS
    raw.close()


def test_a_client_sending_garbage_in_the_handshake_ends_alone(
    tls_switch: Switch, files: Files
) -> None:
    sw = tls_switch
    inbox = Inbox(sw)
    port, lid = listener(sw)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    cid = inbox.take(lambda e: e.kind is EventKind.ACCEPTED and e.pool == lid).conn
    raw.sendall(SSL_REQUEST)
    inbox.message(cid)
    assert sw.tls_accept(cid)
    assert raw.recv(1) == b"S"
    raw.sendall(b"\x16\x03\x01\x00\x05hello" + os.urandom(300))
    ev = inbox.closed(cid)
    assert ev.reason == Reason.TLS_FAILED
    assert ev.data.startswith(b"TLS handshake error: "), ev.data
    raw.close()
    # the switch goes on: another client logs in through TLS
    tls, _ = tls_login(sw, inbox, files)
    tls.close()


def test_direct_tls_with_and_without_alpn(tls_switch: Switch, files: Files) -> None:
    sw = tls_switch
    inbox = Inbox(sw)
    port, lid = listener(sw)
    ctx = client_ctx(files)
    ctx.set_alpn_protocols(["postgresql"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    cid = inbox.take(lambda e: e.kind is EventKind.ACCEPTED and e.pool == lid).conn
    tls = ctx.wrap_socket(raw, server_hostname="localhost")
    assert tls.selected_alpn_protocol() == "postgresql"
    tls.sendall(STARTUP)
    ev = inbox.message(cid)
    assert (ev.data, ev.reason) == (STARTUP, MessageFlag.UNTYPED | MessageFlag.TLS)
    tls.close()
    # no ALPN: the handshake completes, then the connection is closed
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    cid = inbox.take(lambda e: e.kind is EventKind.ACCEPTED and e.pool == lid).conn
    client_ctx(files).wrap_socket(raw, server_hostname="localhost").close()
    ev = inbox.closed(cid)
    assert ev.reason == Reason.TLS_FAILED
    assert b'ALPN protocol "postgresql"' in ev.data
    # other protocols only: refused in the handshake (no_application_protocol)
    ctx = client_ctx(files)
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    cid = inbox.take(lambda e: e.kind is EventKind.ACCEPTED and e.pool == lid).conn
    with pytest.raises(ssl.SSLError):
        ctx.wrap_socket(raw, server_hostname="localhost")
    assert inbox.closed(cid).reason == Reason.TLS_FAILED
    raw.close()


def test_client_certificates_are_reported(files: Files) -> None:
    sw = make_switch()
    configure(sw, files, mode="verify-ca", ca=True)
    sw.add_pool(POOL, Mode.TRANSACTION)
    sw.start()
    try:
        inbox = Inbox(sw)
        tls, cid = tls_login(sw, inbox, files, cert=files.leaf("alice", "a.example", cn="alice"))
        assert sw.tls_peer(cid) == ("alice", True)
        tls.close()
        # verify-ca: no certificate, no handshake
        port, lid = listener(sw)
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        cid = inbox.take(lambda e: e.kind is EventKind.ACCEPTED and e.pool == lid).conn
        raw.sendall(SSL_REQUEST)
        inbox.message(cid)
        assert sw.tls_accept(cid)
        assert raw.recv(1) == b"S"
        tls = client_ctx(files).wrap_socket(raw, server_hostname="localhost")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            tls.sendall(STARTUP)
            assert tls.recv(10)  # TLS 1.3: the refusal comes after the client's Finished
        ev = inbox.closed(cid)
        assert ev.reason == Reason.TLS_FAILED and b"certificate" in ev.data
        tls.close()
    finally:
        sw.stop()


def test_bad_contexts_say_what_and_where(files: Files, tmp_path: Path) -> None:
    sw = make_switch()
    try:
        crt, _ = files.leaf("p2", "localhost")
        missing = str(tmp_path / "nope.key")
        with pytest.raises(ValueError, match=re.escape(missing)):
            sw.tls_configure(TLS_CLIENTS, 3, ALL, 1, missing, crt, None, None, None, None)
        with pytest.raises(ValueError, match="needs a CA file"):
            _, key = files.leaf("p3", "localhost")
            crt3 = str(files.root / "p3.crt")
            sw.tls_configure(TLS_CLIENTS, 4, ALL, 1, key, crt3, None, None, None, None)
        with pytest.raises(ValueError, match="TLS ciphers"):
            sw.tls_configure(TLS_SERVERS, 2, ALL, 1, None, None, None, "NOPE-NOPE", None, None)
        with pytest.raises(ValueError, match="no TLS protocol"):
            sw.tls_configure(TLS_SERVERS, 2, 0, 1, None, None, None, None, None, None)
    finally:
        sw.stop()


# --- the server side ---------------------------------------------------------------------------


class FakeServer:
    """A TCP server that answers an SSLRequest with `answer` and, after 'S', runs TLS with
    its certificate; then reads a startup packet and sends WELCOME."""

    def __init__(self, files: Files, answer: bytes, cert: tuple[str, str]) -> None:
        self.ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(4)
        self.ls.settimeout(10)
        self.port = self.ls.getsockname()[1]
        self.answer = answer
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(*cert)
        self.got: list[bytes] = []
        self.conn: socket.socket | None = None
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        try:
            conn, _ = self.ls.accept()
        except OSError:
            return
        conn.settimeout(10)
        self.conn = conn
        try:
            req = conn.recv(8)
            self.got.append(req)
            if req != SSL_REQUEST:
                return
            conn.sendall(self.answer)
            if self.answer == b"S":
                try:
                    conn = self.ctx.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError):
                    return
                self.conn = conn
            startup = b""
            while len(startup) < 4 or len(startup) < int.from_bytes(startup[:4], "big"):
                chunk = conn.recv(4096)
                if not chunk:
                    return
                startup += chunk
            self.got.append(startup)
            conn.sendall(WELCOME)
            self.conn = conn
        except OSError:
            return

    def close(self) -> None:
        self.thread.join(10)
        if self.conn is not None:
            self.conn.close()
        self.ls.close()


def connect(sw: Switch, port: int, mode: str, host: str = "localhost") -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        sock.connect(("127.0.0.1", port))  # in progress: the switch sees it complete
    return sw.connect_server(sock.detach(), POOL, STARTUP, TLS_MODES.index(mode), host)


@pytest.mark.parametrize(
    ("answer", "mode", "works", "tls"),
    [
        (b"S", "prefer", True, True),
        (b"S", "require", True, True),
        (b"S", "verify-full", True, True),
        (b"N", "prefer", True, False),
        (b"N", "allow", True, False),
        (b"N", "require", False, False),
        (b"E", "prefer", False, False),
    ],
)
def test_the_ssl_request_to_a_server(
    files: Files, answer: bytes, mode: str, works: bool, tls: bool
) -> None:
    sw = make_switch()
    configure(sw, files, side=TLS_SERVERS, mode=mode, ca=True)
    sw.add_pool(POOL, Mode.TRANSACTION)
    sw.start()
    server = FakeServer(files, answer, files.leaf("srv", "localhost"))
    try:
        inbox = Inbox(sw)
        sid = connect(sw, server.port, mode)
        if works:
            ev = inbox.message(sid)
            assert ev.data == WELCOME
            assert bool(ev.reason & MessageFlag.TLS) is tls
            assert bool(sw.tls_info(sid)) is tls
            assert sw.promote(sid, POOL)
            assert [c.state for c in sw.conns() if c.conn == sid] == [State.SV_IDLE]
            if tls:
                with pytest.raises(ValueError, match="TLS"):
                    sw.detach(sid)
            assert sw.end_idle(sid, m.terminate())
        else:
            ev = inbox.closed(sid)
            assert ev.reason == Reason.TLS_FAILED
            text = b"server refused SSL" if answer == b"N" else b"answered the SSLRequest"
            assert text in ev.data, ev.data
        server.close()
        assert server.got[0] == SSL_REQUEST
        if works:
            assert server.got[1] == STARTUP
    finally:
        sw.stop()
        server.close()


def test_a_server_certificate_that_does_not_verify(files: Files, tmp_path: Path) -> None:
    other = Files(tmp_path)
    sw = make_switch()
    configure(sw, files, side=TLS_SERVERS, mode="verify-full", ca=True)
    sw.add_pool(POOL, Mode.TRANSACTION)
    sw.start()
    try:
        inbox = Inbox(sw)
        server = FakeServer(files, b"S", other.leaf("srv", "localhost"))
        ev = inbox.closed(connect(sw, server.port, "verify-full"))
        assert ev.reason == Reason.TLS_FAILED
        assert ev.data.startswith(b"TLS handshake error: certificate verify failed"), ev.data
        server.close()
        server = FakeServer(files, b"S", files.leaf("srv2", "elsewhere.example"))
        ev = inbox.closed(connect(sw, server.port, "verify-full"))
        assert b"hostname mismatch" in ev.data, ev.data
        server.close()
        # verify-ca does not look at the name
        server = FakeServer(files, b"S", files.leaf("srv3", "elsewhere.example"))
        sid = connect(sw, server.port, "verify-ca")
        assert inbox.message(sid).data == WELCOME
        server.close()
    finally:
        sw.stop()
