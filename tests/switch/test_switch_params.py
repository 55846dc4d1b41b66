"""The switch keeps tracked startup parameters in step (issue 11): a client lands on a shared
server whose values differ and gets a SET, whose answer it never sees; ParameterStatus from a
server updates what it has and what its client wants; quote_literal matches Python's byte for
byte. Also PAUSE (no hand-off while paused) and bytes Python read after a login."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgfunnel._switch import EventKind, Mode, Reason, State, Switch
from pgfunnel._switch import _switch as native
from pgfunnel.proto import messages as m
from pgfunnel.throwaway import SUPERUSER, Cluster
from tests.switch.conftest import (
    LONG_TX,
    SERVER_GONE,
    UNSUPPORTED,
    Events,
    assert_eof,
    assert_silent,
    pair,
    read_until_z,
    wait_for,
)

POOL = 3
# proto.messages.TRACKED_PARAMS, and a custom setting that holds any text as it is given.
TAG = "pgfunnel.tag"
TRACKED = (*m.TRACKED_PARAMS, TAG)

Msg = tuple[bytes, bytes]


@pytest.fixture
def sw() -> Iterator[Switch]:
    s = Switch(
        unsupported_pkt=UNSUPPORTED, long_tx=LONG_TX, server_gone=SERVER_GONE, tracked=TRACKED
    )
    s.start()
    yield s
    s.stop()


# --- quote_literal ----------------------------------------------------------------------------
@settings(max_examples=400, deadline=None)
@given(st.text())
def test_quote_literal_is_pythons_byte_for_byte(value: str) -> None:
    assert native.quote_literal(value.encode()) == m.quote_literal(value).encode()


@pytest.mark.parametrize(
    "value",
    ["", "plain", "it's", "a\\b", "é", "\x7f", "\t", "\0", "表示", "\U0001f600", "Õ\\'; --"],
)
def test_quote_literal_edges(value: str) -> None:
    assert native.quote_literal(value.encode()) == m.quote_literal(value).encode()


def test_quote_literal_refuses_what_is_not_utf8() -> None:
    for bad in (b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe6\x97"):
        with pytest.raises(ValueError):
            native.quote_literal(bad)


def test_set_params_checks_values(sw: Switch) -> None:
    sw.add_pool(POOL, Mode.TRANSACTION)
    _, fd = pair()
    c = sw.add_client(fd, POOL)
    with pytest.raises(ValueError):
        sw.set_params(c, {"TimeZone": "x" * 4097})
    with pytest.raises(ValueError):
        sw.set_params(c, {"application_name": "a\0b"})
    with pytest.raises(ValueError):  # a lone surrogate is not UTF-8
        sw.set_params(c, {"application_name": "\udcff"})
    with pytest.raises(TypeError):
        sw.set_params(c, [("application_name", 1)])  # type: ignore[list-item]
    sw.set_params(c, [("TimeZone", "UTC"), ("not_tracked", "x")])
    assert sw.params(c) == {"TimeZone": "UTC"}  # nothing else: no wish
    with pytest.raises(ValueError):
        Switch(unsupported_pkt=b"x", long_tx=b"x", server_gone=b"x", tracked=("a; drop",))


# --- against fake servers (socket pairs): the exact bytes -------------------------------------
def fake_server(sw: Switch, params: dict[str, str]) -> tuple[socket.socket, int]:
    ours, fd = pair()
    return ours, sw.add_server(fd, POOL, params=params)


def client(sw: Switch, params: dict[str, str] | None = None, pending: bytes = b"") -> socket.socket:
    ours, fd = pair()
    sw.add_client(fd, POOL, pending=pending, params=params)
    return ours


SET_ANSWER = (
    m.command_complete("SET")
    + m.parameter_status("application_name", "b")
    + m.notice_response("a notice")
    + m.ready_for_query()
)
SELECT_ANSWER = (
    m.row_description([("x", 23)])
    + m.data_row(["1"])
    + m.command_complete("SELECT 1")
    + m.ready_for_query()
)


@pytest.mark.parametrize("length", [0, 1, 18, 19, 20, 64, 4096])
def test_values_either_side_of_the_inline_size_are_kept_and_compared_whole(
    sw: Switch, length: int
) -> None:
    """Short values live in the connection's slot, long ones on the heap: each is SET in full,
    taken as the server's, and equal to a later client's same value (no second SET)."""
    value = "é" * (length // 2) + "v" * (length % 2)  # `length` bytes of UTF-8
    assert len(value.encode()) == length
    sw.add_pool(POOL, Mode.TRANSACTION)
    srv, sid = fake_server(sw, {"application_name": "other"})
    for n in range(2):
        c = client(sw, {"application_name": value})
        c.sendall(m.query(f"select {n}"))
        if n == 0:
            set_sql = "SET application_name = " + m.quote_literal(value)
            want = m.query(set_sql) + m.query("select 0")
            assert recv_exact(srv, len(want)) == want
            srv.sendall(m.command_complete("SET") + m.ready_for_query())
        else:  # the server has it now: no SET
            assert recv_exact(srv, len(m.query("select 1"))) == m.query("select 1")
        srv.sendall(SELECT_ANSWER)
        assert recv_exact(c, len(SELECT_ANSWER)) == SELECT_ANSWER
        assert sw.params(sid)["application_name"] == value
        c.close()


def test_a_set_goes_ahead_of_the_client_and_its_answer_is_swallowed(sw: Switch) -> None:
    sw.add_pool(POOL, Mode.TRANSACTION)
    srv, sid = fake_server(sw, {"application_name": "a", "TimeZone": "UTC"})
    c = client(sw, {"application_name": "b", "TimeZone": "UTC"})
    c.sendall(m.query("select 1"))
    want = m.query("SET application_name = 'b'") + m.query("select 1")
    assert recv_exact(srv, len(want)) == want
    # The answer to the SET arrives one byte at a time, then the client's own answer.
    for i in range(len(SET_ANSWER)):
        srv.sendall(SET_ANSWER[i : i + 1])
        time.sleep(0.001)
    assert_silent(c)
    srv.sendall(SELECT_ANSWER)
    got = recv_exact(c, len(SELECT_ANSWER))
    assert got == SELECT_ANSWER
    assert_silent(c)
    pool = sw.pools()[0]
    assert (pool.xact_count, pool.query_count) == (1, 1)
    assert pool.bytes_sent == len(SELECT_ANSWER)
    assert sw.params(sid)["application_name"] == "b"
    assert pool.sv_idle == 1  # released at the client's boundary


def recv_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise EOFError(out)
        out += chunk
    return out


def test_equal_values_send_no_set(sw: Switch) -> None:
    sw.add_pool(POOL, Mode.TRANSACTION)
    srv, _ = fake_server(sw, {"application_name": "a"})
    c = client(sw, {"application_name": "a"})  # the others: no wish
    c.sendall(m.query("select 1"))
    assert recv_exact(srv, len(m.query("select 1"))) == m.query("select 1")
    assert_silent(srv)
    srv.sendall(SELECT_ANSWER)
    assert recv_exact(c, len(SELECT_ANSWER)) == SELECT_ANSWER


def test_only_the_differing_names_in_the_tracked_order(sw: Switch) -> None:
    sw.add_pool(POOL, Mode.TRANSACTION)
    have = {"client_encoding": "UTF8", "DateStyle": "ISO, MDY", "TimeZone": "UTC"}
    srv, sid = fake_server(sw, {**have, "application_name": "x"})
    want = {TAG: "it's \\ é", "TimeZone": "Asia/Tokyo", "client_encoding": "UTF8"}
    c = client(sw, {**want, "application_name": "x"})
    c.sendall(m.query("select 1"))
    sql = f"SET TimeZone = 'Asia/Tokyo'; SET {TAG} = E'it''s \\\\ \\u00e9'"
    expect = m.query(sql) + m.query("select 1")
    assert recv_exact(srv, len(expect)) == expect
    assert sw.params(sid)["TimeZone"] == "Asia/Tokyo"


def test_an_error_in_the_set_answer_falls_back_and_is_reported(sw: Switch) -> None:
    events = Events(sw)
    sw.add_pool(POOL, Mode.TRANSACTION)
    srv, sid = fake_server(sw, {"TimeZone": "UTC", "application_name": "a"})
    c = client(sw, {"TimeZone": "Nowhere", "application_name": "b"})
    c.sendall(m.query("select 1"))
    recv_exact(srv, len(m.query("SET TimeZone = 'Nowhere'; SET application_name = 'b'")))
    recv_exact(srv, len(m.query("select 1")))
    srv.sendall(m.error_response("22023", "invalid value for parameter") + m.ready_for_query())
    srv.sendall(SELECT_ANSWER)
    assert recv_exact(c, len(SELECT_ANSWER)) == SELECT_ANSWER  # nothing of the error
    ev = events.wait(lambda e: e.kind is EventKind.PARAMS_FAILED)
    assert (ev.conn, ev.pool) == (sid, POOL)
    # A failed simple query applied none of its SETs: what the server last reported.
    assert sw.params(sid) == {"TimeZone": "UTC", "application_name": "a"} | {
        n: "" for n in TRACKED if n not in ("TimeZone", "application_name")
    }


def test_parameter_status_in_the_clients_answer_is_its_new_wish(sw: Switch) -> None:
    sw.add_pool(POOL, Mode.TRANSACTION)
    srv, sid = fake_server(sw, {"TimeZone": "UTC"})
    c = client(sw, {"TimeZone": "UTC"})
    c.sendall(m.query("set timezone = 'Europe/Paris'"))
    recv_exact(srv, len(m.query("set timezone = 'Europe/Paris'")))
    answer = (
        m.command_complete("SET")
        + m.parameter_status("TimeZone", "Europe/Paris")
        + m.ready_for_query()
    )
    # cut inside the ParameterStatus
    srv.sendall(answer[:12])
    time.sleep(0.01)
    srv.sendall(answer[12:])
    assert recv_exact(c, len(answer)) == answer  # the client's own SET: forwarded
    wait_for(lambda: sw.pools()[0].sv_idle == 1)
    cid = next(x.conn for x in sw.conns() if x.kind.name == "CLIENT")
    assert sw.params(cid) == {"TimeZone": "Europe/Paris"}
    assert sw.params(sid)["TimeZone"] == "Europe/Paris"


def test_clients_with_the_same_wishes_share_them_until_one_sets_its_own(sw: Switch) -> None:
    """The switch keeps one copy of wishes several clients have; a client's own SET changes its
    wishes only, never those of the clients it shared them with."""
    sw.add_pool(POOL, Mode.TRANSACTION)
    srv, sid = fake_server(sw, {"TimeZone": "UTC"})
    a = client(sw, {"TimeZone": "Asia/Tokyo"})
    b = client(sw, {"TimeZone": "Asia/Tokyo"})
    aid, bid = (x.conn for x in sw.conns() if x.kind.name == "CLIENT")

    def served(c: socket.socket, sql: str, sets: str | None) -> None:
        c.sendall(m.query(sql))
        want = (m.query(sets) if sets else b"") + m.query(sql)
        assert recv_exact(srv, len(want)) == want
        if sets:
            srv.sendall(m.command_complete("SET") + m.ready_for_query())
        answer = m.command_complete("SET") + m.ready_for_query()
        if sql.startswith("set"):
            zone = sql.split("'")[1]
            answer = m.command_complete("SET") + m.parameter_status("TimeZone", zone)
            answer += m.ready_for_query()
        srv.sendall(answer)
        assert recv_exact(c, len(answer)) == answer
        wait_for(lambda: sw.pools()[0].sv_idle == 1)

    served(a, "set timezone = 'Europe/Paris'", "SET TimeZone = 'Asia/Tokyo'")
    assert sw.params(aid) == {"TimeZone": "Europe/Paris"}
    assert sw.params(bid) == {"TimeZone": "Asia/Tokyo"}  # b's wish is its own still
    served(b, "select 1", "SET TimeZone = 'Asia/Tokyo'")
    served(a, "select 2", "SET TimeZone = 'Europe/Paris'")
    # b sets what a has: they may share again, and each goes on getting its own.
    served(b, "set timezone = 'Europe/Paris'", "SET TimeZone = 'Asia/Tokyo'")
    assert sw.params(aid) == sw.params(bid) == {"TimeZone": "Europe/Paris"}
    served(a, "select 3", None)
    a.close()
    served(b, "select 4", None)
    assert sw.params(bid) == {"TimeZone": "Europe/Paris"}
    assert sw.params(sid)["TimeZone"] == "Europe/Paris"


def test_a_server_that_matched_a_set_is_compared_again_once_it_reports_a_change(
    sw: Switch,
) -> None:
    """The switch remembers which clients' values a server already has (no comparison at each
    link); a value the server reports changed makes it compare, and SET, again."""
    sw.add_pool(POOL, Mode.TRANSACTION)
    srv, sid = fake_server(sw, {"TimeZone": "UTC"})
    for n in range(2):  # the same wishes: the second link takes the remembered match
        c = client(sw, {"TimeZone": "UTC"})
        c.sendall(m.query(f"select {n}"))
        assert recv_exact(srv, len(m.query(f"select {n}"))) == m.query(f"select {n}")
        srv.sendall(SELECT_ANSWER)
        assert recv_exact(c, len(SELECT_ANSWER)) == SELECT_ANSWER
        wait_for(lambda: sw.pools()[0].sv_idle == 1)
    # A reload changed the server's zone: it says so while idle.
    srv.sendall(m.parameter_status("TimeZone", "Europe/Oslo"))
    wait_for(lambda: sw.params(sid)["TimeZone"] == "Europe/Oslo")
    c.sendall(m.query("select 2"))
    want = m.query("SET TimeZone = 'UTC'") + m.query("select 2")
    assert recv_exact(srv, len(want)) == want
    srv.sendall(m.command_complete("SET") + m.parameter_status("TimeZone", "UTC"))
    srv.sendall(m.ready_for_query() + SELECT_ANSWER)
    assert recv_exact(c, len(SELECT_ANSWER)) == SELECT_ANSWER
    # The same value reported again changes nothing: no SET at the next link.
    wait_for(lambda: sw.pools()[0].sv_idle == 1)
    srv.sendall(m.parameter_status("TimeZone", "UTC"))
    time.sleep(0.05)
    c.sendall(m.query("select 3"))
    assert recv_exact(srv, len(m.query("select 3"))) == m.query("select 3")


def test_an_idle_server_reporting_a_parameter_stays(sw: Switch) -> None:
    events = Events(sw)
    sw.add_pool(POOL, Mode.TRANSACTION)
    srv, sid = fake_server(sw, {"TimeZone": "UTC"})
    srv.sendall(m.parameter_status("TimeZone", "Europe/Oslo") + m.parameter_status("other", "1"))
    wait_for(lambda: sw.params(sid)["TimeZone"] == "Europe/Oslo")
    assert sw.pools()[0].sv_idle == 1
    # Anything else from an idle server still ends it.
    srv.sendall(m.notice_response("hello"))
    ev = events.wait(lambda e: e.kind is EventKind.CLOSED)
    assert (ev.conn, ev.reason) == (sid, Reason.IDLE_DATA)


def test_a_value_the_switch_cannot_keep_makes_the_server_unknown(sw: Switch) -> None:
    sw.add_pool(POOL, Mode.TRANSACTION)
    srv, sid = fake_server(sw, {"TimeZone": "UTC"})
    srv.sendall(m.message(b"S", b"TimeZone\0" + b"\xff\xfe" + b"\0"))  # not UTF-8
    wait_for(lambda: "TimeZone" not in sw.params(sid))
    c = client(sw, {"TimeZone": "UTC"})
    c.sendall(m.query("select 1"))
    expect = m.query("SET TimeZone = 'UTC'") + m.query("select 1")
    assert recv_exact(srv, len(expect)) == expect


def test_a_client_leaving_while_its_set_is_in_flight_is_dirty_busy(sw: Switch) -> None:
    events = Events(sw)
    sw.add_pool(POOL, Mode.TRANSACTION)
    srv, sid = fake_server(sw, {"application_name": "a"})
    c = client(sw, {"application_name": "b"})
    c.sendall(m.message(b"d", b"x"))  # owes nothing itself: only the SET is in flight
    recv_exact(srv, len(m.query("SET application_name = 'b'")) + 6)
    wait_for(lambda: any(x.state is State.SV_ACTIVE for x in sw.conns()))
    c.close()
    ev = events.wait(lambda e: e.kind is EventKind.ATTENTION)
    assert (ev.conn, ev.reason) == (sid, Reason.DIRTY_BUSY)


def test_a_server_owing_the_set_answer_is_not_released(sw: Switch) -> None:
    sw.add_pool(POOL, Mode.TRANSACTION)
    srv, _ = fake_server(sw, {"application_name": "a"})
    c = client(sw, {"application_name": "b"})
    c.sendall(m.message(b"d", b"x"))
    recv_exact(srv, len(m.query("SET application_name = 'b'")) + 6)
    time.sleep(0.05)
    assert sw.pools()[0].sv_active == 1  # the SET's answer is still to come
    srv.sendall(m.command_complete("SET")[:3])
    time.sleep(0.02)
    assert sw.pools()[0].sv_active == 1
    srv.sendall(m.command_complete("SET")[3:] + m.ready_for_query())
    wait_for(lambda: sw.pools()[0].sv_idle == 1)
    assert_silent(c)


def test_a_released_server_handed_to_a_waiter_in_c_gets_its_set(sw: Switch) -> None:
    """The hand-off without Python: a's transaction ends, the server goes straight to b, and
    b's values go ahead of b's query."""
    sw.add_pool(POOL, Mode.TRANSACTION)
    srv, sid = fake_server(sw, {"application_name": "a"})
    a = client(sw, {"application_name": "a"})
    a.sendall(m.query("begin"))
    assert recv_exact(srv, len(m.query("begin"))) == m.query("begin")
    srv.sendall(m.command_complete("BEGIN") + m.ready_for_query(b"T"))
    read_until_z(a)
    b = client(sw, {"application_name": "b"})
    b.sendall(m.query("select 'b'"))
    wait_for(lambda: sw.pools()[0].cl_waiting == 1)
    a.sendall(m.query("commit"))
    assert recv_exact(srv, len(m.query("commit"))) == m.query("commit")
    srv.sendall(m.command_complete("COMMIT") + m.ready_for_query())
    assert read_until_z(a)[-1] == (b"Z", b"I")
    expect = m.query("SET application_name = 'b'") + m.query("select 'b'")
    assert recv_exact(srv, len(expect)) == expect
    srv.sendall(SET_ANSWER + SELECT_ANSWER)
    assert recv_exact(b, len(SELECT_ANSWER)) == SELECT_ANSWER
    assert_silent(b)
    assert sw.params(sid)["application_name"] == "b"
    wait_for(lambda: sw.pools()[0].sv_idle == 1)
    pool = sw.pools()[0]
    assert (pool.xact_count, pool.query_count) == (2, 3)


def test_a_waiter_given_a_new_server_gets_its_set(sw: Switch) -> None:
    sw.add_pool(POOL, Mode.TRANSACTION)
    c = client(sw, {"TimeZone": "Asia/Tokyo"})
    c.sendall(m.query("select 1"))
    wait_for(lambda: sw.pools()[0].cl_waiting == 1)
    srv, _ = fake_server(sw, {"TimeZone": "UTC"})
    expect = m.query("SET TimeZone = 'Asia/Tokyo'") + m.query("select 1")
    assert recv_exact(srv, len(expect)) == expect


def test_statement_mode_swallows_the_set_answer_too(sw: Switch) -> None:
    events = Events(sw)
    sw.add_pool(POOL, Mode.STATEMENT)
    srv, _ = fake_server(sw, {"application_name": "a"})
    c = client(sw, {"application_name": "b"})
    c.sendall(m.query("select 1"))
    recv_exact(srv, len(m.query("SET application_name = 'b'") + m.query("select 1")))
    srv.sendall(SET_ANSWER + SELECT_ANSWER)
    assert recv_exact(c, len(SELECT_ANSWER)) == SELECT_ANSWER
    wait_for(lambda: sw.pools()[0].sv_idle == 1)
    assert [e for e in events.poll() if e.kind is EventKind.CLOSED] == []


def test_session_mode_sets_at_the_single_link(sw: Switch) -> None:
    sw.add_pool(POOL, Mode.SESSION)
    srv, _ = fake_server(sw, {"application_name": "a"})
    c = client(sw, {"application_name": "b"})
    c.sendall(m.query("select 1"))
    expect = m.query("SET application_name = 'b'") + m.query("select 1")
    assert recv_exact(srv, len(expect)) == expect
    srv.sendall(SET_ANSWER + SELECT_ANSWER)
    assert recv_exact(c, len(SELECT_ANSWER)) == SELECT_ANSWER
    c.sendall(m.query("select 1"))
    assert recv_exact(srv, len(m.query("select 1"))) == m.query("select 1")  # no second SET


# --- PAUSE ------------------------------------------------------------------------------------
def test_pause_holds_waiters_and_resume_serves_them_fifo(sw: Switch) -> None:
    events = Events(sw)
    sw.add_pool(POOL, Mode.TRANSACTION)
    srv, _ = fake_server(sw, {})
    a = client(sw)
    a.sendall(m.query("begin"))
    recv_exact(srv, len(m.query("begin")))
    srv.sendall(m.command_complete("BEGIN") + m.ready_for_query(b"T"))
    read_until_z(a)
    sw.pause(POOL, True)
    assert sw.pools()[0].paused
    b = client(sw)
    b.sendall(m.query("select 'b'"))
    c = client(sw)
    c.sendall(m.query("select 'c'"))
    wait_for(lambda: sw.pools()[0].cl_waiting == 2)
    # a keeps its server until its boundary; then the server goes idle, not to b
    a.sendall(m.query("commit"))
    recv_exact(srv, len(m.query("commit")))
    srv.sendall(m.command_complete("COMMIT") + m.ready_for_query())
    read_until_z(a)
    wait_for(lambda: sw.pools()[0].sv_idle == 1)
    assert_silent(srv)
    pool = sw.pools()[0]
    assert (pool.cl_waiting, pool.sv_active) == (2, 0)
    assert not [e for e in events.poll() if e.kind is EventKind.WAITERS]
    sw.pause(POOL, False)
    assert recv_exact(srv, len(m.query("select 'b'"))) == m.query("select 'b'")
    srv.sendall(SELECT_ANSWER)
    assert recv_exact(b, len(SELECT_ANSWER)) == SELECT_ANSWER
    assert recv_exact(srv, len(m.query("select 'c'"))) == m.query("select 'c'")
    assert not sw.pools()[0].paused


def test_waiters_are_reported_after_resume_not_while_paused(sw: Switch) -> None:
    events = Events(sw)
    sw.add_pool(POOL, Mode.TRANSACTION)
    sw.pause(POOL, True)
    a = client(sw)
    a.sendall(m.query("select 1"))
    wait_for(lambda: sw.pools()[0].cl_waiting == 1)
    time.sleep(0.05)
    assert not [e for e in events.poll() if e.kind is EventKind.WAITERS]
    srv, _ = fake_server(sw, {})  # a server handed in while paused goes idle
    assert sw.pools()[0].sv_idle == 1
    assert_silent(srv)
    sw.pause(POOL, False)
    assert recv_exact(srv, len(m.query("select 1"))) == m.query("select 1")
    b = client(sw)
    sw.pause(POOL, True)
    b.sendall(m.query("select 2"))
    wait_for(lambda: sw.pools()[0].cl_waiting == 1)
    assert not [e for e in events.poll() if e.kind is EventKind.WAITERS]
    sw.pause(POOL, False)
    ev = events.wait(lambda e: e.kind is EventKind.WAITERS)
    assert (ev.pool, ev.reason) == (POOL, 1)
    with pytest.raises(KeyError):
        sw.pause(99, True)


# --- pending bytes ----------------------------------------------------------------------------
def test_pending_bytes_are_carried_as_read(sw: Switch) -> None:
    sw.add_pool(POOL, Mode.TRANSACTION)
    srv, _ = fake_server(sw, {})
    q = m.query("select 1")
    c = client(sw, pending=q[:3])  # the rest of the message comes on the socket
    time.sleep(0.02)
    assert_silent(srv)  # half a header is never sent
    c.sendall(q[3:])
    assert recv_exact(srv, len(q)) == q
    srv.sendall(SELECT_ANSWER)
    assert recv_exact(c, len(SELECT_ANSWER)) == SELECT_ANSWER
    assert sw.pools()[0].bytes_received == len(q)


def test_pending_bytes_of_a_refused_type_are_refused(sw: Switch) -> None:
    events = Events(sw)
    sw.add_pool(POOL, Mode.TRANSACTION)
    srv, _ = fake_server(sw, {})
    c = client(sw, pending=m.message(b"p", b"secret\0"))
    assert assert_eof(c) == UNSUPPORTED
    ev = events.wait(lambda e: e.kind is EventKind.CLOSED)
    assert ev.reason == Reason.UNKNOWN_TYPE
    assert_silent(srv)


# --- real PostgreSQL --------------------------------------------------------------------------
def login(cluster: Cluster, **startup: str) -> tuple[socket.socket, dict[str, str]]:
    """A server logged in as the pooler's Python login would: its ReadyForQuery read, and the
    values its ParameterStatus messages reported."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(cluster.sockdir / f".s.PGSQL.{cluster.port}"))
    sock.sendall(m.startup_message({"user": SUPERUSER, "database": "postgres", **startup}))
    params = {}
    for kind, payload in read_until_z(sock):
        assert kind != b"E", payload
        if kind == b"S":
            name, value = m.parse_parameter_status(payload)
            params[name] = value
    return sock, params


