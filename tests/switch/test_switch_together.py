"""The switch's features meeting: tracked parameters (params.c), deadlines (timers.c) and the
login phases (login.c) on the same connections, where no single branch's tests looked.
Socket pairs and a real listener; each test is one decision docs/switch.md states."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest

from pgfunnel._switch import Event, EventKind, Mode, Reason, State, Switch
from pgfunnel.proto import messages as m
from tests.switch.conftest import LONG_TX, SERVER_GONE, UNSUPPORTED, pair, wait_for

POOL = 5
MS = 1000  # µs
STARTUP = m.startup_message({"user": "alice", "database": "db"})
WELCOME = m.auth_ok() + m.backend_key_data(1, 2) + m.ready_for_query()
ANSWER = m.command_complete("SELECT 1") + m.ready_for_query()


@pytest.fixture
def sw() -> Iterator[Switch]:
    s = Switch(
        unsupported_pkt=UNSUPPORTED,
        long_tx=LONG_TX,
        server_gone=SERVER_GONE,
        tracked=m.TRACKED_PARAMS,
        tick_ms=5,
    )
    s.start()
    s.add_pool(POOL, Mode.TRANSACTION)
    yield s
    s.stop()


class Inbox:
    """The switch's events, each taken once by the test that expects it."""

    def __init__(self, sw: Switch) -> None:
        self.sw = sw
        self.all: list[Event] = []
        self.pending: list[Event] = []

    def poll(self) -> None:
        new = self.sw.events()
        self.all += new
        self.pending += new

    def take(self, pred: Callable[[Event], bool], timeout: float = 5.0) -> Event:
        found: list[Event] = []

        def check() -> bool:
            self.poll()
            for e in self.pending:
                if pred(e):
                    self.pending.remove(e)
                    found.append(e)
                    return True
            return False

        wait_for(check, timeout)
        return found[0]

    def deadlines(self, conn: int) -> list[Event]:
        self.poll()
        return [e for e in self.all if e.kind is EventKind.DEADLINE and e.conn == conn]


_ours: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_ours() -> Iterator[None]:
    yield
    while _ours:
        _ours.pop().close()


@pytest.fixture
def listener(sw: Switch) -> Iterator[tuple[str, int]]:
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="swt-") as d:
        path = os.path.join(d, "l.sock")
        ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ls.bind(path)
        ls.listen(16)
        ls.setblocking(False)
        yield path, sw.listen(ls.detach())


def login_client(
    sw: Switch, inbox: Inbox, listener: tuple[str, int], first: bytes
) -> tuple[socket.socket, int]:
    """A client accepted by the switch, its startup packet passed up and answered."""
    path, lid = listener
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.settimeout(5)
    c.connect(path)
    _ours.append(c)
    cid = inbox.take(lambda e: e.kind is EventKind.ACCEPTED and e.pool == lid).conn
    c.sendall(first)
    msg = inbox.take(lambda e: e.kind is EventKind.MESSAGE and e.conn == cid)
    assert msg.data == STARTUP
    sw.send(cid, WELCOME)
    return c, cid


def recv_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise EOFError(out)
        out += chunk
    return out


def state(sw: Switch, conn: int) -> State:
    return next(c.state for c in sw.conns() if c.conn == conn)


def talk_round(sw: Switch, inbox: Inbox, srv: socket.socket, sid: int, reply: bytes) -> None:
    """One of the pooler's own queries on server sid (in talk mode), answered by `reply`."""
    sw.send(sid, m.query("select 1"))
    assert recv_exact(srv, len(m.query("select 1"))) == m.query("select 1")
    srv.sendall(reply)
    got = b""
    while not got.endswith(m.ready_for_query()):
        got += inbox.take(lambda e: e.kind is EventKind.MESSAGE and e.conn == sid).data
        if not got.endswith(m.ready_for_query()):
            sw.read_next(sid)
    assert got == reply


# --- deadlines and the login states ---------------------------------------------------------
def test_deadlines_leave_login_and_talk_connections_alone(
    sw: Switch, listener: tuple[str, int]
) -> None:
    """A client in login, a server connecting/logging in and a server in talk mode are in no
    list the sweep walks: no CLIENT_IDLE, SERVER_IDLE or QUERY for them however long they sit,
    and expire does nothing to them (it only acts on an episode it reported)."""
    inbox = Inbox(sw)
    sw.set_timeouts(POOL, client_idle=50 * MS, server_idle=50 * MS, query=50 * MS)
    _c, cid = login_client(sw, inbox, listener, STARTUP)
    _login_srv, fd = pair()
    login_sid = sw.connect_server(fd, POOL)
    talk_srv, fd = pair()
    talk_sid = sw.add_server(fd, POOL)
    assert sw.talk(talk_sid)
    sw.send(talk_sid, m.query("select pg_sleep(1)"))  # a query the server has not answered
    ticks = sw.ticks()
    time.sleep(0.4)
    assert sw.ticks() > ticks + 10  # the sweep ran all along
    for conn in (cid, login_sid, talk_sid):
        assert inbox.deadlines(conn) == []
        for reason in (
            Reason.CLIENT_IDLE,
            Reason.SERVER_IDLE,
            Reason.QUERY,
            Reason.SERVER_LIFETIME,
        ):
            assert not sw.expire(conn, reason)
    assert state(sw, cid) is State.CL_LOGIN
    assert state(sw, login_sid) is State.SV_LOGIN
    assert state(sw, talk_sid) is State.SV_TALK
    assert talk_srv.recv(100) == m.query("select pg_sleep(1)")


