"""The admin console's SHOW commands through a real pgfunnel, read by psql and psycopg.

Columns are checked against PgBouncer 1.25's names, order and types; values against real
load through the pooler (queries, pgbench, a transaction that holds the only server).
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from pgfunnel.config.settings import SETTINGS
from pgfunnel.throwaway import SUPERUSER, SUPERUSER_PASSWORD, Cluster, pg_tool
from tests.integration.harness import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    Funnel,
    pgpass_env,
    wait_for,
)

STATS_USER, STATS_PASSWORD = "watcher", "watcherpw"

INT4, INT8, TEXT, NUMERIC = 23, 20, 25, 1700

SOCKET_COLUMNS = [
    ("type", TEXT),
    ("user", TEXT),
    ("database", TEXT),
    ("replication", TEXT),
    ("state", TEXT),
    ("addr", TEXT),
    ("port", INT4),
    ("local_addr", TEXT),
    ("local_port", INT4),
    ("connect_time", TEXT),
    ("request_time", TEXT),
    ("wait", INT4),
    ("wait_us", INT4),
    ("close_needed", INT4),
    ("ptr", TEXT),
    ("link", TEXT),
    ("remote_pid", INT4),
    ("tls", TEXT),
    ("application_name", TEXT),
    ("prepared_statements", INT4),
    ("id", INT4),
]
STAT_NAMES = [
    "server_assignment_count",
    "xact_count",
    "query_count",
    "received",
    "sent",
    "xact_time",
    "query_time",
    "wait_time",
    "client_parse_count",
    "server_parse_count",
    "bind_count",
]
AVG_NAMES = [{"received": "recv"}.get(n, n) for n in STAT_NAMES]
EXPECTED_COLUMNS: dict[str, list[tuple[str, int]]] = {
    "POOLS": [
        ("database", TEXT),
        ("user", TEXT),
        *(
            (name, INT4)
            for name in (
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
            )
        ),
        ("pool_mode", TEXT),
        ("load_balance_hosts", TEXT),
    ],
    # PgBouncer's columns, then pgfunnel's own: how the client authenticated.
    "CLIENTS": [*SOCKET_COLUMNS, ("auth_method", TEXT), ("hba_line", TEXT), ("carries", TEXT)],
    "SERVERS": SOCKET_COLUMNS,
    "DATABASES": [
        ("name", TEXT),
        ("host", TEXT),
        ("port", INT4),
        ("database", TEXT),
        ("force_user", TEXT),
        ("pool_size", INT4),
        ("min_pool_size", INT4),
        ("reserve_pool_size", INT4),
        ("server_lifetime", INT4),
        ("pool_mode", TEXT),
        ("load_balance_hosts", TEXT),
        ("max_connections", INT4),
        ("current_connections", INT4),
        ("max_client_connections", INT4),
        ("current_client_connections", INT4),
        ("paused", INT4),
        ("disabled", INT4),
    ],
    "USERS": [
        ("name", TEXT),
        ("pool_size", TEXT),
        ("reserve_pool_size", TEXT),
        ("pool_mode", TEXT),
        ("max_user_connections", INT4),
        ("current_connections", INT4),
        ("max_user_client_connections", INT4),
        ("current_client_connections", INT4),
        ("auth_source", TEXT),  # pgfunnel's own, after PgBouncer's
        ("auth_methods", TEXT),
    ],
    "STATS": [
        ("database", TEXT),
        *((f"total_{n}", NUMERIC) for n in STAT_NAMES),
        *((f"avg_{n}", NUMERIC) for n in AVG_NAMES),
    ],
    "STATS_TOTALS": [
        ("database", TEXT),
        *(
            ({"received": "bytes_received", "sent": "bytes_sent"}.get(n, n), NUMERIC)
            for n in STAT_NAMES
        ),
    ],
    "STATS_AVERAGES": [
        ("database", TEXT),
        *(
            (
                {
                    "received": "bytes_received",
                    "sent": "bytes_sent",
                    "client_parse_count": "avg_client_parse_count",
                    "server_parse_count": "avg_server_parse_count",
                    "bind_count": "avg_bind_count",
                }.get(n, n),
                NUMERIC,
            )
            for n in STAT_NAMES
        ),
    ],
    "TOTALS": [("name", TEXT), ("value", NUMERIC)],
    "LISTS": [("list", TEXT), ("items", INT4)],
    "CONFIG": [("key", TEXT), ("value", TEXT), ("default", TEXT), ("changeable", TEXT)],
    "MEM": [("name", TEXT), ("size", INT4), ("used", INT4), ("free", INT4), ("memtotal", INT4)],
    "STATE": [("key", TEXT), ("value", TEXT)],
    "VERSION": [("version", TEXT)],
    "PEERS": [("peer_id", INT4), ("host", TEXT), ("port", INT4), ("pool_size", INT4)],
    "HOLDERS": [
        ("database", TEXT),
        ("user", TEXT),
        ("application_name", TEXT),
        ("addr", TEXT),
        ("port", INT4),
        ("state", TEXT),
        ("held", INT4),
        ("held_us", INT4),
        ("xact", INT4),
        ("xact_us", INT4),
        ("remote_pid", INT4),
        ("id", INT4),
        ("ptr", TEXT),
        ("link", TEXT),
    ],
}


# --- helpers ---------------------------------------------------------------------------------
def console(
    f: Funnel, user: str = ADMIN_USER, password: str = ADMIN_PASSWORD
) -> psycopg.Connection[Any]:
    """A console session; psycopg sends a parameterless execute as a simple Query."""
    return psycopg.connect(f.dsn(user=user, dbname="pgbouncer", password=password), autocommit=True)


def show(conn: psycopg.Connection[Any], command: str) -> list[dict[str, Any]]:
    cur = conn.execute(command, prepare=False)
    assert cur.description is not None
    names = [d.name for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def by(rows: list[dict[str, Any]], key: str) -> dict[Any, dict[str, Any]]:
    return {row[key]: row for row in rows}


def psql(
    f: Funnel,
    sql: str,
    user: str = ADMIN_USER,
    password: str = ADMIN_PASSWORD,
    db: str = "pgbouncer",
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [pg_tool("psql"), "-X", "-h", "127.0.0.1", "-p", str(f.port), "-U", user, db, "-c", sql],
        env=pgpass_env(password),
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture(scope="module")
def shared(pg: Cluster) -> Iterator[Funnel]:
    """One pgfunnel for the read-only SHOW tests: a stats user, a forced-user database with its
    own pool_size, stats_period=1 so averages move within a test."""
    f = Funnel(
        pg,
        settings={"stats_users": STATS_USER, "stats_period": 1, "max_client_conn": 200},
        databases={
            "postgres": f"host=127.0.0.1 port={pg.port} dbname=postgres",
            "forced": f"host=127.0.0.1 port={pg.port} dbname=postgres user={SUPERUSER} "
            "pool_size=3 pool_mode=session",
        },
        users={SUPERUSER: "max_user_connections=50"},
        userlist={STATS_USER: STATS_PASSWORD},
    ).start()
    try:
        yield f
    finally:
        f.stop()


# --- columns ---------------------------------------------------------------------------------
@pytest.mark.parametrize("what", sorted(EXPECTED_COLUMNS))
def test_show_columns_are_pgbouncers(shared: Funnel, what: str) -> None:
    with shared.connect() as conn:
        conn.execute("SELECT 1")
    with console(shared) as conn:
        cur = conn.execute(f"SHOW {what}", prepare=False)
        assert cur.description is not None
        got = [(d.name, d.type_code) for d in cur.description]
        assert cur.statusmessage == "SHOW"
    assert got == EXPECTED_COLUMNS[what]


def test_show_help_prints_console_usage_as_a_notice(shared: Funnel) -> None:
    out = psql(shared, "SHOW HELP")
    assert out.returncode == 0, out.stderr
    assert "NOTICE:  Console usage" in out.stderr
    detail = out.stderr.split("DETAIL:", 1)[1]
    lines = [line.strip() for line in detail.splitlines() if line.strip()]
    assert lines[0] == "SHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION"
    for command in ("PAUSE [<db>]", "KILL_CLIENT <client_id>", "WAIT_CLOSE [<db>]", "RELOAD"):
        assert command in lines
    assert "SHOW HOLDERS [<db>]" in lines


def test_keywords_are_case_insensitive_and_statements_chain(shared: Funnel) -> None:
    with console(shared) as conn:
        assert show(conn, "show version;")[0]["version"].startswith("PgBouncer 1.25")
        assert show(conn, "Show State")[0] == {"key": "active", "value": "yes"}
    out = psql(shared, "SHOW VERSION; show state;; SHOW LISTS")
    assert out.returncode == 0, out.stderr
    assert "pgfunnel" in out.stdout and "suspended" in out.stdout and "used_clients" in out.stdout
    # The first error ends the query string, as PostgreSQL's simple protocol does.
    out = psql(shared, "SHOW STATE; SHOW NOTHING; SHOW LISTS")
    assert "suspended" in out.stdout and "used_clients" not in out.stdout
    assert "invalid command 'SHOW NOTHING', use SHOW HELP;" in out.stderr


def test_unknown_command_is_08P01_with_pgbouncers_text(shared: Funnel) -> None:
    with console(shared) as conn:
        for bad in ("SHOW NOTHING", "SELECT 1 + 1", "FROBNICATE", "SET default_pool_size"):
            with pytest.raises(psycopg.Error) as info:
                conn.execute(bad, prepare=False)
            assert info.value.sqlstate == "08P01"
            assert (
                str(info.value.diag.message_primary) == f"invalid command '{bad}', use SHOW HELP;"
            )
        assert show(conn, "SHOW STATE")  # the session goes on after an error


def test_fake_parameters_drivers_ask_for(shared: Funnel) -> None:
    out = psql(shared, "SHOW client_encoding")
    assert "UTF-8" in out.stdout
    out = psql(shared, "SET client_encoding = 'UTF8'")
    assert out.returncode == 0 and "NOTICE:  SET ignored" in out.stderr


def test_extended_protocol_gets_a_clear_error(shared: Funnel) -> None:
    with console(shared) as conn:
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SHOW POOLS", prepare=True)
        assert info.value.sqlstate == "0A000"
        assert show(conn, "SHOW STATE")


# --- values that move with load ----------------------------------------------------------------
def _totals(f: Funnel, db: str = "postgres") -> dict[str, Any]:
    with console(f) as conn:
        return by(show(conn, "SHOW STATS_TOTALS"), "database")[db]


def test_stats_totals_count_transactions_queries_bytes_and_time(shared: Funnel) -> None:
    before = _totals(shared)
    with shared.connect() as conn:
        for _ in range(5):
            conn.execute("SELECT 1")
        with conn.transaction():
            conn.execute("SELECT 1")
            conn.execute("SELECT pg_sleep(0.05)")
    after = _totals(shared)
    delta = {k: after[k] - before[k] for k in after if k != "database"}
    assert delta["xact_count"] == 6
    assert delta["query_count"] >= 9  # 5 + BEGIN, 2 statements, COMMIT
    assert delta["server_assignment_count"] >= 6  # transaction pooling: one per transaction
    assert delta["bytes_received"] > 0 and delta["bytes_sent"] > 0
    assert delta["xact_time"] >= 50_000  # microseconds: the transaction slept 50 ms
    assert delta["query_time"] >= 50_000
    assert all(isinstance(v, Decimal) for v in delta.values())  # numeric, as PgBouncer


def test_show_stats_averages_follow_pgbench(shared: Funnel, tmp_path: Any) -> None:
    script = tmp_path / "one.sql"
    script.write_text("SELECT 1;\n")
    bench = subprocess.Popen(
        [
            pg_tool("pgbench"),
            "-n",
            "-f",
            str(script),
            "-T",
            "3",
            "-c",
            "4",
            "-h",
            "127.0.0.1",
            "-p",
            str(shared.port),
            "-U",
            SUPERUSER,
            "postgres",
        ],
        env=pgpass_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def averages() -> dict[str, Any] | None:
            with console(shared) as conn:
                row = by(show(conn, "SHOW STATS"), "database")["postgres"]
            return row if row["avg_xact_count"] > 0 and row["avg_query_count"] > 0 else None

        row = wait_for(averages, timeout=10)
        assert row["avg_recv"] > 0 and row["avg_sent"] > 0
        assert row["avg_server_assignment_count"] > 0
        assert row["total_xact_count"] >= row["avg_xact_count"]
    finally:
        _, err = bench.communicate(timeout=30)
    assert bench.returncode == 0, err
    with console(shared) as conn:
        totals = by(show(conn, "SHOW TOTALS"), "name")
    assert totals["total_xact_count"]["value"] > 100
    assert set(totals) >= {"total_client_bytes", "total_server_bytes", "avg_xact_count"}


def test_pools_clients_holders_while_a_transaction_holds_the_only_server(shared: Funnel) -> None:
    """forced has pool_size=3 in session mode: three sessions hold every server, a fourth
    waits; SHOW POOLS, CLIENTS and HOLDERS all say so."""
    holders = [
        psycopg.connect(
            shared.dsn(dbname="forced", application_name=f"holder{i}"),
            autocommit=True,
            prepare_threshold=None,
        )
        for i in range(3)
    ]
    done = threading.Event()
    try:
        pids = [h.execute("SELECT pg_backend_pid()").fetchone()[0] for h in holders]  # type: ignore[index]
        holders[0].execute("BEGIN")
        holders[0].execute("SELECT 1")

        def late() -> None:
            with psycopg.connect(
                shared.dsn(dbname="forced", application_name="latecomer"), autocommit=True
            ) as conn:
                conn.execute("SELECT 1")
            done.set()

        thread = threading.Thread(target=late, daemon=True)
        thread.start()

        def waiting() -> dict[str, Any] | None:
            with console(shared) as conn:
                pool = by(show(conn, "SHOW POOLS"), "database")["forced"]
            return (
                pool if pool["cl_waiting"] == 1 and pool["maxwait_us"] + pool["maxwait"] else None
            )

        pool = wait_for(waiting, timeout=10)
        assert pool["sv_active"] == 3 and pool["cl_active"] == 3
        assert pool["pool_mode"] == "session" and pool["user"] == SUPERUSER
        with console(shared) as conn:
            clients = [c for c in show(conn, "SHOW CLIENTS") if c["database"] == "forced"]
            servers = [s for s in show(conn, "SHOW SERVERS") if s["database"] == "forced"]
            held = show(conn, "SHOW HOLDERS forced")
            dbs = by(show(conn, "SHOW DATABASES"), "name")
        states = sorted(c["state"] for c in clients)
        assert states == ["active", "active", "active", "waiting"]
        late_row = next(c for c in clients if c["state"] == "waiting")
        assert late_row["application_name"] == "latecomer" and late_row["link"] == ""
        assert {s["remote_pid"] for s in servers} == set(pids)
        assert {s["state"] for s in servers} == {"active"}
        assert len(held) == 3
        first = held[0]  # the longest held first
        assert [h["held"] * 1_000_000 + h["held_us"] for h in held] == sorted(
            (h["held"] * 1_000_000 + h["held_us"] for h in held), reverse=True
        )
        by_app = by(held, "application_name")
        assert by_app["holder0"]["state"] == "idle in transaction"
        assert by_app["holder0"]["xact"] * 1_000_000 + by_app["holder0"]["xact_us"] > 0
        assert by_app["holder1"]["state"] == "idle"
        assert by_app["holder0"]["remote_pid"] == pids[0]
        assert first["database"] == "forced" and first["user"] == SUPERUSER
        client_ids = {c["id"] for c in clients}
        assert {h["id"] for h in held} <= client_ids
        assert dbs["forced"]["pool_size"] == 3 and dbs["forced"]["force_user"] == SUPERUSER
        assert dbs["forced"]["current_connections"] == 3
        assert dbs["forced"]["current_client_connections"] == 4
        assert dbs["forced"]["pool_mode"] == "session"
        assert dbs["postgres"]["pool_size"] == 10 and dbs["postgres"]["pool_mode"] is None
        assert dbs["pgbouncer"]["pool_mode"] == "statement"
        assert not done.is_set()
    finally:
        holders[0].close()  # frees a server: the latecomer goes on
        assert done.wait(10)
        for h in holders[1:]:
            h.close()


def test_lists_and_users_count_what_is_open(shared: Funnel) -> None:
    conns = [shared.connect() for _ in range(3)]
    try:
        for c in conns:
            c.execute("SELECT 1")
        with console(shared) as conn:
            lists = {r["list"]: r["items"] for r in show(conn, "SHOW LISTS")}
            users = by(show(conn, "SHOW USERS"), "name")
            pools = show(conn, "SHOW POOLS")
        assert list(lists) == [
            "databases",
            "users",
            "peers",
            "pools",
            "peer_pools",
            "free_clients",
            "used_clients",
            "login_clients",
            "free_servers",
            "used_servers",
            "dns_names",
            "dns_zones",
            "dns_queries",
            "dns_pending",
        ]
        assert lists["databases"] >= 3  # postgres, forced and the admin database
        assert lists["pools"] == len(pools)
        assert lists["used_clients"] >= 4  # three clients and this console
        assert lists["used_servers"] >= 1
        pg_user = users[SUPERUSER]
        assert pg_user["current_client_connections"] >= 3
        assert pg_user["current_connections"] >= 1
        assert pg_user["max_user_connections"] == 50  # from [users]
        assert users[ADMIN_USER]["current_client_connections"] >= 1
        assert {STATS_USER, "pgbouncer"} <= set(users)
    finally:
        for c in conns:
            c.close()


def test_show_config_has_every_setting_with_its_changeable_flag(shared: Funnel) -> None:
    with console(shared) as conn:
        rows = show(conn, "SHOW CONFIG")
    assert [r["key"] for r in rows] == list(SETTINGS)
    config = by(rows, "key")
    for name, spec in SETTINGS.items():
        assert config[name]["changeable"] == ("yes" if spec.reloadable else "no"), name
        assert config[name]["default"] == spec.default_text, name
    assert config["listen_port"]["value"] == str(shared.port)
    assert config["listen_port"]["changeable"] == "no"
    assert config["default_pool_size"]["value"] == "10"
    assert config["default_pool_size"]["default"] == "20"
    assert config["stats_users"]["value"] == STATS_USER
    assert config["pool_mode"]["value"] == "transaction"
    assert config["unix_socket_mode"]["default"] == "0777"


# PgBouncer 1.25's slab caches, in the order it creates them (objects.c init_objects and
# init_caches): scripts reading SHOW MEM look rows up by these names.
PGBOUNCER_CACHES = [
    "user_cache",
    "credentials_cache",
    "db_cache",
    "peer_cache",
    "peer_pool_cache",
    "pool_cache",
    "outstanding_request_cache",
    "server_cache",
    "client_cache",
    "iobuf_cache",
    "var_list_cache",
    "server_prepared_statement_cache",
]


def test_state_mem_version_and_empty_peer_tables(shared: Funnel) -> None:
    with console(shared) as conn:
        state = {r["key"]: r["value"] for r in show(conn, "SHOW STATE")}
        rows = show(conn, "SHOW MEM")
        assert show(conn, "SHOW PEERS") == []
        assert show(conn, "SHOW PEER_POOLS") == []
        assert show(conn, "SHOW DNS_HOSTS") == [] and show(conn, "SHOW DNS_ZONES") == []
        with shared.connect() as extra:
            extra.execute("SELECT 1")
            # One query, one snapshot: the cache figures and the clients they count.
            cur = conn.execute("SHOW MEM; SHOW CLIENTS", prepare=False)
            more = {row[0]: row[2] for row in cur.fetchall()}  # name -> used
            assert cur.nextset()
            clients = len(cur.fetchall())
    assert state == {"active": "yes", "paused": "no", "suspended": "no"}
    assert [r["name"] for r in rows] == PGBOUNCER_CACHES
    mem = by(rows, "name")
    for row in rows:
        assert row["free"] == 0  # no free lists: closed connections give their memory back
        assert row["memtotal"] >= row["size"] * row["used"]
        assert (row["used"] == 0) == (row["memtotal"] == 0), row
    assert mem["client_cache"]["used"] >= 1 and mem["client_cache"]["size"] > 0  # this console
    assert more["client_cache"] == clients >= 2  # this console and `extra`: moves with load
    assert more["var_list_cache"] >= clients  # each client's tracked parameters
    assert mem["peer_pool_cache"]["used"] == mem["outstanding_request_cache"]["used"] == 0
    assert mem["credentials_cache"]["used"] >= 2  # the auth file's entries


# --- who may do what ---------------------------------------------------------------------------
def test_stats_user_may_show_but_not_control(shared: Funnel) -> None:
    with console(shared, STATS_USER, STATS_PASSWORD) as conn:
        assert show(conn, "SHOW POOLS")
        assert show(conn, "SHOW STATS")
        assert show(conn, "SHOW CONFIG")
        for command in (
            "PAUSE",
            "PAUSE postgres",
            "RESUME",
            "SUSPEND",
            "RELOAD",
            "RECONNECT",
            "DISABLE postgres",
            "ENABLE postgres",
            "KILL postgres",
            "KILL_CLIENT 1",
            "WAIT_CLOSE",
            "SHUTDOWN",
            "SET default_pool_size = 1",
        ):
            with pytest.raises(psycopg.Error) as info:
                conn.execute(command, prepare=False)
            assert info.value.sqlstate == "08P01", command
            assert info.value.diag.message_primary == "admin access needed", command
    with console(shared) as conn:
        assert show(conn, "SHOW STATE")[0]["value"] == "yes"  # nothing was paused or stopped
        config = by(show(conn, "SHOW CONFIG"), "key")
    assert config["default_pool_size"]["value"] == "10"
    with shared.connect() as conn:
        assert conn.execute("SELECT 7").fetchone() == (7,)


def test_a_normal_user_cannot_open_the_console(shared: Funnel) -> None:
    with pytest.raises(psycopg.OperationalError, match="not allowed"):
        psycopg.connect(
            shared.dsn(user=SUPERUSER, dbname="pgbouncer", password=SUPERUSER_PASSWORD)
        ).close()


def test_console_clients_show_up_in_show_clients(shared: Funnel) -> None:
    with console(shared) as first, console(shared, STATS_USER, STATS_PASSWORD) as second:
        start = time.monotonic()
        rows = [c for c in show(first, "SHOW CLIENTS") if c["database"] == "pgbouncer"]
        assert {ADMIN_USER, STATS_USER} <= {r["user"] for r in rows}
        assert time.monotonic() - start < 5
        assert show(second, "SHOW VERSION")
