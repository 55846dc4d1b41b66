"""The pure pool scheduler on the switch's events: logins, how many servers a pool may open,
the database/user caps, cleaning a server its client left, the warm pool and the janitor.

Linking clients to servers, the idle stack and the FIFO hand-off are the switch's and are
tested in tests/switch/; `World` (sched_helpers) plays the switch's part around the scheduler.
"""

from __future__ import annotations

from typing import Any

import pytest

from pgfunnel.pool.objects import ClientState, Server, ServerState
from pgfunnel.pool.scheduler import (
    Action,
    CloseClient,
    CloseServer,
    Connect,
    Database,
    EvictIdle,
    FinishLogin,
    IllegalStateChange,
    Promote,
    RunQueries,
    User,
)
from pgfunnel.proto.messages import ServerError
from pgfunnel.proto.strings import Reason
from tests.unit.sched_helpers import PARAMS, World, connects, state_of


# --- logins -------------------------------------------------------------------------------------
def test_first_client_waits_for_a_login_then_finishes_its_own() -> None:
    w = World()
    client, actions = w.new_client(0.0)
    [connect] = actions
    assert isinstance(connect, Connect)
    server = connect.server
    assert client.state is ClientState.WAITING_LOGIN
    assert client in w.pool.clients[ClientState.WAITING_LOGIN]
    assert server in w.pool.servers[ServerState.LOGIN]
    assert w.db.server_count == w.user.server_count == 1

    # The client's login completes and the server goes to the switch; no second server is
    # opened: the one client is all the demand there is.
    assert w.login_ok(server, 0.2) == [FinishLogin(client), Promote(server)]
    assert client.state is ClientState.ACTIVE
    assert w.pool.welcome == PARAMS
    assert state_of(w.pool, server) is ServerState.IDLE

    later, actions = w.new_client(1.0)
    assert actions == [FinishLogin(later)]  # the pool knows its parameters now


def test_clients_arriving_during_the_first_login_all_finish_with_it() -> None:
    w = World(pool_size=5)
    a, first = w.new_client(0.0)
    b, second = w.new_client(0.1)
    assert second == []  # one login in flight per pool
    [connect] = first
    actions = w.login_ok(connect.server, 0.2)
    assert FinishLogin(a) in actions and FinishLogin(b) in actions


def test_client_that_leaves_during_the_first_login_loses_no_server() -> None:
    w = World()
    client, [connect] = w.new_client(0.0)
    assert w.pooler.client_closed(client, 0.1) == []
    assert w.login_ok(connect.server, 0.2) == [Promote(connect.server)]
    assert state_of(w.pool, connect.server) is ServerState.IDLE


# --- how many servers a pool opens --------------------------------------------------------------
def test_one_waiter_gets_one_login() -> None:
    # The switch reports waiters once per queue episode; the login that serves the only
    # waiter must not start another (the Promote hands it to that waiter).
    w = World(pool_size=3)
    holder = w.ready_client(0.0)
    w.query(holder, 0.5)  # takes the pool's only (idle) server
    waiter = w.ready_client(1.0)
    [server] = connects(w.query(waiter, 1.0))
    actions = w.login_ok(server, 1.1)
    assert actions == [Promote(server)]


def test_waiters_open_servers_one_login_at_a_time_up_to_pool_size() -> None:
    w = World(pool_size=3)
    holder = w.ready_client(0.0)
    w.query(holder, 0.0)  # the pool's first server, now linked
    waiters = [w.ready_client(1.0) for _ in range(5)]
    [first] = connects(w.query(waiters[0], 1.0))
    for c in waiters[1:]:
        assert w.query(c, 1.0) == []  # queued in the same episode: no new WAITERS
    w.sync()
    assert w.pool.sw_waiting == 5
    assert connects(w.pooler.maint(1.05)) == []  # a login is in flight already
    opened = [first]
    t = 1.1
    pending = [first]
    while pending:
        server = pending.pop()
        actions = w.apply(w.login_ok(server, t), t)
        w.sync()
        pending += connects(actions) + connects(w.pooler.maint(t + 0.05))
        opened += connects(actions)
        t += 0.1
    assert len(set(opened)) == 2
    assert w.pool.server_count == 3 == w.settings.pool_size
    assert len(w.queue(w.pool)) == 3  # the rest wait for a release
    assert connects(w.pooler.maint(60.0)) == []
    assert w.pooler.pool_waiters(w.pool, 3, 60.0) == []


