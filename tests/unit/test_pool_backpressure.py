"""Login failures: 53300 and outages become back-pressure, bad logins are refused at once."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from pgfunnel.pool.objects import Client, ClientState, Server, ServerState
from pgfunnel.pool.scheduler import (
    Action,
    CloseClient,
    Connect,
    Database,
    FinishLogin,
    Link,
    Pool,
    Pooler,
    PoolSettings,
    User,
)
from pgfunnel.proto.messages import ServerError
from pgfunnel.proto.strings import Reason

PARAMS = {"server_version": "16.3"}
ROLE = ServerError("FATAL", "53300", 'too many connections for role "app"')
SORRY = ServerError("FATAL", "53300", "sorry, too many clients already")
DATABASE = ServerError("FATAL", "53300", 'too many connections for database "shop"')
RESERVED = ServerError(
    "FATAL",
    "53300",
    "remaining connection slots are reserved for roles with the SUPERUSER attribute",
)
BAD_PASSWORD = ServerError("FATAL", "28P01", 'password authentication failed for user "app"')
NO_DATABASE = ServerError("FATAL", "3D000", 'database "shop" does not exist')
JITTER = 0.75  # rng() = 0.5 gives delay * (0.5 + 0.5 * 0.5)


class World:
    """A Pooler with injected time and rng=0.5; helpers play the net layer's part."""

    def __init__(self, **overrides: Any) -> None:
        base: dict[str, Any] = {
            "pool_mode": "transaction",
            "pool_size": 5,
            "server_check_query": None,
            "server_lifetime": 0.0,
            "server_idle_timeout": 0.0,
            "server_connect_timeout": 0.0,
            "server_login_retry": 15.0,
            "query_wait_timeout": 120.0,
        }
        base.update(overrides)
        self.settings = PoolSettings(**base)
        self.pooler = Pooler(settings_for=lambda db, user: replace(self.settings), rng=lambda: 0.5)
        self.pool: Pool = self.pooler.get_pool(Database("shop", config=None), User("app"))

    def new_client(self, t: float) -> tuple[Client, list[Action]]:
        client = Client(conn=None, addr="1.2.3.4", port=1, now=t)
        return client, self.pooler.client_authenticated(client, self.pool, t)

    def ready_client(self, t: float) -> Client:
        client, actions = self.new_client(t)
        if self.pool.welcome is None:
            [connect] = actions
            assert isinstance(connect, Connect)
            self.pooler.server_login_ok(connect.server, PARAMS, t)
        assert client.state is ClientState.ACTIVE
        return client

    def busy(self, t: float) -> tuple[Client, Server]:
        """A client holding a server with a query in flight (the pool's first login if needed)."""
        client = self.ready_client(t)
        client.expect_rfq = 1
        actions = self.pooler.client_wants_server(client, t)
        if actions and isinstance(actions[0], Link):
            return client, actions[0].server
        [connect] = actions
        assert isinstance(connect, Connect)
        self.pooler.server_login_ok(connect.server, PARAMS, t)
        assert client.link is connect.server
        return client, connect.server

    def waiter(self, t: float) -> tuple[Client, list[Action]]:
        client = self.ready_client(t)
        client.expect_rfq = 1
        return client, self.pooler.client_wants_server(client, t)

    def apply(self, actions: list[Action], t: float) -> None:
        """What the net layer does with CloseClient: closing the client reports it gone."""
        for action in actions:
            if isinstance(action, CloseClient):
                self.apply(self.pooler.client_closed(action.client, t), t)

    def waiting(self) -> list[Client]:
        return list(self.pool.waiting_clients())


def connects(actions: list[Action]) -> list[Server]:
    return [a.server for a in actions if isinstance(a, Connect)]


def refused_once(
    error: ServerError | None = ROLE, **overrides: Any
) -> tuple[World, Client, Client]:
    """One server busy, one client waiting whose login was just refused at t=2."""
    w = World(**overrides)
    holder, _ = w.busy(0.0)
    waiter, actions = w.waiter(1.0)
    [probe] = connects(actions)
    assert w.pooler.server_login_failed(probe, error, 2.0, "connection refused") == []
    return w, holder, waiter