def test_client_idle_counts_from_the_promote_not_the_accept(
    sw: Switch, listener: tuple[str, int]
) -> None:
    """A slow login does not make a client idle: client_idle_timeout counts from its promote
    (its last login message), as PgBouncer counts from the client's last packet."""
    inbox = Inbox(sw)
    sw.set_timeouts(POOL, client_idle=400 * MS)
    _c, cid = login_client(sw, inbox, listener, STARTUP)
    time.sleep(0.6)  # longer than client_idle, still in login
    assert sw.promote(cid, POOL)
    t0 = time.monotonic()
    time.sleep(0.15)
    assert inbox.deadlines(cid) == []
    e = inbox.take(lambda e: e.kind is EventKind.DEADLINE and e.conn == cid)
    assert e.reason == Reason.CLIENT_IDLE
    assert time.monotonic() - t0 >= 0.3  # 0.4 s after the promote, with the tick's slack


def test_server_lifetime_ages_in_talk_mode_and_parks_it_at_promote(sw: Switch) -> None:
    """server_lifetime counts from the connect whatever the server does: reported while it is
    in talk mode, expire marks it, and the promote that hands it back parks it (ATTENTION
    CLOSE_NEEDED) instead of putting it on the idle stack."""
    inbox = Inbox(sw)
    srv, fd = pair()
    sid = sw.add_server(fd, POOL)
    assert sw.talk(sid)
    sw.set_timeouts(POOL, server_lifetime=200 * MS, server_idle=50 * MS)
    e = inbox.take(lambda e: e.kind is EventKind.DEADLINE and e.conn == sid)
    assert e.reason == Reason.SERVER_LIFETIME
    assert state(sw, sid) is State.SV_TALK
    assert sw.expire(sid, Reason.SERVER_LIFETIME)
    talk_round(sw, inbox, srv, sid, ANSWER)
    assert sw.promote(sid, POOL)
    att = inbox.take(lambda e: e.kind is EventKind.ATTENTION and e.conn == sid)
    assert att.reason == Reason.CLOSE_NEEDED
    pool = sw.pools()[0]
    assert (pool.sv_idle, pool.sv_parked, pool.sv_talk) == (0, 1, 0)
    # no SERVER_IDLE was ever reported for it: it was never idle since the timeouts were set
    assert [d.reason for d in inbox.deadlines(sid)] == [Reason.SERVER_LIFETIME]


# --- tracked parameters and the login states -------------------------------------------------
def test_params_given_at_promote_replace_what_a_server_had_before_talk(sw: Switch) -> None:
    """In talk mode a server's ParameterStatus goes up to Python inside MESSAGE events, not
    through params.c; promote(params=) hands the switch what it reported meanwhile, so the next
    client that wants that value gets no SET and one that wants the old value gets one."""
    inbox = Inbox(sw)
    srv, fd = pair()
    sid = sw.add_server(fd, POOL, params={"application_name": "old"})
    assert sw.talk(sid)
    reply = m.command_complete("SET") + m.parameter_status("application_name", "new")
    reply += m.ready_for_query()
    talk_round(sw, inbox, srv, sid, reply)
    assert sw.params(sid)["application_name"] == "old"  # not read by the switch in talk
    assert sw.promote(sid, POOL, params={"application_name": "new"})
    assert sw.params(sid)["application_name"] == "new"
    # A client wanting "new": its query alone.
    ours, fd = pair()
    sw.add_client(fd, POOL, params={"application_name": "new"})
    ours.sendall(m.query("select 1"))
    assert recv_exact(srv, len(m.query("select 1"))) == m.query("select 1")
    srv.sendall(ANSWER)
    assert recv_exact(ours, len(ANSWER)) == ANSWER
    wait_for(lambda: sw.pools()[0].sv_idle == 1)
    # A client wanting "old": a SET first.
    ours2, fd = pair()
    sw.add_client(fd, POOL, params={"application_name": "old"})
    ours2.sendall(m.query("select 2"))
    want = m.query("SET application_name = 'old'") + m.query("select 2")
    assert recv_exact(srv, len(want)) == want


