"""53300 as back-pressure: clients stay queued while the server refuses backends, for each limit."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from pgfunnel.throwaway import Cluster
from tests.integration.harness import Funnel, backends, wait_for

APP_PASSWORD = "app-secret"


@pytest.fixture(scope="module")
def small() -> Iterator[Cluster]:
    """max_connections=13 with 3 superuser-reserved slots: 10 for ordinary roles."""
    cluster = Cluster(max_connections=13)
    cluster.start()
    cluster.psql(
        f"CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}';"
        f"CREATE ROLE capped LOGIN PASSWORD '{APP_PASSWORD}' CONNECTION LIMIT 3;"
        f"CREATE ROLE shopper LOGIN PASSWORD '{APP_PASSWORD}';"
    )
    cluster.psql("CREATE DATABASE shop CONNECTION LIMIT 3")
    cluster.psql("GRANT ALL ON SCHEMA public TO PUBLIC")
    try:
        yield cluster
    finally:
        cluster.destroy()


def _funnel(cluster: Cluster, **settings: Any) -> Funnel:
    base = {
        "default_pool_size": 20,
        "max_client_conn": 1000,
        "query_wait_timeout": 60,
        "server_login_retry": 1,
    }
    base.update(settings)
    return Funnel(
        cluster,
        settings=base,
        databases={
            "postgres": f"host=127.0.0.1 port={cluster.port} dbname=postgres",
            "shop": f"host=127.0.0.1 port={cluster.port} dbname=shop",
        },
        userlist={"app": APP_PASSWORD, "capped": APP_PASSWORD, "shopper": APP_PASSWORD},
    ).start()


def _hold(cluster: Cluster, n: int, user: str = "app", dbname: str = "postgres") -> list[Any]:
    """Open n direct connections that sit idle, as another application's would."""
    return [
        psycopg.connect(cluster.dsn(user=user, password=APP_PASSWORD, dbname=dbname))
        for _ in range(n)
    ]


async def _load(f: Funnel, user: str, dbname: str, clients: int, xacts: int) -> list[int]:
    """`clients` connections each run `xacts` transactions; returns the values they read."""

    async def one(i: int) -> list[int]:
        conn = await asyncpg.connect(
            f.url(user=user, password=APP_PASSWORD, db=dbname), statement_cache_size=0
        )
        try:
            out = []
            for j in range(xacts):
                async with conn.transaction():
                    out.append(
                        int(await conn.fetchval("SELECT $1::int FROM pg_sleep(0.02)", i * 100 + j))
                    )
            return out
        finally:
            await conn.close()

    results = await asyncio.gather(*(one(i) for i in range(clients)))
    return [v for r in results for v in r]


def _pool_servers(row: dict[str, Any]) -> int:
    return int(row["sv_active"] + row["sv_idle"] + row["sv_used"] + row["sv_tested"])


async def test_server_max_connections_is_back_pressure(small: Cluster) -> None:
    """pool_size 20 against 10 usable slots, 4 taken by someone else: every client succeeds,
    and the pool holds at what the server granted (6), then grows back when slots free up."""
    others = _hold(small, 4)
    f = _funnel(small)
    try:
        values = await _load(f, "app", "postgres", clients=60, xacts=3)
        assert sorted(values) == sorted(i * 100 + j for i in range(60) for j in range(3))
        row = f.pool("postgres", "app")
        assert _pool_servers(row) <= 6
        assert backends(small, user="app") <= 10
        assert "53300" in f.log()
        assert "remaining connection slots are reserved" in f.log()
        # The other application leaves: the pool takes the capacity back under load.
        for conn in others:
            conn.close()
        others = []
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, _pool_servers(await asyncio.to_thread(f.pool, "postgres", "app")))
                await asyncio.sleep(0.1)

        watcher = asyncio.create_task(watch())
        # The next login probe may be up to server_login_retry away: keep the load up (in
        # rounds, each checked) until the pool has grown or 20 rounds have passed.
        for _ in range(20):
            values = await _load(f, "app", "postgres", clients=60, xacts=3)
            assert sorted(values) == sorted(i * 100 + j for i in range(60) for j in range(3))
            if peak > 6:
                break
        watcher.cancel()
        assert peak > 6
    finally:
        for conn in others:
            conn.close()
        f.stop()


async def test_role_connection_limit_is_back_pressure(small: Cluster) -> None:
    f = _funnel(small)
    try:
        values = await _load(f, "capped", "postgres", clients=40, xacts=3)
        assert len(values) == 120
        assert _pool_servers(f.pool("postgres", "capped")) <= 3
        assert 'too many connections for role "capped"' in f.log()
    finally:
        f.stop()


