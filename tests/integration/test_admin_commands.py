"""The admin console's process controls, each checked by its effect on real clients and on
PostgreSQL: PAUSE holds queries until RESUME, KILL drops clients, RECONNECT changes backend
pids, RELOAD and SET change SHOW CONFIG, SHUTDOWN ends the process."""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from pgfunnel.throwaway import Cluster
from tests.integration.harness import Funnel, backends, wait_for
from tests.integration.test_admin_console import by, console, psql, show

HOLD = 0.5  # how long a held query must stay unanswered to count as held


@pytest.fixture
def background() -> Iterator[Callable[..., Future[Any]]]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        yield pool.submit


def command(f: Funnel, sql: str) -> str:
    """Run one console command in its own session; returns the CommandComplete tag."""
    with console(f) as conn:
        cur = conn.execute(sql, prepare=False)
        return str(cur.statusmessage)


def refused(f: Funnel, sql: str) -> psycopg.Error:
    with console(f) as conn, pytest.raises(psycopg.Error) as info:
        conn.execute(sql, prepare=False)
    return info.value


def query(f: Funnel, sql: str = "SELECT 42", **kwargs: Any) -> Any:
    with f.connect(**kwargs) as conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return row[0]


def still_running(future: Future[Any], seconds: float = HOLD) -> bool:
    time.sleep(seconds)
    return not future.done()


def pool_row(f: Funnel, db: str = "postgres") -> dict[str, Any] | None:
    with console(f) as conn:
        return by(show(conn, "SHOW POOLS"), "database").get(db)


def database_row(f: Funnel, db: str = "postgres") -> dict[str, Any]:
    with console(f) as conn:
        row: dict[str, Any] = by(show(conn, "SHOW DATABASES"), "name")[db]
        return row


def backend_alive(pg: Cluster, pid: int) -> bool:
    return pg.psql(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}") == "1"


# --- PAUSE / RESUME --------------------------------------------------------------------------
def test_pause_db_holds_queries_until_resume(funnel, background) -> None:  # type: ignore[no-untyped-def]
    f = funnel(settings={"default_pool_size": 2})
    assert query(f) == 42  # a warm server
    connected = f.connect()
    try:
        assert command(f, "PAUSE postgres") == "PAUSE"
        assert database_row(f)["paused"] == 1
        with console(f) as conn:  # PAUSE returns once the database holds no server
            assert [s for s in show(conn, "SHOW SERVERS") if s["database"] == "postgres"] == []
        held = background(lambda: connected.execute("SELECT 1").fetchone())
        newcomer = background(query, f, "SELECT 2")
        assert still_running(held) and still_running(newcomer, 0)
        row = wait_for(lambda: (r := pool_row(f)) and r["cl_waiting"] == 2 and r)
        assert row["sv_active"] == 0 and row["sv_idle"] == 0
        assert command(f, "RESUME postgres") == "RESUME"
        assert held.result(10) == (1,)  # nothing was refused: both queries ran
        assert newcomer.result(10) == 2
        assert database_row(f)["paused"] == 0
    finally:
        connected.close()


def test_pause_waits_for_a_running_transaction(funnel, background) -> None:  # type: ignore[no-untyped-def]
    f = funnel()
    with f.connect() as client:
        client.execute("BEGIN")
        client.execute("SELECT 1")
        pausing = background(command, f, "PAUSE")
        assert still_running(pausing)  # the transaction still holds its server
        with console(f) as conn:
            state = {r["key"]: r["value"] for r in show(conn, "SHOW STATE")}
        assert state == {"active": "no", "paused": "yes", "suspended": "no"}
        assert refused(f, "PAUSE").diag.message_primary == "already suspended/paused"
        client.execute("COMMIT")
        assert pausing.result(10) == "PAUSE"
        assert command(f, "RESUME") == "RESUME"
        assert client.execute("SELECT 3").fetchone() == (3,)
    with console(f) as conn:
        assert show(conn, "SHOW STATE")[0] == {"key": "active", "value": "yes"}
    assert refused(f, "RESUME").diag.message_primary == "pooler is not paused/suspended"


