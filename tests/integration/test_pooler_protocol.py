"""Wire protocol through pgfunnel: simple/extended, COPY, notices, cancel, parameters, modes."""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import re
import secrets
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import errors

from pgfunnel.proto import messages as m
from pgfunnel.proto.auth import ServerAuth
from pgfunnel.throwaway import SUPERUSER, SUPERUSER_PASSWORD, Cluster, pg_tool
from tests.integration.harness import Funnel, backends, own_role, pgpass_env, wait_for
from tests.switch.conftest import read_msg

TAG = secrets.token_hex(3)
ROLE, ROLE_PW = f"pgf_proto_{TAG}", "proto-pw"
TABLE = f"pgf_proto_t_{TAG}"
COPY_TABLE = f"pgf_proto_copy_{TAG}"

SOCKET_COLUMNS = [
    "type",
    "user",
    "database",
    "replication",
    "state",
    "addr",
    "port",
    "local_addr",
    "local_port",
    "connect_time",
    "request_time",
    "wait",
    "wait_us",
    "close_needed",
    "ptr",
    "link",
    "remote_pid",
    "tls",
    "application_name",
    "prepared_statements",
    "id",
]
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$")


@pytest.fixture(scope="module")
def role(pg: Cluster) -> Iterator[str]:
    """A role of our own, so pg_stat_activity counts see only this module's backends."""
    with own_role(
        pg,
        ROLE,
        ROLE_PW,
        f"CREATE TABLE {TABLE} (id int, note text); ALTER TABLE {TABLE} OWNER TO {ROLE}",
        f"DROP TABLE IF EXISTS {TABLE}, {COPY_TABLE}",
    ) as name:
        yield name


def _db(pg: Cluster, extra: str = "") -> str:
    return f"host=127.0.0.1 port={pg.port} dbname=postgres user={ROLE} password={ROLE_PW} {extra}"


@pytest.fixture(scope="module")
def f(pg: Cluster, role: str) -> Iterator[Funnel]:
    """The module's pooler: one [databases] entry per pool shape the tests need."""
    funnel = Funnel(
        pg,
        settings={"ignore_startup_parameters": "extra_float_digits", "query_wait_timeout": 30},
        databases={
            "main": _db(pg),
            "one": _db(pg, "pool_size=1"),
            "sess": _db(pg, "pool_mode=session pool_size=1"),
            "stmt": _db(pg, "pool_mode=statement"),
        },
    )
    try:
        yield funnel.start()
    finally:
        funnel.stop()
    assert backends(pg, user=ROLE, state="idle in transaction") == 0


def connect(f: Funnel, dbname: str = "main", **kwargs: Any) -> psycopg.Connection[Any]:
    kwargs.setdefault("autocommit", True)
    return psycopg.connect(f.dsn(dbname=dbname), prepare_threshold=None, **kwargs)


def local_port(conn: psycopg.Connection[Any]) -> int:
    with socket.fromfd(conn.fileno(), socket.AF_INET, socket.SOCK_STREAM) as sock:
        return int(sock.getsockname()[1])


def asyncpg_url(f: Funnel, dbname: str) -> str:
    return f.url(db=dbname)


# --- simple and extended protocol ------------------------------------------------------------
def test_simple_query_protocol_returns_rows(f: Funnel) -> None:
    with connect(f) as conn:
        # No parameters: psycopg sends a simple Query message.
        rows = conn.execute(
            "SELECT g, g::text || 'x', g % 2 = 0 FROM generate_series(1, 1000) g"
        ).fetchall()
        with psycopg.ClientCursor(conn) as cur:  # client-side binding, still simple protocol
            cur.execute("SELECT %s::int * 2, %s", (21, "it's"))
            bound = cur.fetchone()
    assert len(rows) == 1000
    assert rows[0] == (1, "1x", False) and rows[-1] == (1000, "1000x", True)
    assert bound == (42, "it's")


