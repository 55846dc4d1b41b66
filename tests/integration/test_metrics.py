"""/metrics of a real `pgfunnel serve`: Prometheus text that follows the live pools."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pgfunnel.throwaway import Cluster, free_port, pg_tool
from pgfunnel.toolkit.alerts import POOLER_METRICS
from tests.integration.harness import Funnel, pgpass_env, wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# --- helpers the other metrics / status page tests share -------------------------------------
def start_with_metrics(funnel: Callable[..., Funnel], **kwargs: Any) -> tuple[Funnel, str]:
    """A pooler with its metrics endpoint on a free port; returns it and the endpoint's URL."""
    port = free_port()
    settings = {"metrics_addr": "127.0.0.1", "metrics_port": port, **kwargs.pop("settings", {})}
    f = funnel(settings=settings, **kwargs)
    # The pooler's own port opens first: wait for the metrics listener too.
    wait_for(lambda: _accepts(port), timeout=10)
    return f, f"http://127.0.0.1:{port}"


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def http_get(url: str, method: str = "GET") -> tuple[int, dict[str, str], str]:
    """(status, headers, body) of one request; HTTP errors are answers too."""
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers.items()), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers.items()), e.read().decode()


def ready(base: str) -> tuple[int, dict[str, Any]]:
    """/ready's status and JSON body."""
    status, headers, body = http_get(base + "/ready")
    assert headers["Content-Type"] == "application/json"
    return status, json.loads(body)


def scrape(base: str) -> Samples:
    """Every sample of /metrics, keyed by (sample name, sorted labels)."""
    status, headers, body = http_get(base + "/metrics")
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain; version=")
    out: Samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def pool_value(samples: Samples, name: str, db: str = "postgres", user: str = "postgres") -> float:
    return samples[(name, (("database", db), ("user", user)))]


def labelled(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in samples if n == name]


class Holder:
    """One client holding a transaction open through the pooler (BEGIN; SELECT 1) and one more
    client queued behind it on a pool of size 1."""

    def __init__(self, f: Funnel, app: str = "holder-app", waiter_app: str = "waiter-app") -> None:
        self.holder = f.connect(application_name=app)
        self.holder.execute("BEGIN")
        self.holder.execute("SELECT 1")
        self.waiter = f.connect(application_name=waiter_app)
        self.result: list[Any] = []
        self.thread = threading.Thread(target=self._wait, daemon=True)
        self.thread.start()

    def _wait(self) -> None:
        self.result.append(self.waiter.execute("SELECT 42").fetchone())

    def release(self) -> None:
        self.holder.execute("COMMIT")
        self.thread.join(10)
        assert self.result == [(42,)]

    def close(self) -> None:
        for conn in (self.holder, self.waiter):
            conn.close()


def holding(funnel: Callable[..., Funnel]) -> Iterator[tuple[Funnel, str, Holder]]:
    """pool_size 1: one client holds the only server in a transaction, one waits behind it."""
    f, base = start_with_metrics(funnel, settings={"default_pool_size": 1})
    h = Holder(f)
    try:
        wait_for(lambda: f.pool()["cl_waiting"] == 1, timeout=10)
        yield f, base, h
    finally:
        if h.holder.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            h.holder.execute("ROLLBACK")
        h.thread.join(10)
        h.close()


@pytest.fixture
def held(funnel: Callable[..., Funnel]) -> Iterator[tuple[Funnel, str, Holder]]:
    yield from holding(funnel)