def test_canceling_a_waiting_pause_says_the_pause_stays(funnel, background) -> None:  # type: ignore[no-untyped-def]
    f = funnel()
    with f.connect() as holder, console(f) as admin:
        holder.execute("BEGIN")
        holder.execute("SELECT 1")
        waiting = background(lambda: admin.execute("PAUSE postgres", prepare=False))
        assert still_running(waiting)  # a transaction holds a server
        admin.cancel()
        with pytest.raises(psycopg.errors.QueryCanceled) as info:
            waiting.result(10)
        assert info.value.diag.message_hint == "The wait was canceled; PAUSE stays until RESUME."
        assert database_row(f)["paused"] == 1
        assert show(admin, "SHOW STATE")[0]["key"] == "active"  # the session goes on
        holder.execute("COMMIT")
        assert command(f, "RESUME postgres") == "RESUME"
    assert query(f) == 42


def test_canceling_a_waiting_wait_close_says_what_goes_on(funnel, background) -> None:  # type: ignore[no-untyped-def]
    f = funnel()
    with f.connect() as holder, console(f) as admin:
        holder.execute("BEGIN")
        old_pid = holder.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        assert command(f, "RECONNECT postgres") == "RECONNECT"
        waiting = background(lambda: admin.execute("WAIT_CLOSE postgres", prepare=False))
        assert still_running(waiting)  # the transaction still uses the marked server
        admin.cancel()
        with pytest.raises(psycopg.errors.QueryCanceled) as info:
            waiting.result(10)
        assert info.value.diag.message_hint == (
            "The wait was canceled; the servers RECONNECT or RELOAD marked still close as "
            "they are released."
        )  # not a word about PAUSE or SUSPEND: WAIT_CLOSE started neither
        with console(f) as conn:
            state = {r["key"]: r["value"] for r in show(conn, "SHOW STATE")}
        assert state == {"active": "yes", "paused": "no", "suspended": "no"}
        holder.execute("COMMIT")
        assert admin.execute("WAIT_CLOSE postgres", prepare=False).statusmessage == "WAIT_CLOSE"
        new_pid = holder.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        assert new_pid != old_pid


def test_pause_and_resume_errors_are_pgbouncers(funnel) -> None:  # type: ignore[no-untyped-def]
    f = funnel()
    for sql, message in (
        ("PAUSE pgbouncer", "cannot pause admin db: pgbouncer"),
        ("PAUSE nosuchdb", "no such database: nosuchdb"),
        ("RESUME postgres", "database postgres is not paused"),
        ("RESUME", "pooler is not paused/suspended"),
        ("DISABLE", "a database is required"),
        ("ENABLE", "a database is required"),
        ("DISABLE pgbouncer", "cannot disable admin db: pgbouncer"),
        ("RECONNECT pgbouncer", "cannot reconnect admin db: pgbouncer"),
        ("KILL pgbouncer", "cannot kill admin db: pgbouncer"),
        ("WAIT_CLOSE pgbouncer", "cannot wait in admin db: pgbouncer"),
        ("KILL_CLIENT abc", "invalid client pointer supplied"),
        ("RELOAD now", "invalid command 'RELOAD now', use SHOW HELP;"),
        ("SHUTDOWN later", "invalid command 'SHUTDOWN later', use SHOW HELP;"),
    ):
        err = refused(f, sql)
        assert err.sqlstate == "08P01", sql
        assert err.diag.message_primary == message, sql
    assert query(f) == 42


def test_commands_chain_in_one_query_string(funnel) -> None:  # type: ignore[no-untyped-def]
    f = funnel()
    assert query(f) == 42
    out = psql(f, "pause postgres; SHOW DATABASES; resume postgres; show state;")
    assert out.returncode == 0, out.stderr
    assert out.stdout.index("PAUSE") < out.stdout.index("RESUME") < out.stdout.index("suspended")
    assert database_row(f)["paused"] == 0
    assert query(f) == 42


