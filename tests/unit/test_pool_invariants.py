"""Random interleavings of the switch's events: the scheduler's invariants hold after every step.

The events are the ones the scheduler hears now (WAITERS, ATTENTION, CLOSED, logins, the
pooler's own queries, the switch's deadlines, the admin commands, the janitor); the switch's
side (queues, idle stacks, links) is played by sched_helpers.World. After every step the pool
counts must match the objects, stay within pool_size + reserve_pool_size and max_db_connections,
never go negative, and every server a Connect asked for must be either in its pool's lists or
closed. At the end the server recovers: every client still waiting must be served.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pgfunnel.pool.objects import Client, ClientState, Server, ServerState
from pgfunnel.pool.scheduler import (
    Action,
    CloseClient,
    CloseServer,
    Connect,
    Database,
    EvictIdle,
    FinishLogin,
    MarkCloseNeeded,
    PoolSettings,
    Promote,
    RunQueries,
    User,
)
from pgfunnel.proto import sqlstate as ss
from pgfunnel.proto.messages import ServerError
from pgfunnel.proto.strings import Reason
from tests.unit.sched_helpers import PARAMS, World

TOO_MANY = ServerError("FATAL", "53300", 'too many connections for role "app"')
BAD_PASSWORD = ServerError("FATAL", "28P01", 'password authentication failed for user "app"')
KILLED = ServerError("FATAL", ss.ADMIN_SHUTDOWN, "killed")
POOL_SIZE = 2
RESERVE = 1
RESERVE_TIMEOUT = 2.0
QUERY_WAIT_TIMEOUT = 20.0
LIFETIME = 300.0
IDLE_TIMEOUT = 30.0
MAX_DB = 4  # above one pool's 2 + 1, below both pools' 2 * (2 + 1): eviction has to happen


class Sim:
    """The scheduler, the switch's side (World) and the net layer's deadlines (App.deadline)."""

    def __init__(self, mode: str) -> None:
        base = PoolSettings(
            pool_mode=mode,
            pool_size=POOL_SIZE,
            reserve_pool_size=RESERVE,
            reserve_pool_timeout=RESERVE_TIMEOUT,
            max_db_connections=MAX_DB,
            server_lifetime=LIFETIME,
            server_idle_timeout=IDLE_TIMEOUT,
            server_connect_timeout=10.0,
            server_login_retry=3.0,
            server_check_query="SELECT 1",
            server_check_delay=30.0,
            query_wait_timeout=QUERY_WAIT_TIMEOUT,
            idle_transaction_timeout=15.0,
        )

        def settings_for(db: Database, user: User) -> PoolSettings:
            return replace(base, min_pool_size=1 if user.name == "u" else 0)

        self.w = World()
        self.w.pooler.settings_for = settings_for
        self.w.pooler.retune()
        self.mode = mode
        self.now = 0.0
        self.pooler = self.w.pooler
        self.db = self.w.db
        self.pools = [self.w.pool, self.pooler.get_pool(self.db, User("v"))]
        self.clients: list[Client] = []
        self.servers: list[Server] = []  # every server a Connect asked for

    # --- the net layer's side ---------------------------------------------------------------
    def apply(self, actions: list[Action]) -> None:
        for action in actions:
            self._check_action(action)
        for action in self.w.apply(actions, self.now):
            if isinstance(action, Connect):
                self.servers.append(action.server)
            self._check_action(action)

    def _check_action(self, action: Action) -> None:
        if isinstance(action, Connect):
            assert action.server.state is ServerState.LOGIN
        elif isinstance(action, Promote):
            server = action.server
            assert not server.pool.db.paused, "a server handed to the switch while paused"
            assert not server.close_needed, "an obsolete server handed to the switch"
            assert not server.lifetime_over, "a server past its lifetime handed on"
            assert server.link is None
        elif isinstance(action, RunQueries):
            assert action.server.state is ServerState.TESTED
            assert action.server.link is None
        elif isinstance(action, CloseServer):
            # The scheduler has already let go of it; the socket close reports nothing more.
            assert action.server.state is ServerState.CLOSED
        elif isinstance(action, EvictIdle):
            assert action.server.state is ServerState.IDLE
        elif isinstance(action, MarkCloseNeeded):
            assert action.server.close_needed
        elif isinstance(action, FinishLogin):
            assert action.client.state is ClientState.ACTIVE
        else:
            assert isinstance(action, CloseClient)

    def arrive(self, pool_index: int) -> None:
        pool = self.pools[pool_index]
        client = Client(conn=None, addr="10.0.0.1", port=5000 + len(self.clients), now=self.now)
        self.clients.append(client)
        self.apply(self.pooler.client_authenticated(client, pool, self.now))

    def query(self, client: Client) -> None:
        client.expect_rfq = 1
        self.apply(self.w.query(client, self.now))

    def answer(self, server: Server, status: bytes) -> None:
        client = server.link
        assert client is not None
        client.expect_rfq = 0
        server.tx_status = status
        if self.mode != "session" and status == b"I":
            self.apply(self.w.release(server, self.now))

    def leave(self, client: Client) -> None:
        """The client's socket closes: the switch judges the server it held (ATTENTION)."""
        server = client.link
        self.apply(self.w.client_leaves(client, self.now))
        if server is None:
            return
        if client.expect_rfq:
            why: str | None = "dirty_busy"
        elif server.tx_status != b"I":
            why = "dirty_txn"
        elif self.mode == "session":
            why = "session_end"
        else:
            why = None  # at a boundary: back to the pool
        self.apply(self.w.release(server, self.now, why))

    def login(self, server: Server, outcome: str) -> None:
        if outcome == "ok":
            self.apply(self.pooler.server_login_ok(server, PARAMS, self.now))
        elif outcome == "53300":
            self.apply(self.pooler.server_login_failed(server, TOO_MANY, self.now))
        elif outcome == "28P01":
            self.apply(self.pooler.server_login_failed(server, BAD_PASSWORD, self.now))
        else:
            self.apply(self.pooler.server_login_failed(server, None, self.now, "refused"))

    def internal_done(self, server: Server, ok: bool) -> None:
        if ok:
            server.tx_status = b"I"
        self.apply(self.pooler.internal_done(server, ok, self.now))

    def die(self, server: Server) -> None:
        """The server's socket closes; a linked client is closed with it by the switch."""
        client = server.link
        self.apply(self.w.server_gone(server, Reason.SERVER_CLOSED, self.now))
        if client is not None:
            self.apply(self.w.client_leaves(client, self.now))

    def tick(self, dt: float, wait_timeout: bool = True) -> None:
        """Time passes: the switch's deadlines as App.deadline acts on them, then the janitor."""
        self.now = round(self.now + dt, 6)
        self.w.sync()
        for pool in self.pools:
            queue = self.w.queue(pool)
            pool.sw_maxwait = self.now - queue[0].wait_start if queue else 0.0
            for client in queue if wait_timeout else []:
                if self.now - client.wait_start >= QUERY_WAIT_TIMEOUT:
                    waited = self.now - client.wait_start
                    close = self.pooler.wait_timeout(client, pool, self.now, waited)
                    self.apply([close])
            if self.w.queue(pool) and pool.sw_maxwait >= RESERVE_TIMEOUT and not pool.reserve_due:
                pool.reserve_due = True  # RESERVE, once per queue episode
                self.apply(self.pooler.pool_waiters(pool, pool.sw_waiting, self.now))
            for server in list(self.w.idle.get(pool, [])):
                if server.state is not ServerState.IDLE:
                    continue
                if self.now - server.connect_time >= LIFETIME:
                    server.lifetime_over = True  # SERVER_LIFETIME: parked at once if idle
                    self.apply(self.w.attention(server, "close_needed", self.now))
                elif (
                    self.now - server.idle_since >= IDLE_TIMEOUT
                    and pool.server_count > pool.settings.min_pool_size
                ):
                    self.pooler.count_timeout(pool, Reason.IDLE_TIMEOUT)
                    self.apply(self.w.server_gone(server, Reason.IDLE_TIMEOUT, self.now))
            for server in list(pool.servers[ServerState.ACTIVE]):
                if self.now - server.connect_time >= LIFETIME:
                    server.lifetime_over = True  # closed when its client lets go
        self.w.sync()
        self.apply(self.pooler.maint(self.now))

    # --- what is true after every step ------------------------------------------------------
    def live_clients(self) -> list[Client]:
        return [c for c in self.clients if c.state is not ClientState.CLOSED]

    def check(self) -> None:
        seen: Counter[int] = Counter()
        for pool in self.pools:
            live = 0
            for state, members in pool.servers.items():
                for server in members:
                    assert server.state is state and server.pool is pool
                    seen[id(server)] += 1
                    live += 1
            for cstate, cmembers in pool.clients.items():
                for client in cmembers:
                    assert client.state is cstate and client.pool is pool
            assert pool.servers[ServerState.CLOSED] == {}
            assert pool.clients[ClientState.CLOSED] == {}
            assert pool.server_count == live >= 0, "the pool's count drifted from its servers"
            assert pool.sw_waiting >= 0
            assert pool.server_count <= POOL_SIZE + RESERVE
            assert len(pool.servers[ServerState.LOGIN]) <= 1, "one login in flight per pool"
            if pool.welcome is not None:
                assert pool.clients[ClientState.WAITING_LOGIN] == {}
            bo = pool.backoff
            assert bo.failures >= 0 and (bo.granted is None or bo.granted >= 0)
        for server in self.servers:
            # Every Connect is accounted for: in exactly one list of its pool, or closed.
            if server.state is ServerState.CLOSED:
                assert seen[id(server)] == 0
                assert server.link is None
            else:
                assert seen[id(server)] == 1, f"{server} in {seen[id(server)]} state lists"
            if server.link is not None:
                assert server.state is ServerState.ACTIVE
                assert server.link.link is server
        assert sum(seen.values()) == sum(s.state is not ServerState.CLOSED for s in self.servers)
        holders: Counter[int] = Counter()
        for client in self.clients:
            if client.link is not None:
                assert client.link.link is client
                assert client.state is ClientState.ACTIVE
                holders[id(client.link)] += 1
            if client.state is ClientState.CLOSED:
                assert client.link is None
        assert all(n == 1 for n in holders.values()), "a server linked to two clients"
        assert self.db.server_count == sum(p.server_count for p in self.pools)
        assert 0 <= self.db.server_count <= MAX_DB
        for pool in self.pools:
            assert pool.user.server_count == pool.server_count >= 0  # one pool per user here