def test_a_paused_pool_opens_nothing_for_its_waiters() -> None:
    w = World(pool_size=3)
    w.ready_client(0.0)
    w.pooler.pause(w.db, 1.0)
    assert w.pooler.pool_waiters(w.pool, 4, 1.0) == []
    assert connects(w.pooler.maint(2.0)) == []
    assert connects(w.pooler.resume(w.db, 3.0)) != []


# --- reserve pool -------------------------------------------------------------------------------
@pytest.mark.parametrize("via", ["deadline", "snapshot"])
def test_reserve_pool_only_after_reserve_pool_timeout(via: str) -> None:
    w = World(pool_size=1, reserve_pool_size=1, reserve_pool_timeout=5.0)
    w.linked_client(0.0)
    c2 = w.ready_client(10.0)
    assert w.query(c2, 10.0) == []  # at pool_size
    w.pool.sw_maxwait = 4.9  # what the switch's snapshot says at 14.9
    w.sync()
    assert connects(w.pooler.maint(14.9)) == []
    if via == "deadline":
        # The switch's RESERVE deadline: App.deadline marks the pool and asks again.
        w.pool.reserve_due = True
        [connect] = w.pooler.pool_waiters(w.pool, w.pool.sw_waiting, 15.0)
    else:
        w.pool.sw_maxwait = 5.0  # the janitor's sync_pools read the oldest wait
        [connect] = w.pooler.maint(15.0)
    assert isinstance(connect, Connect)
    w.apply(w.login_ok(connect.server, 15.1), 15.1)
    assert c2.link is connect.server
    w.sync()
    assert w.pool.server_count == 2
    c3 = w.ready_client(16.0)
    w.pool.reserve_due = True
    w.pool.sw_maxwait = 100.0
    assert w.query(c3, 16.0) == []  # pool_size + reserve_pool_size is the ceiling
    w.sync()
    assert connects(w.pooler.maint(30.0)) == []
    assert w.pool.server_count == 2


# --- database and user caps ---------------------------------------------------------------------
def evict_and_open(w: World, actions: list[Action], t: float) -> list[Server]:
    """Apply an eviction and what came with it; the servers opened for the pool that asked,
    whether the Connect came with the EvictIdle or once the evicted server had closed (the
    janitor's next pass)."""
    opened = connects(w.apply(actions, t))
    if not opened:
        opened = connects(w.apply(w.pooler.maint(t + 0.05), t + 0.05))
    return [s for s in opened if s.pool is w.pool]


def test_max_db_connections_evicts_the_longest_idle_server_of_a_sibling_pool() -> None:
    w = World(pool_size=5, max_db_connections=2)
    other = w.pooler.get_pool(w.db, User("v"))
    old, young = w.warm(2, t=1.0, pool=other)
    assert w.db.server_count == 2
    _, actions = w.new_client(10.0)
    assert actions[0] == EvictIdle(old, w.pool)
    assert len(evict_and_open(w, actions, 10.0)) == 1
    assert old.state is ServerState.CLOSED  # App.take_idle: it was still idle in the switch
    assert state_of(other, young) is ServerState.IDLE
    assert w.db.server_count == 2
    assert other.server_count == 1 and w.pool.server_count == 1


def test_max_db_connections_waits_while_siblings_are_busy_then_evicts() -> None:
    w = World(pool_size=5, max_db_connections=2)
    other = w.pooler.get_pool(w.db, User("v"))
    c1, s1 = w.linked_client(0.0, other)
    w.linked_client(0.0, other)
    client, actions = w.new_client(1.0)
    assert actions == []
    assert client.state is ClientState.WAITING_LOGIN
    assert w.pooler.maint(2.0) == []  # nothing idle to evict: the client waits
    c1.expect_rfq = 0
    assert w.release(s1, 3.0) == []  # idle in its own pool: no waiter there
    actions = w.pooler.maint(3.1)
    assert actions[0] == EvictIdle(s1, w.pool)
    assert len(evict_and_open(w, actions, 3.1)) == 1
    assert s1.state is ServerState.CLOSED
    assert w.db.server_count == 2


