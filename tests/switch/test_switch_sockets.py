"""The switch driven through real sockets with PostgreSQL v3 bytes: forwarding, the transaction
and batch boundary, the hand-off, refusals, flow control and the counters."""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import threading
import time

import pytest

from pgfunnel._switch import (
    WAIT_BUCKETS_US,
    EventKind,
    Kind,
    Mode,
    Reason,
    State,
    Switch,
)
from pgfunnel.pool.scheduler import WAIT_BUCKETS
from pgfunnel.proto import messages as m
from tests.switch.conftest import (
    LONG_TX,
    SERVER_GONE,
    UNSUPPORTED,
    Events,
    assert_eof,
    assert_silent,
    make_switch,
    pair,
    read_exact,
    wait_for,
)

POOL = 1

PARSE = m.message(b"P", b"\0select 1\0\0\0")
BIND = m.message(b"B", b"\0\0\0\0\0\0\0\0")
EXECUTE = m.message(b"E", b"\0\0\0\0\0")
FLUSH = m.message(b"H")
SYNC = m.message(b"S")
ANSWER = m.command_complete("SELECT 1")


def server_state(sw: Switch, sid: int) -> State:
    return next(c.state for c in sw.conns() if c.conn == sid)


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


def serve_one(server: socket.socket, expect: bytes, status: bytes = b"I") -> None:
    """Plays the server for one request: checks its bytes, answers, says `status`."""
    assert read_exact(server, len(expect)) == expect
    server.sendall(ANSWER + m.ready_for_query(status))


def test_wait_buckets_match_the_scheduler() -> None:
    assert tuple(round(b * 1_000_000) for b in WAIT_BUCKETS) == WAIT_BUCKETS_US


def test_query_goes_through_and_the_server_returns_to_the_pool(switch: Switch) -> None:
    (server,) = setup(switch)
    c, _ = client(switch)
    c.sendall(m.query("select 1"))
    serve_one(server, m.query("select 1"))
    assert read_exact(c, len(ANSWER) + 6) == ANSWER + m.ready_for_query()
    wait_for(lambda: switch.pools()[0].sv_idle == 1)
    # The same server, idle again, serves the next query of another client.
    c2, _ = client(switch)
    c2.sendall(m.query("select 2"))
    serve_one(server, m.query("select 2"))
    assert read_exact(c2, len(ANSWER) + 6) == ANSWER + m.ready_for_query()


def test_idle_servers_are_reused_last_in_first_out(switch: Switch) -> None:
    first, second = setup(switch, servers=2)
    c, _ = client(switch)
    c.sendall(m.query("select 1"))
    serve_one(second, m.query("select 1"))
    assert_silent(first)


def test_waiters_are_served_first_in_first_out(switch: Switch) -> None:
    events = Events(switch)
    (server,) = setup(switch)
    a, _ = client(switch)
    a.sendall(m.query("a"))
    assert read_exact(server, len(m.query("a"))) == m.query("a")
    b, _ = client(switch)
    b.sendall(m.query("b"))
    waiters = events.wait(lambda e: e.kind is EventKind.WAITERS)
    assert waiters.pool == POOL
    c, _ = client(switch)
    c.sendall(m.query("c"))
    wait_for(lambda: switch.pools()[0].cl_waiting == 2)
    server.sendall(ANSWER + m.ready_for_query())
    serve_one(server, m.query("b"))
    serve_one(server, m.query("c"))
    for sock in (a, b, c):
        assert read_exact(sock, len(ANSWER) + 6).endswith(m.ready_for_query())
    wait_for(lambda: switch.pools()[0].sv_idle == 1)
    pool = switch.pools()[0]
    assert sum(pool.wait_hist) == 2  # b and c waited; a found the server idle
    # One WAITERS per episode: c queued behind b without a second event.
    assert [e.kind for e in events.poll()].count(EventKind.WAITERS) == 1