async def test_database_connection_limit_is_back_pressure(small: Cluster) -> None:
    f = _funnel(small)
    try:
        values = await _load(f, "shopper", "shop", clients=40, xacts=3)
        assert len(values) == 120
        assert _pool_servers(f.pool("shop", "shopper")) <= 3
        assert 'too many connections for database "shop"' in f.log()
    finally:
        f.stop()


async def test_wait_timeout_under_back_pressure_names_the_limit(small: Cluster) -> None:
    """The role's whole limit is taken elsewhere: after query_wait_timeout the client gets
    53300 naming role "capped", how long it waited, and a hint. Before that it just waits."""
    others = _hold(small, 3, user="capped")
    f = _funnel(small, query_wait_timeout=2)
    try:
        with pytest.raises(asyncpg.TooManyConnectionsError) as info:
            await asyncpg.connect(
                f.url(user="capped", password=APP_PASSWORD), statement_cache_size=0
            )
        err = info.value
        assert err.sqlstate == "53300"
        assert 'role "capped"' in err.args[0]
        assert "waited" in err.args[0]
        assert err.hint is not None and "CONNECTION LIMIT" in err.hint
        wait_for(lambda: "closing because: query_wait_timeout" in f.log())
        # psycopg (libpq) shows the same text to its users.
        with pytest.raises(psycopg.OperationalError, match='role "capped"'):
            psycopg.connect(f.dsn(user="capped", password=APP_PASSWORD)).close()
    finally:
        for conn in others:
            conn.close()
        f.stop()


async def test_clients_queued_across_a_postgres_restart(make_cluster: Any) -> None:
    """In-flight work gets a clear error; clients that ask while PostgreSQL is down wait and
    carry on once it is back; the pool refills."""
    cluster: Cluster = make_cluster(max_connections=30)
    f = Funnel(cluster, settings={"default_pool_size": 5, "query_wait_timeout": 60}).start()
    try:
        conns = [await asyncpg.connect(f.url(), statement_cache_size=0) for _ in range(20)]
        assert [await c.fetchval("SELECT 1") for c in conns] == [1] * 20
        in_flight = asyncio.create_task(conns[0].fetchval("SELECT pg_sleep(30)"))
        await asyncio.sleep(0.5)
        await asyncio.to_thread(cluster.stop)
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)) as info:
            await in_flight
        assert "terminat" in str(info.value) or "closed" in str(info.value).lower()
        # While the server is down, the other clients ask: they must wait, not fail.
        queued = [
            asyncio.create_task(c.fetchval("SELECT $1::int + 1", i))
            for i, c in enumerate(conns[1:], start=1)
        ]
        await asyncio.sleep(2)
        assert not any(t.done() for t in queued)
        await asyncio.to_thread(cluster.start)
        results = await asyncio.wait_for(asyncio.gather(*queued), timeout=60)
        assert results == [i + 1 for i in range(1, 20)]
        row = f.pool()
        assert _pool_servers(row) >= 1
        for c in conns[1:]:
            await c.close()
        wait_for(lambda: backends(cluster, state="idle in transaction") == 0)
    finally:
        f.stop()


# --- a restart during a load run -------------------------------------------------------------
RESTART_LOOPERS = 100
RESTART_POOL = 5
RESTART_SLEEPERS = 3


def _clear_error(exc: BaseException) -> bool:
    """An error the server or the pooler sent, with a SQLSTATE and a message: 57P01 (the server
    terminated the backend) or class 08 (connection failure). A connection closed without a
    word reaches libpq as an error with no SQLSTATE."""
    if not isinstance(exc, psycopg.Error) or exc.sqlstate is None:
        return False
    code = exc.sqlstate
    return (code == "57P01" or code.startswith("08")) and bool(exc.diag.message_primary)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, psycopg.Error):
        return f"{type(exc).__name__} {exc.sqlstate} {exc.diag.message_primary!r}: {exc}"
    return repr(exc)


