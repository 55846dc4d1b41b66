"""The switch's login phases: listeners and accept, the framing of untyped and typed login
messages passed up to Python one at a time, promote into a pool, servers connected and logged
in by Python through MESSAGE events, against socket pairs and the real PostgreSQL."""

from __future__ import annotations

import errno
import os
import resource
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from pgfunnel._switch import (
    LOGIN_POOL,
    Event,
    EventKind,
    MessageFlag,
    Mode,
    Reason,
    State,
    Switch,
)
from pgfunnel.proto import messages as m
from pgfunnel.proto.login import ServerLogin
from pgfunnel.throwaway import SUPERUSER, SUPERUSER_PASSWORD, Cluster
from tests.switch.conftest import (
    assert_eof,
    assert_silent,
    make_switch,
    pair,
    read_exact,
    read_until_z,
    wait_for,
)

POOL = 3
SSL_REQUEST = struct.pack("!ii", 8, m.SSL_REQUEST_CODE)
GSSENC_REQUEST = struct.pack("!ii", 8, m.GSSENC_REQUEST_CODE)
STARTUP = m.startup_message({"user": "alice", "database": "db"})


class Inbox:
    """The switch's events, each taken once by the test that expects it."""

    def __init__(self, sw: Switch) -> None:
        self.sw = sw
        self.pending: list[Event] = []

    def take(self, pred: Callable[[Event], bool], timeout: float = 5.0) -> Event:
        found: list[Event] = []

        def check() -> bool:
            self.pending += self.sw.events()
            for e in self.pending:
                if pred(e):
                    self.pending.remove(e)
                    found.append(e)
                    return True
            return False

        wait_for(check, timeout)
        return found[0]

    def message(self, conn: int) -> Event:
        return self.take(lambda e: e.kind is EventKind.MESSAGE and e.conn == conn)

    def closed(self, conn: int) -> Event:
        return self.take(lambda e: e.kind is EventKind.CLOSED and e.conn == conn)

    def none_for(self, conn: int, wait: float = 0.1) -> None:
        time.sleep(wait)
        self.pending += self.sw.events()
        assert [e for e in self.pending if e.conn == conn] == []


@pytest.fixture
def sockdir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="swl-") as d:
        yield d


_ours: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _ours:
        _ours.pop().close()


def unix_listener(sw: Switch, sockdir: str) -> tuple[str, int]:
    path = os.path.join(sockdir, "l.sock")
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ls.bind(path)
    ls.listen(64)
    ls.setblocking(False)
    return path, sw.listen(ls.detach())


def tcp_listener(sw: Switch) -> tuple[int, int]:
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.bind(("127.0.0.1", 0))
    ls.listen(64)
    ls.setblocking(False)
    port = ls.getsockname()[1]
    return port, sw.listen(ls.detach())