def test_a_waiting_client_that_leaves_is_out_of_the_queue(switch: Switch) -> None:
    events = Events(switch)
    (server,) = setup(switch)
    a, _ = client(switch)
    a.sendall(m.query("a"))
    read_exact(server, len(m.query("a")))
    b, bid = client(switch)
    b.sendall(m.query("b"))
    wait_for(lambda: switch.pools()[0].cl_waiting == 1)
    b.close()
    closed = events.wait(lambda e: e.kind is EventKind.CLOSED and e.conn == bid)
    assert closed.reason == Reason.CLIENT_EOF
    assert switch.pools()[0].cl_waiting == 0
    server.sendall(ANSWER + m.ready_for_query())
    read_exact(a, len(ANSWER) + 6)
    wait_for(lambda: switch.pools()[0].sv_idle == 1)
    assert_silent(server)  # b's query went nowhere
    c, _ = client(switch)
    c.sendall(m.query("c"))
    serve_one(server, m.query("c"))


def test_python_closing_a_waiting_client(switch: Switch) -> None:
    setup(switch, servers=0)
    a, aid = client(switch)
    a.sendall(m.query("a"))
    wait_for(lambda: switch.pools()[0].cl_waiting == 1)
    err = m.error_response("08P01", "query_wait_timeout", severity="FATAL")
    assert switch.close(aid, err)
    assert assert_eof(a) == err
    assert switch.pools()[0].cl_waiting == 0


def test_a_batch_without_sync_keeps_the_server(switch: Switch) -> None:
    """Issue 10 point 1: Parse/Bind/Execute/Flush, then the client leaves: the server is not
    handed to the next client, it is reported to Python."""
    events = Events(switch)
    (server,) = setup(switch)
    a, _ = client(switch)
    batch = PARSE + BIND + EXECUTE + FLUSH
    a.sendall(batch)
    assert read_exact(server, len(batch)) == batch
    server.sendall(m.message(b"1") + m.message(b"2") + ANSWER)  # no ReadyForQuery: no Sync
    b, _ = client(switch)
    b.sendall(m.query("select 2"))
    wait_for(lambda: switch.pools()[0].cl_waiting == 1)
    a.close()
    att = events.wait(lambda e: e.kind is EventKind.ATTENTION)
    assert att.reason == Reason.DIRTY_PARTIAL
    assert_silent(server)  # b's query never reached it
    assert switch.pools()[0].cl_waiting == 1


def test_a_synced_batch_releases_and_a_later_unsynced_one_does_not(switch: Switch) -> None:
    (server,) = setup(switch)
    a, aid = client(switch)
    a.sendall(PARSE + BIND + EXECUTE + SYNC)
    read_exact(server, len(PARSE + BIND + EXECUTE + SYNC))
    server.sendall(ANSWER + m.ready_for_query())
    read_exact(a, len(ANSWER) + 6)
    wait_for(lambda: switch.pools()[0].sv_idle == 1)
    a.sendall(PARSE + BIND + EXECUTE + FLUSH)
    read_exact(server, len(PARSE + BIND + EXECUTE + FLUSH))
    server.sendall(ANSWER)
    read_exact(a, len(ANSWER))
    conn = next(c for c in switch.conns() if c.conn == aid)
    assert conn.state is State.CL_LINKED  # the batch is open: the server stays with a


def test_a_terminate_split_across_reads_reaches_no_server(switch: Switch) -> None:
    """Issue 10 point 3: `X\\0\\0` then `\\0\\x04`."""
    events = Events(switch)
    (server,) = setup(switch)
    a, aid = client(switch)
    a.sendall(m.query("select 1"))
    serve_one(server, m.query("select 1"))
    read_exact(a, len(ANSWER) + 6)
    a.sendall(m.query("select 2"))
    serve_one(server, m.query("select 2"))
    read_exact(a, len(ANSWER) + 6)
    a.sendall(b"X\0\0")
    assert_silent(server)
    a.sendall(b"\0\x04")
    closed = events.wait(lambda e: e.kind is EventKind.CLOSED and e.conn == aid)
    assert closed.reason == Reason.CLIENT_TERMINATE
    assert_silent(server)
    b, _ = client(switch)
    b.sendall(m.query("select 3"))
    serve_one(server, m.query("select 3"))  # nothing glued in front of it


def test_a_header_split_byte_by_byte_arrives_whole(switch: Switch) -> None:
    (server,) = setup(switch)
    a, _ = client(switch)
    stream = PARSE + BIND + EXECUTE + SYNC + m.query("select 1")
    for i in range(len(stream)):
        a.send(stream[i : i + 1])
    assert read_exact(server, len(stream)) == stream
    server.sendall(ANSWER + m.ready_for_query() + ANSWER + m.ready_for_query())
    reply = ANSWER + m.ready_for_query() + ANSWER + m.ready_for_query()
    assert read_exact(a, len(reply)) == reply
    wait_for(lambda: switch.pools()[0].sv_idle == 1)