def test_multi_statement_simple_query(f: Funnel) -> None:
    with connect(f) as conn:
        cur = conn.execute("SELECT 1; SELECT 'two'; SELECT 3::int + 0")
        results = [cur.fetchall()]
        while cur.nextset():
            results.append(cur.fetchall())
        assert results == [[(1,)], [("two",)], [(3,)]]
        # A whole transaction in one Query message.
        conn.execute(
            f"BEGIN; INSERT INTO {TABLE} VALUES (1, 'multi'); "
            f"INSERT INTO {TABLE} VALUES (2, 'multi'); COMMIT"
        )
    with connect(f) as other:
        count = other.execute(f"SELECT count(*) FROM {TABLE} WHERE note = 'multi'").fetchone()
    assert count == (2,)


def test_extended_protocol_with_psycopg(f: Funnel) -> None:
    with connect(f) as conn:
        row = conn.execute(
            "SELECT %s::int + %s, %s || 'x', %s::text IS NULL, %s::numeric * 2",
            (40, 2, "abc", None, decimal.Decimal("1.25")),
        ).fetchone()
        assert row == (42, "abcx", True, decimal.Decimal("2.50"))
        # executemany pipelines Parse/Bind/Execute with a single Sync at the end.
        with conn.transaction():
            conn.cursor().executemany(
                f"INSERT INTO {TABLE} VALUES (%s, %s)", [(i, "many") for i in range(500)]
            )
        with conn.pipeline():
            c1 = conn.execute("SELECT count(*) FROM " + TABLE + " WHERE note = %s", ("many",))
            c2 = conn.execute("SELECT %s::text", ("piped",))
        assert c1.fetchone() == (500,)
        assert c2.fetchone() == ("piped",)


async def test_extended_protocol_with_asyncpg_parameter_types(f: Funnel) -> None:
    conn = await asyncpg.connect(asyncpg_url(f, "main"), statement_cache_size=0)
    try:
        when = dt.datetime(2024, 4, 19, 14, 21, 6, 654000, tzinfo=dt.UTC)
        ident = uuid.uuid4()
        values = (
            7,
            "héllo",
            True,
            2.5,
            decimal.Decimal("12345.678"),
            dt.date(2024, 2, 29),
            when,
            b"\x00\x01\xff",
            ident,
            [1, 2, 3],
            None,
        )
        row = await conn.fetchrow(
            "SELECT $1::int, $2::text, $3::bool, $4::float8, $5::numeric, $6::date,"
            " $7::timestamptz, $8::bytea, $9::uuid, $10::int[], $11::text",
            *values,
        )
        assert tuple(row) == values
        async with conn.transaction():
            await conn.executemany(
                f"INSERT INTO {TABLE} VALUES ($1, $2)", [(i, "asyncpg") for i in range(100)]
            )
            total = await conn.fetchval(f"SELECT sum(id) FROM {TABLE} WHERE note = $1", "asyncpg")
        assert total == sum(range(100))
    finally:
        await conn.close()


# --- COPY, notices, errors -------------------------------------------------------------------
def test_copy_in_and_out_100k_rows(f: Funnel, pg: Cluster) -> None:
    lines = [f"{i}\t{hashlib.md5(str(i).encode()).hexdigest()}\n" for i in range(100_000)]
    sent = "".join(lines).encode()
    with connect(f) as conn:
        conn.execute(f"CREATE TABLE {COPY_TABLE} (id int, payload text)")
        cur = conn.cursor()
        with cur.copy(f"COPY {COPY_TABLE} (id, payload) FROM STDIN") as copy:
            for start in range(0, len(sent), 1 << 20):
                copy.write(sent[start : start + (1 << 20)])
        received = hashlib.sha256()
        with cur.copy(f"COPY (SELECT id, payload FROM {COPY_TABLE} ORDER BY id) TO STDOUT") as copy:
            for chunk in copy:
                received.update(chunk)
    assert received.hexdigest() == hashlib.sha256(sent).hexdigest()
    # And the server holds exactly what was sent.
    server_sum = pg.psql(
        f"SELECT count(*) || ',' || sum(id) || ',' || md5(string_agg(payload, '' ORDER BY id))"
        f" FROM {COPY_TABLE}"
    )
    expected_md5 = hashlib.md5("".join(line.split("\t")[1][:-1] for line in lines).encode())
    assert server_sum == f"100000,{sum(range(100_000))},{expected_md5.hexdigest()}"


