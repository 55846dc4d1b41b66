"""Misbehaving clients and broken configuration: pgfunnel cleans up, reports, and keeps serving."""

from __future__ import annotations

import asyncio
import secrets
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from pgfunnel.proto import messages as m
from pgfunnel.throwaway import Cluster, pg_tool
from tests.integration.harness import Funnel, backends, own_role, pgpass_env, wait_for
from tests.integration.rawproto import (
    error_fields,
    raw_login,
    read_message,
    read_until_closed,
    run_raw,
)

TAG = secrets.token_hex(3)
ROLE, ROLE_PW = f"pgf_fail_{TAG}", "fail-pw"
TABLE = f"pgf_fail_t_{TAG}"
GHOST_DB = f"pgf_ghost_{TAG}"
MAX_PACKET = 4096


@pytest.fixture(scope="module")
def role(pg: Cluster) -> Iterator[str]:
    """A role of our own, so pg_stat_activity counts see only this module's backends."""
    with own_role(
        pg,
        ROLE,
        ROLE_PW,
        f"CREATE TABLE {TABLE} (marker text); ALTER TABLE {TABLE} OWNER TO {ROLE}",
        f"DROP TABLE IF EXISTS {TABLE}",
    ) as name:
        yield name


@pytest.fixture(scope="module")
def f(pg: Cluster, role: str) -> Iterator[Funnel]:
    """auth_type=trust so raw sockets can log in; one [databases] entry per failure scenario."""
    own = f"host=127.0.0.1 port={pg.port} dbname=postgres user={ROLE} password={ROLE_PW}"
    funnel = Funnel(
        pg,
        settings={
            "auth_type": "trust",
            "max_packet_size": MAX_PACKET,
            "server_login_retry": 30,
            "query_wait_timeout": 60,
        },
        databases={
            "main": own,
            "one": f"{own} pool_size=1",
            "ghost": f"host=127.0.0.1 port={pg.port} dbname={GHOST_DB}",
            "badpw": f"host=127.0.0.1 port={pg.port} dbname=postgres user={ROLE} password=wrong",
        },
    )
    try:
        yield funnel.start()
    finally:
        funnel.stop()
    assert backends(pg, user=ROLE, state="idle in transaction") == 0


