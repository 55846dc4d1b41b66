"""Named prepared statements through transaction pooling (max_prepared_statements): drivers
with their default statement caches, statements following a client to servers that lack them,
Close / DEALLOCATE ALL / DISCARD ALL, a DDL that changes a result type, and the counts."""

from __future__ import annotations

import asyncio
import re
import secrets
import subprocess
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import errors

from pgfunnel.throwaway import SUPERUSER, Cluster, pg_tool
from tests.integration.harness import Funnel, backends, own_role, pgpass_env
from tests.integration.rawproto import (
    bind,
    error_fields,
    execute,
    parse,
    raw_login,
    read_until,
    rows,
    run_raw,
    sync,
)
from tests.integration.rawproto import m as msgs

TAG = secrets.token_hex(3)
ROLE, ROLE_PW = f"pgf_ps_{TAG}", "ps-pw"
TABLE = f"pgf_ps_t_{TAG}"
BENCH_DB = f"pgf_ps_bench_{TAG}"


def _db(pg: Cluster, extra: str = "") -> str:
    return f"host=127.0.0.1 port={pg.port} dbname=postgres user={ROLE} password={ROLE_PW} {extra}"


@pytest.fixture(scope="module")
def role(pg: Cluster) -> Iterator[str]:
    with own_role(
        pg,
        ROLE,
        ROLE_PW,
        f"CREATE TABLE {TABLE} (a int)",
        f"INSERT INTO {TABLE} SELECT g FROM generate_series(1, 5) g",
        f"DROP TABLE IF EXISTS {TABLE}",
    ) as name:
        yield name


def _funnel(pg: Cluster, **settings: Any) -> Funnel:
    return Funnel(
        pg,
        settings={"auth_type": "trust", "query_wait_timeout": 60, **settings},
        userlist={ROLE: ROLE_PW},  # trust still wants the user in auth_file, as PgBouncer
        databases={
            "main": _db(pg, "pool_size=10"),
            "two": _db(pg, "pool_size=2"),
            "one": _db(pg, "pool_size=1"),
            "bench": f"host=127.0.0.1 port={pg.port} dbname={BENCH_DB} user={ROLE} "
            f"password={ROLE_PW} pool_size=5",
        },
    )


@pytest.fixture(scope="module")
def f(pg: Cluster, role: str) -> Iterator[Funnel]:
    funnel = _funnel(pg)
    try:
        yield funnel.start()
    finally:
        funnel.stop()
    assert backends(pg, user=ROLE, state="idle in transaction") == 0


def _connect(f: Funnel, db: str = "main", **kw: Any) -> psycopg.Connection[Any]:
    kw.setdefault("prepare_threshold", 0)  # every query a named prepared statement
    return psycopg.connect(f.dsn(user=ROLE, dbname=db, password=None), autocommit=True, **kw)


def _stats(f: Funnel, db: str) -> dict[str, Any]:
    return next(r for r in f.admin("SHOW STATS") if r["database"] == db)


def _server_statements(f: Funnel, db: str) -> list[int]:
    return sorted(r["prepared_statements"] for r in f.admin("SHOW SERVERS") if r["database"] == db)


# --- drivers with their defaults ---------------------------------------------------------------
def test_asyncpg_default_cache_500_tasks_through_10_servers(f: Funnel, pg: Cluster) -> None:
    """asyncpg prepares every query (statement cache on); 500 concurrent tasks on 50
    connections share the 10 servers of the pool and every result is the task's own."""

    async def run() -> list[tuple[int, int, str]]:
        pool = await asyncpg.create_pool(
            f"postgresql://{ROLE}@127.0.0.1:{f.port}/main", min_size=50, max_size=50
        )
        try:

            async def task(i: int) -> tuple[int, int, str]:
                async with pool.acquire() as conn:
                    doubled = await conn.fetchval("SELECT $1::int * 2", i)
                    count = await conn.fetchval(
                        "SELECT count(*) FROM generate_series(1, $1::int)", i % 17 + 1
                    )
                    async with conn.transaction():
                        text = await conn.fetchval(
                            "SELECT $1::text || '-' || $2::text", "t", str(i)
                        )
                    return doubled, count, text

            return await asyncio.gather(*(task(i) for i in range(500)))
        finally:
            await pool.close()

    results = asyncio.run(run())
    assert results == [(2 * i, i % 17 + 1, f"t-{i}") for i in range(500)]
    stats = _stats(f, "main")
    # 50 clients each parsed its three statements once; the servers got at most 3 each.
    assert stats["total_client_parse_count"] >= 150
    assert 3 <= stats["total_server_parse_count"] <= 3 * 10
    assert stats["total_bind_count"] >= 1500
    servers = _server_statements(f, "main")
    assert 1 <= len(servers) <= 10 and max(servers) <= 3 and sum(servers) >= 3
    assert backends(pg, user=ROLE, state="idle in transaction") == 0