def add_pg_server(sw: Switch, cluster: Cluster, **startup: str) -> int:
    sock, params = login(cluster, **startup)
    return sw.add_server(sock.detach(), POOL, params=params)


def ask(sock: socket.socket, sql: str) -> list[Msg]:
    sock.sendall(m.query(sql))
    return read_until_z(sock)


def values(msgs: list[Msg]) -> list[str]:
    """The text of the one row of a simple query's answer; the answer must be exactly
    RowDescription, DataRow, CommandComplete, ReadyForQuery('I')."""
    assert [k for k, _ in msgs] == [b"T", b"D", b"C", b"Z"], msgs
    assert msgs[-1] == (b"Z", b"I")
    row = msgs[1][1]
    n = int.from_bytes(row[:2], "big")
    out, off = [], 2
    for _ in range(n):
        ln = int.from_bytes(row[off : off + 4], "big")
        out.append(row[off + 4 : off + 4 + ln].decode())
        off += 4 + ln
    return out


SHOW = (
    "select current_setting('application_name'), current_setting('TimeZone'), "
    "current_setting('DateStyle'), current_setting('client_encoding'), "
    f"current_setting('{TAG}', true)"
)


def wishes(server: dict[str, str], **own: str) -> dict[str, str]:
    """What finish_login computes: the pool's values, the client's own in their place."""
    base = {n: server.get(n, "") for n in m.TRACKED_PARAMS}
    base[TAG] = ""
    return base | own