# --- KILL / KILL_CLIENT ----------------------------------------------------------------------
def test_kill_drops_the_databases_clients_until_resume(funnel, background) -> None:  # type: ignore[no-untyped-def]
    f = funnel()
    first, second = f.connect(), f.connect()
    try:
        first.execute("SELECT 1")
        second.execute("BEGIN")
        second.execute("SELECT 1")
        assert command(f, "KILL postgres") == "KILL"
        for conn in (first, second):
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
        row = wait_for(lambda: (r := pool_row(f)) and r["cl_active"] == 0 and r)
        assert row["sv_active"] == row["sv_idle"] == 0
        assert database_row(f)["paused"] == 1
        newcomer = background(query, f, "SELECT 5")
        assert still_running(newcomer)  # a killed database waits for RESUME
        assert command(f, "RESUME postgres") == "RESUME"
        assert newcomer.result(10) == 5
    finally:
        first.close()
        second.close()


def test_kill_client_drops_one_client(funnel) -> None:  # type: ignore[no-untyped-def]
    f = funnel()
    victim = f.connect(application_name="victim")
    bystander = f.connect(application_name="bystander")
    try:
        victim.execute("SELECT 1")
        bystander.execute("SELECT 1")
        with console(f) as conn:
            clients = by(show(conn, "SHOW CLIENTS"), "application_name")
        victim_id = clients["victim"]["id"]
        # An int4, as PgBouncer's id (strict drivers read the column by its type), one per
        # client; ptr shows the switch's whole id for it.
        assert 0 < victim_id < 2**31 and victim_id != clients["bystander"]["id"]
        assert int(clients["victim"]["ptr"], 16) >> 32 == victim_id
        assert command(f, f"KILL_CLIENT {victim_id}") == "KILL_CLIENT"
        with pytest.raises(psycopg.OperationalError, match="admin forced disconnect"):
            victim.execute("SELECT 1")
        assert "closing because: admin forced disconnect" in f.log()  # PgBouncer's reason
        assert bystander.execute("SELECT 6").fetchone() == (6,)
        with console(f) as conn:
            left = {c["application_name"] for c in show(conn, "SHOW CLIENTS")}
        assert "victim" not in left and "bystander" in left
        err = refused(f, f"KILL_CLIENT {victim_id}")
        assert err.sqlstate == "08P01" and "client not found" in str(err.diag.message_primary)
    finally:
        victim.close()
        bystander.close()


# --- RECONNECT / WAIT_CLOSE ------------------------------------------------------------------
def test_reconnect_replaces_servers_and_wait_close_waits(funnel, pg: Cluster, background) -> None:  # type: ignore[no-untyped-def]
    f = funnel(settings={"default_pool_size": 1})
    with f.connect() as client:
        old_pid = client.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        client.execute("BEGIN")
        client.execute("SELECT 1")
        assert command(f, "RECONNECT postgres") == "RECONNECT"
        with console(f) as conn:
            server = by(show(conn, "SHOW SERVERS"), "remote_pid")[old_pid]
        assert server["close_needed"] == 1 and server["state"] == "active"
        waiting = background(command, f, "WAIT_CLOSE postgres")
        assert still_running(waiting)  # the transaction still uses the old server
        client.execute("COMMIT")
        assert waiting.result(10) == "WAIT_CLOSE"
        new_pid = client.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        assert new_pid != old_pid
        wait_for(lambda: not backend_alive(pg, old_pid))
        # RECONNECT of every database closes idle servers at once.
        assert command(f, "RECONNECT") == "RECONNECT"
        assert command(f, "WAIT_CLOSE") == "WAIT_CLOSE"
        assert client.execute("SELECT pg_backend_pid()").fetchone()[0] not in (old_pid, new_pid)  # type: ignore[index]