def connect_unix(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    _ours.append(s)
    return s


def accepted(inbox: Inbox, listener: int) -> int:
    return inbox.take(lambda e: e.kind is EventKind.ACCEPTED and e.pool == listener).conn


def login_client(sw: Switch, inbox: Inbox, path: str, listener: int) -> tuple[socket.socket, int]:
    c = connect_unix(path)
    return c, accepted(inbox, listener)


def messages(data: bytes) -> list[tuple[int, bytes]]:
    """Splits typed messages; every byte must belong to a whole one."""
    out = []
    while data:
        length = int.from_bytes(data[1:5], "big")
        out.append((data[0], data[5 : 1 + length]))
        data = data[1 + length :]
    return out


WELCOME = (
    m.auth_ok()
    + m.parameter_status("server_version", "16.0")
    + m.backend_key_data(1, 2)
    + m.ready_for_query()
)


# ---- framing -----------------------------------------------------------------------------


def test_a_startup_packet_byte_by_byte_or_whole_goes_up_alone(switch: Switch, sockdir: str) -> None:
    inbox = Inbox(switch)
    path, lid = unix_listener(switch, sockdir)
    slow, slow_id = login_client(switch, inbox, path, lid)
    state = {c.conn: (c.state, c.pool) for c in switch.conns()}
    assert state[slow_id] == (State.CL_LOGIN, LOGIN_POOL)
    for byte in STARTUP:
        slow.sendall(bytes([byte]))
        time.sleep(0.001)
    ev = inbox.message(slow_id)
    assert ev.data == STARTUP
    assert ev.reason == MessageFlag.UNTYPED
    assert ev.pool == LOGIN_POOL
    whole, whole_id = login_client(switch, inbox, path, lid)
    whole.sendall(STARTUP)
    assert inbox.message(whole_id).data == STARTUP
    cancel, cancel_id = login_client(switch, inbox, path, lid)
    cancel.sendall(m.cancel_request(7, 8))
    ev = inbox.message(cancel_id)
    assert (ev.data, ev.reason) == (m.cancel_request(7, 8), MessageFlag.UNTYPED)


def test_ssl_request_answered_then_a_startup_message(switch: Switch, sockdir: str) -> None:
    inbox = Inbox(switch)
    path, lid = unix_listener(switch, sockdir)
    c, cid = login_client(switch, inbox, path, lid)
    c.sendall(SSL_REQUEST)
    ev = inbox.message(cid)
    assert (ev.data, ev.reason) == (SSL_REQUEST, MessageFlag.UNTYPED)
    switch.send(cid, b"N")
    assert read_exact(c, 1) == b"N"
    assert switch.read_next(cid)
    c.sendall(STARTUP)
    ev = inbox.message(cid)
    assert (ev.data, ev.reason) == (STARTUP, MessageFlag.UNTYPED)
    # After a StartupMessage the messages are typed.
    assert switch.read_next(cid)
    password = m.password_message(b"secret")
    c.sendall(password)
    ev = inbox.message(cid)
    assert (ev.data, ev.reason) == (password, 0)


@pytest.mark.parametrize("request_packet", [SSL_REQUEST, GSSENC_REQUEST])
def test_bytes_sent_before_the_answer_to_an_encryption_request_are_flagged(
    switch: Switch, sockdir: str, request_packet: bytes
) -> None:
    inbox = Inbox(switch)
    path, lid = unix_listener(switch, sockdir)
    c, cid = login_client(switch, inbox, path, lid)
    c.sendall(request_packet + STARTUP)
    ev = inbox.message(cid)
    assert ev.data == request_packet
    assert ev.reason == MessageFlag.UNTYPED | MessageFlag.MORE_BUFFERED
    switch.read_next(cid)
    ev = inbox.message(cid)  # the glued packet is framed as untyped again
    assert (ev.data, ev.reason) == (STARTUP, MessageFlag.UNTYPED)


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        (struct.pack("!i", 0), Reason.BAD_PACKET),
        (struct.pack("!ii", 7, 0), Reason.BAD_PACKET),
        (struct.pack("!ii", 10001, m.PROTOCOL_V3), Reason.BAD_PACKET),
        (STARTUP + b"p" + struct.pack("!i", 70000), Reason.TOO_BIG),
        (STARTUP + b"p" + struct.pack("!i", 3), Reason.BAD_PACKET),
    ],
    ids=["length-0", "length-7", "length-10001", "typed-over-login-max", "typed-length-3"],
)
def test_a_bad_login_length_closes_that_connection_only(
    switch: Switch, sockdir: str, head: bytes, reason: Reason
) -> None:
    inbox = Inbox(switch)
    path, lid = unix_listener(switch, sockdir)
    good, good_id = login_client(switch, inbox, path, lid)
    bad, bad_id = login_client(switch, inbox, path, lid)
    bad.sendall(head)
    if head.startswith(STARTUP):
        assert inbox.message(bad_id).data == STARTUP
        switch.read_next(bad_id)
    assert inbox.closed(bad_id).reason == reason
    said = assert_eof(bad)  # told why (FATAL 08P01), then closed
    assert said[:1] == b"E" and b"SFATAL\0" in said and b"C08P01\0" in said
    assert (b"oversized packet" if reason == Reason.TOO_BIG else b"bad packet header") in said
    good.sendall(STARTUP)
    assert inbox.message(good_id).data == STARTUP
    other, other_id = login_client(switch, inbox, path, lid)  # still accepting
    other.sendall(SSL_REQUEST)
    assert inbox.message(other_id).data == SSL_REQUEST