# --- tests -----------------------------------------------------------------------------------
def test_counters_grow_while_pgbench_runs(funnel, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    f, base = start_with_metrics(funnel, settings={"default_pool_size": 4})
    script = tmp_path / "xact.sql"
    script.write_text("BEGIN;\nSELECT 1;\nSELECT pg_sleep(0.001);\nCOMMIT;\n")
    bench = subprocess.Popen(
        [
            pg_tool("pgbench"),
            "-n",
            "-c",
            "8",
            "-j",
            "2",
            "-T",
            "3",
            "-f",
            str(script),
            "-h",
            "127.0.0.1",
            "-p",
            str(f.port),
            "-U",
            "postgres",
            "postgres",
        ],
        env=pgpass_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        xacts = "pgfunnel_stats_sql_transactions_pooled_total"
        first = wait_for(lambda: _positive(scrape(base), xacts), timeout=15)
        time.sleep(0.5)
        second = scrape(base)
        assert pool_value(second, xacts) > pool_value(first, xacts)
        for name in (
            "pgfunnel_stats_queries_pooled_total",
            "pgfunnel_stats_received_bytes_total",
            "pgfunnel_stats_sent_bytes_total",
            "pgfunnel_stats_server_assignments_total",
            "pgfunnel_stats_server_in_transaction_seconds_total",
            "pgfunnel_stats_queries_duration_seconds_total",
        ):
            assert pool_value(second, name) >= pool_value(first, name) > 0, name
        # Four servers at most for eight clients: the rest queue, and the gauges say so.
        servers = sum(
            pool_value(second, f"pgfunnel_pools_server_{s}_connections")
            for s in ("active", "idle", "used", "testing", "login")
        )
        assert 0 < servers <= 4
        clients = pool_value(second, "pgfunnel_pools_client_active_connections") + pool_value(
            second, "pgfunnel_pools_client_waiting_connections"
        )
        assert clients == 8
    finally:
        out, err = bench.communicate(timeout=30)
    assert bench.returncode == 0, err[-2000:]
    assert "number of failed transactions: 0" in out

    # pgbench has gone: once the pooler has seen its connections close, no client is left.
    done = wait_for(lambda: _no_clients(scrape(base)), timeout=10)
    processed = int(out.split("number of transactions actually processed: ")[1].split()[0])
    # pgbench's transactions are BEGIN..COMMIT blocks: the pooler counted each of them.
    assert pool_value(done, "pgfunnel_stats_sql_transactions_pooled_total") >= processed
    # The wait histogram is cumulative and ends at +Inf with its _count.
    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for (name, labels), value in done.items()
        if name == "pgfunnel_pools_client_wait_seconds_bucket"
    )
    counts = [v for _, v in buckets]
    assert counts == sorted(counts) and buckets[-1][0] == float("inf")
    assert buckets[-1][1] == pool_value(done, "pgfunnel_pools_client_wait_seconds_count") > 0
    assert pool_value(done, "pgfunnel_pools_client_wait_seconds_sum") == pytest.approx(
        pool_value(done, "pgfunnel_stats_client_wait_seconds_total")
    )
    # Every pooler metric the toolkit's alert rules use is there.
    names = {name for name, _ in done}
    for metric in POOLER_METRICS["pgfunnel"].values():
        assert metric in names, metric
    assert done[("pgfunnel_databases_pool_size", (("database", "postgres"),))] == 4


def _no_clients(samples: Samples) -> Samples | None:
    return samples if pool_value(samples, "pgfunnel_pools_client_active_connections") == 0 else None


def _positive(samples: Samples, name: str) -> Samples | None:
    key = (name, (("database", "postgres"), ("user", "postgres")))
    return samples if samples.get(key, 0) > 0 else None


def test_waiting_client_and_holder_in_metrics(held) -> None:  # type: ignore[no-untyped-def]
    f, base, h = held
    samples = scrape(base)
    assert pool_value(samples, "pgfunnel_pools_client_waiting_connections") == 1
    assert pool_value(samples, "pgfunnel_pools_client_active_connections") == 1
    assert pool_value(samples, "pgfunnel_pools_server_active_connections") == 1
    assert pool_value(samples, "pgfunnel_pools_server_granted_connections") == 1
    assert pool_value(samples, "pgfunnel_pools_backpressure_active") == 0
    assert pool_value(samples, "pgfunnel_pools_client_maxwait_seconds") > 0
    holders = labelled(samples, "pgfunnel_holder_held_seconds")
    assert [x["application_name"] for x in holders] == ["holder-app"]
    assert holders[0]["state"] == "idle in transaction"
    server_pid = h.holder.execute("SELECT pg_backend_pid()").fetchone()[0]
    assert holders[0]["server_pid"] == str(server_pid)
    # The console agrees with the metrics.
    row = f.pool()
    assert (row["cl_active"], row["cl_waiting"], row["sv_active"]) == (1, 1, 1)

    h.release()
    after = wait_for(lambda: _no_holders(scrape(base)), timeout=10)
    assert pool_value(after, "pgfunnel_pools_client_waiting_connections") == 0
    assert pool_value(after, "pgfunnel_pools_client_wait_seconds_count") >= 1


def _no_holders(samples: Samples) -> Samples | None:
    return None if labelled(samples, "pgfunnel_holder_held_seconds") else samples


def test_refused_clients_by_reason(funnel) -> None:  # type: ignore[no-untyped-def]
    f, base = start_with_metrics(funnel)
    with pytest.raises(psycopg.OperationalError, match="no such database"):
        psycopg.connect(f.dsn(dbname="nosuchdb"))
    samples = scrape(base)
    reasons = {x["reason"] for x in labelled(samples, "pgfunnel_clients_refused_total")}
    assert reasons == {"no_such_database"}, reasons  # a fixed key, not the name
    assert samples[("pgfunnel_up", ())] == 1
    assert samples[("pgfunnel_start_time_seconds", ())] <= time.time()
    assert labelled(samples, "pgfunnel_build_info")[0]["version"]
    assert ("process_start_time_seconds", ()) in samples


def test_http_edges(funnel) -> None:  # type: ignore[no-untyped-def]
    f, base = start_with_metrics(funnel)
    status, headers, body = http_get(base + "/live")
    assert (status, body) == (200, "ok\n")
    assert headers["Connection"] == "close"
    assert headers["Content-Length"] == "3"
    status, headers, body = http_get(base + "/metrics", method="HEAD")
    assert status == 200 and body == "" and int(headers["Content-Length"]) > 100
    assert http_get(base + "/metrics?x=1")[0] == 200
    assert http_get(base + "/nope")[0] == 404
    status, headers, _ = http_get(base + "/metrics", method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"

    port = int(base.rsplit(":", 1)[1])
    assert _raw(port, b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert _raw(port, b"GET / HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n").startswith(
        b"HTTP/1.1 431 "
    )
    # A client that connects and says nothing does not hold up anyone else.
    with socket.create_connection(("127.0.0.1", port)):
        t0 = time.monotonic()
        assert http_get(base + "/live")[0] == 200
        assert time.monotonic() - t0 < 2
    # The pooler itself kept working through all this.
    with f.connect() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data


def test_metrics_addr_star_listens_on_all_addresses(funnel) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    funnel(settings={"metrics_addr": "*", "metrics_port": port})
    wait_for(lambda: _accepts(port), timeout=10)
    assert http_get(f"http://127.0.0.1:{port}/live")[0] == 200


def test_backpressure_metrics(make_cluster, funnel) -> None:  # type: ignore[no-untyped-def]
    """53300 from the server: the pool keeps serving with what it has, /ready stays 200."""
    cluster: Cluster = make_cluster(max_connections=6)  # 3 slots for ordinary roles
    cluster.psql("CREATE ROLE app LOGIN PASSWORD 'app-pw'")
    f, base = start_with_metrics(
        funnel,
        cluster=cluster,
        userlist={"app": "app-pw"},
        settings={"default_pool_size": 3, "query_wait_timeout": 30},
    )
    others = [psycopg.connect(cluster.dsn(user="app", password="app-pw")) for _ in range(2)]
    first = second = None
    t: threading.Thread | None = None
    try:
        first = f.connect(user="app", password="app-pw")
        first.execute("BEGIN")
        first.execute("SELECT 1")  # holds the one server slot left
        second = f.connect(user="app", password="app-pw")
        # Nobody has needed a second server yet: none was asked for (a queue count read after
        # the first client had its server once opened one, and hit the wall for nothing).
        assert _refused(scrape(base)) is None
        got: list[Any] = []
        query = second
        t = threading.Thread(target=lambda: got.append(query.execute("SELECT 7").fetchone()))
        t.start()
        samples = wait_for(
            lambda: _refused(scrape(base)),
            timeout=15,
        )
        assert pool_value(samples, "pgfunnel_pools_backpressure_active", user="app") == 1
        assert pool_value(samples, "pgfunnel_pools_server_granted_connections", user="app") == 1
        assert pool_value(samples, "pgfunnel_pools_client_waiting_connections", user="app") == 1
        by_sqlstate = (
            "pgfunnel_pools_server_login_refusals_total",
            (("database", "postgres"), ("sqlstate", "53300"), ("user", "app")),
        )
        assert samples[by_sqlstate] >= 1
        status, body = ready(base)
        assert status == 200, body
        (entry,) = body["pools"]
        assert entry["status"] == "back-pressure" and "53300" in entry["reason"], entry
        page = http_get(base + "/")[2]
        assert 'data-user="app" data-in-use="1" data-granted="1"' in page
        assert 'data-backpressure="1"' in page and "back-pressure (53300)" in page
        first.execute("COMMIT")
        t.join(10)
        assert got == [(7,)]
    finally:
        if first is not None:
            first.close()  # its server goes back, so a queued SELECT 7 can end
        if t is not None:
            t.join(10)
        for conn in (second, *others):
            if conn is not None:
                conn.close()


def _refused(samples: Samples) -> Samples | None:
    key = ("pgfunnel_pools_server_refused_53300_total", (("database", "postgres"), ("user", "app")))
    return samples if samples.get(key, 0) > 0 else None


def test_clients_refused_are_counted_by_a_fixed_reason(funnel) -> None:  # type: ignore[no-untyped-def]
    """Refusals before a pool (no such database, a wrong password) are counted under fixed
    reason labels, never under text the client chose."""
    f, base = start_with_metrics(funnel)
    for _ in range(2):
        with pytest.raises(psycopg.OperationalError, match="no such database"):
            f.connect(dbname="nope_db_chosen_by_client")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        f.connect(password="wrong")
    samples = scrape(base)
    reasons = {
        dict(labels)["reason"]: value
        for (name, labels), value in samples.items()
        if name == "pgfunnel_clients_refused_total"
    }
    assert reasons.get("no_such_database") == 2, reasons
    assert reasons.get("auth_failed") == 1, reasons
    assert not any("nope_db" in r for r in reasons)
