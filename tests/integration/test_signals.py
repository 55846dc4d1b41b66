"""PgBouncer's signals and lifecycle on a real pgfunnel: reload, the two graceful shutdowns,
immediate exit, pause/resume; the queue notice and the holders log line."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from pgfunnel.throwaway import Cluster
from tests.integration.harness import ADMIN_PASSWORD, ADMIN_USER, Funnel, own_role, wait_for


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _send(f: Funnel, sig: int) -> None:
    assert f.proc is not None
    f.proc.send_signal(sig)


def _exited(f: Funnel, timeout: float = 15.0) -> int:
    assert f.proc is not None
    return f.proc.wait(timeout)


def _run_in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # checked by the test
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


# --- SIGHUP ---------------------------------------------------------------------------------
def test_sighup_reloads_databases_and_settings(pg: Cluster, funnel: Callable[..., Funnel]) -> None:
    f = funnel(settings={"default_pool_size": 1})
    with f.connect() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match="no such database: alias"):
        f.connect(dbname="alias")
    text = f.config.read_text()
    text = text.replace(
        "[databases]\n",
        f"[databases]\nalias = host=127.0.0.1 port={pg.port} dbname=postgres\n",
    ).replace("default_pool_size = 1\n", "default_pool_size = 2\n")
    f.config.write_text(text)
    _send(f, signal.SIGHUP)
    wait_for(lambda: "got SIGHUP, re-reading config" in f.log())
    # The new [databases] entry serves, and two transactions now run side by side.
    with f.connect(dbname="alias") as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("postgres",)
    a, b = f.connect(), f.connect()
    try:
        a.execute("BEGIN")
        a.execute("SELECT 1")
        b.execute("BEGIN")
        assert b.execute("SELECT 2").fetchone() == (2,)  # would wait with pool_size 1
        a.execute("COMMIT")
        b.execute("COMMIT")
    finally:
        a.close()
        b.close()


def test_sighup_with_a_broken_config_keeps_the_old_one_and_logs_why(
    funnel: Callable[..., Funnel],
) -> None:
    f = funnel()
    good = f.config.read_text()
    f.config.write_text(good + "no_such_setting = 1\n")
    _send(f, signal.SIGHUP)
    wait_for(lambda: "config file loading failed" in f.log())  # PgBouncer's line
    [cause] = [x for x in f.log().splitlines() if "no_such_setting" in x]
    assert f" ERROR {f.config}:" in cause  # why: file:line and the key
    assert "RELOAD command issued" not in f.log()  # a signal, not the console's command
    assert f.proc is not None and f.proc.poll() is None
    with f.connect() as conn:  # still serving with the old config
        assert conn.execute("SELECT 42").fetchone() == (42,)


# --- SIGINT / SIGTERM / SIGQUIT -------------------------------------------------------------
def test_sigint_waits_for_servers_to_be_released_then_exits(
    funnel: Callable[..., Funnel],
) -> None:
    f = funnel()
    holder = f.connect()
    try:
        holder.execute("BEGIN")
        holder.execute("CREATE TEMP TABLE t (x int)")
        _send(f, signal.SIGINT)
        wait_for(lambda: not _listening(f.port))  # no new clients
        time.sleep(0.5)
        assert f.proc is not None and f.proc.poll() is None  # a transaction still runs
        holder.execute("INSERT INTO t VALUES (1)")
        assert holder.execute("SELECT count(*) FROM t").fetchone() == (1,)
        holder.execute("COMMIT")  # releases the last server
        assert _exited(f) == 0
    finally:
        holder.close()
    log = f.log()
    assert "got SIGINT, shutting down, waiting for all servers connections to be released" in log
    assert "server connections dropped, exiting" in log


def test_sigterm_keeps_serving_connected_clients_until_they_leave(
    funnel: Callable[..., Funnel],
) -> None:
    f = funnel()
    client = f.connect()
    try:
        assert client.execute("SELECT 1").fetchone() == (1,)
        _send(f, signal.SIGTERM)
        wait_for(lambda: not _listening(f.port))
        for i in range(3):  # still served, transaction after transaction
            assert client.execute("SELECT %s::int", (i,)).fetchone() == (i,)
        assert f.proc is not None and f.proc.poll() is None
    finally:
        client.close()
    assert _exited(f) == 0
    log = f.log()
    assert "got SIGTERM, shutting down, waiting for all clients disconnect" in log
    assert "client connections dropped, exiting" in log


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_exits_at_once(funnel: Callable[..., Funnel], second: int) -> None:
    f = funnel()
    client = f.connect()
    try:
        client.execute("BEGIN")
        client.execute("SELECT 1")
        _send(f, signal.SIGTERM)
        wait_for(lambda: not _listening(f.port))
        _send(f, second)
        assert _exited(f) == 0
        with pytest.raises(psycopg.OperationalError):
            client.execute("SELECT 1")
    finally:
        client.close()
    name = "SIGTERM" if second == signal.SIGTERM else "SIGINT"
    assert f"got {name} while shutting down, fast exit" in f.log()


def test_sigquit_exits_at_once(funnel: Callable[..., Funnel]) -> None:
    f = funnel()
    client = f.connect()
    try:
        client.execute("BEGIN")
        client.execute("SELECT 1")
        _send(f, signal.SIGQUIT)
        assert _exited(f) == 0
    finally:
        client.close()
    assert "got SIGQUIT, fast exit" in f.log()


# --- SIGUSR1 / SIGUSR2 ----------------------------------------------------------------------
def test_sigusr1_pauses_and_sigusr2_resumes(pg: Cluster, funnel: Callable[..., Funnel]) -> None:
    f = funnel()
    client = f.connect()
    try:
        client.execute("SELECT 1")
        _send(f, signal.SIGUSR1)
        wait_for(lambda: "paused: all servers released" in f.log())
        assert "got SIGUSR1, pausing all activity" in f.log()
        thread, out = _run_in_thread(lambda: client.execute("SELECT 'after'").fetchone())
        time.sleep(0.7)
        assert out == []  # held, not refused
        assert int(f.pool()["cl_waiting"]) == 1
        _send(f, signal.SIGUSR2)
        thread.join(10)
        assert out == [("after",)]
        assert "got SIGUSR2, continuing from PAUSE" in f.log()
        _send(f, signal.SIGUSR2)  # nothing to resume
        wait_for(lambda: "got SIGUSR2, but not paused/suspended" in f.log())
        assert client.execute("SELECT 1").fetchone() == (1,)
    finally:
        client.close()


def test_sigusr1_then_sigusr2_at_once_leaves_it_running(funnel: Callable[..., Funnel]) -> None:
    """Sent back to back, the two are often pending together: both must act, pause first.
    (Acting in the order their C handlers ran, SIGUSR2 came first and the pooler stayed
    paused in about a third of the rounds.)"""
    f = funnel()
    rounds = 30
    with f.connect() as client:
        client.execute("SELECT 1")
        for n in range(1, rounds + 1):
            _send(f, signal.SIGUSR1)
            _send(f, signal.SIGUSR2)
            wait_for(lambda n=n: f.log().count("got SIGUSR2") == n)  # type: ignore[misc]
        thread, out = _run_in_thread(lambda: client.execute("SELECT 'served'").fetchone())
        thread.join(10)
        assert out == [("served",)]  # the last signal wins: not left paused
    log = f.log()
    assert log.count("got SIGUSR1, pausing all activity") == rounds
    assert log.count("got SIGUSR2, continuing from PAUSE") == rounds
    assert "but not paused/suspended" not in log and "but already paused" not in log


def test_sigusr2_during_a_shutdown_is_ignored_and_the_shutdown_goes_on(
    funnel: Callable[..., Funnel],
) -> None:
    """As PgBouncer 1.23 on: RESUME cannot undo SIGINT's pause; the process still exits
    once the last server is released."""
    f = funnel()
    holder = f.connect()
    try:
        holder.execute("BEGIN")
        holder.execute("SELECT 1")
        _send(f, signal.SIGINT)
        wait_for(lambda: not _listening(f.port))
        _send(f, signal.SIGUSR2)
        wait_for(lambda: "got SIGUSR2 while shutting down, ignoring" in f.log())
        assert not _listening(f.port)
        assert f.proc is not None and f.proc.poll() is None  # the transaction still runs
        assert holder.execute("SELECT 2").fetchone() == (2,)
        holder.execute("COMMIT")  # releases the last server: the shutdown completes
        assert _exited(f) == 0
    finally:
        holder.close()
    log = f.log()
    assert "server connections dropped, exiting" in log
    assert "continuing from PAUSE" not in log


def test_sigterm_while_suspended_exits_at_once(funnel: Callable[..., Funnel]) -> None:
    f = funnel()
    client = f.connect()
    try:
        client.execute("SELECT 1")
        with psycopg.connect(
            f.dsn(user=ADMIN_USER, dbname="pgbouncer", password=ADMIN_PASSWORD), autocommit=True
        ) as admin:
            admin.execute("SUSPEND", prepare=False)
        _send(f, signal.SIGTERM)  # its clients could never be seen leaving: do not wait
        assert _exited(f) == 1  # PgBouncer's die(): FATAL and exit status 1
    finally:
        client.close()
    log = f.log()
    assert "got SIGTERM, shutting down, waiting for all clients disconnect" in log
    assert "FATAL suspend was in progress, going down immediately" in log


# --- queued clients are told; the holders are named -----------------------------------------
def test_waiting_client_gets_a_notice_with_its_position_and_holders_are_logged(
    funnel: Callable[..., Funnel],
) -> None:
    f = funnel(settings={"default_pool_size": 1, "query_wait_notify": 1})
    holder = f.connect(application_name="holder-app")
    waiter = f.connect(application_name="waiter-app")
    notices: list[tuple[str | None, str | None]] = []
    # The Diagnostic is only valid inside the handler: keep its texts.
    waiter.add_notice_handler(lambda d: notices.append((d.message_primary, d.message_detail)))
    try:
        holder.execute("BEGIN")
        holder.execute("SELECT 1")
        thread, out = _run_in_thread(lambda: waiter.execute("SELECT 'served'").fetchone())
        wait_for(lambda: notices, timeout=10)
        [(primary, detail)] = notices
        assert primary == (
            "No server connection available in postgres backend, client being queued "
            "(position 1 of 1 in the queue of postgres/postgres)"
        )
        assert detail is not None and "waited" in detail and "pool_size 1" in detail
        line = wait_for(
            lambda: next((x for x in f.log().splitlines() if "top holders:" in x), None),
            timeout=15,
        )
        assert "holder-app" in line and "idle in transaction" in line
        assert "waiter-app" not in line
        holder.execute("COMMIT")
        thread.join(10)
        assert out == [("served",)]
        assert len(notices) == 1  # once per wait
    finally:
        holder.close()
        waiter.close()


def test_each_queued_client_is_told_its_own_place(funnel: Callable[..., Funnel]) -> None:
    f = funnel(settings={"default_pool_size": 1, "query_wait_notify": 1})
    holder = f.connect()
    waiters = [f.connect(application_name=f"w{i}") for i in range(3)]
    notices: list[list[str | None]] = [[] for _ in waiters]
    for got, waiter in zip(notices, waiters, strict=True):
        waiter.add_notice_handler(lambda d, got=got: got.append(d.message_primary))
    try:
        holder.execute("BEGIN")
        holder.execute("SELECT 1")
        runs = []
        for waiter in waiters:  # queued in this order
            runs.append(_run_in_thread(lambda w=waiter: w.execute("SELECT 'served'").fetchone()))
            time.sleep(0.2)
        wait_for(lambda: all(notices), timeout=10)
        for place, got in enumerate(notices, 1):
            assert got == [
                "No server connection available in postgres backend, client being queued "
                f"(position {place} of 3 in the queue of postgres/postgres)"
            ]
        holder.execute("COMMIT")
        for thread, out in runs:
            thread.join(10)
            assert out == [("served",)]
    finally:
        holder.close()
        for waiter in waiters:
            waiter.close()


# --- during a shutdown -------------------------------------------------------------------------
def test_the_console_stays_reachable_on_the_unix_socket_during_a_shutdown(
    funnel: Callable[..., Funnel],
) -> None:
    """As PgBouncer: a graceful shutdown closes the TCP listeners only; the unix socket stays
    (for the admin console) until the process exits, and goes with it."""
    f = funnel()
    sock = f.dir / f".s.PGSQL.{f.port}"
    client = f.connect(application_name="draining")
    try:
        client.execute("SELECT 1")
        _send(f, signal.SIGTERM)
        wait_for(lambda: not _listening(f.port))
        assert sock.exists()
        with psycopg.connect(
            host=str(f.dir),
            port=f.port,
            user=ADMIN_USER,
            dbname="pgbouncer",
            password=ADMIN_PASSWORD,
            autocommit=True,
        ) as admin:
            cur = admin.execute("SHOW CLIENTS", prepare=False)
            assert cur.description is not None
            app_col = [d.name for d in cur.description].index("application_name")
            assert "draining" in {row[app_col] for row in cur.fetchall()}
            with pytest.raises(psycopg.errors.ProtocolViolation, match="pooler is shutting down"):
                admin.execute("RESUME", prepare=False)
            assert client.execute("SELECT 2").fetchone() == (2,)
            client.close()  # the last client: an open console session does not hold the exit
            assert _exited(f) == 0
    finally:
        client.close()
    assert not sock.exists()
    assert "client connections dropped, exiting" in f.log()


def test_wait_for_servers_closes_clients_that_need_a_server(
    funnel: Callable[..., Funnel],
) -> None:
    """PgBouncer's WAIT_FOR_SERVERS: a transaction in progress finishes; a client queued for
    a server, or starting a new transaction, is closed with `server shutting down`."""
    f = funnel(settings={"default_pool_size": 1})
    holder, idle, waiter = f.connect(), f.connect(), f.connect()
    try:
        idle.execute("SELECT 1")
        holder.execute("BEGIN")
        holder.execute("SELECT 1")
        thread, out = _run_in_thread(lambda: waiter.execute("SELECT 'waited'").fetchone())
        wait_for(lambda: int(f.pool()["cl_waiting"]) == 1)
        _send(f, signal.SIGINT)
        thread.join(10)
        [queued] = out
        assert isinstance(queued, psycopg.OperationalError), queued
        assert "server shutting down" in str(queued)
        with pytest.raises(psycopg.OperationalError, match="server shutting down"):
            idle.execute("SELECT 2")  # a new transaction
        assert holder.execute("SELECT 3").fetchone() == (3,)  # the open one goes on
        assert f.proc is not None and f.proc.poll() is None
        holder.execute("COMMIT")
        assert _exited(f) == 0
    finally:
        for conn in (holder, idle, waiter):
            conn.close()
    assert f.log().count("closing because: server shutting down") == 2


def test_sighup_rereads_the_auth_file(pg: Cluster, funnel: Callable[..., Funnel]) -> None:
    """A rotated password: after SIGHUP the new one logs in and the old one is refused, and
    a fresh server login works with the new secret."""
    with own_role(pg, "rotating", "oldpw") as role:
        f = funnel(userlist={role: "oldpw"})
        with f.connect(user=role, password="oldpw") as conn:
            first_pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        pg.psql(f"ALTER ROLE {role} PASSWORD 'newpw'")
        f.userlist_path.write_text(
            f.userlist_path.read_text().replace(f'"{role}" "oldpw"', f'"{role}" "newpw"')
        )
        _send(f, signal.SIGHUP)
        wait_for(lambda: "got SIGHUP, re-reading config" in f.log())
        wait_for(lambda: _logs_in(f, role, "newpw"))
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            f.connect(user=role, password="oldpw")
        f.admin("RECONNECT")  # the next server login uses the new secret
        f.admin("WAIT_CLOSE")
        with f.connect(user=role, password="newpw") as conn:
            row = conn.execute("SELECT pg_backend_pid(), current_user").fetchone()
        assert row is not None and row[0] != first_pid and row[1] == role


def _logs_in(f: Funnel, user: str, password: str) -> bool:
    try:
        with f.connect(user=user, password=password) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
    except psycopg.OperationalError:
        return False