def test_one_message_at_a_time_and_no_more_than_login_max_buffered(
    switch: Switch, sockdir: str
) -> None:
    inbox = Inbox(switch)
    path, lid = unix_listener(switch, sockdir)
    c, cid = login_client(switch, inbox, path, lid)
    c.sendall(STARTUP)
    inbox.message(cid)
    switch.read_next(cid)
    # 40 messages of 60000 bytes: far more than login_max (65536) plus the kernel's buffers.
    msgs = [m.message(b"p", bytes([65 + i % 26]) * 59995) for i in range(40)]
    assert all(len(x) == 60000 for x in msgs)
    sender = socket.socket(fileno=os.dup(c.fileno()))
    sender.settimeout(30)
    _ours.append(sender)
    done = threading.Event()

    def send_all() -> None:
        sender.sendall(b"".join(msgs))
        done.set()

    t = threading.Thread(target=send_all)
    t.start()
    try:
        assert inbox.message(cid).data == msgs[0]
        inbox.none_for(cid, 0.2)  # the next one waits for read_next
        assert not done.is_set(), "the switch read on while its login buffer was full"
        for expected in msgs[1:]:
            switch.read_next(cid)
            assert inbox.message(cid).data == expected
        assert done.wait(5)
    finally:
        t.join(10)


def test_close_and_detach_in_login(switch: Switch, sockdir: str) -> None:
    inbox = Inbox(switch)
    path, lid = unix_listener(switch, sockdir)
    a, aid = login_client(switch, inbox, path, lid)
    a.sendall(STARTUP)
    inbox.message(aid)
    final = m.error_response("28000", "no such user", severity="FATAL")
    assert switch.close(aid, final)
    assert assert_eof(a) == final
    b, bid = login_client(switch, inbox, path, lid)
    b.sendall(STARTUP + m.password_message(b"x")[:3])
    inbox.message(bid)
    fd, held = switch.detach(bid)
    os.close(fd)
    assert held == m.password_message(b"x")[:3]
    inbox.none_for(aid)
    with pytest.raises(ValueError):
        switch.read_next(lid)  # a listener is not a login


def test_a_listener_closed_by_python_stops_accepting(switch: Switch, sockdir: str) -> None:
    path, lid = unix_listener(switch, sockdir)
    assert switch.close(lid)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with s, pytest.raises(ConnectionRefusedError):
        s.connect(path)


# ---- accept, peer, LISTEN_ERROR ----------------------------------------------------------


def test_peer_of_tcp_and_unix_clients(switch: Switch, sockdir: str) -> None:
    inbox = Inbox(switch)
    port, tid = tcp_listener(switch)
    t = socket.create_connection(("127.0.0.1", port), timeout=5)
    _ours.append(t)
    t_id = accepted(inbox, tid)
    assert switch.peer(t_id) == (socket.AF_INET, "127.0.0.1", t.getsockname()[1], -1, -1)
    path, uid = unix_listener(switch, sockdir)
    _, u_id = login_client(switch, inbox, path, uid)
    assert switch.peer(u_id) == (socket.AF_UNIX, "", 0, os.getuid(), os.getpid())
    with pytest.raises(KeyError):
        switch.peer(uid)  # a listener has no peer
    # TCP clients get TCP_NODELAY (checked on the detached socket).
    fd, _ = switch.detach(t_id)
    with socket.socket(fileno=fd) as mine:
        assert mine.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_out_of_fds_pauses_the_listener_until_resumed(switch: Switch, sockdir: str) -> None:
    inbox = Inbox(switch)
    path, lid = unix_listener(switch, sockdir)
    clients = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
    _ours.extend(clients)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    probe = os.dup(0)
    os.close(probe)
    # From here no new fd can be made in this process (the lowest free one is over the limit).
    resource.setrlimit(resource.RLIMIT_NOFILE, (probe, hard))
    try:
        for c in clients:
            c.connect(path)  # into the backlog: connect needs no fd of ours
        ev = inbox.take(lambda e: e.kind is EventKind.LISTEN_ERROR)
        assert (ev.conn, ev.reason, ev.errno) == (lid, errno.EMFILE, errno.EMFILE)
        inbox.none_for(lid, 0.2)  # one report, no busy loop
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    switch.listen_resume(lid)
    ids = {accepted(inbox, lid) for _ in clients}
    assert len(ids) == 3
    for c in clients:
        c.sendall(STARTUP)
    for cid in ids:
        assert inbox.message(cid).data == STARTUP


