"""Login failures: 53300 and outages become back-pressure, bad logins are refused at once.

The clients wait in the switch's queue; the scheduler decides when the next login may go out,
how many servers the pool keeps, and what a client hears when it gives up or is refused.
"""

from __future__ import annotations

from typing import Any

import pytest

from pgfunnel.pool.objects import Client, ClientState, Server, ServerState
from pgfunnel.pool.scheduler import Action, CloseClient, Connect, FinishLogin, Promote
from pgfunnel.proto.messages import ServerError
from pgfunnel.proto.strings import Reason
from tests.unit.sched_helpers import PARAMS, connects
from tests.unit.sched_helpers import World as BaseWorld

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


class World(BaseWorld):
    """The pool tests' world with back-pressure settings: pool_size 5, no connect timeout."""

    def __init__(self, **overrides: Any) -> None:
        base: dict[str, Any] = {
            "pool_size": 5,
            "server_connect_timeout": 0.0,
            "server_login_retry": 15.0,
            "query_wait_timeout": 120.0,
        }
        base.update(overrides)
        super().__init__(**base)
        self.db.name, self.user.name = "shop", "app"

    def busy(self, t: float) -> tuple[Client, Server]:
        """A client holding a server with a query in flight."""
        return self.linked_client(t)

    def waiter(self, t: float) -> tuple[Client, list[Action]]:
        """A client that sent a query and waits in the switch's queue."""
        client = self.ready_client(t)
        client.expect_rfq = 1
        actions = self.query(client, t)
        assert client.state is ClientState.WAITING
        return client, actions

    def waiting(self) -> list[Client]:
        return self.queue(self.pool)


def refused_once(
    error: ServerError | None = ROLE, **overrides: Any
) -> tuple[World, Client, Client]:
    """One server busy, one client waiting whose login was just refused at t=2."""
    w = World(**overrides)
    holder, _ = w.busy(0.0)
    waiter, actions = w.waiter(1.0)
    [probe] = connects(actions)
    assert w.pooler.server_login_failed(probe, error, 2.0, "connection refused") == []
    w.sync()
    return w, holder, waiter


# --- 53300 keeps clients waiting ----------------------------------------------------------------
@pytest.mark.parametrize(
    "error", [ROLE, SORRY, DATABASE, RESERVED], ids=["role", "sorry", "db", "rsv"]
)
def test_53300_keeps_clients_waiting_and_records_what_the_server_granted(
    error: ServerError,
) -> None:
    w, _, waiter = refused_once(error)
    assert w.waiting() == [waiter]  # nobody closed it
    bo = w.pool.backoff
    assert bo.active and bo.failures == 1
    assert bo.error == error
    assert bo.since == 2.0
    assert bo.granted == 1  # the busy server: all the server let us keep
    assert w.pool.stats.refused_53300 == 1
    assert w.pool.stats.login_refusals == {"53300": 1}
    assert w.pool.server_count == 1


def test_first_login_refused_keeps_the_client_waiting_for_login() -> None:
    w = World()
    client, [connect] = w.new_client(0.0)
    assert w.pooler.server_login_failed(connect.server, SORRY, 0.1) == []
    assert client.state is ClientState.WAITING_LOGIN
    assert w.pool.backoff.granted == 0
    [retry] = connects(w.pooler.maint(w.pool.backoff.retry_at))
    assert w.pooler.server_login_ok(retry, PARAMS, 1.0) == [FinishLogin(client), Promote(retry)]


def test_retry_waits_for_the_jittered_backoff_one_probe_at_a_time() -> None:
    w, _, _ = refused_once(ROLE)
    bo = w.pool.backoff
    assert bo.retry_at == pytest.approx(2.0 + 0.05 * JITTER)
    second, _ = w.waiter(2.01)
    w.sync()
    # Under back-pressure the switch's report of waiters does not probe early.
    assert w.pooler.pool_waiters(w.pool, 2, 2.01) == []
    assert connects(w.pooler.maint(bo.retry_at - 1e-6)) == []
    [probe] = connects(w.pooler.maint(bo.retry_at))  # two waiters, one probe
    assert connects(w.pooler.maint(bo.retry_at + 0.01)) == []
    assert connects(w.pooler.maint(bo.retry_at + 10.0)) == []  # still one probe in flight
    assert w.pooler.pool_waiters(w.pool, 2, bo.retry_at + 10.0) == []
    assert w.pool.servers[ServerState.LOGIN] == {probe: None}
    assert second in w.waiting()


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
    w.sync()
    actions = w.pooler.server_login_ok(probe, PARAMS, 3.1)
    assert actions[0] == Promote(probe)
    bo = w.pool.backoff
    assert not bo.active
    assert bo.granted == 2  # what we hold now, below pool_size: keep taking capacity back
    [more] = connects(actions)  # a success takes capacity back for the remaining waiter
    w.apply(actions, 3.1)
    assert first.link is probe
    w.sync()
    w.apply(w.pooler.server_login_ok(more, PARAMS, 3.2), 3.2)
    assert second.link is more
    assert w.waiting() == []