def test_max_user_connections_evicts_from_the_users_other_database() -> None:
    w = World(pool_size=5, max_user_connections=1)
    other = w.pooler.get_pool(Database("other", config=None), w.user)
    [idle] = w.warm(1, pool=other)
    _, actions = w.new_client(5.0)
    assert actions[0] == EvictIdle(idle, w.pool)
    assert len(evict_and_open(w, actions, 5.0)) == 1
    assert w.user.server_count == 1 and other.server_count == 0


def test_max_user_connections_without_anything_to_evict_waits() -> None:
    w = World(pool_size=5, max_user_connections=1)
    other = w.pooler.get_pool(Database("other", config=None), w.user)
    w.linked_client(0.0, other)
    _, actions = w.new_client(1.0)
    assert actions == []
    assert w.user.server_count == 1


def test_both_caps_are_enforced_when_both_are_reached() -> None:
    w = World(pool_size=5, max_db_connections=1, max_user_connections=1)
    sibling_db = w.pooler.get_pool(w.db, User("v"))  # shares the database
    sibling_user = w.pooler.get_pool(Database("other", config=None), w.user)  # shares the user
    w.warm(1, pool=sibling_db)
    w.warm(1, pool=sibling_user)
    assert w.db.server_count == 1 and w.user.server_count == 1
    _, actions = w.new_client(5.0)
    w.apply(actions, 5.0)
    assert w.db.server_count <= 1
    assert w.user.server_count <= 1


def test_an_eviction_that_finds_its_server_taken_opens_nothing_past_the_cap() -> None:
    # EvictIdle is decided on the mirror; by the time App applies it the switch may have
    # linked that server to a client of its own pool (take_idle then does nothing). The
    # Connect decided with it must not take the database past max_db_connections.
    w = World(pool_size=5, max_db_connections=2)
    other = w.pooler.get_pool(w.db, User("v"))
    old, _ = w.warm(2, t=1.0, pool=other)
    _, actions = w.new_client(10.0)
    assert EvictIdle(old, w.pool) in actions
    w.idle[other].remove(old)  # the switch gave it to a client of `other` meanwhile
    w.apply(actions, 10.0)
    assert w.db.server_count <= 2


# --- warm pool, lifetime ------------------------------------------------------------------------
def test_min_pool_size_is_kept_warm_one_login_at_a_time() -> None:
    w = World(pool_size=5, min_pool_size=2)
    [c1] = w.pooler.maint(0.0)
    assert isinstance(c1, Connect)
    assert w.pooler.maint(0.5) == []  # one login at a time
    assert w.login_ok(c1.server, 1.0) == [Promote(c1.server)]
    [c2] = w.pooler.maint(1.0)
    assert isinstance(c2, Connect)
    w.apply(w.login_ok(c2.server, 2.0), 2.0)
    assert w.pooler.maint(3.0) == []
    assert len(w.pool.servers[ServerState.IDLE]) == 2


def test_server_lifetime_closes_an_idle_server_and_the_warm_pool_replaces_it() -> None:
    w = World(min_pool_size=1, server_lifetime=50.0)
    [s] = w.warm(1, t=0.0)
    # The switch's SERVER_LIFETIME deadline: App marks it, the switch parks it at once.
    s.lifetime_over = True
    assert w.attention(s, "close_needed", 50.0) == [CloseServer(s, Reason.LIFETIME)]
    assert w.pool.server_count == 0
    [connect] = w.pooler.maint(50.1)
    assert isinstance(connect, Connect)


def test_server_lifetime_applies_when_a_server_is_released() -> None:
    w = World(server_lifetime=50.0)
    client, server = w.linked_client(0.0)
    server.lifetime_over = True  # passed while its client held it
    client.expect_rfq = 0
    assert w.release(server, 60.0) == [CloseServer(server, Reason.LIFETIME)]
    assert server.state is ServerState.CLOSED


