"""Random interleavings of pool events: the scheduler's invariants hold after every step."""

from __future__ import annotations

from collections import Counter
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
    FinishLogin,
    Link,
    Notify,
    Pool,
    Pooler,
    PoolSettings,
    RunQueries,
    User,
)
from pgfunnel.proto.messages import ServerError

TOO_MANY = ServerError("FATAL", "53300", 'too many connections for role "app"')
BAD_PASSWORD = ServerError("FATAL", "28P01", 'password authentication failed for user "app"')
POOL_SIZE = 2
RESERVE = 1
QUERY_WAIT_NOTIFY = 4.0
MAX_DB = 3  # below the two pools' combined 2 * (2 + 1): eviction has to happen


class Sim:
    """The scheduler plus a stand-in for the net layer that applies its actions."""

    def __init__(self, mode: str) -> None:
        def settings_for(db: Database, user: User) -> PoolSettings:
            return PoolSettings(
                pool_mode=mode,
                pool_size=POOL_SIZE,
                min_pool_size=1 if user.name == "app" else 0,
                reserve_pool_size=RESERVE,
                reserve_pool_timeout=2.0,
                max_db_connections=MAX_DB,
                server_lifetime=300.0,
                server_idle_timeout=30.0,
                server_connect_timeout=10.0,
                server_login_retry=3.0,
                server_check_query=None,
                query_wait_timeout=20.0,
                query_wait_notify=QUERY_WAIT_NOTIFY,
                idle_transaction_timeout=15.0,
            )

        self.mode = mode
        self.now = 0.0
        self.pooler = Pooler(settings_for=settings_for, rng=lambda: 0.5)
        db = Database("shop", config=None)
        self.pools = [
            self.pooler.get_pool(db, User("app")),
            self.pooler.get_pool(db, User("report")),
        ]
        self.clients: list[Client] = []
        self.servers: list[Server] = []
        self.notified: set[tuple[int, float]] = set()

    # --- the net layer's side ---------------------------------------------------------------
    def apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Connect):
                assert action.server.state is ServerState.LOGIN
                self.servers.append(action.server)
            elif isinstance(action, Link):
                assert not action.server.pool.db.paused, "a server handed out while paused"
                assert not action.server.close_needed, "an obsolete server handed out"
                assert action.client.link is action.server
                assert action.client.state is ClientState.ACTIVE
            elif isinstance(action, RunQueries):
                assert action.server.state is ServerState.TESTED
                assert action.server.link is None
            elif isinstance(action, CloseServer):
                # The scheduler has already let go of it; the socket close reports nothing more.
                assert action.server.state is ServerState.CLOSED
                assert action.server.link is None
            elif isinstance(action, CloseClient):
                self.apply(self.pooler.client_closed(action.client, self.now))
            elif isinstance(action, Notify):
                # query_wait_notify: only to a client still queued that long, once per wait.
                client = action.client
                assert client.state is ClientState.WAITING
                assert self.now - client.wait_start >= QUERY_WAIT_NOTIFY
                key = (client.id, client.wait_start)
                assert key not in self.notified
                self.notified.add(key)
            else:
                assert isinstance(action, FinishLogin)
                assert action.client.state is ClientState.ACTIVE

    def arrive(self, pool: Pool) -> None:
        client = Client(conn=None, addr="10.0.0.1", port=5000 + len(self.clients), now=self.now)
        self.clients.append(client)
        self.apply(self.pooler.client_authenticated(client, pool, self.now))

    def query(self, client: Client) -> None:
        client.expect_rfq += 1
        if client.link is not None:
            client.link.query_start = self.now
        else:
            self.apply(self.pooler.client_wants_server(client, self.now))

    def answer(self, server: Server, status: bytes) -> None:
        client = server.link
        assert client is not None
        client.expect_rfq = 0
        server.tx_status = status
        server.request_time = self.now
        if self.mode != "session" and status == b"I":
            self.apply(self.pooler.release_server(server, self.now))

    def login(self, server: Server, outcome: str) -> None:
        if outcome == "ok":
            self.apply(self.pooler.server_login_ok(server, {"server_version": "16"}, self.now))
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

    def tick(self, dt: float) -> None:
        self.now = round(self.now + dt, 6)
        self.apply(self.pooler.maint(self.now))

    # --- what is true after every step ------------------------------------------------------
    def live_clients(self) -> list[Client]:
        return [c for c in self.clients if c.state is not ClientState.CLOSED]

    def check(self) -> None:
        seen: Counter[int] = Counter()
        listed: set[int] = set()
        for pool in self.pools:
            for state, members in pool.servers.items():
                for server in members:
                    assert server.state is state and server.pool is pool
                    seen[id(server)] += 1
            for cstate, cmembers in pool.clients.items():
                for client in cmembers:
                    assert client.state is cstate and client.pool is pool
                    listed.add(id(client))
            assert pool.servers[ServerState.CLOSED] == {}
            assert pool.clients[ClientState.CLOSED] == {}
            s = pool.settings
            assert pool.server_count <= s.pool_size + s.reserve_pool_size
            if pool.servers[ServerState.IDLE]:
                assert list(pool.waiting_clients()) == [], "an idle server and a waiting client"
            if pool.welcome is not None:
                assert pool.clients[ClientState.WAITING_LOGIN] == {}
        for server in self.servers:
            if server.state is ServerState.CLOSED:
                assert seen[id(server)] == 0
                assert server.link is None
            else:
                assert seen[id(server)] == 1, f"{server} in {seen[id(server)]} state lists"
            if server.link is not None:
                assert server.state is ServerState.ACTIVE
                assert server.link.link is server
            elif server.state is ServerState.ACTIVE:
                raise AssertionError(f"{server} ACTIVE without a client")
        holders: Counter[int] = Counter()
        for client in self.clients:
            if client.link is not None:
                assert client.link.link is client
                assert client.state is ClientState.ACTIVE
                holders[id(client.link)] += 1
            if client.state is ClientState.CLOSED:
                assert client.link is None
                assert id(client) not in listed
        assert all(n == 1 for n in holders.values()), "a server linked to two clients"
        for db in {id(p.db): p.db for p in self.pools}.values():
            assert db.server_count == sum(p.server_count for p in self.pools if p.db is db)
            assert db.server_count <= MAX_DB
        for pool in self.pools:
            same_user = [p for p in self.pools if p.user is pool.user]
            assert pool.user.server_count == sum(p.server_count for p in same_user)