def test_a_probe_that_serves_the_only_waiter_starts_no_other_login() -> None:
    # Under 53300 every login the server did not need is one more refusal and a longer wait:
    # the Promote serves the one queued client, so nothing else may go out.
    w, _, waiter = refused_once(SORRY)
    [probe] = connects(w.pooler.maint(w.pool.backoff.retry_at))
    actions = w.pooler.server_login_ok(probe, PARAMS, 3.0)
    assert actions == [Promote(probe)]
    w.apply(actions, 3.0)
    assert waiter.link is probe


def test_successes_take_capacity_back_up_to_pool_size() -> None:
    w = World(pool_size=4)
    w.busy(0.0)
    waiters = []
    for _ in range(6):
        client, actions = w.waiter(1.0)
        waiters.append(client)
        for server in connects(actions):
            w.pooler.server_login_failed(server, SORRY, 1.0)
    w.sync()
    assert w.pool.backoff.active and w.pool.server_count == 1
    t = 1.0
    for _ in range(20):
        t += 1.0
        pending = w.apply(w.pooler.maint(t), t)
        while pending:  # the server has room again: every login succeeds
            action = pending.pop(0)
            if isinstance(action, Connect):
                pending += w.apply(w.pooler.server_login_ok(action.server, PARAMS, t), t)
        w.sync()
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
    w.sync()
    t = w.pool.backoff.retry_at
    [probe] = connects(w.pooler.maint(t))
    actions = w.pooler.server_login_ok(probe, PARAMS, t + 0.1)
    w.apply(actions, t + 0.1)
    assert len(w.waiting()) == 5
    assert len(connects(actions)) <= 1


# --- what a client that gives up hears ----------------------------------------------------------
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
    # The switch's QUERY_WAIT deadline fires after 30 s; App.deadline asks for the error.
    w, _, waiter = refused_once(error, query_wait_timeout=30.0)
    close = w.pooler.wait_timeout(waiter, w.pool, 31.0, 30.0)
    assert close.client is waiter
    assert close.reason == Reason.QUERY_WAIT_TIMEOUT
    err = close.error
    assert err is not None
    assert (err.severity, err.sqlstate) == ("FATAL", "53300")
    assert names in err.message
    assert "waited 30.0 s" in err.message
    assert "query_wait_timeout=30" in err.message
    assert err.detail is not None and error.message in err.detail
    assert "the pool holds 1 of pool_size 5" in err.detail
    assert err.hint is not None and hint in err.hint
    assert w.pool.stats.timeouts == {}  # App.deadline counts it once the switch closed it


def test_network_failure_keeps_clients_waiting_and_times_out_naming_it() -> None:
    w, _, waiter = refused_once(None, query_wait_timeout=10.0)
    bo = w.pool.backoff
    assert bo.active
    assert bo.error is not None and bo.error.sqlstate == "08006"
    assert bo.error.message == "connection refused"
    assert bo.granted is None  # only 53300 says how many the server lets us keep
    assert w.waiting() == [waiter]
    close = w.pooler.wait_timeout(waiter, w.pool, 12.0, 10.0)
    assert close.error is not None
    assert close.error.sqlstate == "08006"
    assert "cannot reach the server" in close.error.message
    assert "connection refused" in close.error.message
    assert "waited 10.0 s" in close.error.message
    assert close.error.hint


def test_the_queue_notice_names_the_refusal() -> None:
    w, _, _ = refused_once(SORRY, query_wait_timeout=30.0)
    message, detail = w.pooler.wait_notice(w.pool, 1, 1, 5.0)
    assert "position 1 of 1 in the queue of shop/app" in message
    assert "the server refused new connections (sorry, too many clients already)" in detail
    assert "waited 5.0 s" in detail and "query_wait_timeout=30 s" in detail


