"""pgfunnel's timeouts and pool sizing against a real server, each with its own 1-second setting."""

from __future__ import annotations

import itertools
import secrets
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from pgfunnel.throwaway import Cluster
from tests.integration.harness import Funnel, backends, wait_for

TAG = secrets.token_hex(3)
_serial = itertools.count()


@pytest.fixture
def role(pg: Cluster) -> Iterator[str]:
    """A fresh role per test: pg_stat_activity counts by user then see only this test's pool."""
    name = f"pgf_to_{TAG}_{next(_serial)}"
    pg.psql(f"CREATE ROLE {name} LOGIN SUPERUSER PASSWORD 'pw'")
    try:
        yield name
    finally:
        pg.psql(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{name}'",
            check=False,
        )
        pg.psql(f"DROP OWNED BY {name}; DROP ROLE IF EXISTS {name}", check=False)


@pytest.fixture
def start(role: str, funnel: Callable[..., Funnel], pg: Cluster) -> Callable[..., Funnel]:
    """A Funnel whose database `postgres` logs into the shared cluster as this test's role."""

    def run(db_extra: str = "", **settings: Any) -> Funnel:
        conn = f"host=127.0.0.1 port={pg.port} dbname=postgres user={role} password=pw {db_extra}"
        return funnel(settings=settings, databases={"postgres": conn})

    return run


def local_port(conn: psycopg.Connection[Any]) -> int:
    with socket.fromfd(conn.fileno(), socket.AF_INET, socket.SOCK_STREAM) as sock:
        return int(sock.getsockname()[1])