def test_notice_reaches_the_client(f: Funnel) -> None:
    notices: list[tuple[str | None, str | None]] = []
    with connect(f) as conn:
        conn.add_notice_handler(
            lambda d: notices.append((d.severity_nonlocalized, d.message_primary))
        )
        conn.execute("DO $$BEGIN RAISE NOTICE 'hello from %', 'pgfunnel'; END$$")
        with conn.transaction():
            conn.execute("DO $$BEGIN RAISE WARNING 'careful'; END$$")
    assert notices == [("NOTICE", "hello from pgfunnel"), ("WARNING", "careful")]


def test_error_in_transaction_then_rollback_and_the_client_goes_on(f: Funnel, pg: Cluster) -> None:
    with connect(f, autocommit=False) as conn:
        conn.execute(f"INSERT INTO {TABLE} VALUES (-100, 'rolled back')")
        with pytest.raises(errors.DivisionByZero) as info:
            conn.execute("SELECT 1 / 0")
        assert info.value.sqlstate == "22012"
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        conn.execute(f"INSERT INTO {TABLE} VALUES (-101, 'committed')")
        conn.commit()
        with pytest.raises(errors.SyntaxError):
            conn.execute("SELEC 1")
        conn.rollback()
        notes = conn.execute(
            f"SELECT note FROM {TABLE} WHERE id IN (-100, -101) ORDER BY id"
        ).fetchall()
        conn.commit()
    assert notes == [("committed",)]
    wait_for(lambda: backends(pg, user=ROLE, state="idle in transaction (aborted)") == 0, 10)


def _sleepers(pg: Cluster) -> int:
    return int(
        pg.psql(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
            f"AND usename = '{ROLE}' AND query = 'SELECT pg_sleep(30)'"
        )
    )


def test_cancel_from_another_thread(f: Funnel, pg: Cluster) -> None:
    with connect(f) as conn:
        failure: list[BaseException] = []

        def cancel_when_running() -> None:
            try:
                wait_for(lambda: _sleepers(pg) == 1, timeout=20)
                conn.cancel()
            except BaseException as exc:  # reported by the main thread
                failure.append(exc)

        thread = threading.Thread(target=cancel_when_running)
        thread.start()
        try:
            with pytest.raises(errors.QueryCanceled) as info:
                conn.execute("SELECT pg_sleep(30)")
        finally:
            thread.join()
        assert not failure, failure
        assert info.value.sqlstate == "57014"
        assert info.value.diag.message_primary == "canceling statement due to user request"
        assert conn.execute("SELECT 'still usable'").fetchone() == ("still usable",)
    assert _sleepers(pg) == 0


def _read_msg(sock: socket.socket) -> tuple[str, bytes]:
    kind, payload = read_msg(sock)
    return kind.decode(), payload


def _raw_login(f: Funnel) -> tuple[socket.socket, int, int]:
    """A client that logs in byte by byte and keeps its BackendKeyData (pid, key), which no
    driver shows."""
    sock = socket.create_connection(("127.0.0.1", f.port), timeout=30)
    sock.sendall(m.startup_message({"user": SUPERUSER, "database": "main"}))
    auth = ServerAuth(SUPERUSER, SUPERUSER_PASSWORD)
    keys = None
    while True:
        kind, payload = _read_msg(sock)
        assert kind != "E", m.parse_error_fields(payload).message
        if kind == "R":
            reply = auth.respond(m.read_i32(payload), payload[4:])
            if reply:
                sock.sendall(reply)
        elif kind == "K":
            keys = (m.read_i32(payload), m.read_i32(payload, 4))
        elif kind == "Z":
            assert keys is not None
            return sock, *keys