def test_clients_sharing_one_server_each_see_their_own_values(sw: Switch, pg: Cluster) -> None:
    sw.add_pool(POOL, Mode.TRANSACTION)
    sock, reported = login(pg)
    sid = sw.add_server(sock.detach(), POOL, params=reported)
    a_want = wishes(
        reported,
        application_name="alpha",
        TimeZone="Asia/Tokyo",
        DateStyle="SQL, DMY",
        client_encoding="LATIN1",
    )
    b_want = wishes(reported, application_name="beta", TimeZone="America/New_York")
    a = client(sw, a_want)
    b = client(sw, b_want)
    for _ in range(2):
        assert values(ask(a, SHOW)) == ["alpha", "Asia/Tokyo", "SQL, DMY", "LATIN1", ""]
        assert values(ask(b, SHOW)) == [
            "beta",
            "America/New_York",
            reported["DateStyle"],
            reported["client_encoding"],
            "",
        ]
    assert values(ask(a, "show timezone")) == ["Asia/Tokyo"]
    pool = sw.pools()[0]
    assert (pool.xact_count, pool.query_count, pool.sv_idle) == (5, 5, 1)
    # b left the server with its values; what it reported after the SETs is what it has
    assert sw.params(sid)["application_name"] == "alpha"
    assert sw.params(sid)["TimeZone"] == "Asia/Tokyo"


