"""The logins the switch runs alone on a route (fastlogin.c), against real sockets: the md5 and
SCRAM exchanges, the welcome, the LOGGED_IN and LOGIN_ENDED events, the hand-over to Python of
whatever a route does not cover, the janitor's expiry, and routes cleared mid-login. Run under
ASan+UBSan by scripts/switch_check.sh."""

from __future__ import annotations

import hashlib
import os
import select
import socket
import struct
import tempfile
import time
from collections.abc import Iterator

import pytest

from pgfunnel._switch import (
    ACCEPTED_SSL_ANSWERED,
    LOGIN_ENDED_ASKED,
    EventKind,
    LoggedIn,
    MessageFlag,
    Mode,
    Reason,
    RouteMethod,
    State,
    Switch,
    login_ended_who,
)
from pgfunnel.proto import messages as m
from pgfunnel.proto.auth import ServerAuth, parse_scram_secret, scram_keys
from tests.switch.conftest import make_switch
from tests.switch.test_switch_login import Inbox

POOL = 5
USER, DB, PASSWORD = "alice", "db", "s3cret"
MD5_HEX = hashlib.md5((PASSWORD + USER).encode()).hexdigest()
WELCOME = {
    "application_name": "",
    "client_encoding": "UTF8",
    "DateStyle": "ISO, MDY",
    "server_version": "15.0",
    "TimeZone": "UTC",
}
TRACKED = ("client_encoding", "DateStyle", "TimeZone", "application_name")
TIMEOUT_MSG = m.error_response("08P01", "client_login_timeout", severity="FATAL")


def _blob(params: dict[str, str]) -> bytes:
    return b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items())


@pytest.fixture
def sw() -> Iterator[Switch]:
    s = make_switch(tracked=TRACKED)  # type: ignore[arg-type]
    s.start()
    s.add_pool(POOL, Mode.TRANSACTION)
    s.set_fast_cap(100)
    yield s
    s.stop()


@pytest.fixture
def listener(sw: Switch) -> Iterator[tuple[str, int]]:
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="swf-") as d:
        path = os.path.join(d, "l.sock")
        ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ls.bind(path)
        ls.listen(64)
        ls.setblocking(False)
        yield path, sw.listen(ls.detach())


def _route(sw: Switch, method: RouteMethod, gen: int = 1, app: str = "") -> None:
    if method is RouteMethod.MD5:
        sw.set_route(
            DB.encode() + b"\0" + USER.encode(),
            POOL,
            method,
            gen,
            md5=MD5_HEX.encode(),
            welcome=_blob(WELCOME),
            app=app.encode(),
        )
        return
    salt = b"salt-of-sixteen!"
    _, stored, server = scram_keys(PASSWORD, salt, 4096)
    sw.set_route(
        DB.encode() + b"\0" + USER.encode(),
        POOL,
        method,
        gen,
        iterations=4096,
        salt=salt,
        stored=stored,
        server=server,
        welcome=_blob(WELCOME),
        app=app.encode(),
    )


def _connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    return s


def _read(sock: socket.socket) -> tuple[int, bytes]:
    head = b""
    while len(head) < 5:
        chunk = sock.recv(5 - len(head))
        if not chunk:
            raise EOFError
        head += chunk
    length = struct.unpack("!i", head[1:])[0]
    body = b""
    while len(body) < length - 4:
        chunk = sock.recv(length - 4 - len(body))
        if not chunk:
            raise EOFError
        body += chunk
    return head[0], body


def _login(sock: socket.socket, password: str, **params: str) -> list[tuple[int, bytes]]:
    """Logs in as a client would (ServerAuth plays the client); the messages up to the first
    ReadyForQuery or ErrorResponse."""
    sock.sendall(m.startup_message({"user": USER, "database": DB, **params}))
    auth = ServerAuth(USER, password)
    got: list[tuple[int, bytes]] = []
    while True:
        kind, body = _read(sock)
        got.append((kind, body))
        if kind in (ord("Z"), ord("E")):
            return got
        if kind == ord("R"):
            reply = auth.respond(struct.unpack("!i", body[:4])[0], body[4:])
            if reply:
                sock.sendall(reply)