# Strategies built once: drawing from a fresh sampled_from per step costs more than the step.
# Weighted so that pools fill up (pool_size, the reserve, the database cap) before a KILL or a
# long tick empties them again.
OPS = st.sampled_from(
    [
        *["arrive"] * 4,
        *["query"] * 6,
        *["answer"] * 4,
        *["login"] * 5,
        *["tick"] * 3,
        *["leave"] * 2,
        *["internal"] * 2,
        *("check", "die", "pause", "resume", "resume", "reconnect", "kill"),
    ]
)
INDEX = st.integers(min_value=0, max_value=63)
POOL = st.integers(min_value=0, max_value=1)
STATUS = st.sampled_from([b"I", b"I", b"T", b"E"])
OUTCOME = st.sampled_from(["ok"] * 12 + ["53300", "53300", "net", "28P01"])
DT = st.sampled_from([0.01, 0.1, 0.5, 0.5, 1.0, 1.0, 3.0, 16.0, 40.0])


def _pick(data: st.DataObject, items: list[Any]) -> Any:
    return items[data.draw(INDEX) % len(items)] if items else None


def step(sim: Sim, data: st.DataObject) -> None:
    op = data.draw(OPS)
    live = sim.live_clients()
    if op == "arrive":
        sim.arrive(data.draw(POOL))
    elif op == "query":
        idle = [c for c in live if c.state is ClientState.ACTIVE and c.link is None]
        client = _pick(data, idle)
        if client is not None:
            sim.query(client)
    elif op == "answer":
        busy = [s for s in sim.servers if s.link is not None and s.link.expect_rfq > 0]
        server = _pick(data, busy)
        if server is not None:
            sim.answer(server, data.draw(STATUS))
    elif op == "leave":
        client = _pick(data, live)
        if client is not None:
            sim.leave(client)
    elif op == "login":
        server = _pick(data, [s for s in sim.servers if s.state is ServerState.LOGIN])
        if server is not None:
            sim.login(server, data.draw(OUTCOME))
    elif op == "internal":
        server = _pick(data, [s for s in sim.servers if s.state is ServerState.TESTED])
        if server is not None:
            sim.internal_done(server, data.draw(st.booleans()))
    elif op == "check":
        # server_check_delay passed for an idle server: the switch parks it CHECK_NEEDED.
        idle = [s for p in sim.pools for s in sim.w.idle.get(p, [])]
        server = _pick(data, idle)
        if server is not None:
            sim.apply(sim.w.attention(server, "check_needed", sim.now))
    elif op == "die":
        alive = [s for s in sim.servers if s.state is not ServerState.CLOSED]
        server = _pick(data, alive)
        if server is not None:
            sim.die(server)
    elif op == "pause":
        sim.apply(sim.pooler.pause(sim.db, sim.now))
    elif op == "resume":
        if sim.db.paused:
            sim.w.sync()
            sim.apply(sim.pooler.resume(sim.db, sim.now))
    elif op == "reconnect":
        sim.apply(sim.pooler.reconnect(sim.db, sim.now))
    elif op == "kill":
        sim.apply(sim.pooler.kill(sim.db, sim.now, Reason.DB_REMOVED, KILLED))
    else:
        sim.tick(data.draw(DT))


