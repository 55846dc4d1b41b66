"""Metrics, readiness verdicts and the status page from a real App's pools, without sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pgfunnel.config.loader import load_config
from pgfunnel.metrics.collector import bounded, make_registry
from pgfunnel.metrics.health import BACKPRESSURE, DEGRADED, OK, pool_status
from pgfunnel.metrics.status_page import render
from pgfunnel.net.app import App
from pgfunnel.pool.objects import Client, ClientState, Server, ServerState
from pgfunnel.pool.scheduler import WAIT_BUCKETS, Connect, Pool, Promote
from pgfunnel.proto.messages import ServerError

PARAMS = {"server_version": "16.3", "client_encoding": "UTF8"}


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    """An App that is never started: its pools are driven by calling the scheduler directly."""
    (tmp_path / "users.txt").write_text('"app" "pw"\n')
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        "shop = host=127.0.0.1 port=5999 dbname=shop pool_size=2\n"
        "sock = port=5998 dbname=x\n"
        "[pgbouncer]\n"
        f"auth_file = {tmp_path / 'users.txt'}\n"
        "pool_mode = transaction\n"
        "server_login_retry = 2\n"
        "server_check_query = \n"
        f"unix_socket_dir = {tmp_path}\n"
    )
    loop = asyncio.new_event_loop()
    try:
        yield App(load_config(ini), loop)
    finally:
        loop.close()


def pool_of(app: App, db: str = "shop", user: str = "app") -> Pool:
    database = app.database(db)
    assert database is not None
    return app.pooler.get_pool(database, app.user(user))


def linked(app: App, pool: Pool, app_name: str = "") -> tuple[Client, Server]:
    """A client holding one of `pool`'s servers in a transaction: the scheduler opens the
    server, and the link is set as App.refresh copies it from the switch's snapshot."""
    now = app.now()
    client = Client(conn=None, addr="10.0.0.7", port=4242, now=now)
    client.username = pool.user.name
    client.params["application_name"] = app_name
    actions = app.pooler.client_authenticated(client, pool, now)
    if not actions or not isinstance(actions[0], Connect):
        actions = app.pooler.pool_waiters(pool, 1, now)  # the switch queued its query
    [connect] = [a for a in actions if isinstance(a, Connect)]
    server = connect.server
    assert Promote(server) in app.pooler.server_login_ok(server, PARAMS, now)
    pool.sw_waiting = 0  # the switch gave it to the waiting client
    app.pooler.mirror_server(server, ServerState.ACTIVE)
    app.pooler.mirror_client(client, ClientState.ACTIVE)
    client.link, server.link = server, client
    server.link_time = server.xact_start = now
    client.expect_rfq = 1
    server.pid = 4711
    return client, server


def samples(app: App) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(make_registry(app)).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


SHOP = (("database", "shop"), ("user", "app"))


def shop(**extra: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"database": "shop", "user": "app", **extra}.items()))


def test_pool_figures_and_counters(app: App) -> None:
    pool = pool_of(app)
    linked(app, pool, "billing")
    # The traffic totals are the switch's (sync_pools copies them); server assignments too
    # would come from there. What is checked here is that each is exported under its name.
    pool.stats.xact_count = 7
    pool.stats.xact_time = 1.5
    pool.stats.server_assignment_count = 3
    pool.stats.timeouts["query_wait_timeout"] = 2
    pool.stats.login_refusals["53300"] = 3
    s = samples(app)
    assert s[("pgfunnel_pools_client_active_connections", SHOP)] == 1
    assert s[("pgfunnel_pools_server_active_connections", SHOP)] == 1
    assert s[("pgfunnel_pools_pool_size", SHOP)] == 2
    assert s[("pgfunnel_pools_server_granted_connections", SHOP)] == 2
    assert s[("pgfunnel_stats_sql_transactions_pooled_total", SHOP)] == 7
    assert s[("pgfunnel_stats_server_in_transaction_seconds_total", SHOP)] == 1.5
    assert s[("pgfunnel_stats_server_assignments_total", SHOP)] == 3
    assert s[("pgfunnel_pools_timeouts_total", shop(reason="query_wait_timeout"))] == 2
    refused = ("pgfunnel_pools_server_login_refusals_total", shop(sqlstate="53300"))
    assert s[refused] == 3
    # Configured databases are listed before any pool of theirs exists.
    assert s[("pgfunnel_databases_pool_size", (("database", "shop"),))] == 2
    assert s[("pgfunnel_databases_pool_size", (("database", "sock"),))] == 20
    assert s[("pgfunnel_databases_current_connections", (("database", "shop"),))] == 1
    assert s[("pgfunnel_databases_current_connections", (("database", "sock"),))] == 0
    # SHOW POOLS lists the admin console as pool pgbouncer/pgbouncer: so do the gauges.
    admin = (("database", "pgbouncer"), ("user", "pgbouncer"))
    assert s[("pgfunnel_pools_client_active_connections", admin)] == 0
    [holder] = [labels for (name, labels) in s if name == "pgfunnel_holder_held_seconds"]
    assert dict(holder)["application_name"] == "billing"
    assert dict(holder)["client_addr"] == "10.0.0.7:4242"
    assert dict(holder)["server_pid"] == "4711"