@pytest.mark.parametrize("method", [RouteMethod.MD5, RouteMethod.SCRAM])
def test_a_login_on_a_route_is_welcomed_and_pooled(
    sw: Switch, listener: tuple[str, int], method: RouteMethod
) -> None:
    path, lid = listener
    _route(sw, method, gen=7, app="db-default")
    inbox = Inbox(sw)
    with _connect(path) as c:
        got = _login(c, PASSWORD, client_encoding="LATIN1", datestyle="German")
        kinds = bytes(k for k, _ in got)
        assert kinds.endswith(b"KZ") and kinds.count(b"S") == len(WELCOME)
        shown = dict(m.parse_parameter_status(b) for k, b in got if k == ord("S"))
        # The client's own values in place of the pool's (names as the pool reports them),
        # the route's application_name for a client that names none.
        assert shown == {
            **WELCOME,
            "client_encoding": "LATIN1",
            "DateStyle": "German",
            "application_name": "db-default",
        }
        assert list(shown) == list(WELCOME)
        assert got[-1] == (ord("Z"), b"I")
        pid, key = struct.unpack("!ii", next(b for k, b in got if k == ord("K")))
        ev = inbox.take(lambda e: e.kind is EventKind.LOGGED_IN)
        assert ev.pool == POOL
        info = LoggedIn.parse(ev.data)
        assert (info.user, info.database, info.host, info.port) == (USER, DB, "unix", 0)
        assert (info.listener, info.cancel_pid, info.cancel_key) == (lid, pid, key)
        assert (info.method, info.gen) == (method, 7)
        assert info.own == ("LATIN1", "German", None, None)
        assert (len(info.client_key) == 32) == (method is RouteMethod.SCRAM)
        # In its pool, with the values it was shown as its wishes.
        assert sw.params(ev.conn) == {
            "client_encoding": "LATIN1",
            "DateStyle": "German",
            "TimeZone": "UTC",
            "application_name": "db-default",
        }
        row = next(r for r in sw.conns() if r.conn == ev.conn)
        assert (row.pool, row.state) == (POOL, State.CL_ACTIVE)
        # Its next query waits for a server: the pool's queue, as any client.
        c.sendall(m.query("select 1"))
        inbox.take(lambda e: e.kind is EventKind.WAITERS and e.pool == POOL)
        c.sendall(m.terminate())
        closed = inbox.take(lambda e: e.kind is EventKind.CLOSED and e.conn == ev.conn)
        assert closed.reason == Reason.CLIENT_TERMINATE


@pytest.mark.parametrize("method", [RouteMethod.MD5, RouteMethod.SCRAM])
def test_a_wrong_password_ends_the_login_in_the_switch(
    sw: Switch, listener: tuple[str, int], method: RouteMethod
) -> None:
    path, lid = listener
    _route(sw, method)
    inbox = Inbox(sw)
    with _connect(path) as c:
        got = _login(c, "wrong")
        fields = m.parse_error_fields(got[-1][1])
        assert (fields.severity, fields.sqlstate) == ("FATAL", "28P01")
        assert fields.message == f'password authentication failed for user "{USER}"'
        assert c.recv(1) == b""
    ev = inbox.take(lambda e: e.kind is EventKind.LOGIN_ENDED)
    assert ev.pool == lid
    assert ev.reason == Reason.AUTH_FAILED | LOGIN_ENDED_ASKED
    assert login_ended_who(ev.data) == (USER, DB, "unix", 0)
    inbox.none_for(ev.conn)  # no CLOSED: Python never knew it


