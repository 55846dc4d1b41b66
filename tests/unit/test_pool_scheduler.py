"""The pure pool scheduler: logins, FIFO waiters, LIFO reuse, limits, cleanup and the janitor."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from pgfunnel.config.pools import PoolSettings
from pgfunnel.pool.objects import Client, ClientState, Server, ServerState
from pgfunnel.pool.scheduler import (
    Action,
    CloseClient,
    CloseServer,
    Connect,
    Database,
    FinishLogin,
    IllegalStateChange,
    Link,
    Pool,
    Pooler,
    RunQueries,
    User,
)
from pgfunnel.proto.messages import ServerError
from pgfunnel.proto.strings import Reason

PARAMS = {"server_version": "16.3", "client_encoding": "UTF8"}


class World:
    """A Pooler with injected time and rng=0.5, and helpers that play the net layer's part."""

    def __init__(self, **overrides: Any) -> None:
        base: dict[str, Any] = {
            "pool_mode": "transaction",
            "pool_size": 2,
            "server_check_query": None,
            "server_lifetime": 0.0,
            "server_idle_timeout": 0.0,
            "query_wait_notify": 0.0,  # tests of the notice turn it on
        }
        base.update(overrides)
        self.settings = PoolSettings(**base)
        self.pooler = Pooler(settings_for=lambda db, user: replace(self.settings), rng=lambda: 0.5)
        self.db = Database("db", config=None)
        self.user = User("u")
        self.pool = self.pooler.get_pool(self.db, self.user)

    def new_client(self, t: float, pool: Pool | None = None) -> tuple[Client, list[Action]]:
        client = Client(conn=None, addr="1.2.3.4", port=1, now=t)
        return client, self.pooler.client_authenticated(client, pool or self.pool, t)

    def login_ok(self, server: Server, t: float) -> list[Action]:
        return self.pooler.server_login_ok(server, PARAMS, t)

    def ready_client(self, t: float, pool: Pool | None = None) -> Client:
        """An authenticated, logged-in client holding no server (the pool's first login is
        completed when needed, leaving that server idle)."""
        pool = pool or self.pool
        client, actions = self.new_client(t, pool)
        if pool.welcome is None:
            [connect] = actions
            assert isinstance(connect, Connect)
            assert FinishLogin(client) in self.login_ok(connect.server, t)
        else:
            assert actions == [FinishLogin(client)]
        assert client.state is ClientState.ACTIVE
        return client

    def linked_client(self, t: float, pool: Pool | None = None) -> tuple[Client, Server]:
        """A client holding a server, with a query in flight."""
        client = self.ready_client(t, pool)
        client.expect_rfq = 1
        actions = self.pooler.client_wants_server(client, t)
        if len(actions) == 1 and isinstance(actions[0], Link):
            server = actions[0].server
        else:
            [connect] = actions
            assert isinstance(connect, Connect)
            server = connect.server
            assert Link(client, server) in self.login_ok(server, t)
        assert client.link is server and server.link is client
        return client, server

    def warm(self, n: int, t: float = 0.0, pool: Pool | None = None) -> list[Server]:
        """n logged-in idle servers, released one per second from t, oldest first."""
        pairs = [self.linked_client(t, pool) for _ in range(n)]
        for i, (client, server) in enumerate(pairs):
            client.expect_rfq = 0
            assert self.pooler.release_server(server, t + i) == []
            assert self.pooler.client_closed(client, t + i) == []
        return [server for _, server in pairs]


def state_of(pool: Pool, server: Server) -> ServerState:
    [state] = [s for s, members in pool.servers.items() if server in members]
    return state


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

    assert w.login_ok(server, 0.2) == [FinishLogin(client)]
    assert client.state is ClientState.ACTIVE
    assert w.pool.welcome == PARAMS
    assert state_of(w.pool, server) is ServerState.IDLE

    later, actions = w.new_client(1.0)
    assert actions == [FinishLogin(later)]  # the pool knows its parameters now