def test_the_login_cap_pauses_the_listener_until_resumed(switch: Switch, sockdir: str) -> None:
    inbox = Inbox(switch)
    path, lid = unix_listener(switch, sockdir)
    switch.set_login_cap(2)
    clients = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(4)]
    _ours.extend(clients)
    for c in clients:
        c.connect(path)
    first = {accepted(inbox, lid) for _ in range(2)}
    ev = inbox.take(lambda e: e.kind is EventKind.LISTEN_ERROR)
    assert (ev.conn, ev.errno) == (lid, 0)  # errno 0: the cap, not a failure of accept()
    inbox.none_for(lid, 0.2)  # the other two wait in the backlog
    for cid in first:
        switch.close(cid)
    switch.set_login_cap(0)
    switch.listen_resume(lid)
    rest = {accepted(inbox, lid) for _ in range(2)}
    assert len(rest) == 2 and not rest & first
    clients[2].sendall(STARTUP)
    clients[3].sendall(STARTUP)
    for cid in rest:
        assert inbox.message(cid).data == STARTUP


# ---- promote -----------------------------------------------------------------------------


def test_a_query_pipelined_after_the_password_reaches_the_server_after_promote(
    switch: Switch, sockdir: str
) -> None:
    inbox = Inbox(switch)
    switch.add_pool(POOL, Mode.TRANSACTION)
    server, sfd = pair()
    switch.add_server(sfd, POOL)
    path, lid = unix_listener(switch, sockdir)
    c, cid = login_client(switch, inbox, path, lid)
    c.sendall(STARTUP)
    assert inbox.message(cid).data == STARTUP
    switch.send(cid, m.auth_request(m.AUTH_CLEARTEXT))
    assert messages(read_exact(c, 9)) == [(ord("R"), struct.pack("!i", m.AUTH_CLEARTEXT))]
    switch.read_next(cid)
    password = m.password_message(b"secret")
    c.sendall(password + m.query("select 1"))
    assert inbox.message(cid).data == password  # the query is not Python's
    switch.send(cid, WELCOME)
    assert switch.promote(cid, POOL)
    assert read_exact(server, len(m.query("select 1"))) == m.query("select 1")
    answer = m.command_complete("SELECT 1") + m.ready_for_query()
    server.sendall(answer)
    assert read_exact(c, len(WELCOME) + len(answer)) == WELCOME + answer
    wait_for(lambda: switch.pools()[0].sv_idle == 1)
    assert {x.conn: x.state for x in switch.conns()}[cid] is State.CL_ACTIVE
    with pytest.raises(ValueError):
        switch.promote(cid, POOL)  # not in login any more


def test_a_server_that_speaks_after_ready_for_query_is_closed_at_promote(switch: Switch) -> None:
    inbox = Inbox(switch)
    switch.add_pool(POOL, Mode.TRANSACTION)
    server, sfd = pair()
    sid = switch.connect_server(sfd, POOL)
    assert switch.pools()[0].sv_login == 1
    switch.send(sid, STARTUP)
    assert read_exact(server, len(STARTUP)) == STARTUP
    junk = m.notice_response("late")
    server.sendall(WELCOME + junk)
    ev = inbox.message(sid)
    assert ev.data == WELCOME  # up to ReadyForQuery, several messages in one event
    assert switch.promote(sid, POOL)
    assert inbox.closed(sid).reason == Reason.IDLE_DATA
    assert assert_eof(server) == b""
    assert switch.pools()[0].sv_login == 0