def test_a_ready_for_query_split_across_reads_still_releases(switch: Switch) -> None:
    (server,) = setup(switch)
    a, _ = client(switch)
    a.sendall(m.query("select 1"))
    read_exact(server, len(m.query("select 1")))
    reply = ANSWER + m.ready_for_query()
    for i in range(len(reply)):
        server.send(reply[i : i + 1])
    assert read_exact(a, len(reply)) == reply
    wait_for(lambda: switch.pools()[0].sv_idle == 1)


@pytest.mark.parametrize("kind", [b"\0", b"?", b"p"])
def test_unknown_message_types_are_refused_and_never_forwarded(switch: Switch, kind: bytes) -> None:
    events = Events(switch)
    (server,) = setup(switch)
    a, aid = client(switch)
    a.sendall(m.message(kind, b"hello\0"))
    assert assert_eof(a) == UNSUPPORTED
    closed = events.wait(lambda e: e.kind is EventKind.CLOSED and e.conn == aid)
    assert closed.reason == Reason.UNKNOWN_TYPE
    assert_silent(server)
    assert switch.pools()[0].sv_idle == 1


def test_unknown_type_after_a_query_on_a_linked_server(switch: Switch) -> None:
    """The query before it is forwarded; the refused message is not; the server, owed an
    answer, is reported rather than reused."""
    events = Events(switch)
    (server,) = setup(switch)
    a, _ = client(switch)
    a.sendall(m.query("select 1"))
    assert read_exact(server, len(m.query("select 1"))) == m.query("select 1")
    a.sendall(m.message(b"?"))
    assert assert_eof(a) == UNSUPPORTED
    att = events.wait(lambda e: e.kind is EventKind.ATTENTION)
    assert att.reason == Reason.DIRTY_BUSY
    assert_silent(server)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"Q\0\0\0\x02", Reason.BAD_PACKET),
        (b"Q\x7f\xff\xff\xff", Reason.TOO_BIG),
        (b"X\0\0\0\x05\0", Reason.BAD_PACKET),
    ],
)
def test_a_bad_length_ends_that_client_alone(switch: Switch, data: bytes, reason: Reason) -> None:
    sw = make_switch(max_packet_size=1 << 20)
    sw.start()
    try:
        events = Events(sw)
        (server,) = setup(sw)
        a, aid = client(sw)
        a.sendall(data)
        assert_eof(a)
        closed = events.wait(lambda e: e.kind is EventKind.CLOSED and e.conn == aid)
        assert closed.reason == reason
        assert_silent(server)
        b, _ = client(sw)  # the switch goes on
        b.sendall(m.query("select 1"))
        serve_one(server, m.query("select 1"))
        read_exact(b, len(ANSWER) + 6)
    finally:
        sw.stop()


def test_a_server_vanishing_mid_message_ends_its_client_alone(switch: Switch) -> None:
    events = Events(switch)
    server, other = setup(switch, servers=2)
    a, _ = client(switch)
    a.sendall(m.query("select 1"))
    read_exact(other, len(m.query("select 1")))  # LIFO: the second server
    other.sendall(m.data_row(["x" * 100])[:20])
    other.close()
    got = assert_eof(a)
    assert got.endswith(SERVER_GONE)
    wait_for(lambda: len({e.conn for e in events.poll() if e.kind is EventKind.CLOSED}) == 2)
    kinds = {(e.kind, e.reason) for e in events.poll()}
    assert (EventKind.CLOSED, Reason.SERVER_EOF) in kinds
    assert (EventKind.CLOSED, Reason.SERVER_GONE) in kinds
    b, _ = client(switch)
    b.sendall(m.query("select 2"))
    serve_one(server, m.query("select 2"))
    read_exact(b, len(ANSWER) + 6)