# --- DISABLE / ENABLE ------------------------------------------------------------------------
def test_disable_refuses_new_clients_until_enable(funnel) -> None:  # type: ignore[no-untyped-def]
    f = funnel(settings={"query_wait_timeout": 5})
    with f.connect() as existing:
        existing.execute("SELECT 1")
        assert command(f, "DISABLE postgres") == "DISABLE"
        assert database_row(f)["disabled"] == 1
        with pytest.raises(psycopg.OperationalError, match="does not allow connections"):
            f.connect().close()
        assert existing.execute("SELECT 8").fetchone() == (8,)  # connected clients go on
        # ... on a new server too: DISABLE refuses logins, not the servers clients need.
        assert command(f, "RECONNECT postgres") == "RECONNECT"
        assert command(f, "WAIT_CLOSE postgres") == "WAIT_CLOSE"
        assert existing.execute("SELECT 10").fetchone() == (10,)
        assert command(f, "ENABLE postgres") == "ENABLE"
        assert database_row(f)["disabled"] == 0
        assert query(f, "SELECT 9") == 9
    assert refused(f, "DISABLE nosuchdb").diag.message_primary == "no such database: nosuchdb"


# --- RELOAD / SET ----------------------------------------------------------------------------
def _config_value(f: Funnel, key: str) -> str:
    with console(f) as conn:
        return str(by(show(conn, "SHOW CONFIG"), "key")[key]["value"])


def test_reload_applies_a_change_and_refuses_a_broken_file(funnel) -> None:  # type: ignore[no-untyped-def]
    f = funnel()
    text = f.config.read_text()
    assert "default_pool_size = 10" in text
    f.config.write_text(text.replace("default_pool_size = 10", "default_pool_size = 7"))
    assert command(f, "RELOAD") == "RELOAD"
    assert _config_value(f, "default_pool_size") == "7"
    assert database_row(f)["pool_size"] == 7
    broken = f.config.read_text() + "no_such_setting = 1\n"
    f.config.write_text(broken)
    line = len(broken.splitlines())
    err = refused(f, "RELOAD")
    assert err.sqlstate == "F0000"
    assert err.diag.message_primary == "RELOAD failed, see logs for additional details"
    assert f"{f.config}:{line}" in str(err.diag.message_detail)  # the cause, here too
    assert "no_such_setting" in str(err.diag.message_detail)
    assert "RELOAD Failed, see logs for more details" in f.log()
    assert _config_value(f, "default_pool_size") == "7"  # the old config keeps serving
    assert query(f) == 42
    assert f.proc is not None and f.proc.poll() is None


def test_set_changes_a_setting_and_refuses_what_it_cannot(funnel) -> None:  # type: ignore[no-untyped-def]
    f = funnel()
    assert query(f) == 42
    assert command(f, "SET default_pool_size = 3") == "SET default_pool_size=3"
    assert _config_value(f, "default_pool_size") == "3"
    assert database_row(f)["pool_size"] == 3
    assert command(f, "set server_check_query TO 'select ''two'''") == (
        "SET server_check_query=select 'two'"
    )
    assert _config_value(f, "server_check_query") == "select 'two'"
    assert command(f, "SET query_wait_timeout = 2.5") == "SET query_wait_timeout=2.5"
    assert _config_value(f, "query_wait_timeout") == "2.5"
    for sql, word in (
        ("SET listen_port = 1", "listen_port"),
        ("SET no_such_setting = 1", "no_such_setting"),
        ("SET default_pool_size = lots", "lots"),
    ):
        err = refused(f, sql)
        assert re.search(word, str(err.diag.message_primary)), (sql, err.diag.message_primary)
    assert _config_value(f, "listen_port") == str(f.port)
    assert _config_value(f, "default_pool_size") == "3"
    assert query(f) == 42