def backend_pid(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def pid_alive(pg: Cluster, pid: int) -> bool:
    return pg.psql(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}") == "1"


def logged(f: Funnel, text: str) -> Callable[[], bool]:
    return lambda: text in f.log()


# --- client-side timeouts --------------------------------------------------------------------
def test_query_wait_timeout(start: Callable[..., Funnel]) -> None:
    f = start(query_wait_timeout=1, default_pool_size=1)
    with f.connect() as holder, f.connect() as waiter:
        holder.execute("BEGIN")
        holder.execute("SELECT 1")  # the pool's only server is now held
        port = local_port(waiter)
        with pytest.raises(psycopg.OperationalError) as info:
            waiter.execute("SELECT 1")
        assert info.value.sqlstate == "08P01"
        assert info.value.diag.message_primary == "query_wait_timeout"
        holder.execute("COMMIT")
        assert holder.execute("SELECT 'holder unaffected'").fetchone() == ("holder unaffected",)
    wait_for(logged(f, f"127.0.0.1:{port} closing because: query_wait_timeout"), 10)


def test_client_idle_timeout(start: Callable[..., Funnel]) -> None:
    f = start(client_idle_timeout=1)
    with f.connect() as idle, f.connect() as busy:
        port = local_port(idle)
        idle.execute("SELECT 1")
        line = f"127.0.0.1:{port} closing because: client_idle_timeout"

        def keep_busy_until_idle_one_closed() -> bool:
            busy.execute("SELECT 1")  # a client that keeps talking is not idle
            return line in f.log()

        wait_for(keep_busy_until_idle_one_closed, 15)
        with pytest.raises(psycopg.OperationalError, match="client_idle_timeout"):
            idle.execute("SELECT 1")
        assert busy.execute("SELECT 'still here'").fetchone() == ("still here",)


def test_idle_transaction_timeout(start: Callable[..., Funnel], pg: Cluster, role: str) -> None:
    f = start(idle_transaction_timeout=1)
    with f.connect() as conn:
        conn.execute("BEGIN")
        conn.execute("SELECT 1")
        pid = backend_pid(conn)
        assert backends(pg, user=role, state="idle in transaction") == 1
        wait_for(logged(f, "closing because: idle transaction timeout"), 15)
        wait_for(lambda: not pid_alive(pg, pid), 15)
        with pytest.raises(psycopg.OperationalError, match="idle transaction timeout"):
            conn.execute("SELECT 1")
    assert backends(pg, user=role, state="idle in transaction") == 0
    with f.connect() as conn:  # the pool recovers with a fresh server
        assert backend_pid(conn) != pid


def test_query_timeout(start: Callable[..., Funnel], pg: Cluster) -> None:
    f = start("pool_size=1", query_timeout=1)
    with f.connect() as conn:
        pid = backend_pid(conn)  # pool_size=1: the sleep runs on this backend
        try:
            with pytest.raises(psycopg.OperationalError) as info:
                conn.execute("SELECT pg_sleep(10)")
            assert info.value.sqlstate == "08P01"
            assert info.value.diag.message_primary == "query timeout"
        finally:
            pg.psql(f"SELECT pg_terminate_backend({pid})")
    wait_for(logged(f, "closing because: query timeout"), 10)
    with f.connect() as conn:
        assert conn.execute("SELECT 'next query'").fetchone() == ("next query",)
        assert backend_pid(conn) != pid


def test_query_timeout_from_the_users_section(funnel: Callable[..., Funnel]) -> None:
    f = funnel(users={"postgres": "query_timeout=1"})
    with f.connect() as conn, pytest.raises(psycopg.OperationalError, match="query timeout"):
        conn.execute("SELECT pg_sleep(3)")


def _startup_packet(user: str, database: str) -> bytes:
    body = struct.pack("!i", 196608) + f"user\0{user}\0database\0{database}\0\0".encode()
    return struct.pack("!i", len(body) + 4) + body


def _read_until_closed(sock: socket.socket) -> bytes:
    sock.settimeout(10)  # an upper bound for the test, ten times the setting
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def test_client_login_timeout_closes_clients_that_never_log_in(
    start: Callable[..., Funnel],
) -> None:
    f = start(client_login_timeout=1)
    with (
        socket.create_connection(("127.0.0.1", f.port)) as silent,
        socket.create_connection(("127.0.0.1", f.port)) as half,
        f.connect() as normal,  # logged in: not subject to client_login_timeout
    ):
        half.sendall(_startup_packet("postgres", "postgres"))  # then never answers the password
        silent_port, half_port = silent.getsockname()[1], half.getsockname()[1]
        assert b"client_login_timeout" in _read_until_closed(silent)
        got = _read_until_closed(half)
        assert got.startswith(b"R")  # the authentication request it never answered
        assert b"client_login_timeout" in got
        assert normal.execute("SELECT 'logged in long ago'").fetchone() == ("logged in long ago",)
    for port in (silent_port, half_port):
        wait_for(logged(f, f"127.0.0.1:{port} closing because: client_login_timeout"), 10)


# --- server-side timeouts --------------------------------------------------------------------
def test_server_idle_timeout_closes_unused_backends(
    start: Callable[..., Funnel], pg: Cluster, role: str
) -> None:
    f = start(server_idle_timeout=1)
    conns = [f.connect() for _ in range(3)]
    try:
        for conn in conns:
            conn.execute("BEGIN")
            conn.execute("SELECT 1")
        assert backends(pg, user=role) == 3
        for conn in conns:
            conn.execute("COMMIT")
    finally:
        for conn in conns:
            conn.close()
    wait_for(lambda: backends(pg, user=role) == 0, 15)
    assert f.proc is not None and f.proc.poll() is None
    assert "closing because: server idle timeout" in f.log()
    with f.connect() as conn:
        assert conn.execute("SELECT 'back again'").fetchone() == ("back again",)


def test_server_lifetime_replaces_the_backend_between_transactions(
    start: Callable[..., Funnel], pg: Cluster
) -> None:
    f = start("pool_size=1", server_lifetime=1)
    with f.connect() as conn:
        first = backend_pid(conn)
        with conn.transaction():  # a transaction is never cut short by the lifetime
            assert backend_pid(conn) == first
        wait_for(lambda: backend_pid(conn) != first, 15)
    wait_for(lambda: not pid_alive(pg, first), 15)
    wait_for(logged(f, "closing because: server lifetime over"), 10)


def test_server_connect_timeout_gives_the_client_an_error(funnel: Callable[..., Funnel]) -> None:
    # A port that accepts TCP connections (the kernel does, into the backlog) but never answers.
    with socket.socket() as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(64)
        port = blackhole.getsockname()[1]
        f = funnel(
            settings={"server_connect_timeout": 1, "query_wait_timeout": 3},
            databases={"hole": f"host=127.0.0.1 port={port} dbname=x user=x password=x"},
        )
        with pytest.raises(psycopg.OperationalError, match="connect timeout"):
            psycopg.connect(f.dsn(dbname="hole"), connect_timeout=30)
        wait_for(logged(f, "closing because: connect timeout"), 10)
        # The pooler itself is fine.
        assert f.admin("SHOW VERSION")


def test_server_check_query_runs_on_every_reuse_with_zero_delay(
    start: Callable[..., Funnel], pg: Cluster, role: str
) -> None:
    table = f"pgf_checks_{TAG}"
    pg.psql(f"CREATE TABLE {table} (n serial); ALTER TABLE {table} OWNER TO {role}")

    def checks() -> int:
        return int(pg.psql(f"SELECT count(*) FROM {table}"))

    f = start(server_check_delay=0, server_check_query=f"INSERT INTO {table} DEFAULT VALUES")
    with f.connect() as conn:
        conn.execute("SELECT 1")
        before = checks()
        for _ in range(5):
            assert conn.execute("SELECT 2").fetchone() == (2,)
        assert checks() - before == 5


def test_failing_server_check_query_replaces_the_server(
    start: Callable[..., Funnel], pg: Cluster
) -> None:
    f = start("pool_size=1", server_check_delay=0, server_check_query="SELECT 1/0")
    with f.connect() as conn:
        pids = [backend_pid(conn) for _ in range(3)]
    assert len(set(pids)) == 3  # each reuse failed its check, so each query got a new server
    wait_for(lambda: not any(pid_alive(pg, p) for p in pids[:-1]), 15)


# --- pool sizing -----------------------------------------------------------------------------
def test_min_pool_size_opens_backends_without_any_client(
    start: Callable[..., Funnel], pg: Cluster, role: str
) -> None:
    start(min_pool_size=2)
    wait_for(lambda: backends(pg, user=role) == 2, 4)


def test_min_pool_size_is_kept_after_clients_leave(
    start: Callable[..., Funnel], pg: Cluster, role: str
) -> None:
    f = start(min_pool_size=2, server_idle_timeout=1)
    with f.connect() as conn:
        conn.execute("SELECT 1")
    wait_for(lambda: backends(pg, user=role) == 2, 15)
    pool = f.pool(user=role)
    assert pool["sv_idle"] + pool["sv_used"] == 2


def test_reserve_pool_serves_a_second_client_after_reserve_pool_timeout(
    start: Callable[..., Funnel], pg: Cluster, role: str
) -> None:
    f = start("pool_size=1", reserve_pool_size=1, reserve_pool_timeout=1, query_wait_timeout=30)
    with f.connect() as first, f.connect() as second:
        first.execute("BEGIN")
        a = backend_pid(first)
        second.execute("BEGIN")
        b = backend_pid(second)  # waits for reserve_pool_timeout, then takes the reserve server
        assert a != b
        assert backends(pg, user=role, state="idle in transaction") == 2
        first.execute("COMMIT")
        second.execute("COMMIT")


@pytest.mark.parametrize("why", ["server_idle_timeout", "failed server_check_query"])
def test_a_backend_the_pooler_closes_is_ended_with_terminate(
    make_cluster: Callable[..., Cluster], funnel: Callable[..., Funnel], why: str
) -> None:
    """As PgBouncer, a backend pgfunnel lets go gets Terminate, so PostgreSQL ends the session
    as asked instead of on an unexpected EOF (which it logs at DEBUG1 when idle, and as an
    error inside a transaction). Idle in its pool (server_idle_timeout), or in the pooler's
    own hands (a check query that failed)."""
    cluster = make_cluster(settings={"log_min_messages": "debug1"})
    if why == "server_idle_timeout":
        f = funnel(cluster, settings={"server_idle_timeout": 1})
        with f.connect() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        wait_for(lambda: backends(cluster) == 0, 15)
        assert "closing because: server idle timeout" in f.log()
    else:
        f = funnel(cluster, settings={"server_check_delay": 0, "server_check_query": "SELECT 1/0"})
        with f.connect() as conn:
            for _ in range(3):  # each reuse fails its check: that server goes, a new one serves
                assert conn.execute("SELECT 1").fetchone() == (1,)
        wait_for(lambda: backends(cluster) <= 1, 15)
    log = cluster.logfile.read_text(errors="replace")
    assert "unexpected EOF on client connection" not in log