def test_a_server_message_over_max_packet_size_ends_that_pair(switch: Switch) -> None:
    sw = make_switch(max_packet_size=1000)
    sw.start()
    try:
        events = Events(sw)
        (server,) = setup(sw)
        a, _ = client(sw)
        a.sendall(m.query("select 1"))
        read_exact(server, len(m.query("select 1")))
        server.sendall(b"D\0\0\x10\0")
        assert assert_eof(a).endswith(SERVER_GONE)
        assert assert_eof(server) == b""
        closed = events.wait(lambda e: e.kind is EventKind.CLOSED and e.reason == Reason.TOO_BIG)
        assert closed.pool == POOL
    finally:
        sw.stop()


def test_a_client_leaving_mid_message_gets_its_server_reported(switch: Switch) -> None:
    events = Events(switch)
    (server,) = setup(switch)
    a, _ = client(switch)
    # longer than the 8 KiB a transaction pool holds whole to look at: forwarded as it comes
    big = m.query("select '" + "x" * 9000 + "'")
    a.sendall(big[:100])
    assert read_exact(server, 100) == big[:100]
    a.close()
    att = events.wait(lambda e: e.kind is EventKind.ATTENTION)
    assert att.reason == Reason.DIRTY_PARTIAL


def test_a_query_of_up_to_8_kib_is_held_until_whole(switch: Switch) -> None:
    """A transaction pool looks at each Query of up to 8 KiB whole (hazards, session
    commands): its first half reaches no server, and a client that leaves there leaves no
    server behind it dirty."""
    events = Events(switch)
    (server,) = setup(switch)
    a, _ = client(switch)
    q = m.query("select '" + "x" * 5000 + "'")
    a.sendall(q[:100])
    assert_silent(server)
    a.sendall(q[100:])
    assert read_exact(server, len(q)) == q
    serve_one(server, b"", status=b"I")
    read_exact(a, len(ANSWER) + 6)
    b, _ = client(switch)
    b.sendall(q[:100])
    assert_silent(server)
    b.close()
    events.wait(lambda e: e.kind is EventKind.CLOSED)
    assert not [e for e in events.seen if e.kind is EventKind.ATTENTION]
    assert switch.pools()[0].sv_idle == 1


def test_a_client_leaving_inside_a_transaction(switch: Switch) -> None:
    events = Events(switch)
    (server,) = setup(switch)
    a, _ = client(switch)
    a.sendall(m.query("begin"))
    serve_one(server, m.query("begin"), status=b"T")
    read_exact(a, len(ANSWER) + 6)
    b, _ = client(switch)
    b.sendall(m.query("select 1"))
    wait_for(lambda: switch.pools()[0].cl_waiting == 1)
    a.close()
    att = events.wait(lambda e: e.kind is EventKind.ATTENTION)
    assert att.reason == Reason.DIRTY_TXN
    assert server_state(switch, att.conn) is State.SV_PARKED
    assert_silent(server)
    # Python takes it back (to run ROLLBACK), then hands it in again: b is served.
    fd, held = switch.detach(att.conn)
    assert held == b""
    sock = socket.socket(fileno=fd)
    sock.close()  # closing our end of the switch's side closes the pair
    assert assert_eof(server) == b""


def test_detach_gives_back_a_working_server(switch: Switch) -> None:
    (server,) = setup(switch)
    sid = next(c.conn for c in switch.conns() if c.kind is Kind.SERVER)
    fd, _ = switch.detach(sid)
    with socket.socket(fileno=fd) as mine:
        mine.sendall(m.query("mine"))
        assert read_exact(server, len(m.query("mine"))) == m.query("mine")
        mine.setblocking(True)
        server.sendall(m.ready_for_query())
        assert mine.recv(6) == m.ready_for_query()
        new_fd = mine.detach()
    switch.add_server(new_fd, POOL)
    a, _ = client(switch)
    a.sendall(m.query("select 1"))
    serve_one(server, m.query("select 1"))


def test_session_mode_keeps_the_server_until_the_client_leaves(switch: Switch) -> None:
    events = Events(switch)
    (server,) = setup(switch, mode=Mode.SESSION)
    a, _ = client(switch)
    a.sendall(m.query("select 1"))
    serve_one(server, m.query("select 1"))
    read_exact(a, len(ANSWER) + 6)
    b, _ = client(switch)
    b.sendall(m.query("select 2"))
    wait_for(lambda: switch.pools()[0].cl_waiting == 1)
    assert_silent(server)
    a.sendall(m.terminate())
    att = events.wait(lambda e: e.kind is EventKind.ATTENTION)
    assert att.reason == Reason.SESSION_END
    assert_silent(server)