# --- SUSPEND / SHUTDOWN ----------------------------------------------------------------------
def test_suspend_stops_traffic_until_resume(funnel, background) -> None:  # type: ignore[no-untyped-def]
    f = funnel()
    with f.connect() as client:
        client.execute("SELECT 1")
        assert command(f, "SUSPEND") == "SUSPEND"
        with console(f) as conn:
            state = {r["key"]: r["value"] for r in show(conn, "SHOW STATE")}
        assert state["suspended"] == "yes" and state["active"] == "no"
        assert refused(f, "SUSPEND").diag.message_primary == "already suspended/paused"
        held = background(lambda: client.execute("SELECT 11").fetchone())
        assert still_running(held)
        assert command(f, "RESUME") == "RESUME"
        assert held.result(10) == (11,)


def _raw_trust_login(port: int) -> socket.socket:
    """A bare protocol-3 client (auth_type trust) with a small receive buffer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    body = struct.pack("!i", 196608) + b"user\0postgres\0database\0postgres\0\0"
    sock.sendall(struct.pack("!i", len(body) + 4) + body)
    seen = b""
    while not seen.endswith(b"Z\0\0\0\x05I"):
        chunk = sock.recv(65536)
        assert chunk, seen
        seen += chunk
    return sock


def test_suspend_drops_what_does_not_flush_within_suspend_timeout(funnel, pg: Cluster) -> None:  # type: ignore[no-untyped-def]
    f = funnel(settings={"auth_type": "trust", "suspend_timeout": 1})
    stuck = _raw_trust_login(f.port)
    try:
        # 64 MB of answer to a client that reads none of it: the pooler's buffer never drains.
        sql = b"SELECT repeat('x', 1048576) FROM generate_series(1, 64)\0"
        stuck.sendall(b"Q" + struct.pack("!i", len(sql) + 4) + sql)
        wait_for(lambda: backends(pg, state="active") >= 1)
        time.sleep(0.5)
        started = time.monotonic()
        assert command(f, "SUSPEND") == "SUSPEND"
        assert time.monotonic() - started >= 0.9  # it waited suspend_timeout, then gave up
        assert "still unflushed after suspend_timeout=1s, dropping them" in f.log()
        assert "closing because: suspend_timeout" in f.log()
        stuck.settimeout(10)
        with contextlib.suppress(ConnectionResetError):
            while stuck.recv(1 << 20):
                pass  # what was sent before the drop, then EOF
        assert command(f, "RESUME") == "RESUME"
        assert query(f, "SELECT 13") == 13
        wait_for(lambda: backends(pg, state="active") == 0)  # the dropped query's server too
    finally:
        stuck.close()


def test_shutdown_ends_the_process(funnel) -> None:  # type: ignore[no-untyped-def]
    f = funnel()
    assert query(f) == 42
    with console(f) as conn, pytest.raises(psycopg.OperationalError):
        conn.execute("SHUTDOWN", prepare=False)  # no answer: the connection ends with the process
    assert f.proc is not None
    assert f.proc.wait(10) == 0


def test_shutdown_wait_for_clients_exits_when_the_last_client_leaves(funnel) -> None:  # type: ignore[no-untyped-def]
    f = funnel()
    client = f.connect()
    try:
        client.execute("SELECT 1")
        assert command(f, "SHUTDOWN WAIT_FOR_CLIENTS") == "SHUTDOWN"
        with pytest.raises(psycopg.OperationalError):
            f.connect().close()  # no new connections
        assert client.execute("SELECT 12").fetchone() == (12,)  # the old one still works
        assert f.proc is not None and f.proc.poll() is None
    finally:
        client.close()
    assert f.proc.wait(10) == 0


def test_resume_during_a_shutdown_is_refused_and_the_shutdown_goes_on(funnel) -> None:  # type: ignore[no-untyped-def]
    """PgBouncer 1.23 on: `pooler is shutting down`; WAIT_FOR_SERVERS still ends the process
    once its last server is released."""
    f = funnel()
    with f.connect() as client, console(f) as admin:
        client.execute("BEGIN")
        client.execute("SELECT 1")
        admin.execute("SHUTDOWN WAIT_FOR_SERVERS", prepare=False)
        with pytest.raises(psycopg.errors.ProtocolViolation, match="pooler is shutting down"):
            admin.execute("RESUME", prepare=False)
        assert client.execute("SELECT 2").fetchone() == (2,)  # its transaction goes on
        assert f.proc is not None and f.proc.poll() is None
        client.execute("COMMIT")
        assert f.proc.wait(10) == 0
    assert "server connections dropped, exiting" in f.log()


def test_client_login_timeout_waits_while_suspended(funnel) -> None:  # type: ignore[no-untyped-def]
    """As PgBouncer's janitor: nothing times out while SUSPEND holds every socket (a login
    cannot progress); after RESUME the overdue login is closed."""
    f = funnel(settings={"client_login_timeout": 1})
    assert command(f, "SUSPEND") == "SUSPEND"
    silent = socket.create_connection(("127.0.0.1", f.port))  # sends no startup packet
    try:
        silent.settimeout(0.2)
        time.sleep(2)  # twice client_login_timeout
        with pytest.raises(TimeoutError):
            silent.recv(1)  # still open, nothing sent
        assert command(f, "RESUME") == "RESUME"
        silent.settimeout(10)
        answer = b""
        while chunk := silent.recv(4096):
            answer += chunk
        assert b"client_login_timeout" in answer  # the FATAL error, then EOF
    finally:
        silent.close()
    assert "closing because: client_login_timeout" in f.log()


def test_enable_and_resume_do_not_register_a_fallback_database(funnel, pg: Cluster) -> None:  # type: ignore[no-untyped-def]
    """PgBouncer: ENABLE and RESUME db look a database up (find_database); DISABLE, PAUSE,
    KILL ... may register one from `*` (find_or_register_database)."""
    f = funnel(
        databases={
            "postgres": f"host=127.0.0.1 port={pg.port} dbname=postgres",
            "*": f"host=127.0.0.1 port={pg.port} dbname=postgres",
        }
    )

    def names() -> set[str]:
        with console(f) as conn:
            return set(by(show(conn, "SHOW DATABASES"), "name"))

    for sql in ("ENABLE viastar", "RESUME viastar"):
        err = refused(f, sql)
        assert (err.sqlstate, err.diag.message_primary) == ("08P01", "no such database: viastar")
    assert "viastar" not in names()  # not registered by the failed commands
    assert command(f, "DISABLE viastar") == "DISABLE"  # this one registers it, as PgBouncer's
    assert database_row(f, "viastar")["disabled"] == 1
    assert command(f, "ENABLE viastar") == "ENABLE"
    assert database_row(f, "viastar")["disabled"] == 0
    assert query(f, "SELECT current_database()", dbname="viastar") == "postgres"


def _latin1_startup(port: int, dbname: bytes) -> bytes:
    """A real client's startup packet with a latin-1 database name; what the pooler answers."""
    body = struct.pack("!i", 196608) + b"user\0postgres\0database\0" + dbname + b"\0\0"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(struct.pack("!i", len(body) + 4) + body)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    return answer