def test_connect_to_a_closed_port_is_connect_failed(switch: Switch) -> None:
    inbox = Inbox(switch)
    switch.add_pool(POOL, Mode.TRANSACTION)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    s = socket.socket()
    s.setblocking(False)
    assert s.connect_ex(("127.0.0.1", port)) in (errno.EINPROGRESS, errno.ECONNREFUSED)
    sid = switch.connect_server(s.detach(), POOL, STARTUP)
    ev = inbox.closed(sid)
    assert ev.reason == Reason.CONNECT_FAILED
    assert ev.errno == errno.ECONNREFUSED and ev.data == str(errno.ECONNREFUSED).encode()


# ---- the real PostgreSQL -----------------------------------------------------------------


def server_login(sw: Switch, inbox: Inbox, sid: int, login: ServerLogin) -> None:
    """Python's side of a server login, fed from MESSAGE events (the StartupMessage was
    given to connect_server)."""
    while True:
        ev = inbox.message(sid)
        for kind, payload in messages(ev.data):
            reply = login.receive(kind, payload)
            if reply:
                sw.send(sid, reply)
        if login.done:
            assert sw.promote(sid, POOL)
            return
        sw.read_next(sid)


def client_login(sw: Switch, inbox: Inbox, cid: int) -> dict[str, str]:
    """A small trust responder: reads the startup packet (answering 'N' to SSLRequest and
    GSSENCRequest), then welcomes the client and promotes it."""
    while True:
        ev = inbox.message(cid)
        assert ev.reason & MessageFlag.UNTYPED
        code = int.from_bytes(ev.data[4:8], "big")
        if code not in (m.SSL_REQUEST_CODE, m.GSSENC_REQUEST_CODE):
            break
        assert not ev.reason & MessageFlag.MORE_BUFFERED
        sw.send(cid, b"N")
        sw.read_next(cid)
    assert code == m.PROTOCOL_V3
    parts = ev.data[8:].split(b"\0")
    names, values = parts[0:-2:2], parts[1:-2:2]
    params = {k.decode(): v.decode() for k, v in zip(names, values, strict=True)}
    sw.send(cid, WELCOME)
    assert sw.promote(cid, POOL)
    return params


def test_servers_logged_in_through_messages_and_a_raw_client(
    switch: Switch, pg: Cluster, sockdir: str
) -> None:
    inbox = Inbox(switch)
    switch.add_pool(POOL, Mode.TRANSACTION)
    # Over the unix socket (trust) and over TCP (SCRAM, several round trips).
    u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    u.setblocking(False)
    u.connect(str(pg.sockdir / f".s.PGSQL.{pg.port}"))
    login = ServerLogin(SUPERUSER, "postgres", None, {})
    uid = switch.connect_server(u.detach(), POOL, login.start())
    server_login(switch, inbox, uid, login)
    t = socket.socket()
    t.setblocking(False)
    assert t.connect_ex((pg.host, pg.port)) in (0, errno.EINPROGRESS)
    login = ServerLogin(SUPERUSER, "postgres", SUPERUSER_PASSWORD, {})
    tid = switch.connect_server(t.detach(), POOL, login.start())
    assert switch.pools()[0].sv_login == 1
    server_login(switch, inbox, tid, login)
    assert login.result.pid != 0 and "server_version" in login.result.params
    wait_for(lambda: switch.pools()[0].sv_idle == 2)
    assert switch.pools()[0].sv_login == 0

    path, lid = unix_listener(switch, sockdir)
    c, cid = login_client(switch, inbox, path, lid)
    c.sendall(SSL_REQUEST)
    ev = inbox.message(cid)
    assert ev.data == SSL_REQUEST
    switch.send(cid, b"N")
    assert read_exact(c, 1) == b"N"
    switch.read_next(cid)
    c.sendall(m.startup_message({"user": "bob", "database": "postgres"}) + m.query("select 1"))
    params = client_login(switch, inbox, cid)
    assert params == {"user": "bob", "database": "postgres"}
    msgs = read_until_z(c)  # the welcome
    assert msgs[0] == (b"R", b"\0\0\0\0")
    # The query pipelined after the startup packet ran on a server.
    msgs = read_until_z(c)
    assert [payload[6:] for kind, payload in msgs if kind == b"D"] == [b"1"]
    c.sendall(m.query("select 6 * 7"))
    msgs = read_until_z(c)
    assert [payload[6:] for kind, payload in msgs if kind == b"D"] == [b"42"]
    assert_silent(c)