def test_clients_arriving_during_the_first_login_all_finish_with_it() -> None:
    w = World(pool_size=5)
    a, first = w.new_client(0.0)
    b, _ = w.new_client(0.1)
    [connect] = first
    actions = w.login_ok(connect.server, 0.2)
    assert FinishLogin(a) in actions and FinishLogin(b) in actions


def test_client_that_leaves_during_the_first_login_loses_no_server() -> None:
    w = World()
    client, [connect] = w.new_client(0.0)
    assert w.pooler.client_closed(client, 0.1) == []
    assert w.login_ok(connect.server, 0.2) == []
    assert state_of(w.pool, connect.server) is ServerState.IDLE


# --- waiting and reuse --------------------------------------------------------------------------
def test_waiting_clients_are_served_first_in_first_out() -> None:
    w = World(pool_size=1)
    c1, server = w.linked_client(0.0)
    waiters = [w.ready_client(t) for t in (1.0, 2.0, 3.0, 4.0)]
    for i, c in enumerate(waiters):
        assert w.pooler.client_wants_server(c, 1.0 + i) == []
        assert c.state is ClientState.WAITING
    assert w.pooler.client_closed(waiters[2], 5.0) == []  # one leaves the queue
    holder = c1
    for expected in (waiters[0], waiters[1], waiters[3]):
        holder.expect_rfq = 0
        assert w.pooler.release_server(server, 6.0) == [Link(expected, server)]
        assert expected.state is ClientState.ACTIVE and expected.link is server
        holder = expected
    holder.expect_rfq = 0
    assert w.pooler.release_server(server, 7.0) == []
    assert state_of(w.pool, server) is ServerState.IDLE


def test_idle_servers_are_reused_last_in_first_out() -> None:
    w = World(pool_size=3)
    s1, s2, s3 = w.warm(3)
    got = []
    for t in (10.0, 11.0, 12.0):
        client = w.ready_client(t)
        [link] = w.pooler.client_wants_server(client, t)
        assert isinstance(link, Link)
        got.append(link.server)
    assert got == [s3, s2, s1]


def test_a_released_server_is_the_next_one_used() -> None:
    w = World(pool_size=3)
    _, s2, s3 = w.warm(3)
    c, _ = w.linked_client(10.0)  # takes s3
    [link] = w.pooler.client_wants_server(w.ready_client(11.0), 11.0)  # takes s2
    assert link.server is s2
    c.expect_rfq = 0
    w.pooler.release_server(s3, 12.0)
    [link] = w.pooler.client_wants_server(w.ready_client(13.0), 13.0)
    assert link.server is s3


def test_pool_size_caps_the_servers() -> None:
    w = World(pool_size=2)
    c1 = w.ready_client(0.0)  # the first login left one idle server
    clients = [c1] + [w.ready_client(0.0) for _ in range(3)]
    actions = [a for c in clients for a in w.pooler.client_wants_server(c, 1.0)]
    assert sum(isinstance(a, Link) for a in actions) == 1
    assert sum(isinstance(a, Connect) for a in actions) == 1
    assert w.pool.server_count == 2
    assert [a for a in w.pooler.maint(5.0) if isinstance(a, Connect)] == []
    assert len(list(w.pool.waiting_clients())) == 3


def test_a_client_that_already_holds_a_server_is_not_queued() -> None:
    w = World()
    client, _ = w.linked_client(0.0)
    assert w.pooler.client_wants_server(client, 1.0) == []
    assert client.state is ClientState.ACTIVE