def _send_cancel(f: Funnel, pid: int, key: int) -> None:
    """A CancelRequest, and the wait until the pooler has dealt with it (it closes the socket)."""
    with socket.create_connection(("127.0.0.1", f.port), timeout=30) as sock:
        sock.sendall(m.cancel_request(pid, key))
        assert sock.recv(1) == b""


def _ptr_of(f: Funnel, port: int) -> int:
    """SHOW CLIENTS' ptr of the client on local port `port`: the switch's id for it."""
    [row] = [r for r in f.admin("SHOW CLIENTS") if r["port"] == port]
    return int(row["ptr"], 16)


def test_a_cancel_key_names_its_own_client_and_no_other_after_it_left(
    f: Funnel, pg: Cluster
) -> None:
    """The key is the connection's id under the pooler's secret permutation: it cancels that
    client's query, and once that client has gone it cancels nothing, not even the query of the
    client that took its place (its slot) in the switch."""
    sock, pid, key = _raw_login(f)
    with sock:
        gone_ptr = _ptr_of(f, sock.getsockname()[1])
        sock.sendall(m.query("SELECT pg_sleep(30)"))
        wait_for(lambda: _sleepers(pg) == 1, timeout=20)
        _send_cancel(f, pid, key)
        kind, payload = _read_msg(sock)
        if kind == "T":  # the row description goes before the query's end
            kind, payload = _read_msg(sock)
        assert kind == "E"
        error = m.parse_error_fields(payload)
        assert (error.sqlstate, error.message) == (
            "57014",
            "canceling statement due to user request",
        )
        assert _read_msg(sock)[0] == "Z"
        sock.sendall(m.terminate())
    wait_for(lambda: all(r["ptr"] != f"{gone_ptr:#x}" for r in f.admin("SHOW CLIENTS")))
    # Open clients until one lands in the slot the gone one had (the switch hands slots out
    # round robin, so within a turn of its table); the others go.
    heir: psycopg.Connection[Any] | None = None
    others: list[psycopg.Connection[Any]] = []
    try:
        for _ in range(64):
            batch = [connect(f) for _ in range(16)]
            ports = {local_port(c): c for c in batch}
            for row in f.admin("SHOW CLIENTS"):
                if (
                    row["port"] in ports
                    and int(row["ptr"], 16) & 0xFFFFFFFF == gone_ptr & 0xFFFFFFFF
                ):
                    heir = ports[row["port"]]
            others += [c for c in batch if c is not heir]
            if heir is not None:
                break
        assert heir is not None, "no client took the gone one's slot"
        assert _ptr_of(f, local_port(heir)) != gone_ptr  # another generation: another id
        for c in others:
            c.close()

        def sleeping() -> int:
            return int(
                pg.psql(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                    f"AND usename = '{ROLE}' AND query LIKE 'SELECT pg_sleep(2), %'"
                )
            )

        failure: list[BaseException] = []

        def stale_cancels() -> None:
            try:
                wait_for(lambda: sleeping() == 1, timeout=20)
                for _ in range(3):
                    _send_cancel(f, pid, key)
            except BaseException as exc:  # reported by the main thread
                failure.append(exc)

        thread = threading.Thread(target=stale_cancels)
        thread.start()
        try:
            slept = heir.execute("SELECT pg_sleep(2), 'slept'").fetchone()
        finally:
            thread.join()
        assert not failure, failure
        assert slept is not None and slept[1] == "slept"
    finally:
        for c in [*others, *([heir] if heir is not None else [])]:
            c.close()


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_cancel_of_a_query_waiting_in_the_queue(f: Funnel, pg: Cluster, protocol: str) -> None:
    """Ctrl-C on a query queued behind a held pool: the query is dropped (it never runs), the
    client gets 57014 at once and stays connected and usable."""
    marker = -1000 - secrets.randbelow(1000)
    with connect(f, "one") as holder, connect(f, "one") as queued:  # pool_size=1
        holder.execute("BEGIN")  # holds the only server until COMMIT
        holder.execute("SELECT 1")
        failure: list[BaseException] = []

        def cancel_when_queued() -> None:
            try:
                wait_for(lambda: f.pool("one", ROLE)["cl_waiting"] == 1, timeout=20)
                queued.cancel()
            except BaseException as exc:  # reported by the main thread
                failure.append(exc)

        thread = threading.Thread(target=cancel_when_queued)
        thread.start()
        try:
            with pytest.raises(errors.QueryCanceled) as info:
                if protocol == "simple":
                    queued.execute(f"INSERT INTO {TABLE} VALUES ({marker}, 'canceled')")
                else:
                    queued.execute(f"INSERT INTO {TABLE} VALUES (%s, 'canceled')", (marker,))
        finally:
            thread.join()
        assert not failure, failure
        assert info.value.sqlstate == "57014"
        assert info.value.diag.message_primary == "canceling statement due to user request"
        assert queued.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert f.pool("one", ROLE)["cl_waiting"] == 0  # it left the queue
        holder.execute("COMMIT")
        assert queued.execute("SELECT 'still usable'").fetchone() == ("still usable",)
        assert queued.execute(
            f"SELECT count(*) FROM {TABLE} WHERE id = %s", (marker,)
        ).fetchone() == (0,)