def test_a_clients_own_set_follows_it_to_the_next_server(sw: Switch, pg: Cluster) -> None:
    sw.add_pool(POOL, Mode.TRANSACTION)
    sock, reported = login(pg)
    sw.add_server(sock.detach(), POOL, params=reported)
    a = client(sw, wishes(reported, application_name="alpha"))
    b = client(sw, wishes(reported, application_name="beta"))
    msgs = ask(a, "set timezone = 'Pacific/Auckland'")
    assert [k for k, _ in msgs] == [b"C", b"S", b"Z"]  # its own SET's report reaches it
    assert values(ask(b, "show timezone")) == [reported["TimeZone"]]
    assert values(ask(a, "show timezone")) == ["Pacific/Auckland"]
    # ... and onto a fresh server too
    b.sendall(m.query("begin"))
    assert read_until_z(b)[-1] == (b"Z", b"T")  # b holds the first server
    second = add_pg_server(sw, pg)
    assert values(ask(a, "select current_setting('TimeZone')")) == ["Pacific/Auckland"]
    assert next(x for x in sw.conns() if x.conn == second).state is State.SV_IDLE
    assert sw.params(second)["TimeZone"] == "Pacific/Auckland"
    assert ask(b, "commit")[-1] == (b"Z", b"I")


def test_quotes_backslashes_and_non_ascii_arrive_intact(sw: Switch, pg: Cluster) -> None:
    sw.add_pool(POOL, Mode.TRANSACTION)
    sock, reported = login(pg)
    sw.add_server(sock.detach(), POOL, params=reported)
    tags = ["it's \\ fine", "héllo wörld", "表示 ok", "tab\there", "'; select 1; --", "\\'"]
    clients = [(client(sw, wishes(reported, **{TAG: t})), t) for t in tags]
    for c, tag in clients * 2:
        assert values(ask(c, f"select current_setting('{TAG}')")) == [tag]