# --- reserve pool -------------------------------------------------------------------------------
def test_reserve_pool_only_after_reserve_pool_timeout() -> None:
    w = World(pool_size=1, reserve_pool_size=1, reserve_pool_timeout=5.0)
    w.linked_client(0.0)
    c2 = w.ready_client(10.0)
    assert w.pooler.client_wants_server(c2, 10.0) == []
    assert w.pooler.maint(14.9) == []
    [connect] = w.pooler.maint(15.0)
    assert isinstance(connect, Connect)
    assert w.login_ok(connect.server, 15.1) == [Link(c2, connect.server)]
    assert w.pool.server_count == 2
    c3 = w.ready_client(16.0)
    assert w.pooler.client_wants_server(c3, 16.0) == []
    assert [a for a in w.pooler.maint(30.0) if isinstance(a, Connect)] == []
    assert w.pool.server_count == 2


# --- database and user caps ---------------------------------------------------------------------
def test_max_db_connections_evicts_the_longest_idle_server_of_a_sibling_pool() -> None:
    w = World(pool_size=5, max_db_connections=2)
    other = w.pooler.get_pool(w.db, User("v"))
    old, young = w.warm(2, t=1.0, pool=other)
    assert w.db.server_count == 2
    _, actions = w.new_client(10.0)
    [evict, connect] = actions
    assert evict == CloseServer(old, Reason.EVICTED)
    assert isinstance(connect, Connect)
    assert old.state is ServerState.CLOSED
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
    assert [a for a in w.pooler.maint(2.0) if isinstance(a, Connect)] == []
    c1.expect_rfq = 0
    assert w.pooler.release_server(s1, 3.0) == []  # idle in its own pool: no waiter there
    actions = w.pooler.maint(3.1)
    assert actions[0] == CloseServer(s1, Reason.EVICTED)
    assert isinstance(actions[1], Connect)
    assert w.db.server_count == 2


def test_max_user_connections_evicts_from_the_users_other_database() -> None:
    w = World(pool_size=5, max_user_connections=1)
    other = w.pooler.get_pool(Database("other", config=None), w.user)
    [idle] = w.warm(1, pool=other)
    _, actions = w.new_client(5.0)
    assert actions[0] == CloseServer(idle, Reason.EVICTED)
    assert isinstance(actions[1], Connect)
    assert w.user.server_count == 1


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
    w.new_client(5.0)
    assert w.db.server_count <= 1
    assert w.user.server_count <= 1


# --- warm pool and server timeouts --------------------------------------------------------------
def test_min_pool_size_is_kept_warm_one_login_at_a_time() -> None:
    w = World(pool_size=5, min_pool_size=2)
    [c1] = w.pooler.maint(0.0)
    assert isinstance(c1, Connect)
    assert w.pooler.maint(0.5) == []  # one login at a time
    assert w.login_ok(c1.server, 1.0) == []
    [c2] = w.pooler.maint(1.0)
    assert isinstance(c2, Connect)
    w.login_ok(c2.server, 2.0)
    assert w.pooler.maint(3.0) == []
    assert len(w.pool.servers[ServerState.IDLE]) == 2


def test_server_idle_timeout_closes_oldest_idle_but_not_below_min_pool_size() -> None:
    w = World(pool_size=5, min_pool_size=2, server_idle_timeout=10.0)
    s1, s2, s3 = w.warm(3, t=1.0)  # idle since 1, 2, 3
    assert w.pooler.maint(10.9) == []
    assert w.pooler.maint(11.0) == [CloseServer(s1, Reason.IDLE_TIMEOUT)]
    assert w.pooler.maint(100.0) == []
    assert w.pool.server_count == 2
    assert s2.state is s3.state is ServerState.IDLE


def test_server_idle_timeout_without_min_pool_size_empties_the_pool() -> None:
    w = World(server_idle_timeout=10.0)
    [s] = w.warm(1, t=0.0)
    assert w.pooler.maint(10.0) == [CloseServer(s, Reason.IDLE_TIMEOUT)]
    assert w.pool.server_count == 0 == w.db.server_count == w.user.server_count


def test_server_lifetime_closes_idle_servers_and_warm_pool_replaces_them() -> None:
    w = World(min_pool_size=1, server_lifetime=50.0)
    [s] = w.warm(1, t=0.0)
    assert w.pooler.maint(49.9) == []
    close, connect = w.pooler.maint(50.0)
    assert close == CloseServer(s, Reason.LIFETIME)
    assert isinstance(connect, Connect)