def test_server_connect_timeout() -> None:
    w = World(server_connect_timeout=5.0)
    client, [connect] = w.new_client(0.0)
    assert w.pooler.maint(4.9) == []
    assert w.pooler.maint(5.0) == [CloseServer(connect.server, Reason.CONNECT_TIMEOUT)]
    assert connect.server.state is ServerState.CLOSED
    assert client.state is ClientState.WAITING_LOGIN  # still waiting: a retry follows
    assert w.pool.backoff.active
    assert connects(w.pooler.maint(w.pool.backoff.retry_at - 0.001)) == []
    [retry] = w.pooler.maint(w.pool.backoff.retry_at)
    assert isinstance(retry, Connect)


# --- query_wait_timeout when the pool is merely busy -------------------------------------------
def test_query_wait_timeout_is_pgbouncers_error() -> None:
    # The switch's QUERY_WAIT deadline fires; App.deadline asks the scheduler for the error.
    w = World(pool_size=1, query_wait_timeout=10.0)
    w.linked_client(0.0)
    waiter = w.ready_client(5.0)
    assert w.query(waiter, 5.0) == []
    close = w.pooler.wait_timeout(waiter, w.pool, 15.0, 10.0)
    assert close.client is waiter
    assert close.reason == "query_wait_timeout"
    assert close.error is not None
    assert (close.error.severity, close.error.sqlstate, close.error.message) == (
        "FATAL",
        "08P01",
        "query_wait_timeout",
    )
    assert "pool_size=1" in (close.error.detail or "")
    assert "waited 10.0 s" in (close.error.detail or "")
    # Counted by App.deadline once the switch has closed it, not here.
    assert w.pool.stats.timeouts.get(Reason.QUERY_WAIT_TIMEOUT, 0) == 0


def test_query_wait_timeout_applies_to_clients_waiting_for_the_first_login() -> None:
    w = World(query_wait_timeout=10.0, server_connect_timeout=0.0)
    client, _ = w.new_client(0.0)
    assert w.pooler.maint(9.9) == []
    [close] = w.pooler.maint(10.0)
    assert isinstance(close, CloseClient) and close.client is client
    assert close.reason == Reason.QUERY_WAIT_TIMEOUT


# --- cleaning servers after their clients (ATTENTION) ------------------------------------------
def test_client_leaving_idle_in_transaction_gets_a_rollback_then_reuse() -> None:
    w = World(pool_size=1)
    client, server = w.linked_client(0.0)
    client.expect_rfq = 0
    server.tx_status = b"T"
    w.client_leaves(client, 1.0)
    assert w.release(server, 1.0, "dirty_txn") == [RunQueries(server, ("ROLLBACK",))]
    assert state_of(w.pool, server) is ServerState.TESTED
    waiter = w.ready_client(1.5)
    assert w.query(waiter, 1.5) == []  # the rollback will serve it: no new login
    server.tx_status = b"I"
    assert w.pooler.internal_done(server, True, 2.0) == [Promote(server)]
    w.apply([Promote(server)], 2.0)
    assert waiter.link is server


def test_failed_rollback_closes_the_server() -> None:
    w = World(pool_size=1)
    client, server = w.linked_client(0.0)
    client.expect_rfq = 0
    server.tx_status = b"E"
    assert w.release(server, 1.0, "dirty_txn") == [RunQueries(server, ("ROLLBACK",))]
    assert w.pooler.internal_done(server, False, 2.0) == [CloseServer(server, Reason.RESET_FAILED)]
    assert w.pool.server_count == 0


@pytest.mark.parametrize("cause", ["query in flight", "not ready"])
def test_client_leaving_with_a_query_in_flight_closes_the_server(cause: str) -> None:
    w = World()
    _, server = w.linked_client(0.0)
    why = "dirty_busy"
    if cause == "not ready":
        why = "dirty_txn"
        server.ready = False  # the pooler no longer trusts it, whatever the switch says
    assert w.release(server, 1.0, why) == [CloseServer(server, Reason.CLIENT_GONE_BUSY)]
    assert server.state is ServerState.CLOSED
    assert w.db.server_count == w.user.server_count == w.pool.server_count == 0


