"""The issue's load check, as written: `pgbench -c 1000 -j 2 -S -T 30` against max_connections=30
through pool 20 and pool 50 loses nothing, and pool 50 is held at what the server grants."""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

from pgfunnel.throwaway import Cluster, free_port, pg_tool
from tests.integration.harness import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    Funnel,
    pgbench_init,
    pgpass_env,
    wait_for,
)
from tests.integration.test_metrics import pool_value, scrape

CLIENTS = 1000
# An ordinary role: superusers may use superuser_reserved_connections, and the point is
# what the server grants an application.
LOADER = "loader"
LOADER_PASSWORD = "loader-pw"


@pytest.fixture(scope="module")
def thirty() -> Iterator[Cluster]:
    cluster = Cluster(max_connections=30)
    cluster.start()
    pgbench_init(cluster)
    cluster.psql(
        f"CREATE ROLE {LOADER} LOGIN PASSWORD '{LOADER_PASSWORD}';"
        f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {LOADER}"
    )
    try:
        yield cluster
    finally:
        cluster.destroy()


def _servers(row: dict[str, Any]) -> int:
    """Every server the pool has, logging in or not: what the PostgreSQL side sees of it."""
    return int(
        row["sv_active"] + row["sv_idle"] + row["sv_used"] + row["sv_tested"] + row["sv_login"]
    )


def _held(row: dict[str, Any]) -> int:
    return _servers(row) - int(row["sv_login"])


def _granted(cluster: Cluster) -> int:
    """The backends the server lets an ordinary role open now: max_connections less the slots
    reserved for superusers (and for pg_use_reserved_connections where the server has them) less
    the client backends already there, this probe excluded."""
    row = cluster.psql(
        "SELECT current_setting('max_connections')::int"
        " - current_setting('superuser_reserved_connections')::int"
        " - coalesce(current_setting('reserved_connections', true)::int, 0)"
        " - (SELECT count(*) FROM pg_stat_activity"
        "    WHERE backend_type = 'client backend' AND pid <> pg_backend_pid())"
    )
    return int(row)