def test_server_lifetime_applies_when_a_server_is_released() -> None:
    w = World(server_lifetime=50.0)
    client, server = w.linked_client(0.0)
    client.expect_rfq = 0
    assert w.pooler.release_server(server, 60.0) == [CloseServer(server, Reason.LIFETIME)]
    assert server.state is ServerState.CLOSED


def test_server_connect_timeout() -> None:
    w = World(server_connect_timeout=5.0)
    client, [connect] = w.new_client(0.0)
    assert w.pooler.maint(4.9) == []
    assert w.pooler.maint(5.0) == [CloseServer(connect.server, Reason.CONNECT_TIMEOUT)]
    assert connect.server.state is ServerState.CLOSED
    assert client.state is ClientState.WAITING_LOGIN  # still waiting: a retry follows
    assert w.pool.backoff.active
    [retry] = w.pooler.maint(w.pool.backoff.retry_at)
    assert isinstance(retry, Connect)


# --- query_wait_timeout when the pool is merely busy -------------------------------------------
def test_query_wait_timeout_is_pgbouncers_error() -> None:
    w = World(pool_size=1, query_wait_timeout=10.0)
    w.linked_client(0.0)
    waiter = w.ready_client(5.0)
    assert w.pooler.client_wants_server(waiter, 5.0) == []
    assert w.pooler.maint(14.9) == []
    [close] = w.pooler.maint(15.0)
    assert isinstance(close, CloseClient)
    assert close.client is waiter
    assert close.reason == "query_wait_timeout"
    assert close.error is not None
    assert (close.error.severity, close.error.sqlstate, close.error.message) == (
        "FATAL",
        "08P01",
        "query_wait_timeout",
    )
    assert "pool_size=1" in (close.error.detail or "")
    w.pooler.client_closed(waiter, 15.0)
    assert w.pooler.maint(16.0) == []


def test_query_wait_timeout_applies_to_clients_waiting_for_the_first_login() -> None:
    w = World(query_wait_timeout=10.0, server_connect_timeout=0.0)
    client, _ = w.new_client(0.0)
    [close] = w.pooler.maint(10.0)
    assert isinstance(close, CloseClient) and close.client is client
    assert close.reason == Reason.QUERY_WAIT_TIMEOUT


# --- cleaning servers after their clients -------------------------------------------------------
def test_client_leaving_idle_in_transaction_gets_a_rollback_then_reuse() -> None:
    w = World(pool_size=1)
    client, server = w.linked_client(0.0)
    client.expect_rfq = 0
    server.tx_status = b"T"
    assert w.pooler.client_closed(client, 1.0) == [RunQueries(server, ("ROLLBACK",))]
    assert state_of(w.pool, server) is ServerState.TESTED
    waiter = w.ready_client(1.5)
    assert w.pooler.client_wants_server(waiter, 1.5) == []  # the rollback will serve it
    server.tx_status = b"I"
    assert w.pooler.internal_done(server, True, 2.0) == [Link(waiter, server)]


def test_failed_rollback_closes_the_server() -> None:
    w = World(pool_size=1)
    client, server = w.linked_client(0.0)
    client.expect_rfq = 0
    server.tx_status = b"E"
    assert w.pooler.client_closed(client, 1.0) == [RunQueries(server, ("ROLLBACK",))]
    assert w.pooler.internal_done(server, False, 2.0) == [CloseServer(server, Reason.RESET_FAILED)]
    assert w.pool.server_count == 0


@pytest.mark.parametrize("cause", ["query in flight", "not ready"])
def test_client_leaving_with_a_query_in_flight_closes_the_server(cause: str) -> None:
    w = World()
    client, server = w.linked_client(0.0)
    if cause == "not ready":
        client.expect_rfq = 0
        server.ready = False
    assert w.pooler.client_closed(client, 1.0) == [CloseServer(server, Reason.CLIENT_GONE_BUSY)]
    assert server.state is ServerState.CLOSED
    assert w.db.server_count == w.user.server_count == w.pool.server_count