def connect(f: Funnel, dbname: str = "main", **kwargs: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(
        f.dsn(dbname=dbname, password=None), autocommit=True, prepare_threshold=None, **kwargs
    )


def backend_pid(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def cut_socket(conn: psycopg.Connection[Any]) -> None:
    """Drop the client's TCP connection under libpq: no Terminate message reaches the pooler."""
    with socket.fromfd(conn.fileno(), socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.shutdown(socket.SHUT_RDWR)
    conn.close()


def committed(pg: Cluster, marker: str) -> int:
    return int(pg.psql(f"SELECT count(*) FROM {TABLE} WHERE marker = '{marker}'"))


def login_error(port: int, database: str, user: str = "postgres") -> Any:
    """Log in with asyncpg (which reports SQLSTATEs of login failures); return the error."""

    async def attempt() -> Any:
        try:
            conn = await asyncpg.connect(
                host="127.0.0.1",
                port=port,
                user=user,
                database=database,
                statement_cache_size=0,
                timeout=20,  # a hang shows up as TimeoutError, not as a login error
            )
        except asyncpg.PostgresError as exc:
            return exc
        await conn.close()
        raise AssertionError(f"login to {database!r} unexpectedly succeeded")

    return asyncio.run(attempt())


# --- clients that vanish ---------------------------------------------------------------------
def _vanish_with_psycopg(f: Funnel, marker: str) -> int:
    conn = connect(f, "one")
    conn.execute("BEGIN")
    pid = backend_pid(conn)
    conn.execute(f"INSERT INTO {TABLE} VALUES (%s)", (marker,))
    cut_socket(conn)
    return pid


def _vanish_with_psql(f: Funnel, marker: str, pg: Cluster) -> int:
    proc = subprocess.Popen(
        [
            pg_tool("psql"),
            "-X",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            str(f.port),
            "-U",
            "postgres",
            "one",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=pgpass_env(),
        text=True,
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write(f"BEGIN;\nINSERT INTO {TABLE} VALUES ('{marker}');\n")
        proc.stdin.flush()
        wait_for(lambda: backends(pg, user=ROLE, state="idle in transaction") == 1, 20)
        pid = int(
            pg.psql(
                f"SELECT pid FROM pg_stat_activity WHERE usename = '{ROLE}' "
                "AND state = 'idle in transaction'"
            )
        )
    finally:
        proc.kill()
        proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()
    return pid


@pytest.mark.parametrize("how", ["psycopg-socket-cut", "psql-killed"])
def test_client_vanishing_mid_transaction_is_rolled_back_and_backend_reused(
    f: Funnel, pg: Cluster, how: str
) -> None:
    marker = f"vanished-{how}-{secrets.token_hex(2)}"
    if how == "psql-killed":
        pid = _vanish_with_psql(f, marker, pg)
    else:
        pid = _vanish_with_psycopg(f, marker)
    wait_for(lambda: backends(pg, user=ROLE, state="idle in transaction") == 0, 15)
    assert committed(pg, marker) == 0
    with connect(f, "one") as conn:  # pool_size=1: the same backend, cleaned
        assert backend_pid(conn) == pid
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute(
            f"SELECT count(*) FROM {TABLE} WHERE marker = %s", (marker,)
        ).fetchone() == (0,)


def _running(pg: Cluster, pid: int) -> bool:
    return (
        pg.psql(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND state = 'active'")
        == "1"
    )


def test_client_vanishing_with_a_query_in_flight_does_not_hand_that_backend_on(
    f: Funnel, pg: Cluster
) -> None:
    conn = connect(f, "one")
    pid = backend_pid(conn)
    try:
        conn.pgconn.send_query(b"SELECT pg_sleep(30)")  # sent; the answer is never read
        wait_for(lambda: _running(pg, pid), 15)
        cut_socket(conn)
        with connect(f, "one") as other:  # pool_size=1: only a new backend can serve this
            assert backend_pid(other) != pid
            assert other.execute("SELECT 'fresh backend'").fetchone() == ("fresh backend",)
        wait_for(lambda: "closing because: client disconnected with query in progress" in f.log())
    finally:
        conn.close()
        pg.psql(f"SELECT pg_terminate_backend({pid})")


def test_each_server_close_is_logged_once(f: Funnel, pg: Cluster) -> None:
    conn = connect(f, "main")
    pid = backend_pid(conn)
    [server] = [s for s in f.admin("SHOW SERVERS") if s["remote_pid"] == pid]
    prefix = f"S-{server['ptr']}: "
    try:
        conn.pgconn.send_query(b"SELECT pg_sleep(30)")
        wait_for(lambda: _running(pg, pid), 15)
        cut_socket(conn)
        wait_for(lambda: _close_lines(f, prefix) >= 1, 15)
        f.admin("SHOW VERSION")  # a full login later: the pooler has handled the close by now
    finally:
        conn.close()
        pg.psql(f"SELECT pg_terminate_backend({pid})")
    assert _close_lines(f, prefix) == 1, [line for line in f.log().splitlines() if prefix in line]


def _close_lines(f: Funnel, prefix: str) -> int:
    return sum(prefix in line and "closing because" in line for line in f.log().splitlines())


@pytest.mark.parametrize("in_transaction", [False, True], ids=["outside", "inside-transaction"])
def test_client_vanishing_mid_message_leaves_nothing_behind(
    f: Funnel, pg: Cluster, in_transaction: bool
) -> None:
    marker = f"half-{secrets.token_hex(3)}"
    with raw_login(f.port, "one") as sock:  # pool_size=1: the next client needs that slot
        if in_transaction:
            assert run_raw(sock, "BEGIN")[-1] == (b"Z", b"T")
            assert run_raw(sock, f"INSERT INTO {TABLE} VALUES ('{marker}-whole')")[-1] == (
                b"Z",
                b"T",
            )
        half = m.query(f"INSERT INTO {TABLE} VALUES ('{marker}-half')")
        sock.sendall(half[: len(half) // 2])
        # A transaction pool holds a Query of up to 8 KiB until it is whole (it looks at it):
        # the half reaches no server. (tests/switch/test_switch_sockets.py covers the half of a
        # longer one, forwarded as it comes, and its server closed.)
        wait_for(lambda: f.pool("one", ROLE)["cl_active"] == 1)
    # Another client on the same single slot gets right answers (a raw socket, whose timeout
    # turns a hang behind a stuck server into a failure).
    with raw_login(f.port, "one") as other:
        messages = run_raw(other, "SELECT 'whole answer'")
    assert [k for k, _ in messages] == [b"T", b"D", b"C", b"Z"], messages
    assert messages[1][1] == struct.pack("!hi", 1, 12) + b"whole answer"
    assert messages[-1] == (b"Z", b"I")
    assert committed(pg, f"{marker}-half") == committed(pg, f"{marker}-whole") == 0
    assert backends(pg, user=ROLE, state="idle in transaction") == 0
    pool = f.pool("one", ROLE)
    assert pool["sv_tested"] == 0 and pool["sv_active"] == 0 and pool["cl_waiting"] == 0
    assert pool["sv_idle"] == 1  # the slot came back: one clean server, ready for the next


def test_a_large_result_read_slowly_leaves_its_server_usable_by_the_next_client(f: Funnel) -> None:
    # Each round ends with the server released in the chunk that filled the slow client's
    # socket (reading paused there); pool_size=1 makes every next client use that server.
    # Several rounds because where the last chunk falls depends on the kernel's buffers.
    rows, width = 4000, 1000
    for round_ in range(4):
        with raw_login(f.port, "one") as slow:
            slow.sendall(m.query(f"SELECT repeat('x', {width}) FROM generate_series(1, {rows})"))
            time.sleep(0.3)  # let the pooler's buffer for this client fill up first
            data_rows = 0
            status = b""
            while (msg := read_message(slow)) is not None:
                if msg[0] == b"D":
                    data_rows += 1
                    if data_rows % 200 == 0:
                        time.sleep(0.005)  # keep reading slowly: pause/resume many times
                elif msg[0] == b"Z":
                    status = msg[1]
                    break
            assert (data_rows, status) == (rows, b"I")
            with raw_login(f.port, "one") as nxt:
                messages = run_raw(nxt, f"SELECT 'round {round_}'")
            assert [p for k, p in messages if k == b"D"] == [
                struct.pack("!hi", 1, len(f"round {round_}")) + f"round {round_}".encode()
            ]
            assert run_raw(slow, "SELECT 1")[-1] == (b"Z", b"I")


# --- limits and malformed input --------------------------------------------------------------
def test_max_client_conn_refuses_the_sixth_client_but_not_the_admin(
    funnel: Callable[..., Funnel],
) -> None:
    f = funnel(settings={"max_client_conn": 5})
    conns = [f.connect() for _ in range(5)]
    try:
        with pytest.raises(
            psycopg.OperationalError, match=r"no more connections allowed \(max_client_conn\)"
        ):
            f.connect()
        err = login_error(f.port, "postgres")
        assert err.sqlstate == "08P01"
        assert err.message == "no more connections allowed (max_client_conn)"
        clients = f.admin("SHOW CLIENTS")
        assert sum(c["user"] == "postgres" for c in clients) == 5
        assert all(c.execute("SELECT 1").fetchone() == (1,) for c in conns)
    finally:
        for conn in conns:
            conn.close()

    def a_client_fits_again() -> bool:
        try:
            with f.connect() as conn:
                return conn.execute("SELECT 1").fetchone() == (1,)
        except psycopg.OperationalError:
            return False

    wait_for(a_client_fits_again, 15)


@pytest.mark.parametrize(
    ("packet", "text"),
    [
        pytest.param(b"Q" + struct.pack("!i", -1), "bad packet header", id="negative-length"),
        pytest.param(
            b"Q" + struct.pack("!i", 100_000) + b"SELECT ",
            f"oversized packet: 100000 bytes (max_packet_size={MAX_PACKET})",
            id="over-max_packet_size",
        ),
    ],
)
def test_malformed_packet_ends_only_that_client(f: Funnel, packet: bytes, text: str) -> None:
    with connect(f) as bystander:
        with raw_login(f.port, "main") as sock:
            sock.sendall(packet)
            messages = read_until_closed(sock)
        errors = [error_fields(p) for kind, p in messages if kind == b"E"]
        assert len(errors) == 1, messages
        assert errors[0]["S"] == "FATAL"
        assert errors[0]["C"] == "08P01"
        assert text in errors[0]["M"]
        assert bystander.execute("SELECT 'unaffected'").fetchone() == ("unaffected",)


def _writing_to_client(pg: Cluster) -> bool:
    return (
        pg.psql(
            f"SELECT count(*) FROM pg_stat_activity WHERE usename = '{ROLE}' AND state = 'active' "
            "AND wait_event = 'ClientWrite' AND query LIKE 'SELECT repeat(%'"
        )
        == "1"
    )


async def test_a_client_that_stops_reading_stalls_nobody_else(f: Funnel, pg: Cluster) -> None:
    slow = raw_login(f.port, "main")
    try:
        query = b"SELECT repeat('x', 1000) FROM generate_series(1, 200000)\0"
        slow.sendall(b"Q" + struct.pack("!i", len(query) + 4) + query)
        # Back-pressure reaches the server: its backend waits to write, the pooler buffers little.
        await asyncio.to_thread(wait_for, lambda: _writing_to_client(pg), 30)

        async def worker(i: int) -> int:
            conn = await asyncpg.connect(
                host="127.0.0.1",
                port=f.port,
                user="postgres",
                database="main",
                statement_cache_size=0,
            )
            try:
                total = 0
                for n in range(50):
                    async with conn.transaction():
                        total += await conn.fetchval("SELECT $1::int", n)
                return total
            finally:
                await conn.close()

        results = await asyncio.wait_for(asyncio.gather(*(worker(i) for i in range(20))), 120)
        assert results == [sum(range(50))] * 20
        assert await asyncio.to_thread(_writing_to_client, pg)  # still stuck, still alone
    finally:
        slow.close()
    wait_for(lambda: not _writing_to_client(pg), 15)


# --- broken configuration --------------------------------------------------------------------
def test_unknown_database(f: Funnel) -> None:
    err = login_error(f.port, "pgf_not_configured")
    assert err.sqlstate == "3D000"
    assert err.message == "no such database: pgf_not_configured"


def test_databases_entry_naming_a_missing_database_gets_the_servers_error(f: Funnel) -> None:
    err = login_error(f.port, "ghost")
    assert err.sqlstate == "3D000"
    assert err.message == f'database "{GHOST_DB}" does not exist'


def test_databases_entry_with_a_wrong_password(f: Funnel) -> None:
    first = login_error(f.port, "badpw")
    assert first.sqlstate == "28P01"
    assert first.message == f'password authentication failed for user "{ROLE}"'
    # Within server_login_retry the pooler answers at once instead of trying again.
    second = login_error(f.port, "badpw")
    assert second.sqlstate == "28P01"
    assert second.message == f'password authentication failed for user "{ROLE}"'
    assert "server_login_retry" in (second.detail or "")
    # Other pools are not affected.
    with connect(f) as conn:
        assert conn.execute("SELECT 'main works'").fetchone() == ("main works",)