@dataclass
class Samples:
    """SHOW POOLS rows of the load's pool, taken from the admin console while pgbench runs."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)


def _sample(f: Funnel, out: Samples, stop: threading.Event) -> None:
    try:
        with psycopg.connect(
            f.dsn(user=ADMIN_USER, dbname="pgbouncer", password=ADMIN_PASSWORD), autocommit=True
        ) as admin:
            while not stop.wait(0.02):
                cur = admin.execute("SHOW POOLS", prepare=False)
                assert cur.description is not None
                names = [d.name for d in cur.description]
                for values in cur.fetchall():
                    row = dict(zip(names, values, strict=True))
                    if row["database"] == "postgres" and row["user"] == LOADER:
                        out.rows.append(row)
    except BaseException as exc:  # reported by the test, not lost in the thread
        out.errors.append(exc)


def _pgbench(f: Funnel) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            pg_tool("pgbench"),
            "-n",
            "-c",
            str(CLIENTS),
            "-j",
            "2",
            "-S",
            "-T",
            "30",
            "-h",
            "127.0.0.1",
            "-p",
            str(f.port),
            "-U",
            LOADER,
            "postgres",
        ],
        env=pgpass_env(LOADER_PASSWORD),
        capture_output=True,
        text=True,
        timeout=240,
    )


def _run(f: Funnel) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    samples = Samples()
    stop = threading.Event()
    sampler = threading.Thread(target=_sample, args=(f, samples, stop))
    sampler.start()
    try:
        out = _pgbench(f)
    finally:
        stop.set()
        sampler.join()
    assert not samples.errors, samples.errors
    return out, samples.rows


def _assert_nothing_lost(out: subprocess.CompletedProcess[str], rows: list[dict[str, Any]]) -> None:
    report = out.stdout + out.stderr[-3000:]
    # pgbench exits 2 when a client aborted (connection refused or lost, a failed query).
    assert out.returncode == 0, report
    assert "aborted" not in out.stdout + out.stderr, report
    assert f"number of clients: {CLIENTS}" in out.stdout, report
    assert "number of failed transactions: 0 (0.000%)" in out.stdout, report
    processed = re.search(r"number of transactions actually processed: (\d+)", out.stdout)
    assert processed is not None, report
    assert int(processed.group(1)) >= CLIENTS, report  # more than one each, on average
    # Every client was connected to the pooler at once: all 1000 were in SHOW POOLS together.
    assert rows, "no SHOW POOLS sample of the pool"
    assert max(int(r["cl_active"] + r["cl_waiting"]) for r in rows) == CLIENTS


def _funnel(cluster: Cluster, pool_size: int, **settings: Any) -> Funnel:
    return Funnel(
        cluster,
        settings={
            "default_pool_size": pool_size,
            "max_client_conn": 2000,
            "auth_type": "md5",
            "query_wait_timeout": 120,
            **settings,
        },
        userlist={LOADER: LOADER_PASSWORD},
    ).start()


def test_1000_pgbench_clients_through_pool_20(thirty: Cluster) -> None:
    """20 servers fit in the 27 the server grants: the pool holds exactly 20 at peak, never more,
    and the server never refuses one."""
    assert _granted(thirty) > 20
    f = _funnel(thirty, 20)
    try:
        out, rows = _run(f)
        _assert_nothing_lost(out, rows)
        assert max(_held(r) for r in rows) == 20
        assert max(_servers(r) for r in rows) <= 20
        assert max(int(r["cl_waiting"]) for r in rows) > 0  # 1000 clients share 20 servers
        assert "server login failed" not in f.log()
    finally:
        f.stop()


def test_1000_pgbench_clients_through_pool_50_held_at_what_the_server_grants(
    thirty: Cluster,
) -> None:
    """pool 50 is more than the server allows: no client fails, they wait in cl_waiting, and
    the pool settles at what the server grants, never above it; the refusals are 53300
    back-pressure in the log and in /metrics."""
    granted = _granted(thirty)
    assert 0 < granted < 50
    metrics_port = free_port()
    f = _funnel(thirty, 50, metrics_addr="127.0.0.1", metrics_port=metrics_port)
    base = f"http://127.0.0.1:{metrics_port}"
    try:
        out, rows = _run(f)
        _assert_nothing_lost(out, rows)
        # The server's side did not change during the run (nothing else took or gave slots).
        assert _granted(thirty) + _held(f.pool("postgres", LOADER)) == granted
        # Never above what the server grants. A pool under back-pressure takes capacity back
        # with one login probe at a time (PgBouncer, too, has a single login in flight per pool),
        # so sv_login may add that one probe; a burst of logins past the grant fails here.
        counts = [(_held(r), int(r["sv_login"])) for r in rows]
        top = max(range(len(counts)), key=lambda i: sum(counts[i]))
        around = f"(held, sv_login) around sample {top}: {counts[max(0, top - 3) : top + 4]}"
        assert max(h for h, _ in counts) <= granted, around
        assert sum(counts[top]) <= granted + 1, around
        # And held there once it got there, for as long as all the clients were connected.
        reached = [i for i, r in enumerate(rows) if _held(r) == granted]
        assert reached, f"the pool never reached the {granted} servers the server grants"
        busy = [r for r in rows[reached[0] :] if r["cl_active"] + r["cl_waiting"] == CLIENTS]
        assert busy, "no sample with every client connected after the pool settled"
        assert [_held(r) for r in busy] == [granted] * len(busy)
        # The clients the server had no room for waited instead of failing: far more of them
        # at once than the server has backends for.
        assert max(int(r["cl_waiting"]) for r in rows) > granted
        # The refusals were 53300 and treated as back-pressure.
        log = f.log()
        refusal = "server login failed: 53300 remaining connection slots are reserved"
        assert f"postgres/{LOADER} {refusal}" in log, log[-3000:]
        # Logins past the grant only ever met the superuser-reserved check, never a server with
        # no process slot left at all: the pooler did not crowd out a superuser's connection.
        assert "sorry, too many clients already" not in log, log[-3000:]
        samples = scrape(base)
        refused = samples[
            (
                "pgfunnel_pools_server_login_refusals_total",
                (("database", "postgres"), ("sqlstate", "53300"), ("user", LOADER)),
            )
        ]
        assert refused > 0
        granted_gauge = "pgfunnel_pools_server_granted_connections"
        assert pool_value(samples, granted_gauge, user=LOADER) == granted
        # Once the load is gone, the pool still holds no more than the grant.
        wait_for(lambda: f.pool("postgres", LOADER)["cl_active"] == 0, timeout=30)
        assert _servers(f.pool("postgres", LOADER)) <= granted
    finally:
        f.stop()