def test_session_mode_runs_the_reset_query_when_the_client_leaves() -> None:
    w = World(pool_mode="session")
    client, server = w.linked_client(0.0)
    client.expect_rfq = 0
    assert w.pooler.client_closed(client, 1.0) == [RunQueries(server, ("DISCARD ALL",))]
    assert w.pooler.internal_done(server, True, 1.1) == []
    assert state_of(w.pool, server) is ServerState.IDLE


def test_session_mode_idle_in_transaction_rolls_back_then_resets() -> None:
    w = World(pool_mode="session")
    client, server = w.linked_client(0.0)
    client.expect_rfq = 0
    server.tx_status = b"T"
    assert w.pooler.client_closed(client, 1.0) == [RunQueries(server, ("ROLLBACK", "DISCARD ALL"))]


def test_transaction_mode_release_has_no_reset_unless_always() -> None:
    w = World()
    client, server = w.linked_client(0.0)
    client.expect_rfq = 0
    assert w.pooler.release_server(server, 1.0) == []
    assert state_of(w.pool, server) is ServerState.IDLE

    w = World(server_reset_query_always=True)
    client, server = w.linked_client(0.0)
    client.expect_rfq = 0
    assert w.pooler.release_server(server, 1.0) == [RunQueries(server, ("DISCARD ALL",))]


def test_release_unlinks_and_the_client_stays_logged_in() -> None:
    w = World()
    client, server = w.linked_client(0.0)
    client.expect_rfq = 0
    w.pooler.release_server(server, 1.0)
    assert client.link is None and server.link is None
    assert client.state is ClientState.ACTIVE


def test_internal_done_with_a_transaction_still_open_closes_the_server() -> None:
    w = World(pool_mode="session")
    client, server = w.linked_client(0.0)
    client.expect_rfq = 0
    w.pooler.client_closed(client, 1.0)
    server.tx_status = b"T"
    assert w.pooler.internal_done(server, True, 1.1) == [CloseServer(server, Reason.RESET_FAILED)]


def test_server_check_query_runs_on_a_long_idle_server_before_reuse() -> None:
    w = World(server_check_query="", server_check_delay=30.0)
    [server] = w.warm(1, t=0.0)
    waiter = w.ready_client(40.0)
    assert w.pooler.client_wants_server(waiter, 40.0) == [RunQueries(server, ("",))]
    assert waiter.state is ClientState.WAITING
    assert w.pooler.internal_done(server, True, 40.1) == [Link(waiter, server)]
    fresh = w.ready_client(41.0)
    waiter.expect_rfq = 0
    w.pooler.release_server(server, 41.0)
    assert w.pooler.client_wants_server(fresh, 42.0) == [Link(fresh, server)]


def test_server_dying_under_its_client_closes_the_client() -> None:
    w = World()
    client, server = w.linked_client(0.0)
    [close] = w.pooler.server_closed(server, Reason.SERVER_CLOSED, 1.0)
    assert isinstance(close, CloseClient) and close.client is client
    assert close.error is not None and close.error.sqlstate == "08006"
    assert client.link is None and server.state is ServerState.CLOSED


# --- janitor timeouts on linked and idle clients ------------------------------------------------
def test_idle_transaction_timeout() -> None:
    w = World(idle_transaction_timeout=10.0)
    client, server = w.linked_client(0.0)
    client.expect_rfq = 0
    server.tx_status = b"T"
    server.request_time = 3.0  # the last ReadyForQuery
    assert w.pooler.maint(12.9) == []
    close_server, close_client = w.pooler.maint(13.0)
    assert close_server == CloseServer(server, Reason.IDLE_TX_TIMEOUT)
    assert isinstance(close_client, CloseClient) and close_client.client is client
    assert close_client.reason == Reason.IDLE_TX_TIMEOUT
    assert close_client.error is not None and close_client.error.sqlstate == "08P01"
    assert client.link is None