def test_a_shared_server_left_in_sjis_runs_nothing_of_a_value(
    make_cluster: Callable[..., Cluster],
) -> None:
    """Issue 10's SJIS case: the server's client_encoding is SJIS (backslash_quote=on), and the
    next client's application_name, written naively, would end its string early there."""
    cluster = make_cluster(settings={"backslash_quote": "on"})
    cluster.psql("create table t (v int)")
    evil = "Õ\\'; insert into t values (31337); --"
    s = Switch(
        unsupported_pkt=UNSUPPORTED, long_tx=LONG_TX, server_gone=SERVER_GONE, tracked=TRACKED
    )
    s.start()
    try:
        s.add_pool(POOL, Mode.TRANSACTION)
        sock, reported = login(cluster)
        s.add_server(sock.detach(), POOL, params=reported)
        first = client(s, wishes(reported, client_encoding="SJIS", application_name="first"))
        assert values(ask(first, "select 'ok'")) == ["ok"]
        second = client(s, wishes(reported, client_encoding="SJIS", application_name=evil))
        msgs = ask(second, "select current_setting('application_name')")
        got = values(msgs)[0]
        assert got.endswith("\\'; insert into t values (31337); --")
        third = client(s, wishes(reported, client_encoding="SJIS", application_name="third"))
        assert values(ask(third, "select current_setting('application_name')")) == ["third"]
    finally:
        s.stop()
    assert cluster.psql("select count(*) from t") == "0"
    assert "syntax error" not in cluster.logfile.read_text(errors="replace")


