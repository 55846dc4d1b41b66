"""Basic pooling through a real pgfunnel: rows come back, backends are shared, SHOW works."""

from __future__ import annotations

import asyncio
import subprocess

import asyncpg
import pytest

from pgfunnel.throwaway import Cluster, pg_tool
from tests.integration.harness import backends, pgbench_init, pgpass_env


def test_psql_through_pooler_returns_rows(funnel) -> None:  # type: ignore[no-untyped-def]
    f = funnel()
    out = subprocess.run(
        [
            pg_tool("psql"),
            "-X",
            "-At",
            "-h",
            "127.0.0.1",
            "-p",
            str(f.port),
            "-U",
            "postgres",
            "postgres",
            "-c",
            "SELECT 40 + 2",
        ],
        env=pgpass_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "42"


def test_show_pools_has_pgbouncer_columns(funnel) -> None:  # type: ignore[no-untyped-def]
    f = funnel()
    with f.connect() as conn:
        conn.execute("SELECT 1")
    row = f.pool()
    assert list(row) == [
        "database",
        "user",
        "cl_active",
        "cl_waiting",
        "cl_active_cancel_req",
        "cl_waiting_cancel_req",
        "sv_active",
        "sv_active_cancel",
        "sv_being_canceled",
        "sv_idle",
        "sv_used",
        "sv_tested",
        "sv_login",
        "maxwait",
        "maxwait_us",
        "pool_mode",
        "load_balance_hosts",
    ]
    assert row["pool_mode"] == "transaction"
    assert row["sv_idle"] >= 1
    version = f.admin("SHOW VERSION")
    assert "pgfunnel" in version[0]["version"]


async def test_500_asyncpg_tasks_share_10_backends(funnel, pg: Cluster) -> None:  # type: ignore[no-untyped-def]
    f = funnel(settings={"default_pool_size": 10, "max_client_conn": 1000})
    peak = 0

    async def one(i: int) -> int:
        conn = await asyncpg.connect(f.url(), statement_cache_size=0)
        try:
            async with conn.transaction():
                value = await conn.fetchval("SELECT $1::int * 2 FROM pg_sleep(0.01)", i)
            return int(value)
        finally:
            await conn.close()

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, await asyncio.to_thread(backends, pg, user="postgres"))
            await asyncio.sleep(0.2)

    watcher = asyncio.create_task(watch())
    results = await asyncio.gather(*(one(i) for i in range(500)))
    watcher.cancel()
    assert results == [i * 2 for i in range(500)]
    assert 0 < peak <= 10 + 1  # + the psql probe's own backend is excluded; one spare for timing


@pytest.mark.parametrize("mode", ["simple", "extended"])
def test_pgbench_through_pooler_has_no_failures(funnel, pg: Cluster, mode: str) -> None:  # type: ignore[no-untyped-def]
    f = funnel(settings={"default_pool_size": 5, "max_client_conn": 500})
    env = pgpass_env()
    pgbench_init(pg)
    out = subprocess.run(
        [
            pg_tool("pgbench"),
            "-n",
            "-c",
            "100",
            "-j",
            "2",
            "-t",
            "5",
            "-M",
            mode,
            "-h",
            "127.0.0.1",
            "-p",
            str(f.port),
            "-U",
            "postgres",
            "postgres",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "number of failed transactions: 0 (0.000%)" in out.stdout
    assert "number of transactions actually processed: 500/500" in out.stdout
