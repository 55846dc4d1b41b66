"""The scheduler's side of the admin commands (PAUSE, RESUME, RECONNECT, KILL), the queue
notice, holders and the statistics it keeps: decisions checked with injected time."""

from __future__ import annotations

from pgfunnel.pool.objects import ClientState, ServerState
from pgfunnel.pool.scheduler import (
    WAIT_BUCKETS,
    CloseClient,
    CloseServer,
    Connect,
    Link,
    Notify,
    PoolStats,
    RunQueries,
)
from pgfunnel.proto import sqlstate as ss
from pgfunnel.proto.messages import ServerError
from pgfunnel.proto.strings import Msg, Reason
from tests.unit.test_pool_scheduler import World, state_of


def test_pause_closes_idle_servers_and_holds_new_queries_until_resume() -> None:
    w = World(pool_size=2)
    warm = w.warm(2)
    busy_client, busy = w.linked_client(5.0)
    [idle] = [s for s in warm if s is not busy]
    actions = w.pooler.pause(w.db, 6.0)
    assert actions == [CloseServer(idle, Reason.PAUSE_MODE)]
    assert w.pooler.servers_of(w.db) == 1  # the busy one: PAUSE is not done yet

    # A query arriving now waits; nothing is launched for it while paused.
    waiter = w.ready_client(6.0) if w.pool.welcome else None
    assert waiter is not None
    waiter.expect_rfq = 1
    assert w.pooler.client_wants_server(waiter, 6.5) == []
    assert waiter.state is ClientState.WAITING

    # The busy server's transaction ends: it is closed, not handed to the waiter.
    busy_client.expect_rfq = 0
    assert w.pooler.release_server(busy, 7.0) == [CloseServer(busy, Reason.PAUSE_MODE)]
    assert w.pooler.servers_of(w.db) == 0
    assert w.pooler.maint(8.0) == []  # the janitor does not launch while paused

    [connect] = w.pooler.resume(w.db, 9.0)
    assert isinstance(connect, Connect)
    assert Link(waiter, connect.server) in w.login_ok(connect.server, 9.1)


def test_a_login_finishing_during_pause_is_closed_not_pooled() -> None:
    w = World()
    client, [connect] = w.new_client(0.0)
    w.pooler.pause(w.db, 0.1)
    actions = w.login_ok(connect.server, 0.2)
    assert CloseServer(connect.server, Reason.PAUSE_MODE) in actions
    assert w.pooler.servers_of(w.db) == 0
    assert client.state is ClientState.ACTIVE  # its login completed; its queries will wait


def test_reconnect_replaces_idle_servers_now_and_busy_ones_when_released() -> None:
    w = World(pool_size=3)
    warm = w.warm(2)
    client, busy = w.linked_client(5.0)
    [idle] = [s for s in warm if s is not busy]
    actions = w.pooler.reconnect(w.db, 6.0)
    assert actions == [CloseServer(idle, Reason.OBSOLETE)]
    assert busy.close_needed and state_of(w.pool, busy) is ServerState.ACTIVE
    assert w.pooler.obsolete_servers(w.db) == 1  # WAIT_CLOSE still waits

    client.expect_rfq = 0
    assert w.pooler.release_server(busy, 7.0) == [CloseServer(busy, Reason.OBSOLETE)]
    assert w.pooler.obsolete_servers(w.db) == 0
    # The next query gets a fresh server.
    client.expect_rfq = 1
    [connect] = w.pooler.client_wants_server(client, 8.0)
    assert isinstance(connect, Connect) and not connect.server.close_needed


def test_reconnect_waits_for_the_rollback_of_a_server_left_in_a_transaction() -> None:
    w = World()
    client, server = w.linked_client(0.0)
    w.pooler.reconnect(w.db, 1.0)
    server.tx_status = b"T"
    client.expect_rfq = 0
    [rollback] = w.pooler.client_closed(client, 2.0)
    assert rollback == RunQueries(server, ("ROLLBACK",))
    server.tx_status = b"I"
    assert w.pooler.internal_done(server, True, 2.1) == [CloseServer(server, Reason.OBSOLETE)]


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
    assert busy in closed_servers and len(closed_servers) == 2
    assert holder.link is None and busy.link is None
    assert w.db.paused and w.pooler.servers_of(w.db) == 0


def test_query_wait_notify_tells_each_waiter_once_with_its_position() -> None:
    w = World(pool_size=1, query_wait_notify=5.0, query_wait_timeout=100.0)
    w.linked_client(0.0)
    waiters = []
    for t in (1.0, 2.0, 8.0):
        c = w.ready_client(t)
        c.expect_rfq = 1
        w.pooler.client_wants_server(c, t)
        waiters.append(c)
    assert w.pooler.maint(5.5) == []  # nobody has waited 5 s yet
    notes = [a for a in w.pooler.maint(7.5) if isinstance(a, Notify)]
    assert [n.client for n in notes] == waiters[:2]
    assert notes[0].message == f"{Msg.QUEUED} (position 1 of 3 in the queue of db/u)"
    assert "position 2 of 3" in notes[1].message
    assert notes[1].detail is not None and "pool_size 1 are busy" in notes[1].detail
    assert [a for a in w.pooler.maint(9.0) if isinstance(a, Notify)] == []  # once per wait
    [late] = [a for a in w.pooler.maint(13.0) if isinstance(a, Notify)]
    assert late.client is waiters[2] and "position 3 of 3" in late.message


def test_holders_longest_first_with_transaction_state() -> None:
    w = World(pool_size=3)
    a, sa = w.linked_client(0.0)
    b, _ = w.linked_client(2.0)
    a.expect_rfq = 0
    sa.tx_status = b"T"
    b.expect_rfq = 1
    holders = w.pooler.holders(10.0)
    assert [(h.client, h.state, h.held) for h in holders] == [
        (a, "idle in transaction", 10.0),
        (b, "active", 8.0),
    ]
    assert holders[0].xact == 10.0
    assert w.pooler.holders(10.0, limit=1)[0].client is a
    assert w.pooler.holders(10.0, db="other") == []


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


def test_server_assignments_and_waits_are_counted() -> None:
    w = World(pool_size=1)
    client, server = w.linked_client(0.0)
    before = w.pool.stats.server_assignment_count
    waiter = w.ready_client(1.0)
    waiter.expect_rfq = 1
    w.pooler.client_wants_server(waiter, 1.0)
    client.expect_rfq = 0
    assert w.pooler.release_server(server, 3.0) == [Link(waiter, server)]
    assert w.pool.stats.server_assignment_count == before + 1
    assert w.pool.stats.wait_count == 1 and w.pool.stats.wait_time == 2.0
    assert Msg.KILLED.format(db="x") == "database killed by the admin console (KILL x)"