def test_statement_mode_refuses_a_transaction(switch: Switch) -> None:
    events = Events(switch)
    (server,) = setup(switch, mode=Mode.STATEMENT)
    a, _ = client(switch)
    a.sendall(m.query("select 1"))
    serve_one(server, m.query("select 1"))
    first = ANSWER + m.ready_for_query()
    assert read_exact(a, len(first)) == first
    a.sendall(m.query("begin"))
    read_exact(server, len(m.query("begin")))
    server.sendall(m.command_complete("BEGIN") + m.ready_for_query(b"T"))
    # The BEGIN's answer is replaced by the reason; the server is not reused.
    assert assert_eof(a) == LONG_TX
    assert assert_eof(server) == b""
    closed = events.wait(lambda e: e.kind is EventKind.CLOSED and e.reason == Reason.LONG_TX)
    assert closed.pool == POOL


def test_a_client_that_does_not_read_stops_its_server_being_read(switch: Switch) -> None:
    """Bounded buffers: the switch holds at most buffer_size for the client; past that the
    server's socket fills and its writes block. All bytes arrive once the client reads."""
    sw = make_switch(buffer_size=4096)
    sw.start()
    try:
        (server,) = setup(sw)
        a, _ = client(sw)
        a.sendall(m.query("select big"))
        read_exact(server, len(m.query("select big")))
        row = m.data_row(["y" * 1000])
        blob = row * 4000 + ANSWER + m.ready_for_query()
        server.setblocking(False)
        sent = 0
        with pytest.raises(BlockingIOError):
            while sent < len(blob):
                sent += server.send(blob[sent : sent + 65536])
        assert sent < len(blob)
        server.setblocking(True)
        server.settimeout(10)

        async def pump() -> bytes:
            loop = asyncio.get_running_loop()
            writer = loop.run_in_executor(None, server.sendall, blob[sent:])
            got = await loop.run_in_executor(None, read_exact, a, len(blob))
            await writer
            return got

        assert asyncio.run(pump()) == blob
        wait_for(lambda: sw.pools()[0].sv_idle == 1)
    finally:
        sw.stop()


def test_a_server_that_does_not_read_stops_its_client_being_read(switch: Switch) -> None:
    """The other direction, with one message 256 times the buffer: its body flows as it comes
    (the switch never needs it whole), bounded, and arrives intact."""
    sw = make_switch(buffer_size=4096)
    sw.start()
    try:
        (server,) = setup(sw)
        a, _ = client(sw)
        big = m.query("select '" + "q" * (1 << 20) + "'")
        a.setblocking(False)
        sent = 0
        with pytest.raises(BlockingIOError):
            while sent < len(big):
                sent += a.send(big[sent : sent + 65536])
        assert sent < len(big)
        a.setblocking(True)
        a.settimeout(10)

        async def pump() -> bytes:
            loop = asyncio.get_running_loop()
            writer = loop.run_in_executor(None, a.sendall, big[sent:])
            got = await loop.run_in_executor(None, read_exact, server, len(big))
            await writer
            return got

        assert asyncio.run(pump()) == big
        server.sendall(ANSWER + m.ready_for_query())
        assert read_exact(a, len(ANSWER) + 6) == ANSWER + m.ready_for_query()
        wait_for(lambda: sw.pools()[0].sv_idle == 1)
    finally:
        sw.stop()


def test_a_waiting_client_is_read_only_up_to_the_buffer(switch: Switch) -> None:
    sw = make_switch(buffer_size=4096)
    sw.start()
    try:
        (server,) = setup(sw)
        hog, _ = client(sw)
        hog.sendall(m.query("hold"))
        read_exact(server, len(m.query("hold")))
        a, _ = client(sw)
        a.setblocking(False)
        queries = m.query("z" * 100) * 20000
        sent = 0
        with pytest.raises(BlockingIOError):
            while sent < len(queries):
                sent += a.send(queries[sent : sent + 65536])
        assert sent < len(queries)
    finally:
        sw.stop()


