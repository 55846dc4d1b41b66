"""The common PgBouncer exporters against pgfunnel's admin console, unchanged.

- Spreaker's `prometheus-pgbouncer-exporter` (PyPI, Python) is installed by the bootstrap and
  run as it is: it scrapes the console and must report `pgbouncer_up 1` with the live figures.
- prometheus-community's `pgbouncer_exporter` (Go) cannot be built here (no Go module proxy), so
  its reads are replayed through the same wire path: the statements it sends (with their trailing
  semicolons, simple query protocol), the startup parameter lib/pq adds, and the shape checks it
  makes before it counts a scrape as good (one `version` column; two columns in SHOW LISTS; three
  or four in SHOW CONFIG; numbers where it parses numbers, text where it reads labels).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from pgfunnel.throwaway import free_port
from tests.integration.harness import ADMIN_PASSWORD, ADMIN_USER, Funnel, wait_for
from tests.integration.test_metrics import Holder, http_get

INT4, INT8, TEXT, NUMERIC = 23, 20, 25, 1700
NUMBER_TYPES = {INT4, INT8, NUMERIC}

EXPORTER = Path(sys.executable).parent / "pgbouncer-exporter"


def _exporter_samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, _, body = http_get(url)
    assert status == 200, body
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def test_spreaker_exporter_scrapes_pgfunnel_unchanged(
    funnel: Callable[..., Funnel], tmp_path: Path
) -> None:
    assert EXPORTER.exists(), "scripts/bootstrap.sh installs prometheus-pgbouncer-exporter"
    f = funnel(settings={"default_pool_size": 1, "max_client_conn": 321})
    for _ in range(5):
        with f.connect() as c:
            c.execute("SELECT 1")
    port = free_port()
    config = tmp_path / "exporter.yml"
    config.write_text(
        f"exporter_host: 127.0.0.1\nexporter_port: {port}\npgbouncers:\n"
        f"  - dsn: postgresql://{ADMIN_USER}:{ADMIN_PASSWORD}@127.0.0.1:{f.port}/pgbouncer\n"
        "    connect_timeout: 5\n",
        encoding="utf-8",
    )
    log = tmp_path / "exporter.log"
    proc = subprocess.Popen(
        [str(EXPORTER), "--config", str(config), "--log-file", str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    h = Holder(f, app="held-by-exporter-test")
    try:
        wait_for(lambda: f.pool()["cl_waiting"] == 1, timeout=10)
        url = f"http://127.0.0.1:{port}/metrics"
        samples = wait_for(lambda: _try_scrape(url), timeout=20)
        pool = (("database", "postgres"), ("user", "postgres"))
        db = (("backend_database", "postgres"), ("database", "postgres"))
        assert samples[("pgbouncer_up", ())] == 1.0, log.read_text()
        assert samples[("pgbouncer_pools_client_active_connections", pool)] == 1
        assert samples[("pgbouncer_pools_client_waiting_connections", pool)] == 1
        assert samples[("pgbouncer_pools_server_active_connections", pool)] == 1
        assert samples[("pgbouncer_pools_server_idle_connections", pool)] == 0
        assert samples[("pgbouncer_pools_client_maxwait_seconds", pool)] > 0
        assert samples[("pgbouncer_databases_database_pool_size", db)] == 1
        assert samples[("pgbouncer_databases_database_current_connections", db)] == 1
        assert samples[("pgbouncer_config_max_client_conn", ())] == 321
        stats = (("database", "postgres"),)
        assert samples[("pgbouncer_stats_transactions_total", stats)] >= 5
        assert samples[("pgbouncer_stats_queries_total", stats)] >= 5
        assert samples[("pgbouncer_stats_received_bytes_total", stats)] > 0
        assert samples[("pgbouncer_stats_sent_bytes_total", stats)] > 0
        h.release()
    finally:
        proc.terminate()
        proc.wait(10)
        assert proc.stderr is not None
        proc.stderr.close()
        h.close()
    assert "Unable" not in log.read_text(), log.read_text()


def _try_scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
    try:
        return _exporter_samples(url)
    except OSError:
        time.sleep(0.2)
        return None


# --- prometheus-community/pgbouncer_exporter's reads ------------------------------------------
# The columns it turns into metrics (others are ignored) and the ones it reads as labels.
GO_LABELS = {
    "DATABASES": {"name", "host", "port", "database", "force_user", "pool_mode"},
    "STATS_TOTALS": {"database"},
    "POOLS": {"database", "user"},
}
GO_METRICS = {
    "DATABASES": {
        "pool_size",
        "reserve_pool",
        "max_connections",
        "current_connections",
        "paused",
        "disabled",
    },
    "STATS_TOTALS": {
        "query_count",
        "query_time",
        "bytes_received",
        "bytes_sent",
        "wait_time",
        "xact_count",
        "xact_time",
        "client_parse_count",
        "server_parse_count",
        "bind_count",
    },
    "POOLS": {
        "cl_active",
        "cl_active_cancel_req",
        "cl_waiting",
        "cl_waiting_cancel_req",
        "sv_active",
        "sv_active_cancel",
        "sv_being_canceled",
        "sv_idle",
        "sv_used",
        "sv_tested",
        "sv_login",
        "maxwait",
    },
}
# Older names PgBouncer 1.25 no longer has (the exporter skips a column that is not there):
# SHOW STATS_TOTALS's `requests` and `bytes_*`, SHOW DATABASES's `reserve_pool` (1.24 renamed
# it `reserve_pool_size`).
GO_ABSENT_ON_1_25 = {"requests", "bytes_received", "bytes_sent", "reserve_pool"}


def _go_exporter_read(conn: psycopg.Connection[Any], sql: str) -> tuple[list[Any], list[Any]]:
    cur = conn.execute(sql, prepare=False)
    assert cur.description is not None, sql
    return list(cur.description), cur.fetchall()


def _as_float(value: Any) -> float:
    """What the Go exporter does with a number column: int64/float64 as is, text parsed."""
    if value is None:
        return float("nan")
    return float(value)


async def _login_as_lib_pq(f: Funnel) -> None:
    """lib/pq puts extra_float_digits=2 in the startup packet itself (not in `options`)."""
    conn = await asyncpg.connect(
        host="127.0.0.1",
        port=f.port,
        user=ADMIN_USER,
        password=ADMIN_PASSWORD,
        database="pgbouncer",
        server_settings={"extra_float_digits": "2"},
    )
    await conn.close()


def test_prometheus_community_exporter_reads_succeed(funnel: Callable[..., Funnel]) -> None:
    # lib/pq sends extra_float_digits at startup; PgBouncer needs it ignored just the same.
    f = funnel(settings={"default_pool_size": 1, "ignore_startup_parameters": "extra_float_digits"})
    h = Holder(f, app="go-exporter-test")
    try:
        wait_for(lambda: f.pool()["cl_waiting"] == 1, timeout=10)
        asyncio.run(_login_as_lib_pq(f))
        dsn = f.dsn(user=ADMIN_USER, dbname="pgbouncer", password=ADMIN_PASSWORD)
        with psycopg.connect(dsn, autocommit=True) as conn:
            # getDB's ping, then each read of one scrape.
            _go_exporter_read(conn, "SHOW STATS")

            desc, rows = _go_exporter_read(conn, "SHOW VERSION;")
            assert [d.name for d in desc] == ["version"]
            assert len(rows) == 1 and rows[0][0].startswith("PgBouncer")

            desc, rows = _go_exporter_read(conn, "SHOW LISTS;")
            assert len(desc) == 2
            lists = {name: _as_float(items) for name, items in rows}
            assert lists["pools"] >= 1 and lists["used_clients"] >= 2

            desc, rows = _go_exporter_read(conn, "SHOW CONFIG;")
            assert len(desc) in (3, 4)
            config = {row[0]: row[1] for row in rows}
            for key in ("max_client_conn", "max_user_connections"):
                _as_float(config[key])  # parsed as a float, or the scrape fails

            figures: dict[str, list[dict[str, Any]]] = {}
            for namespace, metrics in GO_METRICS.items():
                desc, rows = _go_exporter_read(conn, f"SHOW {namespace};")
                types = {d.name: d.type_code for d in desc}
                for label in GO_LABELS[namespace] & types.keys():
                    assert types[label] in {TEXT, *NUMBER_TYPES}, (namespace, label)
                wanted = metrics - GO_ABSENT_ON_1_25
                assert wanted <= types.keys(), (namespace, wanted - types.keys())
                for col in wanted:
                    assert types[col] in NUMBER_TYPES, (namespace, col, types[col])
                names = [d.name for d in desc]
                figures[namespace] = [dict(zip(names, r, strict=True)) for r in rows]
                for row in figures[namespace]:
                    for col in wanted:
                        _as_float(row[col])

        [pool] = [p for p in figures["POOLS"] if p["database"] == "postgres"]
        assert (pool["cl_active"], pool["cl_waiting"], pool["sv_active"]) == (1, 1, 1)
        [db] = [d for d in figures["DATABASES"] if d["name"] == "postgres"]
        assert (db["pool_size"], db["current_connections"], db["paused"]) == (1, 1, 0)
        h.release()
    finally:
        h.close()
