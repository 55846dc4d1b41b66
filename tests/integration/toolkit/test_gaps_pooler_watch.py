"""Spec gaps: diagnose --pooler against a live pgfunnel with waiting clients; --watch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from pgfunnel.throwaway import SUPERUSER, Cluster
from tests.integration.harness import ADMIN_PASSWORD, ADMIN_USER
from tests.integration.toolkit.helpers import run_cli, wait_for
from tests.unit.toolkit.schema_check import validate_diagnose

POOL_SIZE = 1


def test_diagnose_pooler_reports_waiting_clients_against_pool_size(
    pg: Cluster, funnel: Callable[..., Any]
) -> None:
    f = funnel(settings={"default_pool_size": POOL_SIZE})
    holder = f.connect()
    waiter_done = threading.Event()
    waiter_error: list[BaseException] = []
    waiter_conns: list[psycopg.Connection[Any]] = []

    def waiter() -> None:
        try:
            conn = f.connect()
            waiter_conns.append(conn)
            conn.execute("SELECT 2").fetchone()
        except BaseException as exc:  # reported in the main thread
            waiter_error.append(exc)
        finally:
            waiter_done.set()

    thread = threading.Thread(target=waiter, daemon=True)
    try:
        holder.execute("BEGIN")
        holder.execute("SELECT 1").fetchone()  # the pool's only server connection is now held
        thread.start()
        wait_for(lambda: int(f.pool()["cl_waiting"]) >= 1)
        assert not waiter_done.is_set()

        admin = f.dsn(user=ADMIN_USER, dbname="pgbouncer", password=ADMIN_PASSWORD)
        proc = run_cli("diagnose", pg.dsn(), "--pooler", admin, "--format", "json")
        code, report = proc.returncode, json.loads(proc.stdout)
        validate_diagnose(report)
        assert report["pooler"] is not None, proc.stderr
        pools = {(p["database"], p["user"]): p for p in report["pooler"]["pools"]}
        pool = pools[("postgres", SUPERUSER)]
        assert pool["cl_waiting"] >= 1
        assert pool["cl_active"] >= 1
        assert pool["pool_mode"] == "transaction"
        # The whole pool (default_pool_size = 1) is in use by the held transaction.
        assert pool["server_connections"] == POOL_SIZE
        # pool_size comes from pgfunnel's SHOW DATABASES.
        assert pool["pool_size"] == POOL_SIZE, proc.stderr
        assert "pool_size unknown" not in proc.stderr
        finding_id = f"pooler-waiting:postgres/{SUPERUSER}"
        waiting = [x for x in report["findings"] if x["id"] == finding_id]
        assert waiting, report["findings"]
        assert f"{POOL_SIZE} server connections against pool_size {POOL_SIZE}" in str(waiting[0])
        assert code >= 1  # a waiting client is at least a warning
    finally:
        holder.execute("COMMIT")  # frees the server connection: the waiter runs
        waiter_done.wait(20)
        thread.join(20)
        holder.close()
        for conn in waiter_conns:
            conn.close()
    assert not waiter_error, waiter_error
    assert not thread.is_alive()
    wait_for(lambda: int(f.pool()["cl_active"]) == 0 and int(f.pool()["cl_waiting"]) == 0)


def _pooler_report(pg: Cluster, f: Any) -> tuple[int, dict[str, Any], str]:
    admin = f.dsn(user=ADMIN_USER, dbname="pgbouncer", password=ADMIN_PASSWORD)
    proc = run_cli("diagnose", pg.dsn(), "--pooler", admin, "--format", "json")
    report = json.loads(proc.stdout)
    validate_diagnose(report)
    return proc.returncode, report, proc.stderr


def test_diagnose_pooler_flags_a_full_pool_before_any_client_waits(
    pg: Cluster, funnel: Callable[..., Any]
) -> None:
    """Every server connection of the pool held, nobody waiting yet: a warning all the same."""
    f = funnel(settings={"default_pool_size": 1, "reserve_pool_size": 0})
    holder = f.connect()
    try:
        holder.execute("BEGIN")
        holder.execute("SELECT 1").fetchone()
        wait_for(lambda: int(f.pool()["sv_active"]) == 1)
        code, report, err = _pooler_report(pg, f)
        pool = next(p for p in report["pooler"]["pools"] if p["database"] == "postgres")
        assert (pool["cl_waiting"], pool["server_connections"], pool["pool_size"]) == (0, 1, 1)
        full = [
            x for x in report["findings"] if x["id"] == f"pooler-pool-full:postgres/{SUPERUSER}"
        ]
        assert full and full[0]["severity"] == "warning", report["findings"]
        assert "every server connection busy" in full[0]["title"]
        assert not [x for x in report["findings"] if x["id"].startswith("pooler-waiting")]
        assert code >= 1, err
    finally:
        holder.execute("COMMIT")
        holder.close()


def test_diagnose_pooler_flags_the_database_cap(pg: Cluster, funnel: Callable[..., Any]) -> None:
    """max_db_connections 1 under a pool_size of 3: one held transaction reaches the cap."""
    f = funnel(settings={"default_pool_size": 3, "max_db_connections": 1})
    holder = f.connect()
    try:
        holder.execute("BEGIN")
        holder.execute("SELECT 1").fetchone()
        wait_for(lambda: int(f.pool()["sv_active"]) == 1)
        _code, report, _err = _pooler_report(pg, f)
        pool = next(p for p in report["pooler"]["pools"] if p["database"] == "postgres")
        assert (pool["pool_size"], pool["max_db_connections"]) == (3, 1)
        cap = [x for x in report["findings"] if x["id"] == "pooler-db-cap:postgres"]
        assert cap and "(1/1)" in cap[0]["title"], report["findings"]
        assert not [x for x in report["findings"] if x["id"].startswith("pooler-pool-full")]
    finally:
        holder.execute("COMMIT")
        holder.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_watch_prints_each_round_and_stops_cleanly_on_signal(pg: Cluster, sig: int) -> None:
    """--watch has no iteration bound: it runs until interrupted, and a signal ends it with
    exit 0 and no traceback after the complete reports already printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pgfunnel",
            "diagnose",
            pg.dsn(),
            "--watch",
            "0.3",
            "--format",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        # One report per line (JSON Lines).
        while len(lines) < 2:
            assert time.monotonic() < deadline, "two reports not printed in time"
            line = proc.stdout.readline()
            assert line, (
                f"diagnose exited early: {proc.poll()} {proc.stderr.read() if proc.stderr else ''}"
            )
            lines.append(line)
        proc.send_signal(sig)
        rest, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    docs = [json.loads(line) for line in lines + rest.splitlines()]
    assert len(docs) >= 2
    for doc in docs:
        validate_diagnose(doc)
        assert doc["source"]["via"] == "dsn"
    # its own connection is closed on the way out
    wait_for(
        lambda: (
            pg.psql(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgfunnel diagnose'"
            )
            == "0"
        )
    )
