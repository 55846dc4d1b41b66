"""The admin console's pure parts: statement splitting and parsing, result sets, stats math."""

from __future__ import annotations

import struct

import pytest

from pgfunnel.admin.console import (
    STATS_AVERAGES_COLUMNS,
    STATS_COLUMNS,
    STATS_TOTALS_COLUMNS,
    Statement,
    database_stats,
    parse_statement,
    result_set,
    split_statements,
    split_us,
    stat_averages,
    stat_totals,
    sum_stats,
)
from pgfunnel.pool.scheduler import Database, Pool, PoolSettings, PoolStats, User


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SHOW POOLS", ["SHOW POOLS"]),
        ("SHOW POOLS;", ["SHOW POOLS"]),
        ("  show pools ;  ; show lists;", ["show pools", "show lists"]),
        (
            "SET server_check_query = 'select 1; select 2'; SHOW CONFIG",
            [
                "SET server_check_query = 'select 1; select 2'",
                "SHOW CONFIG",
            ],
        ),
        ('PAUSE "a;b"; RESUME "a;b"', ['PAUSE "a;b"', 'RESUME "a;b"']),
        ("SET x = 'it''s; fine'", ["SET x = 'it''s; fine'"]),
        ("", []),
        (" ; ;", []),
    ],
)
def test_split_statements_respects_quotes(sql: str, expected: list[str]) -> None:
    assert split_statements(sql) == expected


@pytest.mark.parametrize(
    ("text", "verb", "arg", "value"),
    [
        ("SHOW POOLS", "SHOW", "POOLS", None),
        ("show stats_totals", "SHOW", "stats_totals", None),
        ("pause", "PAUSE", None, None),
        ("PAUSE mydb", "PAUSE", "mydb", None),
        ('PAUSE "My ""odd"" db"', "PAUSE", 'My "odd" db', None),
        ("kill_client 42", "KILL_CLIENT", "42", None),
        ("SHOW HOLDERS", "SHOW", "HOLDERS", None),
        ("SHUTDOWN wait_for_clients", "SHUTDOWN", "wait_for_clients", None),
        ("SET default_pool_size = 3", "SET", "default_pool_size", "3"),
        ("set default_pool_size=3", "SET", "default_pool_size", "3"),
        ("SET default_pool_size TO 3", "SET", "default_pool_size", "3"),
        ("SET server_check_query = 'select ''x'''", "SET", "server_check_query", "select 'x'"),
        ("SET server_check_query TO ''", "SET", "server_check_query", ""),
        ("SET query_wait_timeout = 0.5", "SET", "query_wait_timeout", "0.5"),
        ('SET "admin_users" = "a,b"', "SET", "admin_users", "a,b"),
    ],
)
def test_parse_statement(text: str, verb: str, arg: str | None, value: str | None) -> None:
    assert parse_statement(text) == Statement(text, verb, arg, value)


@pytest.mark.parametrize(
    "text",
    [
        "SHOW POOLS CLIENTS LISTS",  # two arguments at most
        "SELECT 1 + 1",
        "SET x",  # parsed as a command; the console refuses SET without a value
        "SET = 3",
        "PAUSE 'db'",  # a database name is an identifier, not a string
    ],
)
def test_parse_statement_refuses_what_pgbouncer_refuses(text: str) -> None:
    stmt = parse_statement(text)
    assert stmt.verb == "" or (stmt.verb == "SET" and stmt.value is None)


def test_show_takes_a_second_argument() -> None:
    assert parse_statement("show holders mydb") == Statement(
        "show holders mydb", "SHOW", "holders", extra="mydb"
    )


def _decode(data: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    while data:
        kind = data[:1]
        (length,) = struct.unpack("!i", data[1:5])
        out.append((kind, data[5 : 1 + length]))
        data = data[1 + length :]
    return out


def test_result_set_is_row_description_rows_and_tag() -> None:
    out = _decode(result_set((("name", 25), ("n", 23)), [["a", 1], [None, 2]]))
    assert [kind for kind, _ in out] == [b"T", b"D", b"D", b"C"]
    assert out[-1][1] == b"SHOW\0"
    # NULL is length -1 in a DataRow
    assert out[2][1] == struct.pack("!hi", 2, -1) + struct.pack("!i", 1) + b"2"


def test_split_us() -> None:
    assert split_us(0.0) == (0, 0)
    assert split_us(2.25) == (2, 250_000)
    assert split_us(-1.0) == (0, 0)


def test_stats_columns_match_pgbouncer() -> None:
    names = [n for n, _ in STATS_COLUMNS]
    assert names[:4] == [
        "database",
        "total_server_assignment_count",
        "total_xact_count",
        "total_query_count",
    ]
    assert "total_received" in names and "avg_recv" in names and "avg_sent" in names
    assert len(names) == 23
    assert [n for n, _ in STATS_TOTALS_COLUMNS][4:6] == ["bytes_received", "bytes_sent"]
    assert len(STATS_AVERAGES_COLUMNS) == len(STATS_TOTALS_COLUMNS) == 12


def test_totals_are_microseconds_and_averages_per_second() -> None:
    st = PoolStats(
        xact_count=10,
        query_count=20,
        bytes_in=1000,
        bytes_out=5000,
        xact_time=0.5,
        query_time=0.25,
        wait_time=0.1,
        wait_count=4,
        server_assignment_count=10,
    )
    assert stat_totals(st)[:8] == [10, 10, 20, 1000, 5000, 500_000, 250_000, 100_000]
    avg = stat_averages(st, 2.0)
    # 5 assignments/s, 5 xacts/s, 10 queries/s, 500 B/s in, 2500 B/s out,
    # 50 ms per xact, 12.5 ms per query, 10 ms of wait per assignment
    assert avg[:8] == [5, 5, 10, 500, 2500, 50_000, 12_500, 10_000]
    assert stat_averages(st, 0.0) == [0] * 11
    assert stat_averages(PoolStats(), 60.0) == [0] * 11


def _pool(db: Database, user: str, stats: PoolStats, period: PoolStats) -> Pool:
    pool = Pool(db, User(user), PoolSettings())
    pool.stats = stats
    pool.last_period = period
    pool.period_seconds = 60.0
    return pool


def test_database_stats_sum_the_pools_of_a_database() -> None:
    a, b = Database("b_db", None), Database("a_db", None)
    pools = [
        _pool(a, "u1", PoolStats(xact_count=3, bytes_in=10), PoolStats(xact_count=60)),
        _pool(a, "u2", PoolStats(xact_count=4, bytes_in=5), PoolStats(xact_count=120)),
        _pool(b, "u1", PoolStats(xact_count=1), PoolStats()),
    ]
    found = database_stats(pools)
    assert [d.name for d in found] == ["a_db", "b_db"]  # sorted, as PgBouncer lists them
    b_db = found[1]
    assert b_db.totals.xact_count == 7 and b_db.totals.bytes_in == 15
    assert stat_averages(b_db.period, b_db.seconds)[1] == 3  # 180 xacts over 60 s


def test_sum_stats_leaves_inputs_alone() -> None:
    one = PoolStats(query_count=1, query_time=0.5)
    total = sum_stats([one, one])
    assert total.query_count == 2 and total.query_time == 1.0
    assert one.query_count == 1