def test_what_a_route_does_not_cover_goes_to_python(sw: Switch, listener: tuple[str, int]) -> None:
    path, lid = listener
    _route(sw, RouteMethod.MD5)
    inbox = Inbox(sw)
    cases = [
        m.startup_message({"user": USER, "database": "other"}),  # no route
        m.startup_message({"user": USER, "database": DB, "options": "-c x=1"}),
        m.startup_message({"user": USER, "database": DB, "replication": "true"}),
        m.startup_message({"user": USER, "database": DB, "user ": "x"}),
        struct.pack("!iiii", 16, m.CANCEL_REQUEST_CODE, 1, 2),
    ]
    for packet in cases:
        with _connect(path) as c:
            c.sendall(packet)
            ev = inbox.take(lambda e: e.kind is EventKind.ACCEPTED)
            assert (ev.pool, ev.reason) == (lid, 0)
            msg = inbox.take(lambda e, conn=ev.conn: e.kind is EventKind.MESSAGE and e.conn == conn)
            assert msg.data == packet and msg.reason & MessageFlag.UNTYPED
    # An SSLRequest is answered here; the packet after it goes up with the flag saying so.
    with _connect(path) as c:
        c.sendall(struct.pack("!ii", 8, m.SSL_REQUEST_CODE))
        assert c.recv(1) == b"N"
        c.sendall(struct.pack("!ii", 8, m.GSSENC_REQUEST_CODE))
        ev = inbox.take(lambda e: e.kind is EventKind.ACCEPTED)
        assert ev.reason == ACCEPTED_SSL_ANSWERED
        msg = inbox.take(lambda e: e.kind is EventKind.MESSAGE and e.conn == ev.conn)
        assert msg.data == struct.pack("!ii", 8, m.GSSENC_REQUEST_CODE)
    # Bytes sent before the answer to an SSLRequest (CVE-2021-23214) are Python's to refuse.
    with _connect(path) as c:
        early = struct.pack("!ii", 8, m.SSL_REQUEST_CODE) + m.startup_message({"user": USER})
        c.sendall(early)
        ev = inbox.take(lambda e: e.kind is EventKind.ACCEPTED)
        msg = inbox.take(lambda e: e.kind is EventKind.MESSAGE and e.conn == ev.conn)
        assert msg.reason & MessageFlag.MORE_BUFFERED


def test_the_janitor_hands_over_silent_logins_and_times_out_stalled_ones(
    sw: Switch, listener: tuple[str, int]
) -> None:
    path, _ = listener
    _route(sw, RouteMethod.MD5)
    inbox = Inbox(sw)
    with _connect(path) as silent, _connect(path) as stalled:
        stalled.sendall(m.startup_message({"user": USER, "database": DB}))
        assert _read(stalled)[0] == ord("R")
        sw.fast_expire(10_000_000, 0, TIMEOUT_MSG)  # nothing is old enough yet
        time.sleep(0.1)
        inbox.pending += sw.events()
        assert not [e for e in inbox.pending if e.kind is not EventKind.LISTEN_ERROR]
        sw.fast_expire(0, 1, TIMEOUT_MSG)
        ev = inbox.take(lambda e: e.kind is EventKind.ACCEPTED)  # the silent one
        ended = inbox.take(lambda e: e.kind is EventKind.LOGIN_ENDED)
        assert ended.reason == Reason.LOGIN_TIMEOUT | LOGIN_ENDED_ASKED
        kind, body = _read(stalled)
        assert kind == ord("E") and m.parse_error_fields(body).message == "client_login_timeout"
        assert stalled.recv(1) == b""
        silent.sendall(m.startup_message({"user": USER, "database": DB}))
        inbox.take(lambda e: e.kind is EventKind.MESSAGE and e.conn == ev.conn)


def test_a_login_ended_by_a_command_wakes_python_at_once(
    sw: Switch, listener: tuple[str, int]
) -> None:
    """A LOGIN_ENDED the loop posts may wait some milliseconds for Python (EV_LAZY); one a
    command posts (the janitor's fast_expire) makes the event fd readable before the command
    returns, since the loop may sleep with no timeout and nothing else would wake Python."""
    path, _ = listener
    _route(sw, RouteMethod.MD5)
    with _connect(path) as stalled:
        stalled.sendall(m.startup_message({"user": USER, "database": DB}))
        assert _read(stalled)[0] == ord("R")
        sw.events()  # nothing waits now, and the fd is read
        sw.fast_expire(10_000_000, 1, TIMEOUT_MSG)
        assert select.select([sw.fileno()], [], [], 0)[0]
        ended = [e for e in sw.events() if e.kind is not EventKind.LISTEN_ERROR]
        assert [(e.kind, e.reason) for e in ended] == [
            (EventKind.LOGIN_ENDED, Reason.LOGIN_TIMEOUT | LOGIN_ENDED_ASKED)
        ]


