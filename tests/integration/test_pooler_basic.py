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


# --- [databases] keys that act on every server: connect_query, application_name --------------
def _db(pg: Cluster, extra: str) -> str:
    return f"host=127.0.0.1 port={pg.port} dbname=postgres {extra}"


def test_connect_query_runs_on_each_new_server_before_its_clients(funnel, pg: Cluster) -> None:  # type: ignore[no-untyped-def]
    f = funnel(
        databases={
            "cq": _db(pg, "pool_size=2 connect_query='SET search_path = pgf_cq_marker, public'")
        }
    )

    async def search_path() -> str:
        conn = await asyncpg.connect(f.url(db="cq"), statement_cache_size=0)
        try:
            return str(await conn.fetchval("SELECT current_setting('search_path')"))
        finally:
            await conn.close()

    async def six() -> list[str]:
        return list(await asyncio.gather(*(search_path() for _ in range(6))))

    assert asyncio.run(six()) == ["pgf_cq_marker, public"] * 6
    assert 1 <= f.pool("cq")["sv_idle"] <= 2  # each server ran it, whichever served whom


def test_failing_connect_query_closes_the_server_and_the_client_hears_why(
    funnel, pg: Cluster
) -> None:  # type: ignore[no-untyped-def]
    f = funnel(databases={"bad": _db(pg, "connect_query='SELEKT 1'")})

    async def attempt() -> asyncpg.PostgresError:
        try:
            conn = await asyncpg.connect(f.url(db="bad"), statement_cache_size=0, timeout=20)
        except asyncpg.PostgresError as exc:
            return exc
        await conn.close()
        raise AssertionError("login through a failing connect_query succeeded")

    err = asyncio.run(attempt())
    assert err.sqlstate == "42601"
    assert err.message == 'connect_query failed: syntax error at or near "SELEKT"'
    assert (
        'closing because: connect_query failed: 42601 syntax error at or near "SELEKT"' in f.log()
    )
    assert backends(pg, user="postgres", state="idle in transaction") == 0


def test_databases_application_name_names_clients_that_do_not_name_themselves(
    funnel, pg: Cluster
) -> None:  # type: ignore[no-untyped-def]
    f = funnel(databases={"named": _db(pg, "application_name=pgf_db_app pool_size=1")})

    async def names() -> tuple[str, str, str]:
        anonymous = await asyncpg.connect(f.url(db="named"), statement_cache_size=0)
        try:
            own = await asyncpg.connect(
                f.url(db="named"),
                statement_cache_size=0,
                server_settings={"application_name": "pgf_own_app"},
            )
            try:
                mine = await own.fetchval("SELECT current_setting('application_name')")
            finally:
                await own.close()
            default = await anonymous.fetchval("SELECT current_setting('application_name')")
            async with anonymous.transaction():
                seen = await anonymous.fetchval(
                    "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()"
                )
            return str(default), str(seen), str(mine)
        finally:
            await anonymous.close()

    assert asyncio.run(names()) == ("pgf_db_app", "pgf_db_app", "pgf_own_app")