@pytest.mark.parametrize(("expect_rfq", "tx_status"), [(1, b"T"), (0, b"I")])
def test_idle_transaction_timeout_spares_running_queries_and_idle_sessions(
    expect_rfq: int, tx_status: bytes
) -> None:
    w = World(pool_mode="session", idle_transaction_timeout=10.0)
    client, server = w.linked_client(0.0)
    client.expect_rfq = expect_rfq
    server.tx_status = tx_status
    assert w.pooler.maint(100.0) == []


def test_query_timeout() -> None:
    w = World(query_timeout=5.0)
    _, server = w.linked_client(0.0)
    server.query_start = 2.0
    assert w.pooler.maint(6.9) == []
    close_server, close_client = w.pooler.maint(7.0)
    assert close_server == CloseServer(server, Reason.QUERY_TIMEOUT)
    assert isinstance(close_client, CloseClient) and close_client.reason == Reason.QUERY_TIMEOUT
    assert w.pool.stats.timeouts[Reason.QUERY_TIMEOUT] == 1


def test_client_idle_timeout_closes_only_idle_clients() -> None:
    w = World(client_idle_timeout=30.0)
    idle = w.ready_client(0.0)
    busy, _ = w.linked_client(0.0)
    assert w.pooler.maint(29.9) == []
    [close] = w.pooler.maint(30.0)
    assert isinstance(close, CloseClient) and close.client is idle
    assert close.reason == Reason.CLIENT_IDLE_TIMEOUT
    assert busy.link is not None


# --- hand-off cannot lose a connection (habit 8) -------------------------------------------------
def test_hand_off_to_a_waiter_that_left_returns_the_server_to_idle() -> None:
    w = World(pool_size=1)
    holder, server = w.linked_client(0.0)
    gone = w.ready_client(1.0)
    w.pooler.client_wants_server(gone, 1.0)
    w.pooler.client_closed(gone, 2.0)
    holder.expect_rfq = 0
    assert w.pooler.release_server(server, 3.0) == []
    assert state_of(w.pool, server) is ServerState.IDLE
    newcomer = w.ready_client(4.0)
    assert w.pooler.client_wants_server(newcomer, 4.0) == [Link(newcomer, server)]


def test_a_waiter_being_closed_for_query_wait_timeout_is_not_given_a_server() -> None:
    w = World(pool_size=1, query_wait_timeout=10.0)
    holder, server = w.linked_client(0.0)
    waiter = w.ready_client(1.0)
    w.pooler.client_wants_server(waiter, 1.0)
    [close] = w.pooler.maint(11.0)
    assert isinstance(close, CloseClient) and close.client is waiter
    holder.expect_rfq = 0
    assert w.pooler.release_server(server, 11.1) == []  # the close is still on its way
    assert state_of(w.pool, server) is ServerState.IDLE
    assert waiter.link is None


def test_login_finishing_after_its_waiter_left_keeps_the_server() -> None:
    w = World(pool_size=2)
    w.linked_client(0.0)
    waiter = w.ready_client(1.0)
    [connect] = w.pooler.client_wants_server(waiter, 1.0)
    w.pooler.client_closed(waiter, 1.5)
    assert w.login_ok(connect.server, 2.0) == []
    assert state_of(w.pool, connect.server) is ServerState.IDLE


# --- state machine ------------------------------------------------------------------------------
def test_illegal_state_changes_are_refused_loudly() -> None:
    w = World()
    [idle] = w.warm(1)
    with pytest.raises(IllegalStateChange, match="IDLE -> IDLE"):
        w.login_ok(idle, 5.0)
    with pytest.raises(IllegalStateChange):
        w.pooler.release_server(idle, 5.0)
    w.pooler.server_closed(idle, "gone", 6.0)
    with pytest.raises(IllegalStateChange, match="CLOSED"):
        w.login_ok(idle, 7.0)


