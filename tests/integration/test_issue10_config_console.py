"""Issue 10 section 4 through a real `pgfunnel serve`: [users] sizes win over [databases],
huge times are config errors rather than crashes, the console's extended-protocol error is
per session, and `@name` hosts reach PostgreSQL's abstract-namespace unix socket."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pgfunnel.config.settings import SETTINGS
from pgfunnel.proto import messages as m
from pgfunnel.throwaway import SUPERUSER, Cluster, free_port, pg_tool
from tests.integration.harness import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    Funnel,
    backends,
    pgpass_env,
    wait_for,
)

SIZED_ROLE, SIZED_PASSWORD = "issue10_sized", "sizedpw"


# --- 1. [users] pool_size / reserve_pool_size win over [databases] ---------------------------
@pytest.fixture
def sized_role(pg: Cluster) -> Iterator[str]:
    pg.psql(f"DROP ROLE IF EXISTS {SIZED_ROLE}")
    pg.psql(f"CREATE ROLE {SIZED_ROLE} LOGIN PASSWORD '{SIZED_PASSWORD}'")
    try:
        yield SIZED_ROLE
    finally:
        pg.psql(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{SIZED_ROLE}'"
        )
        wait_for(lambda: backends(pg, user=SIZED_ROLE) == 0)
        pg.psql(f"DROP ROLE IF EXISTS {SIZED_ROLE}")


def _metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_users_pool_size_wins_over_the_database_entry(
    pg: Cluster, funnel: Callable[..., Funnel], sized_role: str
) -> None:
    metrics_port = free_port()
    f = funnel(
        databases={"sized": f"host=127.0.0.1 port={pg.port} dbname=postgres pool_size=1"},
        users={sized_role: "pool_size=3"},
        userlist={sized_role: SIZED_PASSWORD},
        # Were the database's pool_size=1 to win, the second BEGIN would wait: not for long.
        settings={
            "metrics_addr": "127.0.0.1",
            "metrics_port": metrics_port,
            "query_wait_timeout": 5,
        },
    )
    conns = [f.connect(user=sized_role, password=SIZED_PASSWORD, dbname="sized") for _ in range(3)]
    try:
        # Three transactions at once: the [users] pool_size of 3 lets each have a server.
        # With the database's pool_size=1 winning, two of these would wait in the queue.
        for conn in conns:
            conn.execute("BEGIN")
            conn.execute("SELECT 1")
        wait_for(lambda: backends(pg, user=sized_role, state="idle in transaction") == 3)
        assert f.pool("sized", sized_role)["cl_waiting"] == 0
    finally:
        for conn in conns:
            conn.close()

    databases = {row["name"]: row for row in f.admin("SHOW DATABASES")}
    assert databases["sized"]["pool_size"] == 1  # the entry's own, as PgBouncer shows it
    users = {row["name"]: row for row in f.admin("SHOW USERS")}
    assert users[sized_role]["pool_size"] == "3"
    samples = _metrics(f"http://127.0.0.1:{metrics_port}")
    pool_key = (("database", "sized"), ("user", sized_role))
    assert samples[("pgfunnel_pools_pool_size", pool_key)] == 3
    assert samples[("pgfunnel_databases_pool_size", (("database", "sized"),))] == 1


def test_users_reserve_pool_size_wins_over_the_database_entry(
    pg: Cluster, funnel: Callable[..., Funnel], sized_role: str
) -> None:
    f = funnel(
        databases={
            "sized": f"host=127.0.0.1 port={pg.port} dbname=postgres pool_size=1 reserve_pool=0"
        },
        users={sized_role: "reserve_pool_size=1"},
        userlist={sized_role: SIZED_PASSWORD},
        settings={"reserve_pool_timeout": 0.2, "query_wait_timeout": 5},
    )
    holder = f.connect(user=sized_role, password=SIZED_PASSWORD, dbname="sized")
    waiter = f.connect(user=sized_role, password=SIZED_PASSWORD, dbname="sized")
    try:
        holder.execute("BEGIN")
        holder.execute("SELECT 1")
        # The only pool_size server is held: after reserve_pool_timeout the [users] reserve of
        # one lets the second client in (the database's reserve_pool=0 would leave it waiting).
        assert waiter.execute("SELECT 42").fetchone() == (42,)
        assert backends(pg, user=sized_role) == 2
    finally:
        holder.close()
        waiter.close()


# --- 2. huge times: the same error as any bad value, never a traceback ------------------------
def _console(f: Funnel) -> psycopg.Connection[Any]:
    return psycopg.connect(
        f.dsn(user=ADMIN_USER, dbname="pgbouncer", password=ADMIN_PASSWORD), autocommit=True
    )


@pytest.mark.parametrize("raw", ["1e308", "1e400", "inf", "nan", "-1"])
def test_console_set_of_a_huge_time_is_a_set_error(funnel: Callable[..., Funnel], raw: str) -> None:
    f = funnel()
    with _console(f) as conn:
        with pytest.raises(psycopg.Error) as info:
            conn.execute(f"SET client_login_timeout = {raw}", prepare=False)
        assert info.value.sqlstate == "08P01"
        message = str(info.value.diag.message_primary)
        assert message.startswith(f"SET failed: invalid value '{raw}' for client_login_timeout")
        # The session is still there and nothing changed.
        config = {r[0]: r[1] for r in conn.execute("SHOW CONFIG", prepare=False).fetchall()}
        assert config["client_login_timeout"] == "60"
    assert f.proc is not None and f.proc.poll() is None
    assert "Traceback" not in f.log()


def test_serve_with_a_huge_time_in_the_ini_names_file_and_line(pg: Cluster) -> None:
    f = Funnel(pg, settings={"client_login_timeout": "1e308"})
    try:
        with pytest.raises(RuntimeError) as info:
            f.start()
        text = str(info.value)
        lines = f.config.read_text().splitlines()
        line = lines.index("client_login_timeout = 1e308") + 1
        assert f"{f.config}:{line}" in text
        assert "invalid value '1e308' for client_login_timeout: too large" in text
        assert "Traceback" not in text and "OverflowError" not in text
        assert f.proc is not None and f.proc.returncode == 1
    finally:
        f.stop()


def test_sighup_with_a_huge_time_keeps_the_old_config(funnel: Callable[..., Funnel]) -> None:
    f = funnel()
    original = f.config.read_text()
    f.config.write_text(original + "server_lifetime = 1e308\n")
    assert f.proc is not None
    os.kill(f.proc.pid, signal.SIGHUP)
    line = len(original.splitlines()) + 1
    wait_for(lambda: "config file loading failed" in f.log())
    log = f.log()
    assert f"{f.config}:{line}" in log and "too large" in log
    assert "Exception in callback" not in log and "Traceback" not in log
    with f.connect() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert f.admin("SHOW CONFIG") and f.proc.poll() is None


def test_the_largest_times_run_as_timers(funnel: Callable[..., Funnel]) -> None:
    """Every reloadable time at its largest value is taken and the pooler goes on: the
    janitor, the scheduler and the console use them without overflowing."""
    f = funnel()
    times = [n for n, spec in SETTINGS.items() if spec.kind == "time" and spec.reloadable]
    assert "query_wait_timeout" in times and "client_login_timeout" in times
    with _console(f) as conn:
        for name in times:
            conn.execute(f"SET {name} = 9223372036854", prepare=False)
    with f.connect() as conn, conn.transaction():
        assert conn.execute("SELECT 1").fetchone() == (1,)
    rows = {r["key"]: r["value"] for r in f.admin("SHOW CONFIG")}
    assert {name: rows[name] for name in times} == dict.fromkeys(times, f"{9223372036854.0:g}")
    assert f.admin("SHOW POOLS") and f.admin("SHOW DATABASES")
    assert f.proc is not None and f.proc.poll() is None
    assert "Traceback" not in f.log() and "janitor failed" not in f.log()


# --- 3. the console's extended-protocol error belongs to its session --------------------------
def _read(sock: socket.socket) -> tuple[bytes, bytes]:
    def exact(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            assert chunk, "connection closed"
            data += chunk
        return data

    header = exact(5)
    return header[:1], exact(struct.unpack("!i", header[1:])[0] - 4)


def _until_ready(sock: socket.socket) -> list[bytes]:
    kinds = []
    while True:
        kind, _ = _read(sock)
        kinds.append(kind)
        if kind == b"Z":
            return kinds


def _console_session(f: Funnel) -> socket.socket:
    """A raw console session (auth_type trust: no password exchange to write by hand)."""
    sock = socket.create_connection(("127.0.0.1", f.port))
    sock.settimeout(15)
    sock.sendall(m.startup_message({"user": ADMIN_USER, "database": "pgbouncer"}))
    kinds = _until_ready(sock)
    assert b"E" not in kinds
    return sock


def _frame(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("!i", len(payload) + 4) + payload


PARSE = _frame(b"P", b"\0SHOW POOLS\0\0\0")
BIND = _frame(b"B", b"\0\0\0\0\0\0\0\0")
EXECUTE = _frame(b"E", b"\0\0\0\0\0")
SYNC = _frame(b"S", b"")


def test_two_console_sessions_keep_their_own_extended_error(
    funnel: Callable[..., Funnel],
) -> None:
    f = funnel(settings={"auth_type": "trust"})
    a, b = _console_session(f), _console_session(f)
    try:
        a.sendall(PARSE)
        kind, payload = _read(a)
        assert kind == b"E" and b"C0A000" in payload
        # B's batch, while A's is still unsynced: B gets its own error...
        b.sendall(PARSE + SYNC)
        assert _until_ready(b) == [b"E", b"Z"]
        # ...and the rest of A's batch is skipped to its Sync without a second error.
        a.sendall(BIND + EXECUTE + SYNC)
        assert _until_ready(a) == [b"Z"]
        # Both sessions then work, and a new batch errors once again.
        for sock in (a, b):
            sock.sendall(_frame(b"Q", b"SHOW STATE\0"))
            assert _until_ready(sock)[-2:] == [b"C", b"Z"]
            sock.sendall(PARSE + BIND + EXECUTE + SYNC)
            assert _until_ready(sock) == [b"E", b"Z"]
    finally:
        a.close()
        b.close()


def test_a_console_session_leaving_mid_batch_does_not_silence_the_next(
    funnel: Callable[..., Funnel],
) -> None:
    f = funnel(settings={"auth_type": "trust"})
    for _ in range(3):
        sock = _console_session(f)
        sock.sendall(PARSE)
        assert _read(sock)[0] == b"E"
        sock.close()  # gone without a Sync
    sock = _console_session(f)
    try:
        sock.sendall(PARSE + SYNC)
        assert _until_ready(sock) == [b"E", b"Z"]
    finally:
        sock.close()


# --- 4. abstract-namespace unix sockets and an empty unix_socket_dir --------------------------
@pytest.fixture
def abstract_cluster() -> Iterator[tuple[Cluster, str]]:
    """A cluster that listens on a socket in Linux's abstract namespace too (PostgreSQL's
    `@name` in unix_socket_directories), besides its usual socket directory."""
    name = f"pgfunnel-test-{os.getpid()}-{free_port()}"
    cluster = Cluster()
    cluster.settings["unix_socket_directories"] = f"'{cluster.sockdir},@{name}'"
    cluster.start()
    try:
        yield cluster, name
    finally:
        cluster.destroy()


def _over_unix(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(
        "SELECT client_addr IS NULL FROM pg_stat_activity WHERE pid = pg_backend_pid()"
    ).fetchone()
    return bool(row and row[0])


def test_host_at_name_reaches_the_abstract_socket(
    abstract_cluster: tuple[Cluster, str], funnel: Callable[..., Funnel]
) -> None:
    cluster, name = abstract_cluster
    f = funnel(
        cluster,
        databases={"abs": f"host=@{name} port={cluster.port} dbname=postgres"},
    )
    with f.connect(dbname="abs") as conn:
        assert conn.execute("SELECT 7").fetchone() == (7,)
        assert _over_unix(conn)  # the server saw a unix-socket client: no TCP was dialled
    servers = [row for row in f.admin("SHOW SERVERS") if row["database"] == "abs"]
    assert servers and all(row["addr"] == "unix" for row in servers)
    assert "Traceback" not in f.log()


def test_a_cancel_reaches_a_server_behind_an_abstract_socket(
    abstract_cluster: tuple[Cluster, str], funnel: Callable[..., Funnel]
) -> None:
    cluster, name = abstract_cluster
    f = funnel(cluster, databases={"abs": f"host=@{name} port={cluster.port} dbname=postgres"})
    with f.connect(dbname="abs") as conn:
        timer = threading.Timer(1.0, conn.cancel)
        timer.start()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("SELECT pg_sleep(60)")
        finally:
            timer.cancel()
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert "could not send cancel request" not in f.log()


def test_unix_socket_dir_at_name_listens_and_dials_in_the_abstract_namespace(
    abstract_cluster: tuple[Cluster, str], funnel: Callable[..., Funnel]
) -> None:
    cluster, name = abstract_cluster
    f = funnel(
        cluster,
        # No host: the server is found in unix_socket_dir, here PostgreSQL's abstract name.
        databases={"abs": f"port={cluster.port} dbname=postgres"},
        settings={"unix_socket_dir": f"@{name}"},
    )
    # psql (libpq) knows `@name` hosts; psycopg resolves host names itself and does not.
    sql = "SELECT 8, client_addr IS NULL FROM pg_stat_activity WHERE pid = pg_backend_pid()"
    out = subprocess.run(
        [
            pg_tool("psql"),
            "-X",
            "-At",
            "-h",
            f"@{name}",
            "-p",
            str(f.port),
            "-U",
            SUPERUSER,
            "-d",
            "abs",
            "-c",
            sql,
        ],
        env=pgpass_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (out.returncode, out.stdout.strip()) == (0, "8|t"), out.stderr
    assert "Traceback" not in f.log()


def test_empty_unix_socket_dir_refuses_as_pgbouncer_does(
    pg: Cluster, funnel: Callable[..., Funnel]
) -> None:
    f = funnel(
        databases={"nodir": f"port={pg.port} dbname=postgres"},
        settings={"unix_socket_dir": ""},
    )
    # A socket where the old fallback (/tmp) would have looked: it must not be dialled.
    tmp_socket = f"/tmp/.s.PGSQL.{pg.port}"
    listener: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(tmp_socket)
        listener.listen(8)
        listener.setblocking(False)
    except OSError:  # taken by someone else: the log and the error still tell
        listener.close()
        listener = None
    try:
        with pytest.raises(psycopg.OperationalError) as info:
            f.connect(dbname="nodir")
        assert "unix socket dir not configured: nodir" in str(info.value)
        wait_for(lambda: re.search(r"ERROR unix socket dir not configured: nodir", f.log()))
        if listener is not None:
            with pytest.raises(BlockingIOError):
                listener.accept()  # nobody connected to the /tmp socket
        assert f.proc is not None and f.proc.poll() is None
    finally:
        if listener is not None:
            listener.close()
            with contextlib.suppress(OSError):
                os.unlink(tmp_socket)


def test_ready_probes_a_server_behind_an_abstract_socket(
    abstract_cluster: tuple[Cluster, str], funnel: Callable[..., Funnel]
) -> None:
    """/ready dials `@name` in the abstract namespace as the server logins do (uvloop's own
    unix connect cannot), so a working database there is ready, not degraded."""
    from tests.integration.test_metrics import ready

    cluster, name = abstract_cluster
    port = free_port()
    f = funnel(
        cluster,
        databases={"abs": f"host=@{name} port={cluster.port} dbname=postgres"},
        settings={"metrics_addr": "127.0.0.1", "metrics_port": port},
    )
    base = f"http://127.0.0.1:{port}"
    status, body = wait_for(lambda: (r := ready(base))[0] == 200 and r, 15)
    by_db = {p["database"]: p for p in body["pools"]}
    assert by_db["abs"]["status"] == "ok", body
    with f.connect(dbname="abs") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    status, body = ready(base)
    assert status == 200 and body["status"] == "ok", body