# --- parameters that follow a client from server to server -----------------------------------
async def test_startup_parameters_follow_each_client_on_a_shared_backend(f: Funnel) -> None:
    url = asyncpg_url(f, "one")  # pool_size=1: both clients take turns on one backend
    a = await asyncpg.connect(
        url,
        statement_cache_size=0,
        server_settings={"TimeZone": "America/New_York", "application_name": "client-a"},
    )
    b = await asyncpg.connect(
        url,
        statement_cache_size=0,
        server_settings={"TimeZone": "Asia/Tokyo", "application_name": "client-b"},
    )
    sql = (
        "SELECT current_setting('TimeZone'), current_setting('application_name'), pg_backend_pid()"
    )
    try:
        pids = set()
        for _ in range(3):
            for conn, tz, app in (
                (a, "America/New_York", "client-a"),
                (b, "Asia/Tokyo", "client-b"),
            ):
                async with conn.transaction():
                    row = await conn.fetchrow(sql)
                    assert await conn.fetchval("SHOW TimeZone") == tz
                assert (row[0], row[1]) == (tz, app)
                pids.add(row[2])
        assert len(pids) == 1
        # A SET outside a transaction sticks to the client, not to the backend.
        await a.execute("SET TimeZone = 'Europe/Berlin'")
        async with b.transaction():
            assert await b.fetchval("SHOW TimeZone") == "Asia/Tokyo"
        for _ in range(2):
            async with a.transaction():
                assert await a.fetchval("SHOW TimeZone") == "Europe/Berlin"
            assert await b.fetchval("SHOW TimeZone") == "Asia/Tokyo"
    finally:
        await a.close()
        await b.close()


async def test_a_failed_parameter_set_leaves_the_backend_tracked_as_it_really_is(
    f: Funnel,
) -> None:
    # The SETs for a client's parameters go as one query: one bad value and none applies. The
    # next client with one of the good values must still get it set.
    url = asyncpg_url(f, "one")  # pool_size=1: both clients on one backend
    bad = await asyncpg.connect(
        url,
        statement_cache_size=0,
        server_settings={"DateStyle": "SQL, DMY", "TimeZone": "Mars/Olympus_Mons"},
    )
    try:
        assert await bad.fetchval("SELECT current_setting('DateStyle')") == "ISO, MDY"
    finally:
        await bad.close()
    good = await asyncpg.connect(
        url, statement_cache_size=0, server_settings={"DateStyle": "SQL, DMY"}
    )
    try:
        assert await good.fetchval("SELECT current_setting('DateStyle')") == "SQL, DMY"
    finally:
        await good.close()
    assert "could not apply the client's parameters" in f.log()