def test_a_set_that_fails_leaves_the_server_as_reported(sw: Switch, pg: Cluster) -> None:
    events = Events(sw)
    sw.add_pool(POOL, Mode.TRANSACTION)
    sock, reported = login(pg)
    sid = sw.add_server(sock.detach(), POOL, params=reported)
    bad = client(sw, wishes(reported, TimeZone="No/Such_Zone", application_name="bad"))
    # nothing of the failed SET reaches the client; its query runs on the server as it is
    assert values(ask(bad, SHOW)) == [
        reported["application_name"],
        reported["TimeZone"],
        reported["DateStyle"],
        reported["client_encoding"],
        "",
    ]
    ev = events.wait(lambda e: e.kind is EventKind.PARAMS_FAILED)
    assert ev.conn == sid
    assert sw.params(sid)["TimeZone"] == reported["TimeZone"]
    good = client(sw, wishes(reported, application_name="good"))
    assert values(ask(good, "select current_setting('application_name')")) == ["good"]
    pool = sw.pools()[0]
    assert (pool.xact_count, pool.query_count) == (2, 2)


def test_pending_query_after_the_login_is_answered(sw: Switch, pg: Cluster) -> None:
    sw.add_pool(POOL, Mode.TRANSACTION)
    sock, reported = login(pg)
    sw.add_server(sock.detach(), POOL, params=reported)
    c = client(sw, wishes(reported, application_name="early"), pending=m.query(SHOW))
    assert values(read_until_z(c))[0] == "early"
    assert values(ask(c, "select 40 + 2")) == ["42"]