def test_a_non_utf8_name_is_refused_clearly(funnel, pg: Cluster) -> None:  # type: ignore[no-untyped-def]
    """pgfunnel takes its configuration as UTF-8: a latin-1 database name in the ini makes
    RELOAD fail (naming file:line and the bytes) and the old configuration keeps serving; a
    client asking for such a name is told there is no such database."""
    f = funnel()
    good = f.config.read_bytes()
    entry = b"'caf\xe9' = host=127.0.0.1 port=" + str(pg.port).encode() + b" dbname=postgres\n"
    f.config.write_bytes(good.replace(b"[databases]\n", b"[databases]\n" + entry, 1))
    err = refused(f, "RELOAD")
    assert err.sqlstate == "F0000"
    detail = str(err.diag.message_detail)
    assert f"{f.config}:2: database name 'caf\\xe9' is not valid UTF-8" in detail
    assert "database name 'caf\\xe9' is not valid UTF-8" in f.log()
    assert query(f) == 42  # the old configuration serves
    answer = _latin1_startup(f.port, b"caf\xe9")
    assert answer.startswith(b"E") and b"3D000" in answer
    assert "no such database: caf\ufffd".encode() in answer  # the stray byte, shown as such
    # The auth file too: names and secrets.
    f.config.write_bytes(good)
    users = f.userlist_path.read_bytes()
    f.userlist_path.write_bytes(users + b'"jos\xe9" "secret"\n')
    err = refused(f, "RELOAD")
    line = len(users.splitlines()) + 1
    assert f"{f.userlist_path}:{line}: auth file: user name 'jos\\xe9' is not valid UTF-8" in str(
        err.diag.message_detail
    )
    f.userlist_path.write_bytes(users)
    assert command(f, "RELOAD") == "RELOAD"
    assert query(f) == 42


