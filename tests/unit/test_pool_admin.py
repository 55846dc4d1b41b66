"""The scheduler's side of the admin commands (PAUSE, RESUME, RECONNECT, KILL), the queue
notice, holders and the statistics it keeps: decisions checked with injected time.

The switch pauses a pool's links and parks servers marked close-needed; what is left to the
scheduler is whether to open, keep or close a server, and the words a client or a log sees.
"""

from __future__ import annotations

from pgfunnel.pool.objects import ClientState, ServerState
from pgfunnel.pool.scheduler import (
    WAIT_BUCKETS,
    CloseClient,
    CloseServer,
    Connect,
    FinishLogin,
    MarkCloseNeeded,
    PoolStats,
    Promote,
    RunQueries,
)
from pgfunnel.proto import sqlstate as ss
from pgfunnel.proto.messages import ServerError
from pgfunnel.proto.strings import Msg, Reason
from tests.unit.sched_helpers import World, connects, state_of


def test_pause_opens_nothing_until_resume_and_drains_to_zero() -> None:
    w = World(pool_size=2)
    warm = w.warm(2)
    busy_client, busy = w.linked_client(5.0)
    [idle] = [s for s in warm if s is not busy]
    assert w.pooler.pause(w.db, 6.0) == []  # the net layer pauses the switch's pool
    assert w.db.paused
    # App closes the idle servers it finds in the switch (PAUSE_MODE).
    w.apply(w.server_gone(idle, Reason.PAUSE_MODE, 6.0), 6.0)
    assert w.pooler.servers_of(w.db) == 1  # the busy one: PAUSE is not done yet

    # A query arriving now waits; nothing is launched for it while paused.
    waiter = w.ready_client(6.0)
    waiter.expect_rfq = 1
    assert w.query(waiter, 6.5) == []
    w.sync()
    assert waiter.state is ClientState.WAITING
    assert w.pooler.pool_waiters(w.pool, 1, 6.6) == []
    assert w.pooler.maint(8.0) == []  # the janitor does not launch while paused

    # The busy server's transaction ends; the paused switch idles it and App closes it.
    busy_client.expect_rfq = 0
    w.release(busy, 7.0)
    w.apply(w.server_gone(busy, Reason.PAUSE_MODE, 7.0), 7.0)
    assert w.pooler.servers_of(w.db) == 0

    [connect] = w.pooler.resume(w.db, 9.0)
    assert isinstance(connect, Connect)
    w.apply(w.login_ok(connect.server, 9.1), 9.1)
    assert waiter.link is connect.server


def test_a_server_cleaned_during_pause_is_closed_not_pooled() -> None:
    w = World(pool_mode="session")
    client, server = w.linked_client(0.0)
    w.pooler.pause(w.db, 0.5)
    client.expect_rfq = 0
    [reset] = w.release(server, 1.0, "session_end")
    assert reset == RunQueries(server, ("DISCARD ALL",))
    assert w.pooler.internal_done(server, True, 1.1) == [CloseServer(server, Reason.PAUSE_MODE)]
    assert w.pooler.servers_of(w.db) == 0


def test_a_login_finishing_during_pause_is_closed_not_pooled() -> None:
    w = World()
    client, [connect] = w.new_client(0.0)
    w.pooler.pause(w.db, 0.1)
    actions = w.login_ok(connect.server, 0.2)
    assert CloseServer(connect.server, Reason.PAUSE_MODE) in actions
    assert Promote(connect.server) not in actions
    assert FinishLogin(client) in actions  # its login completes; its queries will wait
    assert w.pooler.servers_of(w.db) == 0


def test_reconnect_replaces_idle_servers_now_and_busy_ones_when_released() -> None:
    w = World(pool_size=3)
    warm = w.warm(2)
    client, busy = w.linked_client(5.0)
    [idle] = [s for s in warm if s is not busy]
    actions = w.pooler.reconnect(w.db, 6.0)
    assert sorted(actions, key=lambda a: a.server.id) == [
        MarkCloseNeeded(idle),
        MarkCloseNeeded(busy),
    ]
    assert w.pooler.reconnect(w.db, 6.1) == []  # marked once
    w.apply(actions, 6.0)  # the switch parks the idle one at once: ATTENTION close_needed
    assert idle.state is ServerState.CLOSED and idle.close_reason == Reason.OBSOLETE
    assert busy.close_needed and state_of(w.pool, busy) is ServerState.ACTIVE
    assert w.pooler.obsolete_servers(w.db) == 1  # WAIT_CLOSE still waits

    client.expect_rfq = 0
    assert w.release(busy, 7.0) == [CloseServer(busy, Reason.OBSOLETE)]
    assert w.pooler.obsolete_servers(w.db) == 0
    # The next query gets a fresh server.
    client.expect_rfq = 1
    [fresh] = connects(w.query(client, 8.0))
    assert not fresh.close_needed