def test_psycopg_through_listen_and_promote(switch: Switch, pg: Cluster, sockdir: str) -> None:
    psycopg = pytest.importorskip("psycopg")
    inbox = Inbox(switch)
    switch.add_pool(POOL, Mode.TRANSACTION)
    u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    u.setblocking(False)
    u.connect(str(pg.sockdir / f".s.PGSQL.{pg.port}"))
    login = ServerLogin(SUPERUSER, "postgres", None, {})
    sid = switch.connect_server(u.detach(), POOL, login.start())
    server_login(switch, inbox, sid, login)
    port, lid = tcp_listener(switch)
    result: list[object] = []

    def run() -> None:
        try:
            with psycopg.connect(
                host="127.0.0.1", port=port, user="carol", dbname="postgres", sslmode="prefer"
            ) as conn:
                result.append(conn.execute("select %s::int + 1", [41]).fetchone())
        except Exception as exc:  # reported by the assertion below
            result.append(exc)

    t = threading.Thread(target=run)
    t.start()
    try:
        cid = accepted(inbox, lid)
        assert client_login(switch, inbox, cid)["user"] == "carol"
    finally:
        t.join(10)
    assert result == [(42,)]


def test_a_fresh_switch_refuses_a_login_max_below_the_startup_cap() -> None:
    with pytest.raises(ValueError):
        make_switch(login_max=9999)


# ---- talk: the pooler's own queries on a server the switch keeps -------------------------


def values(payload: bytes) -> list[bytes]:
    """A DataRow's column values (text; no NULLs in these tests)."""
    out, pos = [], 2
    for _ in range(int.from_bytes(payload[:2], "big")):
        length = int.from_bytes(payload[pos : pos + 4], "big")
        out.append(payload[pos + 4 : pos + 4 + length])
        pos += 4 + length
    return out


def talk_query(sw: Switch, inbox: Inbox, sid: int, sql: str) -> list[tuple[int, bytes]]:
    """Runs one simple query on a server in talk mode: its answer up to ReadyForQuery."""
    sw.send(sid, m.query(sql))
    out: list[tuple[int, bytes]] = []
    while not out or out[-1][0] != m.READY_FOR_QUERY:
        if out:
            sw.read_next(sid)
        out += messages(inbox.message(sid).data)
    return out


def test_a_transaction_left_open_is_rolled_back_in_talk_mode(
    switch: Switch, pg: Cluster, sockdir: str
) -> None:
    inbox = Inbox(switch)
    switch.add_pool(POOL, Mode.TRANSACTION)
    pg.psql("drop table if exists switch_talk; create table switch_talk (v int)")
    login = ServerLogin(SUPERUSER, "postgres", None, {})
    u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    u.setblocking(False)
    u.connect(str(pg.sockdir / f".s.PGSQL.{pg.port}"))
    sid = switch.connect_server(u.detach(), POOL, login.start())
    server_login(switch, inbox, sid, login)
    a, afd = pair()
    switch.add_client(afd, POOL)
    a.sendall(m.query("begin; insert into switch_talk values (1)"))
    assert read_until_z(a)[-1] == (b"Z", b"T")
    a.close()
    att = inbox.take(lambda e: e.kind is EventKind.ATTENTION)
    assert (att.conn, att.reason) == (sid, Reason.DIRTY_TXN)
    assert switch.talk(sid)
    assert switch.pools()[0].sv_talk == 1
    with pytest.raises(ValueError):
        switch.promote(sid, POOL)  # its last ReadyForQuery said 'T'
    answer = talk_query(switch, inbox, sid, "rollback")
    assert answer[-1] == (m.READY_FOR_QUERY, b"I")
    assert switch.promote(sid, POOL)
    assert (switch.pools()[0].sv_talk, switch.pools()[0].sv_idle) == (0, 1)
    b, bfd = pair()
    switch.add_client(bfd, POOL)
    b.sendall(m.query(f"select count(*), pg_backend_pid() = {login.result.pid} from switch_talk"))
    rows = [values(p) for k, p in read_until_z(b) if k == b"D"]
    assert rows == [[b"0", b"t"]]  # rolled back, and on the same backend
    pg.psql("drop table switch_talk")