def test_closing_a_client_twice_is_harmless() -> None:
    w = World()
    client = w.ready_client(0.0)
    w.pooler.client_closed(client, 1.0)
    assert w.pooler.client_closed(client, 2.0) == []
    assert client.state is ClientState.CLOSED
    assert all(client not in members for members in w.pool.clients.values())


@pytest.mark.parametrize("enum", [ClientState, ServerState])
def test_state_enums_have_no_aliases(enum: Any) -> None:
    values = [member.value for member in enum.__members__.values()]
    assert len(values) == len(set(values))
    assert len(list(enum)) == len(enum.__members__)


# --- a stuck server never keeps its slot; connect_query; cancel while queued --------------------
def test_rollback_behind_half_a_message_times_out_and_frees_the_slot() -> None:
    # The net layer marks a server not ready when its client left mid-message; should a reset
    # still hang (the server waits for bytes that never come), the janitor ends it.
    w = World(pool_size=1, server_connect_timeout=5.0)
    client, server = w.linked_client(0.0)
    client.expect_rfq = 0
    server.tx_status = b"T"
    assert w.pooler.client_closed(client, 1.0) == [RunQueries(server, ("ROLLBACK",))]
    waiter = w.ready_client(1.5)
    assert w.pooler.client_wants_server(waiter, 1.5) == []
    assert not [a for a in w.pooler.maint(5.9) if isinstance(a, CloseServer)]
    actions = w.pooler.maint(6.0)
    assert CloseServer(server, Reason.INTERNAL_QUERY_TIMEOUT) in actions
    [connect] = [a for a in actions if isinstance(a, Connect)]  # the waiter gets a new one
    assert w.pool.server_count == 1
    assert Link(waiter, connect.server) in w.login_ok(connect.server, 6.5)


def test_internal_queries_time_out_even_with_server_connect_timeout_off() -> None:
    w = World(server_connect_timeout=0.0, server_check_query="", server_check_delay=1.0)
    [server] = w.warm(1, t=0.0)
    waiter = w.ready_client(10.0)
    assert w.pooler.client_wants_server(waiter, 10.0) == [RunQueries(server, ("",))]
    assert not [a for a in w.pooler.maint(24.0) if isinstance(a, CloseServer)]
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
    assert w.pooler.internal_done(server, True, 0.2) == [FinishLogin(client)]
    assert w.pool.welcome is not None and w.pool.welcome["TimeZone"] == "Asia/Tokyo"
    assert state_of(w.pool, server) is ServerState.IDLE
    client.expect_rfq = 1
    assert w.pooler.client_wants_server(client, 0.3) == [Link(client, server)]


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


def test_cancel_takes_a_waiting_client_out_of_the_queue() -> None:
    w = World(pool_size=1)
    holder, server = w.linked_client(0.0)
    a, b = w.ready_client(1.0), w.ready_client(2.0)
    assert w.pooler.client_wants_server(a, 1.0) == []
    assert w.pooler.client_wants_server(b, 2.0) == []
    assert w.pooler.cancel_wait(a, 3.0)
    assert a.state is ClientState.ACTIVE and a.link is None
    assert a not in w.pool.waiting
    assert not w.pooler.cancel_wait(a, 3.1)  # not waiting any more: nothing to cancel
    assert not w.pooler.cancel_wait(holder, 3.1)  # holds a server: the cancel goes there
    # Waiting again puts it at the back, behind b.
    assert w.pooler.client_wants_server(a, 4.0) == []
    holder.expect_rfq = 0
    assert w.pooler.release_server(server, 5.0) == [Link(b, server)]
    b.expect_rfq = 0
    assert w.pooler.release_server(server, 6.0) == [Link(a, server)]
    assert w.pool.stats.wait_count == 3  # the canceled wait counts as a wait that ended
