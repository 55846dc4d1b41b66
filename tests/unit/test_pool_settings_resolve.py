"""resolve_pool_settings: PgBouncer's order per setting, and every reader of pool figures
(scheduler, SHOW DATABASES/POOLS/USERS, /metrics) agreeing with it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pgfunnel.admin.console import Statement
from pgfunnel.config.loader import DatabaseConfig, UserConfig, load_config
from pgfunnel.config.pools import resolve_pool_settings
from pgfunnel.config.settings import Settings
from pgfunnel.metrics.collector import make_registry
from pgfunnel.net.app import App

GLOBAL = Settings(
    pool_mode="session",
    default_pool_size=20,
    min_pool_size=1,
    reserve_pool_size=2,
    max_db_connections=50,
    max_user_connections=60,
    server_lifetime=3600.0,
    query_timeout=100.0,
    idle_transaction_timeout=200.0,
    client_idle_timeout=300.0,
)
DB = DatabaseConfig(
    name="shop",
    pool_mode="statement",
    pool_size=5,
    min_pool_size=3,
    reserve_pool=4,
    max_db_connections=10,
    server_lifetime=60.0,
)
USER = UserConfig(
    name="app",
    pool_mode="transaction",
    pool_size=7,
    reserve_pool_size=6,
    max_user_connections=12,
    query_timeout=1.0,
    idle_transaction_timeout=2.0,
    client_idle_timeout=3.0,
)


@pytest.mark.parametrize(
    ("name", "with_both", "db_only", "user_only", "neither"),
    [
        # [users] over [databases] over [pgbouncer]
        ("pool_mode", "transaction", "statement", "transaction", "session"),
        ("pool_size", 7, 5, 7, 20),
        ("reserve_pool_size", 6, 4, 6, 2),
        # [databases] over [pgbouncer]; [users] has no say
        ("min_pool_size", 3, 3, 1, 1),
        ("max_db_connections", 10, 10, 50, 50),
        ("server_lifetime", 60.0, 60.0, 3600.0, 3600.0),
        # [users] over [pgbouncer]; [databases] has no say
        ("max_user_connections", 12, 60, 12, 60),
        ("query_timeout", 1.0, 100.0, 1.0, 100.0),
        ("idle_transaction_timeout", 2.0, 200.0, 2.0, 200.0),
        ("client_idle_timeout", 3.0, 300.0, 3.0, 300.0),
    ],
)
def test_each_setting_follows_pgbouncers_order(
    name: str, with_both: Any, db_only: Any, user_only: Any, neither: Any
) -> None:
    assert getattr(resolve_pool_settings(GLOBAL, DB, USER), name) == with_both
    assert getattr(resolve_pool_settings(GLOBAL, DB, None), name) == db_only
    assert getattr(resolve_pool_settings(GLOBAL, None, USER), name) == user_only
    assert getattr(resolve_pool_settings(GLOBAL, None, None), name) == neither


def test_a_zero_connection_cap_in_an_entry_falls_back_to_the_global_one() -> None:
    # PgBouncer: database_max_connections / user_max_connections use the global value for <= 0.
    db = DatabaseConfig(name="shop", max_db_connections=0)
    user = UserConfig(name="app", max_user_connections=0)
    got = resolve_pool_settings(GLOBAL, db, user)
    assert (got.max_db_connections, got.max_user_connections) == (50, 60)


def test_a_zero_pool_size_in_an_entry_is_kept() -> None:
    # pool_size 0 is a real value (no servers), unlike a negative one, which means "not set"
    # and is None once loaded.
    got = resolve_pool_settings(GLOBAL, DatabaseConfig(name="shop", pool_size=0), None)
    assert got.pool_size == 0
    got = resolve_pool_settings(GLOBAL, DB, UserConfig(name="app", pool_size=0))
    assert got.pool_size == 0


@pytest.mark.parametrize(("raw", "sent"), [("", None), ("<empty>", ""), ("select 1", "select 1")])
def test_server_check_query_spellings(raw: str, sent: str | None) -> None:
    got = resolve_pool_settings(Settings(server_check_query=raw))
    assert got.server_check_query == sent


# --- every reader agrees -------------------------------------------------------------------------
@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    """An App never started: its pools are made by asking the scheduler for them."""
    (tmp_path / "users.txt").write_text('"app" "pw"\n"other" "pw"\n')
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        "shop = host=127.0.0.1 port=5999 pool_size=3 reserve_pool=1 max_db_connections=0\n"
        "[users]\n"
        "app = pool_size=8 reserve_pool_size=2 max_user_connections=0\n"
        "[pgbouncer]\n"
        f"auth_file = {tmp_path / 'users.txt'}\n"
        "default_pool_size = 20\n"
        "max_db_connections = 40\n"
        "max_user_connections = 30\n"
        f"unix_socket_dir = {tmp_path}\n"
    )
    loop = asyncio.new_event_loop()
    try:
        yield App(load_config(ini), loop)
    finally:
        loop.close()


def _rows(app: App, what: str) -> list[dict[str, Any]]:
    columns, rows = app.admin.shows[what](Statement(f"SHOW {what}", "SHOW", what))
    names = [name for name, _ in columns]
    return [dict(zip(names, row, strict=True)) for row in rows]


def _samples(app: App) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(make_registry(app)).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_scheduler_console_and_metrics_use_the_same_figures(app: App) -> None:
    shop = app.database("shop")
    assert shop is not None
    mine = app.pooler.get_pool(shop, app.user("app"))
    theirs = app.pooler.get_pool(shop, app.user("other"))
    # The user with a [users] entry gets its pool_size and reserve, not the database's.
    assert (mine.settings.pool_size, mine.settings.reserve_pool_size) == (8, 2)
    assert (theirs.settings.pool_size, theirs.settings.reserve_pool_size) == (3, 1)
    assert mine.settings.max_db_connections == 40  # the entry's 0 means the global one
    assert mine.settings.max_user_connections == 30

    databases = {row["name"]: row for row in _rows(app, "DATABASES")}
    # SHOW DATABASES keeps PgBouncer's meaning: the database entry's own figures.
    assert databases["shop"]["pool_size"] == 3
    assert databases["shop"]["reserve_pool_size"] == 1
    assert databases["shop"]["max_connections"] == 40
    users = {row["name"]: row for row in _rows(app, "USERS")}
    assert (users["app"]["pool_size"], users["app"]["reserve_pool_size"]) == ("8", "2")
    assert users["app"]["max_user_connections"] == 30
    assert users["other"]["pool_size"] is None
    pools = {(row["database"], row["user"]): row for row in _rows(app, "POOLS")}
    assert pools[("shop", "app")]["pool_mode"] == mine.settings.pool_mode

    samples = _samples(app)
    size = "pgfunnel_pools_pool_size"
    assert samples[(size, (("database", "shop"), ("user", "app")))] == 8
    assert samples[(size, (("database", "shop"), ("user", "other")))] == 3
    assert samples[("pgfunnel_databases_pool_size", (("database", "shop"),))] == 3
    assert samples[("pgfunnel_databases_max_connections", (("database", "shop"),))] == 40


def test_reload_and_set_retune_pools_through_the_same_rule(app: App, tmp_path: Path) -> None:
    shop = app.database("shop")
    assert shop is not None
    other = app.pooler.get_pool(shop, app.user("other"))
    app.set_setting("default_pool_size", "11")
    assert other.settings.pool_size == 3  # the database entry still wins over the global
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text(ini.read_text().replace("app = pool_size=8", "other = pool_size=9\napp = "))
    app.reload()
    assert other.settings.pool_size == 9
    assert app.pooler.get_pool(shop, app.user("app")).settings.pool_size == 3