def test_an_idle_server_answers_a_check_query_in_talk_mode(switch: Switch, pg: Cluster) -> None:
    inbox = Inbox(switch)
    switch.add_pool(POOL, Mode.SESSION)
    login = ServerLogin(SUPERUSER, "postgres", None, {})
    u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    u.setblocking(False)
    u.connect(str(pg.sockdir / f".s.PGSQL.{pg.port}"))
    sid = switch.connect_server(u.detach(), POOL, login.start())
    server_login(switch, inbox, sid, login)
    assert switch.talk(sid)
    rows = [values(p) for k, p in talk_query(switch, inbox, sid, "select 1") if k == m.DATA_ROW]
    assert rows == [[b"1"]]
    assert switch.promote(sid, POOL)
    # Session mode: the client leaves, the server is parked SESSION_END, reset in talk mode.
    c, cfd = pair()
    switch.add_client(cfd, POOL)
    c.sendall(m.query("set application_name = 'x'"))
    read_until_z(c)
    c.close()
    att = inbox.take(lambda e: e.kind is EventKind.ATTENTION)
    assert att.reason == Reason.SESSION_END
    assert switch.talk(att.conn)
    assert talk_query(switch, inbox, sid, "discard all")[-1] == (m.READY_FOR_QUERY, b"I")
    assert switch.promote(sid, POOL)
    d, dfd = pair()
    switch.add_client(dfd, POOL)
    d.sendall(m.query("show application_name"))
    assert [values(p) for k, p in read_until_z(d) if k == b"D"] == [[b""]]  # reset


def test_talk_refuses_a_server_that_may_be_mid_message(switch: Switch) -> None:
    inbox = Inbox(switch)
    switch.add_pool(POOL, Mode.TRANSACTION)
    server, sfd = pair()
    sid = switch.add_server(sfd, POOL)
    c, cfd = pair()
    switch.add_client(cfd, POOL)
    c.sendall(m.query("select 1"))
    assert read_exact(server, len(m.query("select 1"))) == m.query("select 1")
    c.close()  # gone before the answer
    att = inbox.take(lambda e: e.kind is EventKind.ATTENTION)
    assert att.reason == Reason.DIRTY_BUSY
    with pytest.raises(ValueError):
        switch.talk(sid)
    assert switch.close(sid)
    assert not switch.talk(sid)  # gone


def test_close_and_detach_of_a_server_in_login(switch: Switch) -> None:
    inbox = Inbox(switch)
    switch.add_pool(POOL, Mode.TRANSACTION)
    one, fd1 = pair()
    sid1 = switch.connect_server(fd1, POOL, STARTUP)
    assert read_exact(one, len(STARTUP)) == STARTUP
    assert switch.close(sid1)
    assert assert_eof(one) == b""
    assert not switch.read_next(sid1)  # gone: its CLOSED (none, Python closed it) is not owed
    two, fd2 = pair()
    sid2 = switch.connect_server(fd2, POOL, STARTUP)
    assert read_exact(two, len(STARTUP)) == STARTUP
    two.sendall(m.auth_request(m.AUTH_CLEARTEXT))
    assert messages(inbox.message(sid2).data) == [(ord("R"), struct.pack("!i", 3))]

    def last_read() -> int:
        return next(c.request_time_us for c in switch.conns() if c.conn == sid2)

    before = last_read()
    time.sleep(0.002)  # the wall clock moves on before the next read
    two.sendall(m.auth_ok()[:4])  # half a message, read and held
    wait_for(lambda: last_read() != before)
    fd, held = switch.detach(sid2)
    os.close(fd)
    assert held == m.auth_ok()[:4]
    assert switch.pools()[0].sv_login == 0
    inbox.none_for(sid1)
    inbox.none_for(sid2)