# Strategies built once: drawing from a fresh sampled_from per step costs more than the step.
OPS = st.sampled_from(
    [
        *("arrive", "arrive", "query", "query", "query", "answer", "answer", "answer"),
        *("leave", "login", "login", "login", "internal", "die", "tick", "tick"),
        *("pause", "resume", "resume", "reconnect"),
    ]
)
INDEX = st.integers(min_value=0, max_value=63)
POOL = st.integers(min_value=0, max_value=1)
STATUS = st.sampled_from([b"I", b"I", b"T", b"E"])
OUTCOME = st.sampled_from(["ok"] * 6 + ["53300", "53300", "net", "28P01"])
DT = st.sampled_from([0.01, 0.1, 0.5, 1.0, 3.0, 16.0])


def _pick(data: st.DataObject, items: list[Any]) -> Any:
    return items[data.draw(INDEX) % len(items)] if items else None


def step(sim: Sim, data: st.DataObject) -> None:
    op = data.draw(OPS)
    live = sim.live_clients()
    if op == "arrive":
        sim.arrive(sim.pools[data.draw(POOL)])
    elif op == "query":
        client = _pick(
            data,
            [c for c in live if c.state is ClientState.ACTIVE and c.expect_rfq == 0],
        )
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
            sim.apply(sim.pooler.client_closed(client, sim.now))
    elif op == "login":
        server = _pick(data, [s for s in sim.servers if s.state is ServerState.LOGIN])
        if server is not None:
            sim.login(server, data.draw(OUTCOME))
    elif op == "internal":
        server = _pick(data, [s for s in sim.servers if s.state is ServerState.TESTED])
        if server is not None:
            sim.internal_done(server, data.draw(st.booleans()))
    elif op == "die":
        alive = [s for s in sim.servers if s.state is not ServerState.CLOSED]
        server = _pick(data, alive)
        if server is not None:
            sim.apply(sim.pooler.server_closed(server, "server conn crashed?", sim.now))
    elif op == "pause":
        sim.apply(sim.pooler.pause(sim.pools[0].db, sim.now))
    elif op == "resume":
        if sim.pools[0].db.paused:
            sim.apply(sim.pooler.resume(sim.pools[0].db, sim.now))
    elif op == "reconnect":
        sim.apply(sim.pooler.reconnect(sim.pools[0].db, sim.now))
    else:
        sim.tick(data.draw(DT))


def drain(sim: Sim) -> None:
    """The server recovers and every client finishes: nobody may be left waiting forever."""
    if sim.pools[0].db.paused:
        sim.apply(sim.pooler.resume(sim.pools[0].db, sim.now))
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
            if sim.mode == "session" or server.tx_status != b"I":
                sim.apply(sim.pooler.client_closed(client, sim.now))
        sim.check()
        waiting = [
            c
            for c in sim.live_clients()
            if c.state in (ClientState.WAITING, ClientState.WAITING_LOGIN)
        ]
        if not waiting:
            return
        sim.tick(0.5)
        sim.check()
    raise AssertionError(f"clients never served: {waiting}")


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["transaction", "session", "statement"]), st.data())
def test_invariants_hold_under_random_interleavings(mode: str, data: st.DataObject) -> None:
    sim = Sim(mode)
    for _ in range(data.draw(st.integers(min_value=1, max_value=80))):
        step(sim, data)
        sim.check()
    drain(sim)