def test_a_busy_close_opens_a_replacement_for_waiters() -> None:
    w = World(pool_size=1)
    _, server = w.linked_client(0.0)
    waiter = w.ready_client(0.5)
    w.query(waiter, 0.5)
    w.sync()
    [close, connect] = w.release(server, 1.0, "dirty_busy")
    assert close == CloseServer(server, Reason.CLIENT_GONE_BUSY)
    assert isinstance(connect, Connect)


def test_session_mode_runs_the_reset_query_when_the_client_leaves() -> None:
    w = World(pool_mode="session")
    client, server = w.linked_client(0.0)
    client.expect_rfq = 0
    assert w.release(server, 1.0, "session_end") == [RunQueries(server, ("DISCARD ALL",))]
    assert w.pooler.internal_done(server, True, 1.1) == [Promote(server)]
    assert state_of(w.pool, server) is ServerState.IDLE


def test_session_mode_idle_in_transaction_rolls_back_then_resets() -> None:
    # The switch reports DIRTY_TXN (not SESSION_END) for a session client that leaves inside
    # a transaction; its session state must still be reset before another client gets it.
    w = World(pool_mode="session")
    client, server = w.linked_client(0.0)
    client.expect_rfq = 0
    server.tx_status = b"T"
    assert w.release(server, 1.0, "dirty_txn") == [RunQueries(server, ("ROLLBACK", "DISCARD ALL"))]


def test_session_end_without_a_reset_query_goes_straight_back() -> None:
    w = World(pool_mode="session", server_reset_query="")
    _, server = w.linked_client(0.0)
    assert w.release(server, 1.0, "session_end") == [Promote(server)]


@pytest.mark.parametrize(
    ("always", "queries"), [(False, ("ROLLBACK",)), (True, ("ROLLBACK", "DISCARD ALL"))]
)
def test_transaction_mode_resets_only_when_always(always: bool, queries: tuple[str, ...]) -> None:
    w = World(server_reset_query_always=always)
    _, server = w.linked_client(0.0)
    assert w.release(server, 1.0, "dirty_txn") == [RunQueries(server, queries)]


def test_reset_query_always_cleans_a_server_released_at_a_boundary() -> None:
    # server_reset_query_always: the switch parks every released server RESET_NEEDED.
    w = World(server_reset_query_always=True)
    _, server = w.linked_client(0.0)
    assert w.release(server, 1.0, "reset_needed") == [RunQueries(server, ("DISCARD ALL",))]
    assert w.pooler.internal_done(server, True, 1.1) == [Promote(server)]


def test_server_check_query_runs_on_a_long_idle_server_before_reuse() -> None:
    # Idle past server_check_delay, the switch parks it CHECK_NEEDED instead of linking it;
    # the client it skipped waits, and the checked server is what serves it.
    w = World(server_check_query="SELECT 1", server_check_delay=30.0)
    [server] = w.warm(1, t=0.0)
    assert w.attention(server, "check_needed", 40.0) == [RunQueries(server, ("SELECT 1",))]
    assert state_of(w.pool, server) is ServerState.TESTED
    waiter = w.ready_client(40.0)
    assert w.query(waiter, 40.0) == []  # no new login: the checked server is coming
    assert w.apply(w.pooler.internal_done(server, True, 40.1), 40.1) == []
    assert waiter.link is server


def test_a_failed_check_closes_the_server_and_opens_another_for_the_waiter() -> None:
    w = World(server_check_query="", server_check_delay=30.0)  # "": an empty query
    [server] = w.warm(1, t=0.0)
    assert w.attention(server, "check_needed", 40.0) == [RunQueries(server, ("",))]
    waiter = w.ready_client(40.0)
    w.query(waiter, 40.0)
    w.sync()
    [close, connect] = w.pooler.internal_done(server, False, 40.1)
    assert close == CloseServer(server, Reason.RESET_FAILED)
    assert isinstance(connect, Connect)