def test_server_closing_during_login_is_a_network_failure() -> None:
    w = World()
    client, [connect] = w.new_client(0.0)
    assert w.pooler.server_closed(connect.server, "connection reset", 0.5) == []
    assert client.state is ClientState.WAITING_LOGIN
    assert w.pool.backoff.active
    assert w.pool.backoff.error is not None
    assert w.pool.backoff.error.message == "connection reset"


@pytest.mark.parametrize("sqlstate", ["57P03", "57P01"])
def test_server_starting_or_shutting_down_is_back_pressure_too(sqlstate: str) -> None:
    w = World()
    client, [connect] = w.new_client(0.0)
    error = ServerError("FATAL", sqlstate, "the database system is starting up")
    assert w.pooler.server_login_failed(connect.server, error, 0.5) == []
    assert client.state is ClientState.WAITING_LOGIN
    assert w.pool.backoff.active


# --- failures that waiting will not cure --------------------------------------------------------
@pytest.mark.parametrize("error", [BAD_PASSWORD, NO_DATABASE], ids=["28P01", "3D000"])
def test_non_transient_failure_closes_every_waiting_client_at_once(error: ServerError) -> None:
    w = World()
    a, [connect] = w.new_client(0.0)
    b, more = w.new_client(0.1)
    assert more == []  # one login in flight
    actions = w.pooler.server_login_failed(connect.server, error, 0.2)
    assert len(actions) == 2
    assert {id(x.client) for x in actions if isinstance(x, CloseClient)} == {id(a), id(b)}
    for close in actions:
        assert isinstance(close, CloseClient)
        assert close.reason == Reason.LOGIN_FAILED
        assert close.error == ServerError("FATAL", error.sqlstate, error.message)
    assert not w.pool.backoff.active
    w.apply(actions, 0.2)
    assert w.pool.clients[ClientState.WAITING_LOGIN] == {}
    assert connects(w.pooler.maint(1.0)) == []


def test_non_transient_failure_also_closes_queued_clients_of_a_live_pool() -> None:
    w = World()
    holder, server = w.busy(0.0)
    waiter, actions = w.waiter(1.0)
    [probe] = connects(actions)
    w.sync()
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


def test_queued_clients_of_a_pool_without_servers_hear_the_refusal() -> None:
    # The pool had logged in once (clients are promoted), then lost its servers; a bad login
    # now means no server comes for server_login_retry: the switch's queue is told why.
    w = World(server_login_retry=15.0)
    a = w.ready_client(0.0)
    [server] = list(w.pool.servers[ServerState.IDLE])
    w.apply(w.server_gone(server, Reason.SERVER_CLOSED, 0.5), 0.5)
    [probe] = connects(w.query(a, 1.0))
    w.apply(w.pooler.server_login_failed(probe, BAD_PASSWORD, 1.1), 1.1)
    assert a.state is ClientState.CLOSED  # queued when it failed: told at once
    b = w.ready_client(2.0)  # the welcome is known: its login completes
    w.query(b, 2.0)
    w.sync()
    [close] = w.pooler.pool_waiters(w.pool, 1, 2.0)
    assert isinstance(close, CloseClient) and close.client is b
    assert close.reason == Reason.LOGIN_FAILING
    assert close.error is not None and close.error.sqlstate == "28P01"


def test_a_live_server_keeps_serving_while_logins_are_refused() -> None:
    w = World(server_login_retry=15.0)
    holder, server = w.busy(0.0)
    _, actions = w.waiter(1.0)
    [probe] = connects(actions)
    w.apply(w.pooler.server_login_failed(probe, BAD_PASSWORD, 1.0), 1.0)
    w.sync()
    holder.expect_rfq = 0
    w.release(server, 2.0)
    assert w.pool.login_error is not None
    # The pool still has a server: new clients log in and the queue is not refused.
    c = w.ready_client(3.0)
    assert w.query(c, 3.0) == []
    assert c.link is server
    assert w.pooler.pool_waiters(w.pool, 1, 3.0) == []
    # After server_login_retry a login goes out again, and a good one clears the refusal.
    [again] = connects(w.pooler.pool_waiters(w.pool, 1, 16.5))
    w.pooler.server_login_ok(again, PARAMS, 17.0)
    assert w.pool.login_error is None and w.pool.login_failed_until == 0.0
