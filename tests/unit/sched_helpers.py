"""A stand-in for the net layer and the switch around the pure scheduler, for the pool tests.

The switch owns which client holds which server, the idle stacks and the queues; the scheduler
only hears its events (WAITERS, ATTENTION, CLOSED) and reads its counts. `World` plays both
parts in the few lines each needs, as net/app.py does: a query with no idle server queues its
client and reports the pool's waiters; a Promote gives the server to the first waiter, else
pushes it idle (LIFO); `sync` copies the queue length into the pool as the janitor's
`sync_pools` does. What the tests assert is what the scheduler decided.
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from typing import Any

from pgfunnel.config.pools import PoolSettings
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
    Pool,
    Pooler,
    Promote,
    User,
)
from pgfunnel.proto.strings import Reason

PARAMS = {"server_version": "16.3", "client_encoding": "UTF8"}


class World:
    """A Pooler with injected time and rng=0.5, and the switch's side played in Python."""

    def __init__(self, **overrides: Any) -> None:
        base: dict[str, Any] = {
            "pool_mode": "transaction",
            "pool_size": 2,
            "server_check_query": None,
            "server_lifetime": 0.0,
            "server_idle_timeout": 0.0,
            "query_wait_notify": 0.0,
        }
        base.update(overrides)
        self.settings = PoolSettings(**base)
        self.pooler = Pooler(settings_for=lambda db, user: replace(self.settings), rng=lambda: 0.5)
        self.db = Database("db", config=None)
        self.user = User("u")
        self.pool = self.pooler.get_pool(self.db, self.user)
        self.idle: dict[Pool, list[Server]] = {}  # the switch's idle stacks (top last)
        self.promoted: list[Server] = []  # every Promote applied, in order

    # --- the net layer's calls ----------------------------------------------------------------
    def new_client(self, t: float, pool: Pool | None = None) -> tuple[Client, list[Action]]:
        client = Client(conn=None, addr="1.2.3.4", port=1, now=t)
        return client, self.pooler.client_authenticated(client, pool or self.pool, t)

    def login_ok(self, server: Server, t: float) -> list[Action]:
        return self.pooler.server_login_ok(server, PARAMS, t)

    def ready_client(self, t: float, pool: Pool | None = None) -> Client:
        """An authenticated, logged-in client holding no server (the pool's first login is
        completed when needed; that server goes idle in the switch)."""
        pool = pool or self.pool
        client, actions = self.new_client(t, pool)
        if pool.welcome is None:
            [connect] = actions
            assert isinstance(connect, Connect)
            actions = self.login_ok(connect.server, t)
            assert FinishLogin(client) in actions
            self.apply(actions, t)
        else:
            assert actions == [FinishLogin(client)]
        assert client.state is ClientState.ACTIVE
        return client

    # --- the switch's part --------------------------------------------------------------------
    def query(self, client: Client, t: float) -> list[Action]:
        """`client` sends a query holding no server: the switch links the top idle server, or
        queues the client and, when the queue was empty, reports the pool's waiters."""
        pool = client.pool
        assert pool is not None
        stack = self.idle.setdefault(pool, [])
        if stack and not pool.db.paused:
            self._link(client, stack.pop())
            return []
        episode = not self.queue(pool)
        self.pooler.mirror_client(client, ClientState.WAITING)
        client.wait_start = t
        pool.waiting.append(client)
        if pool.db.paused or not episode:
            return []  # WAITERS: once per queue episode, never while paused
        return self.pooler.pool_waiters(pool, len(self.queue(pool)), t)

    def queue(self, pool: Pool) -> list[Client]:
        return list(pool.waiting_clients())

    def sync(self, pool: Pool | None = None) -> None:
        """What the janitor's sync_pools copies from the switch: the queue length."""
        for p in [pool] if pool is not None else list(self.pooler.pools.values()):
            p.waiting = deque(self.queue(p))
            p.sw_waiting = len(p.waiting)
            if not p.sw_waiting:
                p.reserve_due = False

    def _link(self, client: Client, server: Server) -> None:
        self.pooler.mirror_client(client, ClientState.ACTIVE)
        self.pooler.mirror_server(server, ServerState.ACTIVE)
        client.link, server.link = server, client

    def _unlink(self, server: Server) -> Client | None:
        client = server.link
        if client is not None:
            client.link = None
        server.link = None
        return client

    def promote(self, server: Server) -> None:
        """The switch takes a clean server: to the pool's first waiter, else idle."""
        assert server.state is ServerState.IDLE
        self.promoted.append(server)
        self._hand_on(server)

    def _hand_on(self, server: Server) -> None:
        """A free server goes to its pool's first waiter (unless paused), else idle."""
        pool = server.pool
        queue = self.queue(pool)
        if queue and not pool.db.paused:
            pool.waiting.remove(queue[0])
            self._link(queue[0], server)
        else:
            self.idle.setdefault(pool, []).append(server)

    def release(self, server: Server, t: float, why: str | None = None) -> list[Action]:
        """The linked client's transaction ended. Clean (`why` None): the switch hands the
        server on itself; else it parks it and reports ATTENTION `why`."""
        self._unlink(server)
        if why is None:
            if server.close_needed or server.lifetime_over:
                why = "close_needed"  # parked at release
            else:
                self.pooler.mirror_server(server, ServerState.IDLE)
                self._hand_on(server)
                return []
        return self.attention(server, why, t)

    def attention(self, server: Server, why: str, t: float) -> list[Action]:
        """ATTENTION, as App.server_attention reports it: parked (USED) unless dirty_busy."""
        self._take(server)
        if why != "dirty_busy":
            self.pooler.mirror_server(server, ServerState.USED)
        return self.pooler.server_attention(server, why, t)

    def _take(self, server: Server) -> None:
        stack = self.idle.get(server.pool, [])
        if server in stack:
            stack.remove(server)

    def server_gone(self, server: Server, reason: str, t: float) -> list[Action]:
        """The switch's CLOSED for a server (it died): out of the idle stack, its client (if
        any) closed by the switch with server_gone, and the scheduler told."""
        self._take(server)
        self._unlink(server)
        return self.pooler.server_closed(server, reason, t)

    def client_leaves(self, client: Client, t: float) -> list[Action]:
        """The client's socket closed (the switch's CLOSED): out of the queue, and its server,
        if it held one, judged by the caller through `release`."""
        if client.pool is not None and client in client.pool.waiting:
            client.pool.waiting.remove(client)
        client.link = None
        return self.pooler.client_closed(client, t)

    def apply(self, actions: list[Action], t: float) -> list[Action]:
        """Carry out what the switch does with the scheduler's actions; returns those it
        does not act on itself (Connect, RunQueries, FinishLogin), and what followed."""
        left: list[Action] = []
        for action in actions:
            if isinstance(action, Promote):
                self.promote(action.server)
            elif isinstance(action, CloseClient):
                left += self.apply(self.client_leaves(action.client, t), t)
            elif isinstance(action, CloseServer):
                self._take(action.server)
                self._unlink(action.server)
            elif isinstance(action, EvictIdle):
                server = action.server
                if server in self.idle.get(server.pool, []):  # App.take_idle
                    self._take(server)
                    left += self.apply(self.pooler.server_closed(server, Reason.EVICTED, t), t)
                    left += self.apply(self.pooler.evicted(action.pool, t), t)
            elif isinstance(action, MarkCloseNeeded):
                server = action.server
                if server in self.idle.get(server.pool, []):  # parked at once if idle
                    left += self.apply(self.attention(server, "close_needed", t), t)
            else:
                left.append(action)
        return left

    # --- set-ups ------------------------------------------------------------------------------
    def linked_client(self, t: float, pool: Pool | None = None) -> tuple[Client, Server]:
        """A client holding a server with a query in flight: the top idle server, or one
        opened for it."""
        client = self.ready_client(t, pool)
        client.expect_rfq = 1
        actions = self.query(client, t)
        pool = client.pool
        assert pool is not None
        if client.link is None:
            [connect] = [a for a in actions if isinstance(a, Connect)]
            # The queue as the scheduler should count it once the Promote serves this client:
            # set-ups stay clear of the second login test_one_waiter_gets_one_login is about.
            pool.sw_waiting = len(self.queue(pool)) - 1
            assert self.apply(self.login_ok(connect.server, t), t) == []
            self.sync(pool)
        server = client.link
        assert server is not None and server.link is client
        return client, server

    def warm(self, n: int, t: float = 0.0, pool: Pool | None = None) -> list[Server]:
        """n logged-in idle servers, released one per second from t, oldest first."""
        pairs = [self.linked_client(t, pool) for _ in range(n)]
        for i, (client, server) in enumerate(pairs):
            client.expect_rfq = 0
            assert self.release(server, t + i) == []
            server.idle_since = t + i  # the switch's idle clock, as refresh() reads it
            assert self.client_leaves(client, t + i) == []
        return [server for _, server in pairs]


def state_of(pool: Pool, server: Server) -> ServerState:
    [state] = [s for s, members in pool.servers.items() if server in members]
    return state


def connects(actions: list[Action]) -> list[Server]:
    return [a.server for a in actions if isinstance(a, Connect)]