def test_internal_done_with_a_transaction_still_open_closes_the_server() -> None:
    w = World(pool_mode="session")
    client, server = w.linked_client(0.0)
    client.expect_rfq = 0
    w.release(server, 1.0, "session_end")
    server.tx_status = b"T"
    assert w.pooler.internal_done(server, True, 1.1) == [CloseServer(server, Reason.RESET_FAILED)]


def test_a_server_dying_under_its_client_frees_its_slot() -> None:
    # The switch closes the client with server_gone itself; the scheduler counts the server
    # out and opens a replacement for those waiting.
    w = World(pool_size=1)
    client, server = w.linked_client(0.0)
    waiter = w.ready_client(0.5)
    w.query(waiter, 0.5)
    w.sync()
    actions = w.pooler.server_closed(server, Reason.SERVER_CLOSED, 1.0)
    assert not [a for a in actions if isinstance(a, CloseClient)]
    assert len(connects(actions)) == 1
    assert client.link is None and server.link is None
    assert server.state is ServerState.CLOSED
    assert w.db.server_count == w.user.server_count == w.pool.server_count == 1


def test_login_finishing_after_its_waiter_left_keeps_the_server() -> None:
    w = World(pool_size=2)
    w.linked_client(0.0)
    waiter = w.ready_client(1.0)
    [server] = connects(w.query(waiter, 1.0))
    w.client_leaves(waiter, 1.5)
    w.sync()
    assert w.login_ok(server, 2.0) == [Promote(server)]  # to the switch's idle stack
    w.apply([Promote(server)], 2.0)
    assert state_of(w.pool, server) is ServerState.IDLE
    assert w.idle[w.pool] == [server]


# --- state machine ------------------------------------------------------------------------------
def test_illegal_state_changes_are_refused_loudly() -> None:
    w = World()
    [idle] = w.warm(1)
    with pytest.raises(IllegalStateChange, match="IDLE -> IDLE"):
        w.login_ok(idle, 5.0)
    w.pooler.server_closed(idle, "gone", 6.0)
    with pytest.raises(IllegalStateChange, match="CLOSED"):
        w.login_ok(idle, 7.0)
    assert w.pooler.server_attention(idle, "session_end", 7.0) == []  # already gone
    assert w.pooler.internal_done(idle, True, 7.0) == []


def test_closing_a_client_twice_is_harmless() -> None:
    w = World()
    client = w.ready_client(0.0)
    w.pooler.client_closed(client, 1.0)
    assert w.pooler.client_closed(client, 2.0) == []
    assert client.state is ClientState.CLOSED
    assert all(client not in members for members in w.pool.clients.values())


def test_the_mirror_copies_states_without_counting_or_reviving() -> None:
    w = World()
    client, server = w.linked_client(0.0)
    assert w.pool.server_count == 1
    w.pooler.mirror_server(server, ServerState.IDLE)
    assert state_of(w.pool, server) is ServerState.IDLE and w.pool.server_count == 1
    w.pooler.server_closed(server, "gone", 1.0)
    w.pooler.mirror_server(server, ServerState.ACTIVE)  # a stale snapshot row
    assert server.state is ServerState.CLOSED and w.pool.server_count == 0
    w.pooler.client_closed(client, 1.0)
    w.pooler.mirror_client(client, ClientState.WAITING)
    assert client.state is ClientState.CLOSED
    assert all(client not in members for members in w.pool.clients.values())


@pytest.mark.parametrize("enum", [ClientState, ServerState])
def test_state_enums_have_no_aliases(enum: Any) -> None:
    values = [member.value for member in enum.__members__.values()]
    assert len(values) == len(set(values))
    assert len(list(enum)) == len(enum.__members__)