def test_counters_and_snapshots(switch: Switch) -> None:
    (server,) = setup(switch)
    a, aid = client(switch)
    for i in range(3):
        a.sendall(m.query(f"select {i}"))
        serve_one(server, m.query(f"select {i}"))
        read_exact(a, len(ANSWER) + 6)
    wait_for(lambda: switch.pools()[0].xact_count == 3)
    pool = switch.pools()[0]
    assert pool.query_count == 3
    assert pool.bytes_received == sum(len(m.query(f"select {i}")) for i in range(3))
    assert pool.bytes_sent == 3 * (len(ANSWER) + 6)
    assert pool.mode is Mode.TRANSACTION
    conns = {c.conn: c for c in switch.conns()}
    assert conns[aid].kind is Kind.CLIENT
    assert conns[aid].connect_time_us <= conns[aid].request_time_us
    servers = [c for c in conns.values() if c.kind is Kind.SERVER]
    assert [s.tx_status for s in servers] == ["I"]


def test_close_needed_parks_the_server_at_release(switch: Switch) -> None:
    events = Events(switch)
    (server,) = setup(switch)
    sid = next(c.conn for c in switch.conns() if c.kind is Kind.SERVER)
    a, _ = client(switch)
    a.sendall(m.query("select 1"))
    read_exact(server, len(m.query("select 1")))
    assert switch.set_close_needed(sid)
    server.sendall(ANSWER + m.ready_for_query())
    att = events.wait(lambda e: e.kind is EventKind.ATTENTION)
    assert (att.conn, att.reason) == (sid, Reason.CLOSE_NEEDED)
    assert switch.close(sid)
    assert assert_eof(server) == b""


def test_python_closing_an_active_server_ends_its_client(switch: Switch) -> None:
    """query_timeout, KILL: the client cannot go on without its server."""
    events = Events(switch)
    (server,) = setup(switch)
    sid = next(c.conn for c in switch.conns() if c.kind is Kind.SERVER)
    a, aid = client(switch)
    a.sendall(m.query("select pg_sleep(100)"))
    read_exact(server, len(m.query("select pg_sleep(100)")))
    assert switch.close(sid)
    assert assert_eof(a) == SERVER_GONE
    assert assert_eof(server) == b""
    closed = events.wait(lambda e: e.kind is EventKind.CLOSED)
    assert (closed.conn, closed.reason) == (aid, Reason.SERVER_GONE)
    assert [e.conn for e in events.poll()] == [aid]  # nothing about the server Python closed


def test_detach_gives_back_a_waiting_client_with_what_it_sent(switch: Switch) -> None:
    setup(switch, servers=0)
    a, aid = client(switch)
    a.sendall(m.query("select 1") + b"Q\0")
    wait_for(lambda: switch.pools()[0].cl_waiting == 1)
    fd, held = switch.detach(aid)
    assert held == m.query("select 1") + b"Q\0"
    assert switch.pools()[0].cl_waiting == 0
    with socket.socket(fileno=fd) as mine:
        mine.sendall(b"back to Python")
        assert read_exact(a, 14) == b"back to Python"


def test_send_and_close_reach_a_client_without_a_server(switch: Switch) -> None:
    setup(switch, servers=0)
    a, aid = client(switch)
    notice = m.notice_response("waiting")
    switch.send(aid, notice)
    assert read_exact(a, len(notice)) == notice
    err = m.error_response("08P01", "query_wait_timeout", severity="FATAL")
    assert switch.close(aid, err)
    assert assert_eof(a) == err
    assert not switch.close(aid)


def test_a_server_closed_by_python_gets_its_terminate(switch: Switch) -> None:
    """As PgBouncer: the pooler ends a server's session with Terminate, not a bare EOF."""
    (srv,) = setup(switch)
    (sid,) = [c.conn for c in switch.conns() if c.kind is Kind.SERVER]
    assert switch.close(sid, m.terminate())
    assert assert_eof(srv) == m.terminate()
    assert not switch.close(sid, m.terminate())