def test_session_mode_keeps_the_session_and_resets_it_for_the_next_client(f: Funnel) -> None:
    with connect(f, "sess") as first:
        pid = first.execute("SELECT pg_backend_pid()").fetchone()
        first.execute("CREATE TEMP TABLE sess_tmp (x int)")
        first.execute("SET work_mem = '7MB'")
        for i in range(3):
            with first.transaction():
                first.execute("INSERT INTO sess_tmp VALUES (%s)", (i,))
        assert first.execute("SELECT count(*) FROM sess_tmp").fetchone() == (3,)
        assert first.execute("SHOW work_mem").fetchone() == ("7MB",)
    with connect(f, "sess") as second:  # pool_size=1: the same backend, after DISCARD ALL
        assert second.execute("SELECT pg_backend_pid()").fetchone() == pid
        assert second.execute("SELECT to_regclass('pg_temp.sess_tmp')").fetchone() == (None,)
        assert second.execute("SHOW work_mem").fetchone() == ("4MB",)


def test_statement_mode_refuses_transactions(f: Funnel, pg: Cluster) -> None:
    with connect(f, "stmt") as conn:
        assert [conn.execute("SELECT %s::int", (i,)).fetchone() for i in range(5)] == [
            (i,) for i in range(5)
        ]
        # A transaction that opens and closes within one Query message is one statement.
        conn.execute("BEGIN; SELECT 1; COMMIT")
        assert conn.execute("SELECT 'ok'").fetchone() == ("ok",)
    with connect(f, "stmt", autocommit=False) as conn:
        port = local_port(conn)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")  # psycopg sends BEGIN first
    line = f"127.0.0.1:{port} closing because: Long transactions not allowed"
    wait_for(lambda: line in f.log(), 10)
    wait_for(lambda: backends(pg, user=ROLE, state="idle in transaction") == 0, 10)


def test_statement_mode_answers_begin_with_the_reason(f: Funnel) -> None:
    with (
        connect(f, "stmt") as conn,
        pytest.raises(psycopg.OperationalError, match="Long transactions not allowed"),
    ):
        conn.execute("BEGIN")


