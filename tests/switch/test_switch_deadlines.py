"""The switch's deadlines (set_timeouts, DEADLINE events, expire): each fires once per episode
for the right connection after its timeout, not before, again only after a new episode; a late
`expire` does nothing; with no timeouts the switch's thread does not wake at all."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgfunnel._switch import Event, EventKind, Mode, Reason, State, Switch
from pgfunnel.proto import messages as m
from pgfunnel.throwaway import Cluster
from tests.switch.conftest import (
    Events,
    assert_eof,
    assert_silent,
    make_switch,
    pair,
    pg_login,
    read_exact,
    read_until_z,
    wait_for,
)

POOL = 3
MS = 1000  # µs
ANSWER = m.command_complete("SELECT 1")
FINAL = m.error_response("08P01", "deadline passed", severity="FATAL")


@pytest.fixture
def sw() -> Iterator[Switch]:
    """A switch that sweeps every 20 ms, so that 0.3 s timeouts are seen in time."""
    s = make_switch(tick_ms=20)
    s.start()
    yield s
    s.stop()


def setup(
    sw: Switch, mode: Mode = Mode.TRANSACTION, servers: int = 1
) -> list[tuple[socket.socket, int]]:
    sw.add_pool(POOL, mode)
    out = []
    for _ in range(servers):
        ours, fd = pair()
        out.append((ours, sw.add_server(fd, POOL)))
    return out


def client(sw: Switch) -> tuple[socket.socket, int]:
    ours, fd = pair()
    return ours, sw.add_client(fd, POOL)


def deadlines(events: Events, reason: Reason, conn: int | None = None) -> list[Event]:
    return [
        e
        for e in events.poll()
        if e.kind is EventKind.DEADLINE and e.reason == reason and (conn is None or e.conn == conn)
    ]


def wait_deadline(events: Events, reason: Reason, conn: int) -> float:
    """Waits for the DEADLINE; returns when it was seen (time.monotonic)."""
    wait_for(lambda: deadlines(events, reason, conn), timeout=5)
    return time.monotonic()


def state(sw: Switch, conn: int) -> State:
    return next(c.state for c in sw.conns() if c.conn == conn)


def serve(server: socket.socket, request: bytes, status: bytes = b"I") -> None:
    assert read_exact(server, len(request)) == request
    server.sendall(ANSWER + m.ready_for_query(status))


def answered(sock: socket.socket, status: bytes = b"I") -> None:
    assert read_exact(sock, len(ANSWER) + 6) == ANSWER + m.ready_for_query(status)


# --- no timeouts, no wake-ups --------------------------------------------------------------


def _tasks() -> set[str]:
    return set(os.listdir("/proc/self/task"))


def _switches(tid: str) -> int:
    """Context switches of one thread: it only changes when the thread runs."""
    text = Path(f"/proc/self/task/{tid}/status").read_text()
    return sum(
        int(line.split()[1])
        for line in text.splitlines()
        if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"))
    )


def test_without_timeouts_the_switch_thread_does_not_wake() -> None:
    sw = make_switch(tick_ms=5)
    before = _tasks()
    sw.start()
    try:
        (tid,) = _tasks() - before
        ((server, _),) = setup(sw)
        c, _ = client(sw)
        c.sendall(m.query("select 1"))
        serve(server, m.query("select 1"))
        answered(c)
        wait_for(lambda: sw.pools()[0].sv_idle == 1)
        time.sleep(0.05)
        quiet = _switches(tid)
        time.sleep(0.5)  # 100 ticks, had the timer been armed
        assert _switches(tid) == quiet
        assert sw.ticks() == 0
        # A timeout anywhere arms it ...
        sw.set_timeouts(POOL, server_idle=60_000 * MS)
        wait_for(lambda: sw.ticks() >= 5)
        assert _switches(tid) > quiet
        # ... and none anywhere stops it again, at once.
        sw.set_timeouts(POOL)
        ticks = sw.ticks()
        time.sleep(0.05)
        quiet = _switches(tid)
        time.sleep(0.3)
        assert (sw.ticks(), _switches(tid)) == (ticks, quiet)
    finally:
        sw.stop()


# --- query_wait ------------------------------------------------------------------------------


def test_query_wait_fires_once_per_wait_and_a_late_expire_does_nothing(sw: Switch) -> None:
    events = Events(sw)
    ((server, _),) = setup(sw)
    sw.set_timeouts(POOL, query_wait=300 * MS)
    a, aid = client(sw)
    a.sendall(m.query("a"))
    assert read_exact(server, len(m.query("a"))) == m.query("a")  # a holds the only server
    b, bid = client(sw)
    sent = time.monotonic()
    b.sendall(m.query("b"))
    seen = wait_deadline(events, Reason.QUERY_WAIT, bid)
    assert seen - sent >= 0.3
    assert not deadlines(events, Reason.QUERY_WAIT, aid)  # a is served, not waiting
    time.sleep(0.3)  # 15 more sweeps: still one event for this wait
    assert len(deadlines(events, Reason.QUERY_WAIT, bid)) == 1
    # b gets its server before Python acts: the late expire does nothing.
    server.sendall(ANSWER + m.ready_for_query())
    answered(a)
    serve(server, m.query("b"))
    answered(b)
    assert sw.expire(bid, Reason.QUERY_WAIT, FINAL) is False
    # A new wait is a new episode: reported again, and this time Python acts.
    a.sendall(m.query("a2"))
    assert read_exact(server, len(m.query("a2"))) == m.query("a2")
    b.sendall(m.query("b2"))
    wait_for(lambda: len(deadlines(events, Reason.QUERY_WAIT, bid)) == 2)
    assert sw.expire(bid, Reason.QUERY_WAIT, FINAL) is True
    assert assert_eof(b) == FINAL
    assert sw.pools()[0].cl_waiting == 0
    # Closed at Python's word: no CLOSED event for it.
    assert not [e for e in events.poll() if e.kind is EventKind.CLOSED and e.conn == bid]
    assert sw.expire(bid, Reason.QUERY_WAIT, FINAL) is False  # gone


def test_a_waiter_served_in_time_gets_no_deadline(sw: Switch) -> None:
    events = Events(sw)
    ((server, _),) = setup(sw)
    sw.set_timeouts(POOL, query_wait=400 * MS, reserve=400 * MS)
    a, _ = client(sw)
    b, _ = client(sw)
    for i in range(8):  # b waits ~0.05 s behind a, each time: a short wait, 8 times
        a.sendall(m.query(f"a{i}"))
        assert read_exact(server, len(m.query(f"a{i}"))) == m.query(f"a{i}")
        b.sendall(m.query(f"b{i}"))
        wait_for(lambda: sw.pools()[0].cl_waiting == 1)
        time.sleep(0.05)
        server.sendall(ANSWER + m.ready_for_query())
        answered(a)
        serve(server, m.query(f"b{i}"))
        answered(b)
    time.sleep(0.1)
    assert [e for e in events.poll() if e.kind is EventKind.DEADLINE] == []


def test_query_wait_notify_sends_the_notice_and_the_client_waits_on(sw: Switch) -> None:
    events = Events(sw)
    ((server, _),) = setup(sw)
    sw.set_timeouts(POOL, query_wait_notify=200 * MS, query_wait=5_000 * MS)
    a, _ = client(sw)
    a.sendall(m.query("a"))
    assert read_exact(server, len(m.query("a"))) == m.query("a")
    b, bid = client(sw)
    b.sendall(m.query("b"))
    wait_deadline(events, Reason.QUERY_WAIT_NOTIFY, bid)
    notice = m.notice_response("waiting for a server")
    assert sw.expire(bid, Reason.QUERY_WAIT_NOTIFY, notice) is True
    assert read_exact(b, len(notice)) == notice
    assert state(sw, bid) is State.CL_WAITING
    time.sleep(0.2)
    assert len(deadlines(events, Reason.QUERY_WAIT_NOTIFY, bid)) == 1
    assert not deadlines(events, Reason.QUERY_WAIT, bid)
    server.sendall(ANSWER + m.ready_for_query())
    answered(a)
    serve(server, m.query("b"))
    answered(b)


# --- query, idle_transaction ----------------------------------------------------------------


def test_query_timeout_fires_for_a_long_query_only(sw: Switch) -> None:
    events = Events(sw)
    ((server, sid),) = setup(sw)
    sw.set_timeouts(POOL, query=500 * MS)
    c, cid = client(sw)
    for i in range(8):  # 0.8 s of queries, each well under the timeout: nothing
        c.sendall(m.query(f"q{i}"))
        assert read_exact(server, len(m.query(f"q{i}"))) == m.query(f"q{i}")
        time.sleep(0.1)
        server.sendall(ANSWER + m.ready_for_query())
        answered(c)
    assert not deadlines(events, Reason.QUERY)
    sent = time.monotonic()
    c.sendall(m.query("slow"))
    assert read_exact(server, len(m.query("slow"))) == m.query("slow")
    seen = wait_deadline(events, Reason.QUERY, cid)
    assert seen - sent >= 0.5
    time.sleep(0.2)
    assert len(deadlines(events, Reason.QUERY, cid)) == 1
    assert not deadlines(events, Reason.QUERY, sid)  # reported for the client
    # Python acts: the client gets its error, the server (still running it) is closed.
    assert sw.expire(cid, Reason.QUERY, FINAL) is True
    assert assert_eof(c) == FINAL
    assert assert_eof(server) == b""
    wait_for(lambda: sw.conns() == [])


def test_query_timeout_counts_from_the_query_not_from_the_link(sw: Switch) -> None:
    """Session mode: a client linked for long, idle at status I, then a short query: nothing;
    the same query left unanswered: one QUERY."""
    events = Events(sw)
    ((server, _),) = setup(sw, Mode.SESSION)
    sw.set_timeouts(POOL, query=250 * MS, client_idle=250 * MS)
    c, cid = client(sw)
    c.sendall(m.query("one"))
    serve(server, m.query("one"))
    answered(c)
    time.sleep(0.4)  # linked and idle: neither QUERY nor CLIENT_IDLE (it holds a server)
    c.sendall(m.query("two"))
    serve(server, m.query("two"))
    answered(c)
    assert [e for e in events.poll() if e.kind is EventKind.DEADLINE] == []
    c.sendall(m.query("three"))
    assert read_exact(server, len(m.query("three"))) == m.query("three")
    wait_deadline(events, Reason.QUERY, cid)
    # The answer comes before Python acts: stale, nothing happens.
    server.sendall(ANSWER + m.ready_for_query())
    answered(c)
    assert sw.expire(cid, Reason.QUERY, FINAL) is False
    assert state(sw, cid) is State.CL_LINKED


def test_idle_transaction_on_a_real_server_is_reported_and_rolled_back(
    sw: Switch, pg: Cluster
) -> None:
    pg.psql("drop table if exists switch_deadline_t")
    events = Events(sw)
    sw.add_pool(POOL, Mode.TRANSACTION)
    sw.add_server(pg_login(pg).detach(), POOL)
    sw.set_timeouts(POOL, idle_transaction=300 * MS, query=300 * MS)
    c, cid = client(sw)
    sent = time.monotonic()
    c.sendall(m.query("begin; create table switch_deadline_t (v int)"))
    assert read_until_z(c)[-1] == (b"Z", b"T")
    seen = wait_deadline(events, Reason.IDLE_TRANSACTION, cid)
    assert seen - sent >= 0.3  # measured from the answer, which came after `sent`
    assert not deadlines(events, Reason.QUERY)
    # The client speaks again before Python acts: a new episode, the old event is stale ...
    c.sendall(m.query("insert into switch_deadline_t values (1)"))
    assert read_until_z(c)[-1] == (b"Z", b"T")
    assert sw.expire(cid, Reason.IDLE_TRANSACTION, FINAL) is False
    # ... and the new one, acted on, ends the client and the server: PostgreSQL rolls back.
    wait_for(lambda: len(deadlines(events, Reason.IDLE_TRANSACTION, cid)) == 2)
    assert sw.expire(cid, Reason.IDLE_TRANSACTION, FINAL) is True
    assert assert_eof(c) == FINAL
    wait_for(
        lambda: (
            pg.psql("select count(*) from pg_class where relname = 'switch_deadline_t'").strip()
            == "0"
        )
    )


def test_query_timeout_on_a_real_server(sw: Switch, pg: Cluster) -> None:
    events = Events(sw)
    sw.add_pool(POOL, Mode.TRANSACTION)
    sw.add_server(pg_login(pg).detach(), POOL)
    sw.set_timeouts(POOL, query=300 * MS, idle_transaction=300 * MS)
    c, cid = client(sw)
    c.sendall(m.query("select pg_sleep(0.05)"))
    assert read_until_z(c)[-1] == (b"Z", b"I")
    c.sendall(m.query("select pg_sleep(5)"))
    wait_deadline(events, Reason.QUERY, cid)
    assert sw.expire(cid, Reason.QUERY, FINAL) is True
    assert assert_eof(c) == FINAL
    assert not deadlines(events, Reason.IDLE_TRANSACTION)


# --- client_idle ------------------------------------------------------------------------------


def test_client_idle_fires_for_a_silent_client_without_a_server(sw: Switch) -> None:
    events = Events(sw)
    ((server, _),) = setup(sw)
    sw.set_timeouts(POOL, client_idle=500 * MS)
    busy, busy_id = client(sw)
    start = time.monotonic()
    silent, silent_id = client(sw)
    for i in range(8):  # busy queries every 0.1 s: never idle that long
        busy.sendall(m.query(f"q{i}"))
        serve(server, m.query(f"q{i}"))
        answered(busy)
        time.sleep(0.1)
    seen = wait_deadline(events, Reason.CLIENT_IDLE, silent_id)
    assert seen - start >= 0.5
    assert not deadlines(events, Reason.CLIENT_IDLE, busy_id)
    time.sleep(0.2)
    assert len(deadlines(events, Reason.CLIENT_IDLE, silent_id)) == 1
    # It speaks before Python acts: stale. Silent again: reported again, then closed.
    silent.sendall(m.query("hello"))
    serve(server, m.query("hello"))
    answered(silent)
    assert sw.expire(silent_id, Reason.CLIENT_IDLE, FINAL) is False
    wait_for(lambda: len(deadlines(events, Reason.CLIENT_IDLE, silent_id)) == 2)
    assert sw.expire(silent_id, Reason.CLIENT_IDLE, FINAL) is True
    assert assert_eof(silent) == FINAL


# --- server_idle, server_lifetime ------------------------------------------------------------


def test_server_idle_reports_the_servers_left_unused(sw: Switch) -> None:
    events = Events(sw)
    (first, first_id), (second, second_id) = setup(sw, servers=2)
    sw.set_timeouts(POOL, server_idle=500 * MS)
    c, _ = client(sw)
    for i in range(8):  # LIFO: the second server serves every query, the first stays unused
        c.sendall(m.query(f"q{i}"))
        serve(second, m.query(f"q{i}"))
        answered(c)
        time.sleep(0.1)
    wait_deadline(events, Reason.SERVER_IDLE, first_id)
    assert not deadlines(events, Reason.SERVER_IDLE, second_id)
    assert sw.expire(first_id, Reason.SERVER_IDLE) is True
    assert assert_eof(first) == b""
    wait_deadline(events, Reason.SERVER_IDLE, second_id)
    time.sleep(0.2)
    assert len(deadlines(events, Reason.SERVER_IDLE)) == 2
    # Taken again before Python acts: stale; the server serves on.
    c.sendall(m.query("late"))
    serve(second, m.query("late"))
    answered(c)
    assert sw.expire(second_id, Reason.SERVER_IDLE) is False
    assert_silent(second)


def test_server_lifetime_marks_servers_idle_or_busy(sw: Switch) -> None:
    events = Events(sw)
    (busy, busy_id), (idle, idle_id) = setup(sw, servers=2)
    sw.set_timeouts(POOL, server_lifetime=300 * MS)
    c, _ = client(sw)
    c.sendall(m.query("long"))
    assert read_exact(idle, len(m.query("long"))) == m.query("long")  # LIFO: the top one
    busy, busy_id, idle, idle_id = idle, idle_id, busy, busy_id
    wait_deadline(events, Reason.SERVER_LIFETIME, idle_id)
    wait_deadline(events, Reason.SERVER_LIFETIME, busy_id)
    time.sleep(0.2)
    assert len(deadlines(events, Reason.SERVER_LIFETIME)) == 2
    # Idle: parked at once, Python gets ATTENTION CLOSE_NEEDED and closes it.
    assert sw.expire(idle_id, Reason.SERVER_LIFETIME) is True
    attention = events.wait(lambda e: e.kind is EventKind.ATTENTION and e.conn == idle_id)
    assert attention.reason == Reason.CLOSE_NEEDED
    # Busy: its client is served to the end, then the server is parked the same way.
    assert sw.expire(busy_id, Reason.SERVER_LIFETIME) is True
    assert sw.expire(busy_id, Reason.SERVER_LIFETIME) is False  # marked already
    busy.sendall(ANSWER + m.ready_for_query())
    answered(c)
    attention = events.wait(lambda e: e.kind is EventKind.ATTENTION and e.conn == busy_id)
    assert attention.reason == Reason.CLOSE_NEEDED


def test_server_lifetime_counts_from_the_connect_python_gives(sw: Switch) -> None:
    events = Events(sw)
    sw.add_pool(POOL, Mode.TRANSACTION)
    sw.set_timeouts(POOL, server_lifetime=10_000 * MS)
    _old_end, fd = pair()
    old = sw.add_server(fd, POOL, connected_us=time.monotonic_ns() // 1000 - 20_000_000)  # 20 s
    _new_end, fd = pair()
    new = sw.add_server(fd, POOL)
    wait_deadline(events, Reason.SERVER_LIFETIME, old)
    time.sleep(0.2)
    assert not deadlines(events, Reason.SERVER_LIFETIME, new)


# --- reserve --------------------------------------------------------------------------------


def test_reserve_fires_once_per_queue_episode(sw: Switch) -> None:
    events = Events(sw)
    ((server, _),) = setup(sw)
    sw.set_timeouts(POOL, reserve=300 * MS)
    a, _ = client(sw)
    a.sendall(m.query("a"))
    assert read_exact(server, len(m.query("a"))) == m.query("a")
    queued = time.monotonic()
    waiters = [client(sw)[0] for _ in range(3)]
    for i, w in enumerate(waiters):  # one at a time: the queue's order is known
        w.sendall(m.query(f"w{i}"))
        wait_for(lambda n=i + 1: sw.pools()[0].cl_waiting == n)
    wait_for(lambda: deadlines(events, Reason.RESERVE))
    assert time.monotonic() - queued >= 0.3
    (reserve,) = deadlines(events, Reason.RESERVE)
    assert (reserve.conn, reserve.pool) == (0, POOL)
    time.sleep(0.2)
    assert len(deadlines(events, Reason.RESERVE)) == 1  # one per pool, not per waiter
    assert sw.expire(0, Reason.RESERVE) is False  # pool-level: nothing to act on
    # The queue empties; a new queue that waits long is a new episode.
    server.sendall(ANSWER + m.ready_for_query())
    answered(a)
    for i, w in enumerate(waiters):
        serve(server, m.query(f"w{i}"))
        answered(w)
    a.sendall(m.query("a2"))
    assert read_exact(server, len(m.query("a2"))) == m.query("a2")
    waiters[0].sendall(m.query("again"))
    wait_for(lambda: len(deadlines(events, Reason.RESERVE)) == 2)


# --- changing the timeouts ------------------------------------------------------------------


def test_timeouts_set_to_zero_stop_the_deadlines(sw: Switch) -> None:
    events = Events(sw)
    ((server, _),) = setup(sw)
    sw.set_timeouts(POOL, query_wait=400 * MS, client_idle=400 * MS)
    a, _ = client(sw)
    a.sendall(m.query("a"))
    assert read_exact(server, len(m.query("a"))) == m.query("a")
    b, _ = client(sw)
    b.sendall(m.query("b"))
    _silent, _ = client(sw)
    time.sleep(0.1)
    sw.set_timeouts(POOL)  # all off (RELOAD with the timeouts removed)
    ticks = sw.ticks()
    time.sleep(0.6)
    assert [e for e in events.poll() if e.kind is EventKind.DEADLINE] == []
    assert sw.ticks() == ticks
    # Raised to a shorter value, they apply to the episodes under way.
    sw.set_timeouts(POOL, client_idle=100 * MS)
    events.wait(lambda e: e.kind is EventKind.DEADLINE and e.reason == Reason.CLIENT_IDLE)


def test_bad_arguments(sw: Switch) -> None:
    sw.add_pool(POOL, Mode.TRANSACTION)
    with pytest.raises(KeyError):
        sw.set_timeouts(POOL + 1, query=1)
    with pytest.raises(ValueError):
        sw.set_timeouts(POOL, query=-1)
    with pytest.raises(ValueError):
        make_switch(tick_ms=0)
    assert sw.expire(12345, Reason.QUERY_WAIT) is False
    ours, cid = client(sw)
    assert sw.expire(cid, Reason.CLIENT_IDLE) is False  # not reported: nothing happens
    assert sw.expire(cid, Reason.SERVER_GONE) is False  # not a deadline
    assert_silent(ours)