def test_psycopg_prepare_threshold_0_and_pipeline(f: Funnel) -> None:
    """psycopg naming its statements _pg3_0, _pg3_1... on two connections at once, through one
    server: the same names mean different statements, and each client gets its own rows."""
    with _connect(f, "one") as a, _connect(f, "one") as b:
        for i in range(30):
            assert a.execute("SELECT 'a' || %s::text", (i,)).fetchone() == (f"a{i}",)
            assert b.execute("SELECT 1000 + %s::int", (i,)).fetchone() == (1000 + i,)
        with a.pipeline():
            curs = [a.execute("SELECT %s::int * 3, 'p'", (i,)) for i in range(25)]
        assert [c.fetchone() for c in curs] == [(3 * i, "p") for i in range(25)]
        # After the pipeline (libpq sends a Flush after its Sync) the client holds no server.
        states = {r["state"] for r in f.admin("SHOW CLIENTS") if r["database"] == "one"}
        assert states == {"idle"}
        assert b.execute("SELECT 1000 + %s::int", (7,)).fetchone() == (1007,)


def test_statement_follows_client_to_a_server_without_it(f: Funnel) -> None:
    """The client's statement is prepared on the server it lands on next, which never saw it;
    its name on the servers is the pooler's."""
    with _connect(f, "two") as a, _connect(f, "two") as b:
        assert a.execute("SELECT %s::int + 40", (2,)).fetchone() == (42,)
        # b takes the server a just used (the top of the idle stack) and keeps it.
        b.execute("BEGIN", prepare=False)
        b.execute("SELECT 1", prepare=False)
        assert a.execute("SELECT %s::int + 40", (3,)).fetchone() == (43,)
        names = a.execute("SELECT name FROM pg_prepared_statements", prepare=False).fetchall()
        b.execute("COMMIT", prepare=False)
    assert names and all(re.fullmatch(r"PGFUNNEL_\d+", n) for (n,) in names)
    assert _server_statements(f, "two") == [1, 1]


def test_sqlalchemy_on_asyncpg(f: Funnel) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext import asyncio as sqlalchemy

    async def run() -> list[int]:
        engine = sqlalchemy.create_async_engine(
            f"postgresql+asyncpg://{ROLE}@127.0.0.1:{f.port}/two", pool_size=8
        )
        try:

            async def one(i: int) -> int:
                async with engine.connect() as conn:
                    got = await conn.execute(text("SELECT :x * 5"), {"x": i})
                    return int(got.scalar_one())

            return await asyncio.gather(*(one(i) for i in range(80)))
        finally:
            await engine.dispose()

    assert asyncio.run(run()) == [5 * i for i in range(80)]