@pytest.mark.parametrize(
    ("dbname", "mode", "extra"),
    [
        pytest.param("stmt", "extended", [], id="statement-mode-extended"),
        pytest.param("main", "simple", ["-C"], id="reconnect-per-transaction"),
    ],
)
def test_pgbench_custom_script(
    f: Funnel, tmp_path: Path, dbname: str, mode: str, extra: list[str]
) -> None:
    script = tmp_path / "script.sql"
    script.write_text("\\set x random(1, 1000)\nSELECT :x AS x, now();\n")
    out = subprocess.run(
        [
            pg_tool("pgbench"),
            "-n",
            "-c",
            "10",
            "-j",
            "2",
            "-t",
            "20",
            "-M",
            mode,
            *extra,
            "-f",
            str(script),
            "-h",
            "127.0.0.1",
            "-p",
            str(f.port),
            "-U",
            "postgres",
            dbname,
        ],
        env=pgpass_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "number of transactions actually processed: 200/200" in out.stdout
    assert "number of failed transactions: 0 (0.000%)" in out.stdout


# --- listeners and startup packets -----------------------------------------------------------
def test_unix_socket_listener(f: Funnel) -> None:
    dsn = f"host={f.dir} port={f.port} user=postgres password=postgres dbname=main"
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
        assert conn.execute("SELECT 'via unix socket'").fetchone() == ("via unix socket",)
        assert conn.info.host == str(f.dir)
        clients = f.admin("SHOW CLIENTS")
    assert any(c["addr"] == "unix" and c["database"] == "main" for c in clients)


async def test_ignored_startup_parameter_is_accepted_and_unknown_one_refused(f: Funnel) -> None:
    url = asyncpg_url(f, "main")
    conn = await asyncpg.connect(
        url, statement_cache_size=0, server_settings={"extra_float_digits": "3"}
    )
    try:
        assert await conn.fetchval("SELECT 6 * 7") == 42
    finally:
        await conn.close()
    with pytest.raises(asyncpg.ProtocolViolationError) as info:
        await asyncpg.connect(
            url, statement_cache_size=0, server_settings={"pgf_no_such_param": "x"}
        )
    assert info.value.sqlstate == "08P01"
    assert info.value.message == "unsupported startup parameter: pgf_no_such_param"


def test_ssl_request_is_answered_no(f: Funnel) -> None:
    with psycopg.connect(f.dsn(dbname="main", sslmode="prefer"), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert not conn.pgconn.ssl_in_use
    with pytest.raises(psycopg.OperationalError, match="server does not support SSL"):
        psycopg.connect(f.dsn(dbname="main", sslmode="require"))


# --- application_name_add_host and SHOW CLIENTS / SERVERS ------------------------------------
@pytest.fixture(scope="module")
def add_host(pg: Cluster, role: str) -> Iterator[Funnel]:
    funnel = Funnel(pg, settings={"application_name_add_host": 1}, databases={"main": _db(pg)})
    try:
        yield funnel.start()
    finally:
        funnel.stop()


def test_application_name_add_host_reaches_the_server(add_host: Funnel, pg: Cluster) -> None:
    with connect(add_host, application_name="myapp") as conn:
        port = local_port(conn)
        expected = f"myapp - 127.0.0.1:{port}"
        assert conn.execute("SELECT current_setting('application_name')").fetchone() == (expected,)
        with conn.transaction():
            pid = conn.execute("SELECT pg_backend_pid()").fetchone()
            assert pid is not None
            seen = pg.psql(f"SELECT application_name FROM pg_stat_activity WHERE pid = {pid[0]}")
        assert seen == expected


def test_application_name_add_host_shows_in_show_clients(add_host: Funnel) -> None:
    with connect(add_host, application_name="myapp") as conn:
        port = local_port(conn)
        rows = [c for c in add_host.admin("SHOW CLIENTS") if c["port"] == port]
    assert [r["application_name"] for r in rows] == [f"myapp - 127.0.0.1:{port}"]


def test_application_name_add_host_names_clients_without_one(add_host: Funnel) -> None:
    with connect(add_host) as conn:
        port = local_port(conn)
        name = conn.execute("SELECT current_setting('application_name')").fetchone()
    assert name == (f"app - 127.0.0.1:{port}",)


def test_show_clients_and_servers_have_pgbouncer_columns_and_live_values(
    f: Funnel, pg: Cluster
) -> None:
    with connect(f, application_name="show-me") as conn:
        port = local_port(conn)
        with conn.transaction():
            pid = conn.execute("SELECT pg_backend_pid()").fetchone()
            assert pid is not None
            clients = f.admin("SHOW CLIENTS")
            servers = f.admin("SHOW SERVERS")
        # PgBouncer's columns, then pgfunnel's own on how the client authenticated.
        assert list(clients[0]) == [*SOCKET_COLUMNS, "auth_method", "hba_line", "carries"]
        assert list(servers[0]) == SOCKET_COLUMNS
        [client] = [c for c in clients if c["port"] == port]
        assert client["type"] == "C"
        assert (client["user"], client["database"]) == ("postgres", "main")
        assert client["state"] == "active"
        assert (client["addr"], client["local_addr"], client["local_port"]) == (
            "127.0.0.1",
            "127.0.0.1",
            f.port,
        )
        assert client["application_name"] == "show-me"
        assert TIMESTAMP.match(client["connect_time"]) and TIMESTAMP.match(client["request_time"])
        [server] = [s for s in servers if s["ptr"] == client["link"]]
        assert server["type"] == "S"
        assert server["remote_pid"] == pid[0]
        assert server["link"] == client["ptr"]
        assert (server["user"], server["database"], server["state"]) == (ROLE, "main", "active")
        assert (server["addr"], server["port"]) == ("127.0.0.1", pg.port)
        assert server["replication"] == client["replication"] == "none"
        # Between transactions the client holds no server and the server sits idle.
        after_clients = f.admin("SHOW CLIENTS")
        after_servers = f.admin("SHOW SERVERS")
        [client] = [c for c in after_clients if c["port"] == port]
        [server] = [s for s in after_servers if s["remote_pid"] == pid[0]]
        assert (client["state"], client["link"]) == ("idle", "")
        assert (server["state"], server["link"]) == ("idle", "")