async def test_load_carries_on_across_a_postgres_restart(make_cluster: Any) -> None:
    """100 clients loop transactions through a pool of 5 while PostgreSQL stops and starts on
    the same port: the queries in flight get a clear error, the clients queued during the
    downtime are not disconnected and are served once it is back, and the pool refills."""
    cluster: Cluster = make_cluster(max_connections=30)
    f = Funnel(
        cluster,
        settings={
            "default_pool_size": RESTART_POOL,
            "max_client_conn": 1000,
            "query_wait_timeout": 120,
            "server_login_retry": 1,
        },
    ).start()
    phase = "before"  # before -> stopping -> down -> up
    running = True
    # Per looper: (phase when the query was sent, phase when it ended, error or None).
    outcomes: list[list[tuple[str, str, BaseException | None]]] = [
        [] for _ in range(RESTART_LOOPERS)
    ]
    reconnects = [0] * RESTART_LOOPERS

    async def connect() -> psycopg.AsyncConnection[Any]:
        # One Parse/Bind/Execute/Sync per query (no prepared statements): what is in flight
        # at the stop is one whole query, whose error libpq reports with the SQLSTATE it got.
        return await psycopg.AsyncConnection.connect(
            f.dsn(), autocommit=True, prepare_threshold=None
        )

    async def loop(i: int) -> None:
        conn = await connect()
        try:
            n = 0
            while running:
                sent = phase
                try:
                    cur = await conn.execute(
                        "SELECT %s::int FROM pg_sleep(0.005)", (i * 10**6 + n,)
                    )
                    assert await cur.fetchone() == (i * 10**6 + n,)
                    outcomes[i].append((sent, phase, None))
                    n += 1
                except psycopg.Error as exc:  # every failure is recorded and judged below
                    outcomes[i].append((sent, phase, exc))
                    # As an application would: drop it, take a fresh connection, carry on.
                    await conn.close()
                    conn = await connect()
                    reconnects[i] += 1
        finally:
            await conn.close()

    def done_in(i: int, p: str) -> int:
        return sum(1 for _, ended, err in outcomes[i] if ended == p and err is None)

    def errors() -> list[tuple[int, str, str, BaseException]]:
        return [
            (i, sent, ended, err)
            for i, o in enumerate(outcomes)
            for sent, ended, err in o
            if err is not None
        ]

    loopers = [asyncio.create_task(loop(i)) for i in range(RESTART_LOOPERS)]
    sleepers: list[Any] = []
    try:
        await asyncio.to_thread(
            wait_for, lambda: all(done_in(i, "before") for i in range(RESTART_LOOPERS)), 60
        )
        # Queries certainly in flight at the stop: long sleeps on servers of the pool.
        sleepers = [await connect() for _ in range(RESTART_SLEEPERS)]
        in_flight = [asyncio.create_task(c.execute("SELECT pg_sleep(60)")) for c in sleepers]

        def sleeping() -> bool:
            n = cluster.psql(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)'"
                " AND state = 'active'"
            )
            return int(n) == RESTART_SLEEPERS

        await asyncio.to_thread(wait_for, sleeping, 30)
        phase = "stopping"
        await asyncio.to_thread(cluster.stop)
        phase = "down"
        slept = await asyncio.wait_for(asyncio.gather(*in_flight, return_exceptions=True), 30)
        assert all(_clear_error(e) for e in slept), [_describe(e) for e in slept]
        # While PostgreSQL is down the loopers keep asking: they wait in the queue.
        await asyncio.sleep(2)
        row = await asyncio.to_thread(f.pool)
        assert row["cl_waiting"] > 0, row
        assert _pool_servers(row) == 0, row
        ended_down = [
            (i, e) for i, o in enumerate(outcomes) for _, ended, e in o if ended == "down"
        ]
        assert ended_down == [], ended_down
        phase = "up"
        await asyncio.to_thread(cluster.start)
        # Once it is back, every looper completes transactions again.
        await asyncio.to_thread(
            wait_for, lambda: all(done_in(i, "up") >= 3 for i in range(RESTART_LOOPERS)), 90
        )
        # The pool refills to its size while the load runs.
        await asyncio.to_thread(wait_for, lambda: _pool_servers(f.pool()) == RESTART_POOL, 30)
        running = False
        results = await asyncio.wait_for(asyncio.gather(*loopers, return_exceptions=True), 60)
        assert [r for r in results if r is not None] == []
        # Only what was in flight when the server went away failed, and clearly so: at most
        # the queries on the pool's servers the sleepers did not hold.
        failed = errors()
        assert all(sent in ("before", "stopping") for _, sent, _, _ in failed), failed
        assert all(_clear_error(err) for *_, err in failed), [_describe(e[3]) for e in failed]
        assert len(failed) <= RESTART_POOL - RESTART_SLEEPERS, failed
        # Everyone else kept the connection it had before the restart: queued, not dropped.
        assert sum(1 for n in reconnects if n == 0) >= RESTART_LOOPERS - len(failed)
        assert sum(done_in(i, "up") for i in range(RESTART_LOOPERS)) >= 3 * RESTART_LOOPERS
        assert backends(cluster) == RESTART_POOL
        assert backends(cluster, state="idle in transaction") == 0
    finally:
        running = False
        for c in sleepers:
            await c.close()
        if phase in ("stopping", "down"):
            await asyncio.to_thread(cluster.start)  # a failed check must not leave them queued
        await asyncio.wait_for(asyncio.gather(*loopers, return_exceptions=True), 60)
        f.stop()