def drain(sim: Sim) -> None:
    """The server recovers and every client finishes: nobody may be left waiting forever."""
    if sim.db.paused:
        sim.w.sync()
        sim.apply(sim.pooler.resume(sim.db, sim.now))
    waiting: list[Client] = []
    for _ in range(200):
        for server in [s for s in sim.servers if s.state is ServerState.LOGIN]:
            if server.state is ServerState.LOGIN:
                sim.login(server, "ok")
        for server in [s for s in sim.servers if s.state is ServerState.TESTED]:
            if server.state is ServerState.TESTED:
                sim.internal_done(server, True)
        for server in [s for s in sim.servers if s.link is not None]:
            client = server.link
            if client is None:
                continue
            if client.expect_rfq:
                sim.answer(server, b"I")
            if server.link is client and (sim.mode == "session" or server.tx_status != b"I"):
                sim.leave(client)
        sim.check()
        waiting = [
            c
            for c in sim.live_clients()
            if c.state in (ClientState.WAITING, ClientState.WAITING_LOGIN)
        ]
        if not waiting:
            return
        # No query_wait_timeout here: a client closed for waiting is not a client served.
        sim.tick(0.5, wait_timeout=False)
        sim.check()
    raise AssertionError(f"clients never served: {waiting}")


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["transaction", "session", "statement"]), st.data())
def test_invariants_hold_under_random_interleavings(mode: str, data: st.DataObject) -> None:
    sim = Sim(mode)
    for _ in range(data.draw(st.integers(min_value=1, max_value=120))):
        step(sim, data)
        sim.check()
    drain(sim)
