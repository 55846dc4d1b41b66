"""/live and /ready of a real `pgfunnel serve` while its PostgreSQL goes away and comes back."""

from __future__ import annotations

import signal
from typing import Any

import psycopg
import pytest

from pgfunnel.throwaway import Cluster
from tests.integration.harness import wait_for
from tests.integration.test_metrics import http_get, ready, start_with_metrics


def _status(base: str, want: int) -> dict[str, Any] | None:
    status, body = ready(base)
    return body if status == want else None


def test_ready_follows_the_server(make_cluster, funnel) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = make_cluster()
    f, base = start_with_metrics(
        funnel,
        cluster=cluster,
        databases={
            "postgres": f"host=127.0.0.1 port={cluster.port} dbname=postgres",
            "viasocket": f"host={cluster.sockdir} port={cluster.port} dbname=postgres",
        },
    )
    sock = f"{cluster.sockdir}/.s.PGSQL.{cluster.port}"
    # No pool yet: the configured databases are checked.
    status, body = ready(base)
    assert status == 200, body
    assert body["ready"] is True and body["status"] == "ok"
    assert {(p["database"], p["server"], p["status"]) for p in body["pools"]} == {
        ("postgres", f"127.0.0.1:{cluster.port}", "ok"),
        ("viasocket", sock, "ok"),
    }
    for db in ("postgres", "viasocket"):
        with f.connect(dbname=db) as conn:
            conn.execute("SELECT 1")
    status, body = ready(base)
    assert status == 200
    assert sorted((p["database"], p["user"], p["status"]) for p in body["pools"]) == [
        ("postgres", "postgres", "ok"),
        ("viasocket", "postgres", "ok"),
    ]

    cluster.stop()
    body = wait_for(lambda: _status(base, 503), timeout=10)
    assert body["ready"] is False and body["status"] == "degraded"
    by_db = {p["database"]: p for p in body["pools"]}
    tcp, unix = by_db["postgres"], by_db["viasocket"]
    assert tcp["user"] == "postgres" and tcp["status"] == unix["status"] == "degraded"
    assert f"server 127.0.0.1:{cluster.port} unreachable" in tcp["reason"], tcp
    assert f"server {sock} unreachable" in unix["reason"], unix
    status, _, text = http_get(base + "/live")
    assert (status, text) == (200, "ok\n")  # the process is fine: only readiness fails

    cluster.start()
    body = wait_for(lambda: _status(base, 200), timeout=15)
    assert {p["status"] for p in body["pools"]} == {"ok"}
    for db in ("postgres", "viasocket"):
        with f.connect(dbname=db) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_failed_login_makes_pool_degraded(funnel, pg: Cluster) -> None:  # type: ignore[no-untyped-def]
    """A login waiting will not cure (wrong password) is degraded while PgBouncer would refuse
    new clients (server_login_retry), even though the server answers connects."""
    f, base = start_with_metrics(
        funnel,
        databases={
            "badpw": f"host=127.0.0.1 port={pg.port} dbname=postgres user=postgres password=wrong",
            "postgres": f"host=127.0.0.1 port={pg.port} dbname=postgres",
        },
        settings={"server_login_retry": 1.5},
    )
    with f.connect() as conn:
        conn.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(f.dsn(dbname="badpw"))
    status, body = ready(base)
    assert status == 503, body
    by_db = {p["database"]: p for p in body["pools"]}
    assert by_db["badpw"]["status"] == "degraded"
    assert "28P01" in by_db["badpw"]["reason"]
    assert by_db["postgres"]["status"] == "ok"
    # server_login_retry later a new client would be tried again: no longer degraded.
    body = wait_for(lambda: _status(base, 200), timeout=10)
    assert {p["status"] for p in body["pools"]} == {"ok"}


def test_ready_is_503_while_shutting_down(funnel) -> None:  # type: ignore[no-untyped-def]
    f, base = start_with_metrics(funnel)
    client = f.connect()
    try:
        client.execute("SELECT 1")
        status, body = ready(base)
        assert status == 200, body
        assert f.proc is not None
        f.proc.send_signal(signal.SIGTERM)  # WAIT_FOR_CLIENTS: the listeners close at once
        body = wait_for(lambda: _status(base, 503), timeout=10)
        assert body["status"] == "shutting-down"
        assert body["reason"] == ("shutting down (WAIT_FOR_CLIENTS): not accepting new clients")
        assert client.execute("SELECT 2").fetchone() == (2,)  # connected clients still served
    finally:
        client.close()
    assert f.proc.wait(10) == 0


def test_ready_probes_configured_databases_that_have_no_pool_yet(  # type: ignore[no-untyped-def]
    make_cluster, funnel, pg: Cluster
) -> None:
    """Once one database has a pool, a configured one nobody has used yet is still checked:
    its first client must not be the first to find its server gone."""
    gone: Cluster = make_cluster()
    port = gone.port
    gone.stop()
    f, base = start_with_metrics(
        funnel,
        databases={
            "postgres": f"host=127.0.0.1 port={pg.port} dbname=postgres",
            "unused": f"host=127.0.0.1 port={port} dbname=postgres",
        },
    )
    with f.connect() as conn:
        conn.execute("SELECT 1")  # a pool for postgres only
    status, body = ready(base)
    assert status == 503, body
    by_db = {p["database"]: p for p in body["pools"]}
    assert by_db["postgres"]["status"] == "ok" and by_db["postgres"]["user"] == "postgres"
    assert by_db["unused"]["status"] == "degraded", by_db
    assert by_db["unused"]["user"] is None  # no pool yet: no user
    assert f"server 127.0.0.1:{port} unreachable" in by_db["unused"]["reason"]
    gone.start()
    body = wait_for(lambda: _status(base, 200), timeout=15)
    assert {p["database"] for p in body["pools"]} == {"postgres", "unused"}


def test_ready_is_503_while_suspended_and_200_after_resume(funnel) -> None:  # type: ignore[no-untyped-def]
    f, base = start_with_metrics(funnel)
    with f.connect() as client:
        client.execute("SELECT 1")
        assert ready(base)[0] == 200
        f.admin("SUSPEND")
        status, body = ready(base)
        assert status == 503, body
        assert body["ready"] is False and body["status"] == "suspended"
        assert body["reason"] == "suspended (SUSPEND): RESUME to serve"
        assert {p["status"] for p in body["pools"]} == {"ok"}  # the pools themselves are fine
        f.admin("RESUME")
        status, body = ready(base)
        assert status == 200, body
        assert body["status"] == "ok" and "reason" not in body
        assert client.execute("SELECT 2").fetchone() == (2,)
