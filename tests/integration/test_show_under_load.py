"""SHOW POOLS, CLIENTS, SERVERS and STATS during a pgbench run tell what pgbench and
pg_stat_activity see: the same clients, the same backends (by pid), the same transactions."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgfunnel.throwaway import Cluster, pg_tool
from tests.integration.harness import ADMIN_PASSWORD, ADMIN_USER, Funnel, own_role, pgpass_env
from tests.integration.test_admin_console import show

ROLE = "showload"
PASSWORD = "showload-pw"
CLIENTS = 24
POOL = 4


@pytest.fixture
def loaded(pg: Cluster) -> Iterator[Funnel]:
    with own_role(pg, ROLE, PASSWORD):
        f = Funnel(
            pg,
            settings={"default_pool_size": POOL, "auth_type": "md5", "max_client_conn": 200},
            userlist={ROLE: PASSWORD},
        ).start()
        try:
            yield f
        finally:
            f.stop()


def _backend_pids(pg: Cluster) -> set[int]:
    out = pg.psql(
        "SELECT string_agg(pid::text, ',') FROM pg_stat_activity"
        f" WHERE usename = '{ROLE}' AND backend_type = 'client backend'"
    )
    return {int(p) for p in out.split(",") if p}


def test_show_figures_match_pgbench_and_pg_stat_activity(
    loaded: Funnel, pg: Cluster, tmp_path: Path
) -> None:
    script = tmp_path / "sleepy.sql"
    script.write_text("SELECT pg_sleep(0.002);\n")  # long enough that clients queue for 4
    admin = psycopg.connect(
        loaded.dsn(user=ADMIN_USER, dbname="pgbouncer", password=ADMIN_PASSWORD), autocommit=True
    )
    with admin:
        totals0 = _stats(admin)
        bench = subprocess.Popen(
            [
                *(pg_tool("pgbench"), "-n", "-f", str(script), "-c", str(CLIENTS), "-j", "2"),
                *("-T", "6", "-h", "127.0.0.1", "-p", str(loaded.port), "-U", ROLE, "postgres"),
            ],
            env=pgpass_env(PASSWORD),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            matched = _sample_until_consistent(admin, pg)
        finally:
            out, err = bench.communicate(timeout=60)
        assert bench.returncode == 0, err
        totals = _stats(admin)
        pools = [r for r in show(admin, "SHOW POOLS") if r["user"] == ROLE]
    pools_row, clients, servers, pids = matched
    # Every pgbench client is in SHOW POOLS and SHOW CLIENTS, active or waiting its turn.
    assert pools_row["cl_active"] + pools_row["cl_waiting"] == CLIENTS
    assert len(clients) == CLIENTS
    assert {c["state"] for c in clients} <= {"active", "waiting"}
    assert sum(c["state"] == "waiting" for c in clients) == pools_row["cl_waiting"]
    # Every server SHOW SERVERS lists is a backend of this role, and every such backend is one.
    assert {s["remote_pid"] for s in servers} == pids
    assert 0 < len(pids) <= POOL
    in_pool = sum(int(pools_row[k]) for k in ("sv_active", "sv_idle", "sv_used", "sv_tested"))
    assert in_pool == len(servers)
    # A client shown active with a server names that server (SHOW CLIENTS' link column).
    linked = {c["link"] for c in clients if c["link"]}
    assert linked <= {s["ptr"] for s in servers}
    # What pgbench counted, SHOW STATS counted: one transaction and one query each.
    processed = int(re.search(r"actually processed: (\d+)", out).group(1))  # type: ignore[union-attr]
    assert processed > CLIENTS
    assert totals["total_xact_count"] - totals0["total_xact_count"] == processed
    assert totals["total_query_count"] - totals0["total_query_count"] == processed
    # Transaction pooling: a server is assigned for every transaction.
    assignments = totals["total_server_assignment_count"] - totals0["total_server_assignment_count"]
    assert assignments >= processed
    assert totals["total_wait_time"] > totals0["total_wait_time"]  # 24 clients, 4 servers
    # Each transaction slept 2 ms on the server: xact_time (µs) covers at least that.
    assert totals["total_xact_time"] - totals0["total_xact_time"] >= processed * 2000
    # After the run: nobody waits, nothing is left in a transaction on the server.
    assert pools and pools[0]["cl_waiting"] == 0
    stuck = pg.psql(
        "SELECT count(*) FROM pg_stat_activity"
        f" WHERE usename = '{ROLE}' AND state LIKE 'idle in transaction%'"
    )
    assert int(stuck) == 0


def _stats(admin: psycopg.Connection[Any]) -> dict[str, Decimal]:
    for row in show(admin, "SHOW STATS"):
        if row["database"] == "postgres":
            return row
    return dict.fromkeys(
        (
            "total_xact_count",
            "total_query_count",
            "total_server_assignment_count",
            "total_wait_time",
            "total_xact_time",
        ),
        Decimal(0),
    )


def _sample_until_consistent(
    admin: psycopg.Connection[Any], pg: Cluster
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]], set[int]]:
    """SHOW POOLS, CLIENTS and SERVERS and pg_stat_activity, sampled until one sample has
    every client connected and the pooler's servers and the server's backends taken at a
    moment when neither changed (the pids before and after the SHOWs agree)."""
    last: Any = None
    for _ in range(200):
        before = _backend_pids(pg)
        pools = [r for r in show(admin, "SHOW POOLS") if r["user"] == ROLE]
        clients = [r for r in show(admin, "SHOW CLIENTS") if r["user"] == ROLE]
        servers = [r for r in show(admin, "SHOW SERVERS") if r["user"] == ROLE]
        after = _backend_pids(pg)
        last = (pools, len(clients), [s["remote_pid"] for s in servers], before, after)
        # SHOW POOLS and SHOW CLIENTS are two snapshots: a sample counts only when no
        # client changed state between them (pgbench's clients are all connected, each
        # either holds a server or waits for one, as many waiting in both).
        if (
            pools
            and before == after
            and pools[0]["cl_active"] + pools[0]["cl_waiting"] == CLIENTS
            and pools[0]["cl_waiting"] > 0
            and len(clients) == CLIENTS
            and {c["state"] for c in clients} <= {"active", "waiting"}
            and sum(c["state"] == "waiting" for c in clients) == pools[0]["cl_waiting"]
        ):
            return pools[0], clients, servers, before
    raise AssertionError(f"no consistent sample under load: {last}")