@pytest.mark.parametrize("clients", [5, 40])
def test_pgbench_prepared(f: Funnel, pg: Cluster, clients: int) -> None:
    """pgbench -M prepared with as many clients as the pool holds servers, and far more."""
    pg.psql(f"CREATE DATABASE {BENCH_DB} OWNER {ROLE}", check=False)
    base = [pg_tool("pgbench"), "-h", "127.0.0.1", "-U", SUPERUSER]
    subprocess.run(
        [*base, "-p", str(pg.port), "-i", "-q", BENCH_DB],
        env=pgpass_env(),
        capture_output=True,
        check=True,
    )
    run = ["-M", "prepared", "-S", "-n", "-c", str(clients), "-j", "2", "-t", "40", "bench"]
    out = subprocess.run(
        [*base[:3], "-U", ROLE, "-p", str(f.port), *run],
        env=pgpass_env(ROLE_PW),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert f"number of transactions actually processed: {clients * 40}/{clients * 40}" in out.stdout
    assert backends(pg, user=ROLE, state="idle in transaction") == 0
    assert max(_server_statements(f, "bench")) == 1  # pgbench -S: one statement


# --- Close, DEALLOCATE ALL, DISCARD ALL -------------------------------------------------------
def _raw(f: Funnel, db: str = "two") -> Any:
    return raw_login(f.port, db, user=ROLE)


def _bind_exec(sock: Any, name: str) -> list[tuple[bytes, bytes]]:
    sock.sendall(bind("", name) + execute() + sync())
    return read_until(sock, b"Z")


def test_close_is_answered_and_forgets_the_name(f: Funnel) -> None:
    sock = _raw(f)
    try:
        sock.sendall(parse("SELECT 7", "s1") + sync())
        assert [k for k, _ in read_until(sock, b"Z")] == [b"1", b"Z"]
        assert rows(_bind_exec(sock, "s1")) == [["7"]]
        sock.sendall(msgs.message(b"C", b"S" + msgs.cstr("s1")) + sync())
        assert [k for k, _ in read_until(sock, b"Z")] == [b"3", b"Z"]
        answer = _bind_exec(sock, "s1")
        err = error_fields(next(p for k, p in answer if k == b"E"))
        assert (err["C"], err["M"]) == ("26000", 'prepared statement "s1" does not exist')
        # The name can be used again, for another statement.
        sock.sendall(parse("SELECT 8", "s1") + bind("", "s1") + execute() + sync())
        assert rows(read_until(sock, b"Z")) == [["8"]]
    finally:
        sock.close()


def test_parse_error_is_not_cached_and_pipeline_errors_skip(f: Funnel) -> None:
    sock = _raw(f)
    try:
        # A Parse that fails, and what the server skipped after it in the same batch.
        sock.sendall(parse("SELEC 1", "bad") + parse("SELECT 2", "good") + sync())
        answer = read_until(sock, b"Z")
        assert [k for k, _ in answer] == [b"E", b"Z"]
        assert error_fields(answer[0][1])["C"] == "42601"
        # The same text parsed again fails again (it was never cached as prepared).
        sock.sendall(parse("SELEC 1", "bad") + sync())
        assert [k for k, _ in read_until(sock, b"Z")] == [b"E", b"Z"]
        # "good" was skipped by the server: a fresh Parse works, and answers in order.
        sock.sendall(
            parse("SELECT 2", "good") + bind("", "good") + execute() + parse("SELECT 3", "x")
        )
        sock.sendall(bind("", "x") + execute() + sync())
        answer = read_until(sock, b"Z")
        assert [k for k, _ in answer] == [b"1", b"2", b"D", b"C", b"1", b"2", b"D", b"C", b"Z"]
        assert rows(answer) == [["2"], ["3"]]
    finally:
        sock.close()


@pytest.mark.parametrize("command", ["DEALLOCATE ALL", "DISCARD ALL"])
def test_deallocate_all_and_discard_all_clear_the_clients_statements(
    f: Funnel, command: str
) -> None:
    sock = _raw(f)
    try:
        sock.sendall(parse("SELECT 'before'", "s") + bind("", "s") + execute() + sync())
        assert rows(read_until(sock, b"Z")) == [["before"]]
        assert [k for k, _ in run_raw(sock, command)] == [b"C", b"Z"]
        answer = _bind_exec(sock, "s")
        assert error_fields(next(p for k, p in answer if k == b"E"))["C"] == "26000"
        # The server's statements went too: the same text is prepared afresh, no 42P05.
        sock.sendall(parse("SELECT 'before'", "s") + bind("", "s") + execute() + sync())
        assert rows(read_until(sock, b"Z")) == [["before"]]
    finally:
        sock.close()


# --- DDL under a prepared statement ------------------------------------------------------------
def test_result_type_change_is_recovered(f: Funnel, pg: Cluster) -> None:
    """After ALTER TABLE changes what `SELECT *` returns, the server that cached the old plan
    fails it once with 0A000 and is closed at release; the next run prepares afresh."""
    with _connect(f, "one") as conn:
        for _ in range(3):
            assert len(conn.execute(f"SELECT * FROM {TABLE} WHERE a = %s", (1,)).fetchone()) == 1
        pg.psql(f"ALTER TABLE {TABLE} ADD COLUMN b int DEFAULT 7")
        try:
            failures = 0
            got = []
            for _ in range(4):
                try:
                    got.append(conn.execute(f"SELECT * FROM {TABLE} WHERE a = %s", (1,)).fetchone())
                except errors.FeatureNotSupported as e:
                    assert "cached plan must not change result type" in str(e)
                    failures += 1
            assert failures == 1  # once: not passed on for every later run
            assert got and all(row == (1, 7) for row in got)
        finally:
            pg.psql(f"ALTER TABLE {TABLE} DROP COLUMN b")
    assert "closing because: cached plan must not change result type" in f.log()


# --- the setting -------------------------------------------------------------------------------
def test_lru_keeps_at_most_max_prepared_statements_per_server(pg: Cluster, role: str) -> None:
    with _funnel(pg, max_prepared_statements=3) as funnel, _connect(funnel, "one") as conn:
        for round_ in range(3):
            for k in range(8):
                got = conn.execute(f"SELECT {k} + %s::int", (round_,)).fetchone()
                assert got == (k + round_,)
            held = conn.execute("SELECT count(*) FROM pg_prepared_statements", prepare=False)
            assert held.fetchone() == (3,)
        assert _server_statements(funnel, "one") == [3]
        mem = {r["name"]: r for r in funnel.admin("SHOW MEM")}["server_prepared_statement_cache"]
        assert mem["used"] >= 3 and mem["memtotal"] > 0
        clients = [r for r in funnel.admin("SHOW CLIENTS") if r["database"] == "one"]
        assert [r["prepared_statements"] for r in clients] == [8]


def test_zero_turns_tracking_off(pg: Cluster, role: str) -> None:
    """max_prepared_statements = 0: named statements reach the server as sent, so one that
    lands on another server is not there (the behaviour the setting exists to end)."""
    with (
        _funnel(pg, max_prepared_statements=0) as funnel,
        _connect(funnel, "two") as a,
        _connect(funnel, "two") as b,
    ):
        assert a.execute("SELECT %s::int", (1,)).fetchone() == (1,)
        b.execute("BEGIN", prepare=False)
        b.execute("SELECT 1", prepare=False)
        with pytest.raises(errors.InvalidSqlStatementName):
            a.execute("SELECT %s::int", (2,))
        b.execute("COMMIT", prepare=False)