def test_wait_histogram_is_cumulative(app: App) -> None:
    pool = pool_of(app)
    for waited in (0.0005, 0.002, 0.002, 0.7, 500.0):
        pool.stats.count_wait(waited)
    s = samples(app)
    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for (name, labels), value in s.items()
        if name == "pgfunnel_pools_client_wait_seconds_bucket" and ("user", "app") in labels
    )
    assert len(buckets) == len(WAIT_BUCKETS) + 1
    by_le = dict(buckets)
    assert by_le[0.001] == 1 and by_le[0.005] == 3 and by_le[1.0] == 4 and by_le[120.0] == 4
    assert by_le[float("inf")] == 5 == s[("pgfunnel_pools_client_wait_seconds_count", SHOP)]
    assert s[("pgfunnel_pools_client_wait_seconds_sum", SHOP)] == pytest.approx(500.7045)


def test_backpressure_gauges_and_status(app: App) -> None:
    pool = pool_of(app)
    linked(app, pool)  # the pool holds one server
    now = app.now()
    waiter = Client(conn=None, addr="10.0.0.8", port=1, now=now)
    app.pooler.client_authenticated(waiter, pool, now)
    # Its query queued in the switch: the WAITERS event asks the scheduler for a server.
    [connect] = app.pooler.pool_waiters(pool, 1, now)
    assert isinstance(connect, Connect)
    refusal = ServerError("FATAL", "53300", "sorry, too many clients already")
    app.pooler.server_login_failed(connect.server, refusal, now)
    s = samples(app)
    assert s[("pgfunnel_pools_backpressure_active", SHOP)] == 1
    assert s[("pgfunnel_pools_server_granted_connections", SHOP)] == 1
    assert s[("pgfunnel_pools_server_refused_53300_total", SHOP)] == 1
    status, reason = pool_status(pool, now)
    assert status == BACKPRESSURE and "53300" in reason
    html = render(app)
    assert 'data-backpressure="1"' in html and "back-pressure (53300)" in html
    # Long after the last refusal, with nobody retrying, the verdict no longer holds.
    assert pool_status(pool, now + 60)[0] == OK


def test_failed_login_status(app: App) -> None:
    pool = pool_of(app)
    now = app.now()
    client = Client(conn=None, addr="10.0.0.9", port=1, now=now)
    [connect] = app.pooler.client_authenticated(client, pool, now)
    assert isinstance(connect, Connect)
    error = ServerError("FATAL", "28P01", 'password authentication failed for user "app"')
    app.pooler.server_login_failed(connect.server, error, now)
    status, reason = pool_status(pool, now)
    assert status == DEGRADED and "28P01" in reason
    assert pool_status(pool, now + 3)[0] == OK  # server_login_retry = 2 is over
    # A network failure (the server is down) is transient, and degraded while it is recent.
    other = pool_of(app, "sock")
    client2 = Client(conn=None, addr="10.0.0.9", port=2, now=now)
    [connect] = app.pooler.client_authenticated(client2, other, now)
    assert isinstance(connect, Connect)
    app.pooler.server_login_failed(connect.server, None, now, "connect failed: refused")
    status, reason = pool_status(other, now)
    assert status == DEGRADED and "connect failed: refused" in reason
    assert pool_status(other, now + 60)[0] == OK  # nobody retried since: the probe decides


def test_status_page_escapes_and_lists_everything(app: App) -> None:
    pool = pool_of(app)
    linked(app, pool, '<img src=x onerror="alert(1)">')
    html = render(app)
    assert "<img" not in html
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html
    assert 'id="pool-shop-app"' in html and 'data-col="cl_active" data-value="1"' in html
    assert 'id="db-sock"' in html and "No pools yet" in html
    assert f"{app.settings.unix_socket_dir}/.s.PGSQL.5998" in html
    assert 'id="db-pgbouncer"' in html
    assert '<meta name="viewport"' in html and 'http-equiv="refresh"' in html


def test_refusal_reasons_are_bounded() -> None:
    counts = {f"no such database: db{i}": i + 1 for i in range(30)}
    kept = dict(bounded(counts, 5))
    assert len(kept) == 5
    assert kept["other"] == sum(range(1, 27))
    assert kept["no such database: db29"] == 30
    assert bounded({"a": 1}, 5) == [("a", 1)]