# --- a stuck server never keeps its slot; connect_query -----------------------------------------
def test_rollback_that_hangs_times_out_and_frees_the_slot() -> None:
    w = World(pool_size=1, server_connect_timeout=5.0)
    client, server = w.linked_client(0.0)
    client.expect_rfq = 0
    server.tx_status = b"T"
    assert w.release(server, 1.0, "dirty_txn") == [RunQueries(server, ("ROLLBACK",))]
    waiter = w.ready_client(1.5)
    assert w.query(waiter, 1.5) == []
    w.sync()
    assert not [a for a in w.pooler.maint(5.9) if isinstance(a, CloseServer)]
    actions = w.pooler.maint(6.0)
    assert CloseServer(server, Reason.INTERNAL_QUERY_TIMEOUT) in actions
    [connect] = connects(actions)  # the waiter gets a new one
    assert w.pool.server_count == 1
    w.apply(w.login_ok(connect, 6.5), 6.5)
    assert waiter.link is connect


def test_internal_queries_time_out_even_with_server_connect_timeout_off() -> None:
    w = World(server_connect_timeout=0.0)
    _, server = w.linked_client(0.0)
    server.tx_status = b"T"
    assert w.release(server, 10.0, "dirty_txn") == [RunQueries(server, ("ROLLBACK",))]
    assert not [a for a in w.pooler.maint(24.9) if isinstance(a, CloseServer)]
    assert CloseServer(server, Reason.INTERNAL_QUERY_TIMEOUT) in w.pooler.maint(25.0)


class _DbConfig:
    def __init__(self, connect_query: str | None) -> None:
        self.connect_query = connect_query


def test_connect_query_runs_before_any_client_gets_the_server() -> None:
    w = World()
    w.db.config = _DbConfig("SET search_path = app")
    client, [connect] = w.new_client(0.0)
    server = connect.server
    assert w.login_ok(server, 0.1) == [RunQueries(server, ("SET search_path = app",))]
    assert state_of(w.pool, server) is ServerState.TESTED
    assert client.state is ClientState.WAITING_LOGIN  # no FinishLogin yet
    assert w.pool.welcome is None
    server.params["TimeZone"] = "Asia/Tokyo"  # reported by the server while it ran
    assert w.pooler.internal_done(server, True, 0.2) == [FinishLogin(client), Promote(server)]
    assert w.pool.welcome is not None and w.pool.welcome["TimeZone"] == "Asia/Tokyo"
    assert state_of(w.pool, server) is ServerState.IDLE


def test_failing_connect_query_closes_the_server_and_tells_the_waiters() -> None:
    w = World()
    w.db.config = _DbConfig("SELEKT 1")
    client, [connect] = w.new_client(0.0)
    server = connect.server
    w.login_ok(server, 0.1)
    server.internal_error = ServerError("ERROR", "42601", 'syntax error at or near "SELEKT"')
    actions = w.pooler.internal_done(server, False, 0.2)
    reason = f'{Reason.CONNECT_QUERY_FAILED}: 42601 syntax error at or near "SELEKT"'
    assert actions[0] == CloseServer(server, reason)
    [close] = [a for a in actions if isinstance(a, CloseClient)]
    assert close.client is client and close.error is not None
    assert close.error.sqlstate == "42601"
    assert close.error.message == f'{Reason.CONNECT_QUERY_FAILED}: syntax error at or near "SELEKT"'
    assert w.pool.server_count == 0
    assert w.pool.login_failed_until > 0.2  # new clients hear it too, for server_login_retry


def test_connect_query_leaving_a_transaction_open_fails_too() -> None:
    w = World()
    w.db.config = _DbConfig("BEGIN")
    _, [connect] = w.new_client(0.0)
    server = connect.server
    w.login_ok(server, 0.1)
    server.tx_status = b"T"
    actions = w.pooler.internal_done(server, True, 0.2)
    assert isinstance(actions[0], CloseServer)
    assert "left a transaction open" in actions[0].reason


def test_connect_query_that_never_answers_is_a_failed_login() -> None:
    w = World(server_connect_timeout=3.0)
    w.db.config = _DbConfig("SELECT pg_sleep(3600)")
    client, [connect] = w.new_client(0.0)
    server = connect.server
    w.login_ok(server, 0.1)
    actions = w.pooler.maint(3.1)
    assert CloseServer(server, Reason.INTERNAL_QUERY_TIMEOUT) in actions
    assert w.pool.backoff.active  # retried on the backoff schedule, the client still waits
    assert client.state is ClientState.WAITING_LOGIN