def test_a_login_in_its_exchange_finishes_on_a_cleared_route(
    sw: Switch, listener: tuple[str, int]
) -> None:
    path, _ = listener
    _route(sw, RouteMethod.SCRAM)
    inbox = Inbox(sw)
    with _connect(path) as c:
        c.sendall(m.startup_message({"user": USER, "database": DB}))
        kind, body = _read(c)
        assert kind == ord("R")
        sw.clear_routes()
        assert sw.routes() == 0
        auth = ServerAuth(USER, PASSWORD)
        c.sendall(auth.respond(struct.unpack("!i", body[:4])[0], body[4:]) or b"")
        while True:
            kind, body = _read(c)
            if kind == ord("R") and struct.unpack("!i", body[:4])[0] != 0:
                reply = auth.respond(struct.unpack("!i", body[:4])[0], body[4:])
                if reply:
                    c.sendall(reply)
            if kind == ord("Z"):
                break
        inbox.take(lambda e: e.kind is EventKind.LOGGED_IN)
    # And the next one goes to Python.
    with _connect(path) as c:
        c.sendall(m.startup_message({"user": USER, "database": DB}))
        inbox.take(lambda e: e.kind is EventKind.ACCEPTED)


def test_bad_messages_in_the_exchange_end_the_login(sw: Switch, listener: tuple[str, int]) -> None:
    path, _ = listener
    _route(sw, RouteMethod.MD5)
    inbox = Inbox(sw)
    for bad, reason in (
        (m.query("select 1"), Reason.BAD_PACKET),  # not a password message
        (b"p\0\0\0\x02", Reason.BAD_PACKET),  # a length under 4
        (b"p" + struct.pack("!i", 1 << 20), Reason.TOO_BIG),
    ):
        with _connect(path) as c:
            c.sendall(m.startup_message({"user": USER, "database": DB}))
            assert _read(c)[0] == ord("R")
            c.sendall(bad)
            kind, body = _read(c)
            assert kind == ord("E") and m.parse_error_fields(body).sqlstate == "08P01"
            ended = inbox.take(lambda e: e.kind is EventKind.LOGIN_ENDED)
            assert ended.reason == reason | LOGIN_ENDED_ASKED
    # A client that leaves in the middle: LOGIN_ENDED CLIENT_EOF, nothing else.
    with _connect(path) as c:
        c.sendall(m.startup_message({"user": USER, "database": DB}))
        assert _read(c)[0] == ord("R")
    ended = inbox.take(lambda e: e.kind is EventKind.LOGIN_ENDED)
    assert ended.reason == Reason.CLIENT_EOF | LOGIN_ENDED_ASKED
    inbox.none_for(ended.conn)


def test_routes_are_checked_when_given(sw: Switch) -> None:
    key = DB.encode() + b"\0" + USER.encode()
    with pytest.raises(ValueError):
        sw.set_route(key, POOL, RouteMethod.MD5, 1, md5=b"short")
    with pytest.raises(ValueError):
        sw.set_route(key, POOL, RouteMethod.SCRAM, 1, iterations=4096, salt=b"", stored=b"")
    with pytest.raises(ValueError):
        sw.set_route(b"no-nul", POOL, RouteMethod.MD5, 1, md5=MD5_HEX.encode())
    with pytest.raises(ValueError):  # a tracked value the switch could not keep as a wish
        sw.set_route(
            key, POOL, RouteMethod.MD5, 1, md5=MD5_HEX.encode(), welcome=b"TimeZone\0\xff\0"
        )
    secret = parse_scram_secret("SCRAM-SHA-256$4096:c2FsdA==$" + "A" * 43 + "=:" + "B" * 43 + "=")
    assert secret is not None
    sw.set_route(
        key,
        POOL,
        RouteMethod.SCRAM,
        1,
        iterations=secret.iterations,
        salt=secret.salt,
        stored=secret.stored_key,
        server=secret.server_key,
    )
    sw.set_route(key, POOL, RouteMethod.MD5, 2, md5=MD5_HEX.encode())  # replaces it
    assert sw.routes() == 1
