"""The switch's commands for PgBouncer behaviours beyond the data path: SUSPEND and the
unflushed list, the refused type byte, a server closed by Python, peer_of, a cancel of a
queued client, per-pool checks and resets, and the link/transaction times of SHOW HOLDERS."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from pgfunnel._switch import EventKind, Kind, Mode, Reason, State, Switch
from pgfunnel.proto import messages as m
from tests.switch.conftest import (
    SERVER_GONE,
    UNSUPPORTED,
    Events,
    assert_eof,
    assert_silent,
    pair,
    read_exact,
    read_until_z,
    wait_for,
)

POOL = 1
_BODY = struct.pack("!i", 196608) + b"user\0u\0\0"
STARTUP = struct.pack("!i", len(_BODY) + 4) + _BODY
ANSWER = m.command_complete("SELECT 1")
PARSE = m.message(b"P", b"\0select 1\0\0\0")
SYNC = m.message(b"S")


def setup(sw: Switch, mode: Mode = Mode.TRANSACTION, servers: int = 1) -> list[socket.socket]:
    sw.add_pool(POOL, mode)
    ends = []
    for _ in range(servers):
        ours, fd = pair()
        sw.add_server(fd, POOL)
        ends.append(ours)
    return ends


def client(sw: Switch) -> tuple[socket.socket, int]:
    ours, fd = pair()
    return ours, sw.add_client(fd, POOL)


def state(sw: Switch, conn: int) -> State:
    return next(c.state for c in sw.conns() if c.conn == conn)


def server_ids(sw: Switch) -> list[int]:
    return [c.conn for c in sw.conns() if c.kind is Kind.SERVER]


def serve_one(server: socket.socket, expect: bytes, status: bytes = b"I") -> None:
    assert read_exact(server, len(expect)) == expect
    server.sendall(ANSWER + m.ready_for_query(status))


# ---- 1. SUSPEND -------------------------------------------------------------------------------


def test_suspend_reads_nothing_but_writes_on_and_resume_reads_what_came(switch: Switch) -> None:
    (server,) = setup(switch)
    c, cid = client(switch)
    c.sendall(m.query("select 1"))
    assert read_exact(server, len(m.query("select 1"))) == m.query("select 1")
    switch.suspend(True)
    # The server's answer is not read while suspended ...
    server.sendall(ANSWER + m.ready_for_query())
    assert_silent(c, 0.2)
    # ... nor a second client's query (it would take the idle server otherwise).
    d, did = client(switch)
    d.sendall(m.query("select 2"))
    time.sleep(0.1)
    assert state(switch, did) is State.CL_ACTIVE
    assert switch.unflushed() == []
    switch.suspend(False)
    # Everything that became readable meanwhile is read (edge-triggered: no new edge comes).
    assert read_exact(c, len(ANSWER) + 6) == ANSWER + m.ready_for_query()
    serve_one(server, m.query("select 2"))
    assert read_exact(d, len(ANSWER) + 6) == ANSWER + m.ready_for_query()
    assert {cid, did} <= {x.conn for x in switch.conns()}


def test_suspend_writes_what_its_buffers_hold_and_unflushed_lists_the_rest(
    switch: Switch,
) -> None:
    setup(switch, servers=0)
    c, cid = client(switch)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    switch.suspend(True)
    big = m.notice_response("x" * 500_000)
    switch.send(cid, big)
    # More than the socket pair can hold: the rest waits in the switch, listed.
    wait_for(lambda: switch.unflushed() == [cid])
    got = read_exact(c, len(big))
    assert got == big
    wait_for(lambda: switch.unflushed() == [])


def test_a_listener_accepts_and_logins_go_on_while_suspended(switch: Switch) -> None:
    """The admin console is a connection in login mode: SUSPEND must leave it (and new
    sessions, which bring the RESUME) working; a client promoted meanwhile is not read."""
    events = Events(switch)
    setup(switch, servers=0)
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind("")  # abstract name: nothing to clean up
    lsock.listen(8)
    addr = lsock.getsockname()
    switch.listen(lsock.detach())
    switch.suspend(True)
    a = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    a.connect(addr)
    accepted = events.wait(lambda e: e.kind is EventKind.ACCEPTED)
    a.sendall(STARTUP)
    got = events.wait(lambda e: e.kind is EventKind.MESSAGE and e.conn == accepted.conn)
    assert got.data == STARTUP
    assert switch.promote(accepted.conn, POOL)
    a.sendall(m.query("select 1"))
    time.sleep(0.2)
    assert state(switch, accepted.conn) is State.CL_ACTIVE  # not read: it would wait for a server
    switch.suspend(False)
    wait_for(lambda: state(switch, accepted.conn) is State.CL_WAITING)
    a.close()


def test_deadlines_are_not_reported_while_suspended(switch: Switch) -> None:
    events = Events(switch)
    setup(switch, servers=0)
    switch.set_timeouts(POOL, client_idle=50_000)
    _, cid = client(switch)
    switch.suspend(True)
    time.sleep(0.4)
    assert [e for e in events.poll() if e.kind is EventKind.DEADLINE] == []
    switch.suspend(False)
    found = events.wait(lambda e: e.kind is EventKind.DEADLINE)
    assert (found.conn, found.reason) == (cid, Reason.CLIENT_IDLE)


# ---- 2. the refused type byte -----------------------------------------------------------------


@pytest.mark.parametrize("kind", [b"\0", b"?", b"p"])
def test_unknown_type_event_carries_the_type_byte(switch: Switch, kind: bytes) -> None:
    events = Events(switch)
    setup(switch)
    c, cid = client(switch)
    c.sendall(kind + b"\0\0\0\x04")
    assert assert_eof(c) == UNSUPPORTED
    closed = events.wait(lambda e: e.kind is EventKind.CLOSED)
    assert (closed.conn, closed.reason, closed.data) == (cid, Reason.UNKNOWN_TYPE, kind)
    assert closed.packet_type == kind[0]
    assert closed.errno == 0


def test_unknown_type_in_pending_bytes_carries_the_type_byte(switch: Switch) -> None:
    events = Events(switch)
    setup(switch)
    ours, fd = pair()
    cid = switch.add_client(fd, POOL, pending=m.query("select 1") + b"y\0\0\0\x04")
    assert assert_eof(ours) == UNSUPPORTED
    closed = events.wait(lambda e: e.kind is EventKind.CLOSED)
    assert (closed.conn, closed.reason, closed.data) == (cid, Reason.UNKNOWN_TYPE, b"y")


# ---- 3. close(server) of a linked server ------------------------------------------------------


def test_closing_a_linked_server_reports_its_client_only(switch: Switch) -> None:
    events = Events(switch)
    (server,) = setup(switch)
    (sid,) = server_ids(switch)
    c, cid = client(switch)
    c.sendall(m.query("select 1"))
    read_exact(server, len(m.query("select 1")))
    assert switch.peer_of(sid) == cid
    assert switch.close(sid)
    assert assert_eof(c) == SERVER_GONE
    assert assert_eof(server) == b""
    closed = events.wait(lambda e: e.kind is EventKind.CLOSED)
    assert (closed.conn, closed.reason) == (cid, Reason.SERVER_GONE)
    time.sleep(0.05)
    assert [(e.kind, e.conn) for e in events.poll()] == [(EventKind.CLOSED, cid)]


# ---- 4. peer_of -------------------------------------------------------------------------------


def test_peer_of(switch: Switch) -> None:
    (server,) = setup(switch, Mode.SESSION)
    (sid,) = server_ids(switch)
    c, cid = client(switch)
    assert switch.peer_of(cid) == 0
    assert switch.peer_of(sid) == 0
    c.sendall(m.query("select 1"))
    serve_one(server, m.query("select 1"))
    read_exact(c, len(ANSWER) + 6)
    assert switch.peer_of(cid) == sid
    assert switch.peer_of(sid) == cid
    with pytest.raises(KeyError):
        switch.peer_of(12345)


# ---- 5. cancel_wait ---------------------------------------------------------------------------


def test_cancel_wait_answers_what_a_queued_client_is_owed(switch: Switch) -> None:
    setup(switch, servers=0)
    c, cid = client(switch)
    c.sendall(m.query("select 1") + m.query("select 2"))
    wait_for(lambda: state(switch, cid) is State.CL_WAITING)
    assert switch.cancel_wait(cid) == 2
    assert state(switch, cid) is State.CL_ACTIVE
    assert switch.pools()[0].cl_waiting == 0
    assert switch.cancel_wait(cid) == -1  # no longer waiting: nothing done
    # Python answers; then the client goes on and its next query gets the next server.
    err = m.error_response("57014", "canceling statement due to user request")
    switch.send(cid, (err + m.ready_for_query()) * 2)
    assert read_exact(c, 2 * (len(err) + 6)) == (err + m.ready_for_query()) * 2
    ours, fd = pair()
    switch.add_server(fd, POOL)
    c.sendall(m.query("select 3"))
    serve_one(ours, m.query("select 3"))  # the dropped queries never reach it
    assert read_exact(c, len(ANSWER) + 6) == ANSWER + m.ready_for_query()


def test_cancel_wait_of_an_open_batch_owes_nothing(switch: Switch) -> None:
    setup(switch, servers=0)
    c, cid = client(switch)
    c.sendall(PARSE)
    wait_for(lambda: state(switch, cid) is State.CL_WAITING)
    assert switch.cancel_wait(cid) == -2
    ours, fd = pair()
    switch.add_server(fd, POOL)
    assert_silent(ours)  # the Parse was dropped: nothing to give the server
    assert state(switch, cid) is State.CL_ACTIVE


def test_cancel_wait_with_an_error_queues_the_answers_in_the_same_step(switch: Switch) -> None:
    err = m.error_response("57014", "canceling statement due to user request")
    setup(switch, servers=0)
    c, cid = client(switch)
    c.sendall(m.query("select 1") + m.query("select 2"))
    wait_for(lambda: state(switch, cid) is State.CL_WAITING)
    assert switch.cancel_wait(cid, err) == 2
    assert read_exact(c, 2 * (len(err) + 6)) == (err + m.ready_for_query()) * 2
    assert switch.cancel_wait(cid, err) == -1  # no longer waiting: nothing sent
    assert_silent(c)
    # A batch without its Sync: the error alone (PostgreSQL skips to the next Sync).
    d, did = client(switch)
    d.sendall(PARSE)
    wait_for(lambda: state(switch, did) is State.CL_WAITING)
    assert switch.cancel_wait(did, err) == -2
    assert read_exact(d, len(err)) == err
    assert_silent(d)


def test_cancel_wait_refuses_half_a_message(switch: Switch) -> None:
    setup(switch, servers=0)
    c, cid = client(switch)
    q = m.query("select 1")
    c.sendall(q + q[:3])
    wait_for(lambda: state(switch, cid) is State.CL_WAITING)
    assert switch.cancel_wait(cid) == -1
    assert state(switch, cid) is State.CL_WAITING
    c.sendall(q[3:])
    ours, fd = pair()
    switch.add_server(fd, POOL)
    assert read_exact(ours, 2 * len(q)) == q + q  # nothing was dropped
    with pytest.raises(KeyError):
        switch.cancel_wait(12345)


# ---- 6. per-pool checks and resets ------------------------------------------------------------


def test_check_delay_parks_a_long_idle_server_and_the_client_takes_the_next(
    switch: Switch,
) -> None:
    events = Events(switch)
    (old,) = setup(switch)
    (old_id,) = server_ids(switch)
    time.sleep(0.2)
    fresh, fd = pair()
    fresh_id = switch.add_server(fd, POOL)  # the top of the stack
    switch.set_pool_checks(POOL, check_delay_us=100_000)
    d, did = client(switch)
    d.sendall(m.query("select 2"))  # takes the fresh server
    assert read_exact(fresh, len(m.query("select 2"))) == m.query("select 2")
    assert switch.peer_of(did) == fresh_id
    # The next client would get the old one: idle too long, it is parked for a check.
    e, eid = client(switch)
    e.sendall(m.query("select 3"))
    attention = events.wait(lambda ev: ev.kind is EventKind.ATTENTION)
    assert (attention.conn, attention.reason) == (old_id, Reason.CHECK_NEEDED)
    wait_for(lambda: state(switch, eid) is State.CL_WAITING)
    assert state(switch, old_id) is State.SV_PARKED
    assert_silent(old)
    # The fresh server, released, goes to the waiter.
    fresh.sendall(ANSWER + m.ready_for_query())
    assert read_exact(d, len(ANSWER) + 6) == ANSWER + m.ready_for_query()
    serve_one(fresh, m.query("select 3"))
    assert read_exact(e, len(ANSWER) + 6) == ANSWER + m.ready_for_query()


def test_check_delay_parks_one_server_per_pick_and_loses_none(switch: Switch) -> None:
    """A client that finds the top idle server past the delay waits for that server's check:
    one check per pick (as PgBouncer), and the servers under it stay on the stack (a parked
    server's second unlist once emptied the whole stack)."""
    events = Events(switch)
    servers = setup(switch, servers=3)
    ids = server_ids(switch)
    time.sleep(0.2)
    switch.set_pool_checks(POOL, check_delay_us=100_000)
    c, cid = client(switch)
    c.sendall(m.query("select 1"))
    ev = events.wait(lambda ev: ev.kind is EventKind.ATTENTION)
    assert ev.reason == Reason.CHECK_NEEDED
    first = ev.conn
    wait_for(lambda: state(switch, cid) is State.CL_WAITING)
    (snap,) = [p for p in switch.pools() if p.pool == POOL]
    assert snap.sv_idle == 2 and snap.cl_waiting == 1
    assert [state(switch, i) for i in ids].count(State.SV_PARKED) == 1
    for sock in servers:
        assert_silent(sock)
    # A second client parks the next one for its own check.
    d, did = client(switch)
    d.sendall(m.query("select 2"))
    ev = events.wait(lambda ev: ev.kind is EventKind.ATTENTION and ev.conn != first)
    assert ev.reason == Reason.CHECK_NEEDED
    second = ev.conn
    wait_for(lambda: state(switch, did) is State.CL_WAITING)
    (snap,) = [p for p in switch.pools() if p.pool == POOL]
    assert snap.sv_idle == 1 and snap.cl_waiting == 2
    # Checked and handed back, the first serves the first waiter, then (released) the second.
    first_sock, second_sock = servers[ids.index(first)], servers[ids.index(second)]
    assert switch.talk(first)
    switch.send(first, m.query("select 1"))
    serve_one(first_sock, m.query("select 1"))
    events.wait(lambda ev: ev.kind is EventKind.MESSAGE and ev.conn == first)
    assert switch.promote(first, POOL)
    serve_one(first_sock, m.query("select 1"))
    assert read_exact(c, len(ANSWER) + 6) == ANSWER + m.ready_for_query()
    serve_one(first_sock, m.query("select 2"))
    assert read_exact(d, len(ANSWER) + 6) == ANSWER + m.ready_for_query()
    # The second, its check done with nobody waiting, goes back on the stack.
    assert switch.talk(second)
    switch.send(second, m.query("select 1"))
    serve_one(second_sock, m.query("select 1"))
    events.wait(lambda ev: ev.kind is EventKind.MESSAGE and ev.conn == second)
    assert switch.promote(second, POOL)
    wait_for(lambda: state(switch, second) is State.SV_IDLE)
    (snap,) = [p for p in switch.pools() if p.pool == POOL]
    assert snap.sv_idle == 3 and snap.cl_waiting == 0
    assert_silent(second_sock)


def test_resume_parks_one_check_per_waiter_and_hands_out_the_rest(switch: Switch) -> None:
    """On RESUME each waiter gets an idle server or one server's check, in FIFO order, never
    more checks than waiters: a fresh server goes to the first waiter, the next (due) one is
    parked for the second, and the last stays idle."""
    events = Events(switch)
    servers = setup(switch, servers=2)
    old_ids = server_ids(switch)
    time.sleep(0.2)
    fresh, fd = pair()
    fresh_id = switch.add_server(fd, POOL)  # the top of the stack, not due
    switch.set_pool_checks(POOL, check_delay_us=100_000)
    switch.pause(POOL, True)
    waiters = [client(switch) for _ in range(2)]
    for i, (sock, cid) in enumerate(waiters):
        sock.sendall(m.query(f"select {i}"))
        wait_for(lambda cid=cid: state(switch, cid) is State.CL_WAITING)
    switch.pause(POOL, False)
    assert read_exact(fresh, len(m.query("select 0"))) == m.query("select 0")
    assert switch.peer_of(waiters[0][1]) == fresh_id
    ev = events.wait(lambda ev: ev.kind is EventKind.ATTENTION)
    assert ev.reason == Reason.CHECK_NEEDED and ev.conn in old_ids
    (snap,) = [p for p in switch.pools() if p.pool == POOL]
    assert snap.sv_idle == 1 and snap.cl_waiting == 1 and snap.sv_parked == 1
    for sock in servers:
        assert_silent(sock)


def test_check_needed_server_goes_back_after_talk_and_serves_the_waiter(switch: Switch) -> None:
    events = Events(switch)
    (server,) = setup(switch)
    (sid,) = server_ids(switch)
    switch.set_pool_checks(POOL, check_delay_us=0)
    c, cid = client(switch)
    c.sendall(m.query("select 1"))
    attention = events.wait(lambda ev: ev.kind is EventKind.ATTENTION)
    assert (attention.conn, attention.reason) == (sid, Reason.CHECK_NEEDED)
    events.wait(lambda ev: ev.kind is EventKind.WAITERS)
    assert state(switch, cid) is State.CL_WAITING
    assert_silent(server)  # no client byte reached the parked server
    # Python's check in talk mode, then promote: the waiter is served by it.
    assert switch.talk(sid)
    switch.send(sid, m.query("select 1"))
    serve_one(server, m.query("select 1"))
    events.wait(lambda ev: ev.kind is EventKind.MESSAGE and ev.conn == sid)
    assert switch.promote(sid, POOL)
    serve_one(server, m.query("select 1"))
    assert read_exact(c, len(ANSWER) + 6) == ANSWER + m.ready_for_query()
    switch.set_pool_checks(POOL)  # off: the idle server is linked again without a check
    wait_for(lambda: state(switch, sid) is State.SV_IDLE)
    c.sendall(m.query("select 2"))
    serve_one(server, m.query("select 2"))
    assert read_exact(c, len(ANSWER) + 6) == ANSWER + m.ready_for_query()


def test_reset_always_parks_every_released_server(switch: Switch) -> None:
    events = Events(switch)
    (server,) = setup(switch)
    (sid,) = server_ids(switch)
    switch.set_pool_checks(POOL, reset_always=True)
    c, _ = client(switch)
    d, did = client(switch)
    c.sendall(m.query("select 1"))
    serve_one(server, m.query("select 1"))
    assert read_exact(c, len(ANSWER) + 6) == ANSWER + m.ready_for_query()
    attention = events.wait(lambda ev: ev.kind is EventKind.ATTENTION)
    assert (attention.conn, attention.reason) == (sid, Reason.RESET_NEEDED)
    # The next client waits; the parked server gets none of its bytes.
    d.sendall(m.query("select 2"))
    wait_for(lambda: state(switch, did) is State.CL_WAITING)
    assert_silent(server)
    assert switch.talk(sid)
    switch.send(sid, m.query("DISCARD ALL"))
    assert read_exact(server, len(m.query("DISCARD ALL"))) == m.query("DISCARD ALL")
    server.sendall(m.command_complete("DISCARD ALL") + m.ready_for_query())
    events.wait(lambda ev: ev.kind is EventKind.MESSAGE and ev.conn == sid)
    assert switch.promote(sid, POOL)
    serve_one(server, m.query("select 2"))
    assert read_exact(d, len(ANSWER) + 6) == ANSWER + m.ready_for_query()
    with pytest.raises(ValueError):
        switch.set_pool_checks(POOL, check_delay_us=-2)
    with pytest.raises(KeyError):
        switch.set_pool_checks(99)


def test_reset_always_after_an_extended_batch(switch: Switch) -> None:
    events = Events(switch)
    (server,) = setup(switch, Mode.STATEMENT)
    (sid,) = server_ids(switch)
    switch.set_pool_checks(POOL, reset_always=True)
    c, _ = client(switch)
    c.sendall(PARSE)  # a batch: the server stays linked
    assert read_exact(server, len(PARSE)) == PARSE
    assert_silent(server)
    assert [e for e in events.poll() if e.kind is EventKind.ATTENTION] == []
    c.sendall(SYNC)
    assert read_exact(server, len(SYNC)) == SYNC
    server.sendall(m.message(b"1") + m.ready_for_query())
    read_until_z(c)
    attention = events.wait(lambda ev: ev.kind is EventKind.ATTENTION)
    assert (attention.conn, attention.reason) == (sid, Reason.RESET_NEEDED)
    assert state(switch, sid) is State.SV_PARKED


# ---- 7. link and transaction times ------------------------------------------------------------


def test_link_and_transaction_times(switch: Switch) -> None:
    (server,) = setup(switch)
    (sid,) = server_ids(switch)
    c, cid = client(switch)
    before = time.time_ns() // 1000
    c.sendall(m.query("begin"))
    serve_one(server, m.query("begin"), b"T")
    read_exact(c, len(ANSWER) + 6)
    after = time.time_ns() // 1000
    rows = {r.conn: r for r in switch.conns()}
    assert before <= rows[sid].link_us <= after
    assert rows[cid].link_us == rows[sid].link_us
    assert before <= rows[sid].xact_us <= after
    assert rows[cid].xact_us == rows[sid].xact_us
    time.sleep(0.05)
    c.sendall(m.query("commit"))
    serve_one(server, m.query("commit"))
    read_exact(c, len(ANSWER) + 6)
    wait_for(lambda: state(switch, sid) is State.SV_IDLE)
    rows = {r.conn: r for r in switch.conns()}
    assert (rows[sid].link_us, rows[sid].xact_us) == (0, 0)
    assert (rows[cid].link_us, rows[cid].xact_us) == (0, 0)


def test_session_link_time_stays_and_xact_time_follows_the_transaction(switch: Switch) -> None:
    (server,) = setup(switch, Mode.SESSION)
    (sid,) = server_ids(switch)
    c, cid = client(switch)
    c.sendall(m.query("select 1"))
    serve_one(server, m.query("select 1"))
    read_exact(c, len(ANSWER) + 6)
    first = {r.conn: r for r in switch.conns()}
    assert first[sid].link_us > 0
    assert first[sid].xact_us == 0  # idle in the session: no transaction
    time.sleep(0.02)
    c.sendall(m.query("begin"))
    serve_one(server, m.query("begin"), b"T")
    read_exact(c, len(ANSWER) + 6)
    second = {r.conn: r for r in switch.conns()}
    assert second[sid].link_us == first[sid].link_us
    assert second[sid].xact_us >= first[sid].link_us + 20_000
    assert second[cid].xact_us == second[sid].xact_us


def test_each_link_counts_one_server_assignment(switch: Switch) -> None:
    """SHOW STATS' server_assignment_count: one per server given to a client (transaction
    mode: one per transaction), read from the pool snapshot."""
    (server,) = setup(switch)
    c, _ = client(switch)
    for n in (1, 2, 3):
        c.sendall(m.query(f"select {n}"))
        serve_one(server, m.query(f"select {n}"))
        assert read_exact(c, len(ANSWER) + 6) == ANSWER + m.ready_for_query()
    wait_for(lambda: switch.pools()[0].assign_count == 3)
    assert switch.pools()[0].xact_count == 3


@pytest.mark.parametrize(
    ("header", "text"),
    [
        (b"Q" + struct.pack("!i", -1), b"bad packet header: type 'Q' length -1"),
        (b"Q" + struct.pack("!i", 2), b"bad packet header: type 'Q' length 2"),
    ],
)
def test_a_malformed_header_gets_a_fatal_08p01_naming_it_then_eof(
    switch: Switch, header: bytes, text: bytes
) -> None:
    """The client hears why it is dropped, as it would at login; nothing reaches a server."""
    (server,) = setup(switch)
    c, _ = client(switch)
    c.sendall(header)
    got = b""
    c.settimeout(5)
    while chunk := c.recv(4096):
        got += chunk
    assert got[:1] == b"E" and struct.unpack("!i", got[1:5])[0] == len(got) - 1
    assert b"SFATAL\0" in got and b"C08P01\0" in got and text in got
    assert_silent(server, 0.1)


def test_waiting_is_the_queue_length_now(switch: Switch) -> None:
    """What Python reads when it handles WAITERS: a client the event counted that has a
    server since is not counted (Python would open a server nobody needs)."""
    events = Events(switch)
    switch.add_pool(POOL, Mode.TRANSACTION)
    c, _cid = client(switch)
    c.sendall(m.query("select 1"))
    ev = events.wait(lambda ev: ev.kind is EventKind.WAITERS)
    assert ev.reason == 1 and switch.waiting(POOL) == 1
    server, fd = pair()
    switch.add_server(fd, POOL)  # given to the waiter
    serve_one(server, m.query("select 1"))
    assert read_exact(c, len(ANSWER) + 6) == ANSWER + m.ready_for_query()
    assert switch.waiting(POOL) == 0
    with pytest.raises(KeyError):
        switch.waiting(POOL + 1)