# --- 53300 keeps clients waiting ----------------------------------------------------------------
@pytest.mark.parametrize(
    "error", [ROLE, SORRY, DATABASE, RESERVED], ids=["role", "sorry", "db", "rsv"]
)
def test_53300_keeps_clients_waiting_and_records_what_the_server_granted(
    error: ServerError,
) -> None:
    w, _, waiter = refused_once(error)
    assert waiter.state is ClientState.WAITING
    assert w.waiting() == [waiter]
    bo = w.pool.backoff
    assert bo.active and bo.failures == 1
    assert bo.error == error
    assert bo.since == 2.0
    assert bo.granted == 1  # the busy server: all the server let us keep
    assert w.pool.stats.refused_53300 == 1
    assert w.pool.server_count == 1


def test_first_login_refused_keeps_the_client_waiting_for_login() -> None:
    w = World()
    client, [connect] = w.new_client(0.0)
    assert w.pooler.server_login_failed(connect.server, SORRY, 0.1) == []
    assert client.state is ClientState.WAITING_LOGIN
    assert w.pool.backoff.granted == 0
    [retry] = connects(w.pooler.maint(w.pool.backoff.retry_at))
    assert w.pooler.server_login_ok(retry, PARAMS, 1.0) == [FinishLogin(client)]


def test_retry_waits_for_the_jittered_backoff_one_probe_at_a_time() -> None:
    w, _, _ = refused_once(ROLE)
    bo = w.pool.backoff
    assert bo.retry_at == pytest.approx(2.0 + 0.05 * JITTER)
    second, actions = w.waiter(2.01)
    assert connects(actions) == []  # under back-pressure a new waiter does not probe early
    assert connects(w.pooler.maint(bo.retry_at - 1e-6)) == []
    [probe] = connects(w.pooler.maint(bo.retry_at))  # two waiters, one probe
    assert connects(w.pooler.maint(bo.retry_at + 0.01)) == []
    assert connects(w.pooler.maint(bo.retry_at + 10.0)) == []  # still one probe in flight
    assert w.pool.servers[ServerState.LOGIN] == {probe: None}
    assert second.state is ClientState.WAITING