def test_promote_carries_a_clients_params_and_pending_bytes_before_what_the_switch_holds(
    sw: Switch, listener: tuple[str, int]
) -> None:
    """promote(params=, pending=): the client's tracked wishes are in place before it can be
    linked (a SET ahead of its bytes), and the bytes Python already received come before the
    bytes the switch still held from the client (a query glued after the startup packet)."""
    inbox = Inbox(sw)
    srv, fd = pair()
    sw.add_server(fd, POOL, params={"application_name": "a", "TimeZone": "UTC"})
    first, second = m.query("select 1"), m.query("select 2")
    c, cid = login_client(sw, inbox, listener, STARTUP + second)
    assert sw.promote(cid, POOL, params={"application_name": "x"}, pending=first)
    assert sw.params(cid) == {"application_name": "x"}
    want = m.query("SET application_name = 'x'") + first + second
    assert recv_exact(srv, len(want)) == want
    set_answer = m.command_complete("SET") + m.parameter_status("application_name", "x")
    srv.sendall(set_answer + m.ready_for_query() + ANSWER + ANSWER)
    got = recv_exact(c, len(WELCOME) + 2 * len(ANSWER))
    assert got == WELCOME + ANSWER + ANSWER  # the SET's answer swallowed
    with pytest.raises(ValueError):
        sw.promote(sw.add_server(pair()[1], POOL), POOL)  # idle, not in login or talk


def test_pending_is_for_a_client_only(sw: Switch) -> None:
    inbox = Inbox(sw)
    srv, fd = pair()
    sid = sw.add_server(fd, POOL)
    assert sw.talk(sid)
    talk_round(sw, inbox, srv, sid, ANSWER)
    with pytest.raises(ValueError):
        sw.promote(sid, POOL, pending=m.query("select 1"))
    assert state(sw, sid) is State.SV_TALK  # nothing changed
    assert sw.promote(sid, POOL)
    assert state(sw, sid) is State.SV_IDLE


# --- PAUSE and the login states -----------------------------------------------------------
def test_a_promoted_server_in_a_paused_pool_goes_idle_and_a_promoted_client_waits(
    sw: Switch, listener: tuple[str, int]
) -> None:
    """PAUSE holds for connections arriving by promote as for add_client/add_server: the
    client's query waits (no WAITERS while paused), the server back from talk goes idle, and
    resume links them at once."""
    inbox = Inbox(sw)
    srv, fd = pair()
    sid = sw.add_server(fd, POOL)
    assert sw.talk(sid)
    sw.pause(POOL, True)
    c, cid = login_client(sw, inbox, listener, STARTUP)
    assert sw.promote(cid, POOL, pending=m.query("select 1"))
    talk_round(sw, inbox, srv, sid, ANSWER)
    assert sw.promote(sid, POOL)
    wait_for(lambda: sw.pools()[0].cl_waiting == 1)
    pool = sw.pools()[0]
    assert (pool.paused, pool.sv_idle, pool.sv_talk, pool.sv_active) == (True, 1, 0, 0)
    inbox.poll()
    assert [e for e in inbox.all if e.kind is EventKind.WAITERS] == []
    sw.pause(POOL, False)
    assert recv_exact(srv, len(m.query("select 1"))) == m.query("select 1")
    srv.sendall(ANSWER)
    assert recv_exact(c, len(WELCOME) + len(ANSWER)) == WELCOME + ANSWER


# --- the events' 6-tuple form ------------------------------------------------------------------
def test_deadline_and_params_failed_events_carry_no_data(sw: Switch) -> None:
    inbox = Inbox(sw)
    srv, fd = pair()
    sid = sw.add_server(fd, POOL, params={"application_name": "a"})
    ours, fd = pair()
    cid = sw.add_client(fd, POOL, params={"application_name": "b"})
    ours.sendall(m.query("select 1"))
    want = m.query("SET application_name = 'b'") + m.query("select 1")
    assert recv_exact(srv, len(want)) == want
    srv.sendall(m.error_response("22023", "no") + m.ready_for_query() + ANSWER)
    assert recv_exact(ours, len(ANSWER)) == ANSWER
    failed = inbox.take(lambda e: e.kind is EventKind.PARAMS_FAILED)
    assert (failed.conn, failed.pool, failed.data) == (sid, POOL, b"")
    sw.set_timeouts(POOL, client_idle=20 * MS)
    idle = inbox.take(lambda e: e.kind is EventKind.DEADLINE and e.conn == cid)
    assert (idle.reason, idle.pool, idle.data) == (Reason.CLIENT_IDLE, POOL, b"")
    raw = [t for t in sw._sw.events()]  # the native form: 6-tuples throughout
    assert all(len(t) == 6 for t in raw)