def test_a_terminate_never_lands_inside_half_a_message(switch: Switch) -> None:
    """A server closed while client bytes still wait to be written to it gets no Terminate:
    PostgreSQL would read it as the rest of the message. What it got ends at EOF."""
    (srv,) = setup(switch)
    (sid,) = [c.conn for c in switch.conns() if c.kind is Kind.SERVER]
    a, _aid = client(switch)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    big = m.query("select '" + "x" * 4_000_000 + "'")

    def send() -> None:
        with contextlib.suppress(OSError):  # the switch closes it: its server is gone
            a.sendall(big)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    # The server reads nothing: the switch holds what the socket will not take.
    wait_for(lambda: next(c for c in switch.conns() if c.conn == sid).peer != 0)
    time.sleep(0.3)
    assert switch.close(sid, m.terminate())
    got = assert_eof(srv)
    assert 0 < len(got) < len(big) and big.startswith(got)
    sender.join(5)  # its client is closed with it (a reset: it was still sending)
    assert not sender.is_alive()
    a.close()


@pytest.mark.parametrize("how", ["linked", "parked"])
def test_no_terminate_after_part_of_a_messages_body(switch: Switch, how: str) -> None:
    """A server that has a message's header and part of its body (the switch forwards bodies
    as they come) gets no Terminate: PostgreSQL would read it as the rest of that body. Linked:
    Python closes the server under its client. Parked: the client left mid-message."""
    events = Events(switch)
    (srv,) = setup(switch)
    (sid,) = [c.conn for c in switch.conns() if c.kind is Kind.SERVER]
    a, _aid = client(switch)
    head = m.query("select '" + "x" * 9000 + "'")[:40]  # a header and 35 bytes of its body
    a.sendall(head)
    assert read_exact(srv, len(head)) == head
    if how == "parked":
        a.close()
        ev = events.wait(lambda ev: ev.kind is EventKind.ATTENTION and ev.conn == sid)
        assert ev.reason == Reason.DIRTY_PARTIAL
    assert switch.close(sid, m.terminate())
    assert assert_eof(srv) == b""  # nothing after the part it had: no Terminate
    if how == "linked":
        assert SERVER_GONE in assert_eof(a)


async def test_the_event_fd_wakes_an_asyncio_loop(switch: Switch) -> None:
    setup(switch, servers=0)
    loop = asyncio.get_running_loop()
    woke = asyncio.Event()
    loop.add_reader(switch.fileno(), woke.set)
    try:
        a, aid = client(switch)
        a.close()
        await asyncio.wait_for(woke.wait(), 5)
        events = switch.events()
        assert [(e.kind, e.conn, e.reason) for e in events] == [
            (EventKind.CLOSED, aid, Reason.CLIENT_EOF)
        ]
    finally:
        loop.remove_reader(switch.fileno())


def _readable_at(fd: int, timeout: float = 5.0) -> float:
    """time.monotonic() once `fd` is readable, polled without calling the switch (a command
    hands Python whatever events wait)."""
    deadline = time.monotonic() + timeout
    while not select.select([fd], [], [], 0.001)[0]:
        assert time.monotonic() < deadline, "the event fd never became readable"
    return time.monotonic()


def test_a_pooled_clients_close_wakes_python_only_when_due(switch: Switch) -> None:
    """A pooled client's CLOSED (and a switch login's LOGGED_IN) needs only logging and
    counting: the switch lets it wait LAZY_US (50 ms) for a wake-up it does not cause, and
    the event keeps the time it happened."""
    setup(switch, servers=0)
    a, aid = client(switch)
    switch.events()  # nothing waits now, and the fd is read
    a.close()
    woke = _readable_at(switch.fileno())
    (ev,) = switch.events()
    assert (ev.kind, ev.conn, ev.reason) == (EventKind.CLOSED, aid, Reason.CLIENT_EOF)
    assert ev.at + 0.05 - 1e-6 <= woke


def test_an_event_python_must_hear_brings_the_waiting_ones_in_order(switch: Switch) -> None:
    """A server's CLOSED wakes Python at once; the client's CLOSED that waited comes first."""
    switch.add_pool(POOL, Mode.TRANSACTION)
    srv, fd = pair()
    sid = switch.add_server(fd, POOL)
    a, aid = client(switch)
    switch.events()
    a.close()
    time.sleep(0.02)  # the loop handles a's EOF (not due for 50 ms) before the server's
    srv.close()
    seen = Events(switch)
    seen.wait(lambda e: e.conn == sid)
    assert [(e.kind, e.conn) for e in seen.seen] == [
        (EventKind.CLOSED, aid),
        (EventKind.CLOSED, sid),
    ]