def test_backoff_doubles_per_failure_up_to_server_login_retry() -> None:
    w, _, _ = refused_once(ROLE, server_login_retry=1.0)
    bo = w.pool.backoff
    t = 2.0
    delays = [bo.retry_at - t]
    for _ in range(7):
        t = bo.retry_at
        [probe] = connects(w.pooler.maint(t))
        t += 0.001
        assert w.pooler.server_login_failed(probe, ROLE, t) == []
        delays.append(bo.retry_at - t)
    expected = [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    assert delays == pytest.approx([d * JITTER for d in expected])
    assert bo.failures == 8
    assert bo.since == 2.0


def test_a_successful_probe_serves_the_first_waiter_and_ends_the_back_pressure() -> None:
    w, _, first = refused_once(ROLE)
    [probe] = connects(w.pooler.maint(w.pool.backoff.retry_at))
    second, actions = w.waiter(2.5)
    assert connects(actions) == []  # the probe is still out
    actions = w.pooler.server_login_ok(probe, PARAMS, 3.1)
    assert actions[0] == Link(first, probe)
    bo = w.pool.backoff
    assert not bo.active
    assert bo.granted == 2  # what we hold now, below pool_size: keep taking capacity back
    [more] = connects(actions)  # a success takes capacity back for the remaining waiter
    assert w.pooler.server_login_ok(more, PARAMS, 3.2) == [Link(second, more)]
    assert w.waiting() == []


def test_successes_take_capacity_back_up_to_pool_size() -> None:
    w = World(pool_size=4)
    w.busy(0.0)
    waiters = []
    for _ in range(6):
        client, actions = w.waiter(1.0)
        waiters.append(client)
        for server in connects(actions):
            w.pooler.server_login_failed(server, SORRY, 1.0)
    assert w.pool.backoff.active and w.pool.server_count == 1
    t = 1.0
    pending: list[Action] = []
    for _ in range(20):
        t += 1.0
        pending += w.pooler.maint(t)
        while pending:  # the server has room again: every login succeeds
            action = pending.pop(0)
            if isinstance(action, Connect):
                pending += w.pooler.server_login_ok(action.server, PARAMS, t)
    assert w.pool.server_count == 4
    assert not w.pool.backoff.active
    assert sum(c.link is not None for c in waiters) == 3
    assert len(w.waiting()) == 3


def test_after_a_successful_probe_capacity_is_taken_back_one_login_at_a_time() -> None:
    w = World(pool_size=10)
    w.busy(0.0)
    for _ in range(6):
        w.waiter(1.0)
    for server in list(w.pool.servers[ServerState.LOGIN]):
        w.pooler.server_login_failed(server, SORRY, 1.5)
    t = w.pool.backoff.retry_at
    [probe] = connects(w.pooler.maint(t))
    actions = w.pooler.server_login_ok(probe, PARAMS, t + 0.1)
    assert len(w.waiting()) == 5
    assert len(connects(actions)) <= 1  # today: 5, one per remaining waiter


@pytest.mark.parametrize(
    ("error", "names", "hint"),
    [
        (ROLE, 'role "app"', 'ALTER ROLE "app" CONNECTION LIMIT'),
        (SORRY, "server max_connections", "max_connections"),
        (DATABASE, 'database "shop"', 'ALTER DATABASE "shop" CONNECTION LIMIT'),
        (RESERVED, "server max_connections (the remaining slots are reserved)", "diagnose"),
    ],
    ids=["role", "sorry", "db", "reserved"],
)
def test_query_wait_timeout_under_53300_names_the_limit(
    error: ServerError, names: str, hint: str
) -> None:
    w = World(query_wait_timeout=30.0)
    w.busy(0.0)
    waiter, actions = w.waiter(1.0)
    for server in connects(actions):
        w.pooler.server_login_failed(server, error, 1.0)
    t = 1.0
    closes: list[CloseClient] = []
    while not closes:
        t = round(t + 0.5, 3)
        actions = w.pooler.maint(t)
        for server in connects(actions):
            assert w.pooler.server_login_failed(server, error, t) == []
        closes = [a for a in actions if isinstance(a, CloseClient)]
    assert t == 31.0
    [close] = closes
    assert close.client is waiter
    assert close.reason == Reason.QUERY_WAIT_TIMEOUT
    err = close.error
    assert err is not None
    assert (err.severity, err.sqlstate) == ("FATAL", "53300")
    assert names in err.message
    assert "waited 30.0 s" in err.message
    assert "query_wait_timeout=30" in err.message
    assert err.detail is not None and error.message in err.detail
    assert err.hint is not None and hint in err.hint


def test_network_failure_keeps_clients_waiting_and_times_out_naming_it() -> None:
    w, _, waiter = refused_once(None, query_wait_timeout=10.0)
    bo = w.pool.backoff
    assert bo.active
    assert bo.error is not None and bo.error.sqlstate == "08006"
    assert bo.error.message == "connection refused"
    assert bo.granted is None  # only 53300 says how many the server lets us keep
    assert waiter.state is ClientState.WAITING
    t = 2.0
    closes: list[CloseClient] = []
    while not closes:
        t = round(t + 0.5, 3)
        actions = w.pooler.maint(t)
        for server in connects(actions):
            w.pooler.server_login_failed(server, None, t, "connection refused")
        closes = [a for a in actions if isinstance(a, CloseClient)]
    [close] = closes
    assert close.error is not None
    assert close.error.sqlstate == "08006"
    assert "cannot reach the server" in close.error.message
    assert "connection refused" in close.error.message
    assert "waited 10.0 s" in close.error.message
    assert close.error.hint


def test_server_closing_during_login_is_a_network_failure() -> None:
    w = World()
    client, [connect] = w.new_client(0.0)
    assert w.pooler.server_closed(connect.server, "connection reset", 0.5) == []
    assert client.state is ClientState.WAITING_LOGIN
    assert w.pool.backoff.active


@pytest.mark.parametrize("sqlstate", ["57P03", "57P01"])
def test_server_starting_or_shutting_down_is_back_pressure_too(sqlstate: str) -> None:
    w = World()
    client, [connect] = w.new_client(0.0)
    error = ServerError("FATAL", sqlstate, "the database system is starting up")
    assert w.pooler.server_login_failed(connect.server, error, 0.5) == []
    assert client.state is ClientState.WAITING_LOGIN


# --- failures that waiting will not cure --------------------------------------------------------
@pytest.mark.parametrize("error", [BAD_PASSWORD, NO_DATABASE], ids=["28P01", "3D000"])
def test_non_transient_failure_closes_every_waiting_client_at_once(error: ServerError) -> None:
    w = World()
    a, [connect] = w.new_client(0.0)
    b, more = w.new_client(0.1)
    actions = w.pooler.server_login_failed(connect.server, error, 0.2)
    assert len(actions) == 2
    assert {id(x.client) for x in actions if isinstance(x, CloseClient)} == {id(a), id(b)}
    for close in actions:
        assert isinstance(close, CloseClient)
        assert close.reason == Reason.LOGIN_FAILED
        assert close.error == ServerError("FATAL", error.sqlstate, error.message)
    assert not w.pool.backoff.active
    w.apply(actions, 0.2)
    for server in connects(more):  # a second login in flight fails the same way
        assert w.pooler.server_login_failed(server, error, 0.3) == []
    assert w.pool.clients[ClientState.WAITING_LOGIN] == {}


def test_non_transient_failure_also_closes_queued_clients_of_a_live_pool() -> None:
    w = World()
    holder, server = w.busy(0.0)
    waiter, actions = w.waiter(1.0)
    [probe] = connects(actions)
    [close] = w.pooler.server_login_failed(probe, NO_DATABASE, 2.0)
    assert isinstance(close, CloseClient) and close.client is waiter
    assert close.error is not None and close.error.sqlstate == "3D000"
    assert holder.link is server  # the client already served keeps its server


def test_new_clients_are_refused_for_server_login_retry() -> None:
    w = World(server_login_retry=15.0)
    _, [connect] = w.new_client(0.0)
    w.apply(w.pooler.server_login_failed(connect.server, BAD_PASSWORD, 1.0), 1.0)
    c, actions = w.new_client(5.0)
    [close] = actions
    assert isinstance(close, CloseClient) and close.client is c
    assert close.reason == Reason.LOGIN_FAILING
    assert close.error is not None
    assert close.error.sqlstate == "28P01"
    assert close.error.message == BAD_PASSWORD.message
    assert close.error.detail == Reason.LOGIN_FAILING
    w.apply(actions, 5.0)
    assert connects(w.pooler.maint(10.0)) == []
    d, actions = w.new_client(16.0)
    assert d.state is ClientState.WAITING_LOGIN
    assert len(connects(actions)) == 1


def test_a_good_login_after_a_bad_one_clears_the_refusal() -> None:
    w = World(server_login_retry=15.0)
    holder, _ = w.busy(0.0)
    _, actions = w.waiter(1.0)
    [probe] = connects(actions)
    w.apply(w.pooler.server_login_failed(probe, BAD_PASSWORD, 1.0), 1.0)
    holder.expect_rfq = 0
    [server] = [s for s in w.pool.servers[ServerState.ACTIVE]]
    w.pooler.release_server(server, 2.0)
    assert w.pool.login_error is not None
    # A server still alive serves new clients even while logins are being refused.
    c = w.ready_client(3.0)
    assert w.pooler.client_wants_server(c, 3.0) == [Link(c, server)]