def test_a_marked_server_left_in_a_transaction_is_closed_not_rolled_back() -> None:
    w = World()
    client, server = w.linked_client(0.0)
    w.apply(w.pooler.reconnect(w.db, 1.0), 1.0)
    server.tx_status = b"T"
    client.expect_rfq = 0
    assert w.release(server, 2.0, "dirty_txn") == [CloseServer(server, Reason.OBSOLETE)]


def test_a_login_in_flight_during_reconnect_is_not_pooled() -> None:
    w = World()
    client, [connect] = w.new_client(0.0)
    assert w.pooler.reconnect(w.db, 0.1) == []  # nothing in the switch to mark yet
    assert w.pooler.obsolete_servers(w.db) == 1
    actions = w.login_ok(connect.server, 0.2)
    assert FinishLogin(client) in actions
    assert CloseServer(connect.server, Reason.OBSOLETE) in actions
    assert Promote(connect.server) not in actions
    assert w.pooler.obsolete_servers(w.db) == 0


def test_kill_drops_every_client_and_server_and_pauses() -> None:
    w = World(pool_size=3)
    w.warm(2)
    holder, busy = w.linked_client(5.0)
    idle_client = w.ready_client(5.0)
    error = ServerError("FATAL", ss.ADMIN_SHUTDOWN, Reason.DB_REMOVED)
    actions = w.pooler.kill(w.db, 6.0, Reason.DB_REMOVED, error)
    closed_clients = {a.client for a in actions if isinstance(a, CloseClient)}
    closed_servers = {a.server for a in actions if isinstance(a, CloseServer)}
    assert closed_clients == {holder, idle_client}
    assert all(a.error == error for a in actions if isinstance(a, CloseClient))
    assert busy in closed_servers and len(closed_servers) == 2
    assert holder.link is None and busy.link is None
    assert w.db.paused and w.pooler.servers_of(w.db) == 0
    assert w.db.server_count == w.user.server_count == 0
    assert Msg.KILLED.format(db="x") == "database killed by the admin console (KILL x)"


def test_query_wait_notice_names_the_place_and_why() -> None:
    # The switch's QUERY_WAIT_NOTIFY deadline sends the notice once per wait; App asks the
    # scheduler for its words, with the place read from the switch's queue.
    w = World(pool_size=1, query_wait_notify=5.0, query_wait_timeout=100.0)
    w.linked_client(0.0)
    waiters = []
    for t in (1.0, 2.0, 8.0):
        c = w.ready_client(t)
        c.expect_rfq = 1
        w.query(c, t)
        waiters.append(c)
    w.sync()
    queue = w.pooler.queued(w.pool)
    assert queue == waiters
    assert [w.pooler.queue_position(c) for c in waiters] == [1, 2, 3]
    message, detail = w.pooler.wait_notice(w.pool, 1, len(queue), 5.0)
    assert message == f"{Msg.QUEUED} (position 1 of 3 in the queue of db/u)"
    assert detail == (
        "waited 5.0 s: all 1 server connections of pool_size 1 are busy; query_wait_timeout=100 s"
    )
    w.client_leaves(waiters[0], 9.0)
    w.sync()
    assert w.pooler.queue_position(waiters[2]) == 2


def test_holders_longest_first_with_transaction_state() -> None:
    w = World(pool_size=3)
    a, sa = w.linked_client(0.0)
    b, sb = w.linked_client(2.0)
    # What refresh() reads from the switch's snapshot: link and transaction times.
    sa.link_time, sa.xact_start = 0.0, 1.0
    sb.link_time, sb.xact_start = 2.0, 2.0
    a.expect_rfq = 0
    sa.tx_status = b"T"
    b.expect_rfq = 1
    holders = w.pooler.holders(10.0)
    assert [(h.client, h.state, h.held) for h in holders] == [
        (a, "idle in transaction", 10.0),
        (b, "active", 8.0),
    ]
    assert holders[0].xact == 9.0
    assert w.pooler.holders(10.0, limit=1)[0].client is a
    assert w.pooler.holders(10.0, db="other") == []
    b.expect_rfq = 0
    sb.tx_status = b"E"
    assert w.pooler.holders(10.0)[1].state == "idle in transaction (aborted)"
    sb.tx_status = b"I"
    assert w.pooler.holders(10.0)[1].xact == 0.0  # between transactions (session mode)


def test_wait_histogram_and_period_deltas() -> None:
    stats = PoolStats()
    for waited in (0.0005, 0.2, 0.2, 500.0):
        stats.count_wait(waited)
    assert stats.wait_count == 4
    assert stats.wait_buckets[0] == 1
    assert stats.wait_buckets[WAIT_BUCKETS.index(0.5)] == 2
    assert stats.wait_buckets[-1] == 1  # beyond the last bound: +Inf

    w = World()
    w.pool.stats.xact_count = 10
    w.pool.roll_period(60.0)
    w.pool.stats.xact_count = 25
    w.pool.roll_period(60.0)
    assert w.pool.last_period.xact_count == 15 and w.pool.period_seconds == 60.0