def test_reload_sweeps_a_removed_database(funnel, pg: Cluster) -> None:  # type: ignore[no-untyped-def]
    """Mark and sweep, as PgBouncer: a database gone from the ini is dropped at once: its
    clients (idle or in a transaction) are closed with `database removed`, its servers close,
    new logins get `no such database`."""
    f = funnel(
        databases={
            "postgres": f"host=127.0.0.1 port={pg.port} dbname=postgres",
            "doomed": f"host=127.0.0.1 port={pg.port} dbname=postgres",
        }
    )
    idle, busy = f.connect(dbname="doomed"), f.connect(dbname="doomed")
    try:
        idle.execute("SELECT 1")
        busy.execute("BEGIN")
        pid = busy.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        text = f.config.read_text()
        f.config.write_text(
            "\n".join(x for x in text.splitlines() if not x.startswith("doomed =")) + "\n"
        )
        assert command(f, "RELOAD") == "RELOAD"
        for conn in (idle, busy):
            with pytest.raises(psycopg.errors.InvalidCatalogName, match="database removed"):
                conn.execute("SELECT 1")
        with pytest.raises(psycopg.OperationalError, match="no such database: doomed"):
            f.connect(dbname="doomed")
        with console(f) as conn:
            assert "doomed" not in by(show(conn, "SHOW DATABASES"), "name")
            assert "doomed" not in by(show(conn, "SHOW POOLS"), "database")
        wait_for(lambda: not backend_alive(pg, pid))  # its server is gone too
        log = f.log()
        assert "dropping database 'doomed' as it does not exist anymore" in log
        assert log.count("closing because: database removed") >= 2
        assert query(f) == 42  # the others serve on
    finally:
        idle.close()
        busy.close()


def test_reload_replaces_the_servers_of_a_changed_database(funnel, pg: Cluster) -> None:  # type: ignore[no-untyped-def]
    """A changed connection string: the busy server finishes its transaction, then is
    replaced (SHOW SERVERS close_needed, a new backend pid, the new dbname)."""
    f = funnel()
    with f.connect() as client:
        client.execute("BEGIN")
        old_pid = client.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        text = f.config.read_text()
        assert "dbname=postgres\n" in text
        f.config.write_text(text.replace("dbname=postgres\n", "dbname=template1\n", 1))
        assert command(f, "RELOAD") == "RELOAD"
        with console(f) as conn:
            assert by(show(conn, "SHOW SERVERS"), "remote_pid")[old_pid]["close_needed"] == 1
        assert client.execute("SELECT current_database()").fetchone() == ("postgres",)
        client.execute("COMMIT")
        row = client.execute("SELECT pg_backend_pid(), current_database()").fetchone()
        assert row is not None
        assert row[0] != old_pid and row[1] == "template1"
        wait_for(lambda: not backend_alive(pg, old_pid))
        with console(f) as conn:
            pids = set(by(show(conn, "SHOW SERVERS"), "remote_pid"))
        assert old_pid not in pids and row[0] in pids
    assert "database postgres changed" in f.log()
