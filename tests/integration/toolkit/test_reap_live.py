"""reap against a real server: exactly the old idle-in-transaction sessions die, nothing else."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pgfunnel.throwaway import Cluster
from pgfunnel.toolkit import live
from pgfunnel.toolkit import reap as rp
from tests.integration.toolkit.helpers import (
    alive_pids,
    run_cli,
    sessions,
    state_age,
    state_of,
    wait_for,
)


@pytest.fixture(scope="module")
def server() -> Iterator[Cluster]:
    cluster = Cluster(max_connections=30)
    cluster.start()
    cluster.psql(
        "CREATE ROLE app LOGIN PASSWORD 'app'; "
        "CREATE ROLE other LOGIN PASSWORD 'other'; "
        "CREATE ROLE reaper LOGIN PASSWORD 'reaper'; GRANT pg_read_all_stats TO reaper; "
        "CREATE ROLE nomon LOGIN PASSWORD 'nomon'; "
        # lead is a MEMBER of app through mid, but mid does not inherit: no USAGE of app, so
        # PostgreSQL refuses lead's pg_terminate_backend of app's sessions.
        "CREATE ROLE mid NOLOGIN NOINHERIT; GRANT app TO mid; "
        "CREATE ROLE lead LOGIN PASSWORD 'lead'; GRANT mid TO lead; "
        "GRANT pg_read_all_stats TO lead;"
    )
    try:
        yield cluster
    finally:
        cluster.destroy()


def _audit(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_execute_ends_exactly_the_old_idle_in_transaction_sessions(server: Cluster) -> None:
    with sessions(server) as s:
        old = [s.open(app="leaky", idle_in_tx=True).info.backend_pid for _ in range(2)]
        aborted = s.open(app="broken", aborted=True).info.backend_pid
        idle = s.open(app="web").info.backend_pid
        su = s.open(user="postgres", password="postgres", app="psql", idle_in_tx=True)
        superuser = su.info.backend_pid
        dumper = s.open(app="pg_dump", idle_in_tx=True).info.backend_pid
        for pid in [*old, aborted]:
            wait_for(lambda pid=pid: state_age(server, pid) >= 8.0)
        before = alive_pids(server)
        dry = run_cli("reap", server.dsn(), "--idle-in-transaction", "8s")
        assert dry.returncode == 0, dry.stderr
        assert "pg_terminate_backend" in dry.stdout
        assert alive_pids(server) == before
        # A transaction younger than the threshold, opened just before the real run. The
        # threshold is generous so that a slow, loaded machine cannot age it past 8 s.
        young = s.open(app="leaky", idle_in_tx=True).info.backend_pid
        before = alive_pids(server)

        proc = run_cli("reap", server.dsn(), "--execute", "--idle-in-transaction", "8s")
        assert proc.returncode == 0, proc.stderr
        ended = set([*old, aborted])
        wait_for(lambda: not (alive_pids(server) & ended))
        assert alive_pids(server) == before - ended
        assert {young, idle, superuser, dumper} <= alive_pids(server)
        audit = _audit(proc.stdout)
        terminated = [a["pid"] for a in audit if a["action"] == "terminated"]
        assert terminated[0] == aborted  # aborted transactions go first
        assert set(terminated) == ended
        skipped = {a["pid"]: a["reason"] for a in audit if a["action"] == "skipped"}
        assert "superuser" in str(skipped[superuser])
        assert "pg_dump" in str(skipped[dumper])
        assert "idle_in_transaction_session_timeout" in proc.stdout


def test_done_when_reap_execute_idle_in_transaction_ends_exactly_those(server: Cluster) -> None:
    """The issue's "Done when", run as written (`pgfunnel reap DSN --execute
    --idle-in-transaction AGE`, no other flag) with a shorter age: exactly the sessions idle in
    transaction (aborted ones included) for longer than AGE end. One application has all of its
    sessions idle in transaction; younger transactions, idle and active sessions and other
    applications' sessions all stay, as pg_stat_activity shows afterwards."""
    age = 8.0
    with sessions(server) as s:
        leaky = [s.open(app="leaky", idle_in_tx=True).info.backend_pid for _ in range(3)]
        broken = s.open(app="broken", aborted=True).info.backend_pid
        idle = [s.open(app="web").info.backend_pid for _ in range(2)]
        other = s.open(user="other", password="other", app="other-app").info.backend_pid
        busy = s.open(app="batch")
        worker = threading.Thread(target=_sleep_until_cancelled, args=(busy,), daemon=True)
        worker.start()
        try:
            wait_for(lambda: state_of(server, busy.info.backend_pid) == "active")
            for pid in [*leaky, broken, *idle]:
                wait_for(lambda pid=pid: state_age(server, pid) >= age)
            # Opened just before the run, so younger than the age when the statement runs; the
            # age is generous so that a slow, loaded machine cannot age it past 8 s meanwhile.
            young = s.open(app="leaky", idle_in_tx=True).info.backend_pid
            before = alive_pids(server)

            proc = run_cli("reap", server.dsn(), "--execute", "--idle-in-transaction", "8s")

            assert proc.returncode == 0, proc.stdout + proc.stderr
            ended = {*leaky, broken}
            wait_for(lambda: not (alive_pids(server) & ended))
            assert alive_pids(server) == before - ended
            assert {young, other, busy.info.backend_pid, *idle} <= alive_pids(server)
            left = server.psql(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "AND state LIKE 'idle in transaction%' AND now() - state_change >= '8s'"
            )
            assert left == "0"
            assert state_of(server, young) == "idle in transaction"
            assert state_of(server, busy.info.backend_pid) == "active"
            audit = _audit(proc.stdout)
            assert {a["pid"] for a in audit if a["action"] == "terminated"} == ended
            assert {a["action"] for a in audit} == {"terminated"}
        finally:
            busy.cancel_safe()
            worker.join(10)


def _sleep_until_cancelled(conn: psycopg.Connection[Any]) -> None:
    with contextlib.suppress(psycopg.errors.QueryCanceled):
        conn.execute("SELECT pg_sleep(300)")


def test_session_that_turns_active_between_plan_and_kill_survives(server: Cluster) -> None:
    with sessions(server) as s:
        holder = s.open(user="postgres", password="postgres", app="lock-holder")
        holder.execute("SELECT pg_advisory_lock(4242)")
        victim = s.open(app="leaky", idle_in_tx=True)
        pid = victim.info.backend_pid
        wait_for(lambda: state_age(server, pid) >= 1.0)
        conn = live.connect(server.dsn(), "pgfunnel reap")
        try:
            plan = rp.plan(
                live.take_snapshot(conn), rp.Filters(idle_in_transaction_s=1, max_share=1)
            )
            assert [t.backend.pid for t in plan.targets] == [pid]
            worker = threading.Thread(
                target=lambda: victim.execute("SELECT pg_advisory_lock(4242)"), daemon=True
            )
            worker.start()
            wait_for(lambda: state_of(server, pid) == "active")
            assert plan.statement is not None
            result = live.run_reap_statement(conn, plan.statement)
            assert result == {}
            assert pid in alive_pids(server)
            holder.execute("SELECT pg_advisory_unlock(4242)")
            worker.join(10)
            # Idle in transaction again, with a new state_change: the old plan still spares it.
            wait_for(lambda: state_of(server, pid) == "idle in transaction")
            assert live.run_reap_statement(conn, plan.statement) == {}
            assert pid in alive_pids(server)
        finally:
            conn.close()


def test_reused_pid_is_never_killed(server: Cluster) -> None:
    with sessions(server) as s:
        pid = s.open(app="leaky", idle_in_tx=True).info.backend_pid
        wait_for(lambda: state_age(server, pid) >= 1.0)
        conn = live.connect(server.dsn(), "pgfunnel reap")
        try:
            snap = live.take_snapshot(conn)
            target = next(b for b in snap.backends if b.pid == pid)
            assert target.backend_start is not None
            # The same pid with another backend_start is another session: pid reuse.
            import datetime as dt

            target.backend_start -= dt.timedelta(seconds=1)
            plan = rp.plan(snap, rp.Filters(idle_in_transaction_s=1, max_share=1))
            assert plan.statement is not None
            assert live.run_reap_statement(conn, plan.statement) == {}
            assert pid in alive_pids(server)
        finally:
            conn.close()


def test_sessions_it_may_not_end_are_reported(server: Cluster) -> None:
    with sessions(server) as s:
        pid = s.open(
            user="other", password="other", app="other-app", idle_in_tx=True
        ).info.backend_pid
        wait_for(lambda: state_age(server, pid) >= 1.0)
        proc = run_cli(
            "reap",
            server.dsn(user="reaper", password="reaper"),
            "--execute",
            "--idle-in-transaction",
            "1s",
        )
        assert proc.returncode == 1
        audit = _audit(proc.stdout)
        assert [a["pid"] for a in audit if a["action"] == "no_privilege"] == [pid]
        assert "pg_signal_backend" in proc.stdout
        assert pid in alive_pids(server)


def test_filters_and_share_cap_and_loop(server: Cluster) -> None:
    with sessions(server) as s:
        a = [s.open(app="svc-a", idle_in_tx=True).info.backend_pid for _ in range(4)]
        b = s.open(app="svc-b", idle_in_tx=True).info.backend_pid
        for pid in [*a, b]:
            wait_for(lambda pid=pid: state_age(server, pid) >= 1.0)
        proc = run_cli(
            "reap",
            server.dsn(),
            "--idle-in-transaction",
            "1s",
            "--application",
            "^svc-a$",
            "--format",
            "json",
        )
        plan = json.loads(proc.stdout)
        # By default leaked transactions are not share-capped: all four of svc-a's.
        assert {t["pid"] for t in plan["targets"]} == set(a)
        proc = run_cli(
            "reap",
            server.dsn(),
            "--idle-in-transaction",
            "1s",
            "--application",
            "^svc-a$",
            "--max-share",
            "0.5",
            "--format",
            "json",
        )
        plan = json.loads(proc.stdout)
        assert len(plan["targets"]) == 2  # an explicit --max-share 0.5: half of svc-a's 4
        assert {t["pid"] for t in plan["targets"]} <= set(a)
        assert sum(1 for x in plan["skipped"] if "share cap" in x["reason"]) == 2
        proc = run_cli(
            "reap",
            server.dsn(),
            "--execute",
            "--idle-in-transaction",
            "1s",
            "--client",
            "10.0.0.0/8",
        )
        assert "Ended: 0 of 0 planned session(s)" in proc.stdout
        proc = run_cli(
            "reap",
            server.dsn(),
            "--execute",
            "--idle-in-transaction",
            "1s",
            "--max",
            "1",
            "--max-share",
            "1",
            "--loop",
            "0.2",
            "--iterations",
            "2",
        )
        ended = [x["pid"] for x in _audit(proc.stdout) if x["action"] == "terminated"]
        assert len(ended) == 2
        wait_for(lambda: not (alive_pids(server) & set(ended)))
        assert len((set(a) | {b}) & alive_pids(server)) == 3


def test_refuses_to_guess(server: Cluster) -> None:
    proc = run_cli("reap", server.dsn())
    assert proc.returncode == 2
    assert "say what to reap" in proc.stderr
    proc = run_cli("reap", server.dsn(), "--state", "active", "--min-idle-age", "1s")
    assert proc.returncode == 2


def test_execute_with_nothing_old_enough_says_so_and_is_no_dry_run(server: Cluster) -> None:
    with sessions(server) as s:
        young = s.open(app="young-leak", idle_in_tx=True).info.backend_pid
        proc = run_cli("reap", server.dsn(), "--execute", "--idle-in-transaction", "1h")
        assert proc.returncode == 0, proc.stderr
        assert "Ended: 0 of 0 planned session(s)" in proc.stdout
        assert "dry run" not in proc.stdout
        assert young in alive_pids(server)


def test_the_reaper_never_reaps_itself(server: Cluster) -> None:
    conn = live.connect(server.dsn(), "pgfunnel reap")
    try:
        conn.execute("BEGIN")
        conn.execute("SELECT 1")
        conn.execute("COMMIT")
        snap = live.take_snapshot(conn)
        assert all(b.pid != snap.server.own_pid for b in snap.backends)
        with psycopg.connect(server.dsn()) as other:
            assert other.execute(
                "SELECT application_name FROM pg_stat_activity WHERE pid = %s",
                (snap.server.own_pid,),
            ).fetchone() == ("pgfunnel reap",)
    finally:
        conn.close()


def test_membership_without_inherited_privileges_is_reported_not_raised(server: Cluster) -> None:
    """pg_terminate_backend checks inherited privileges (pg_has_role ... 'USAGE'): a role that is
    only a MEMBER (through a NOINHERIT role) may not end the session. reap must report it as not
    ours, name the missing privilege, and never run into PostgreSQL's error."""
    assert server.psql("SELECT pg_has_role('lead', 'app', 'MEMBER')") == "t"
    assert server.psql("SELECT pg_has_role('lead', 'app', 'USAGE')") == "f"
    with sessions(server) as s:
        pid = s.open(app="leaky", idle_in_tx=True).info.backend_pid
        wait_for(lambda: state_age(server, pid) >= 1.0)
        proc = run_cli(
            "reap",
            server.dsn(user="lead", password="lead"),
            "--execute",
            "--idle-in-transaction",
            "1s",
        )
        assert "Traceback" not in proc.stderr, proc.stderr
        assert proc.returncode == 1, proc.stdout + proc.stderr
        audit = _audit(proc.stdout)
        assert [a["pid"] for a in audit if a["action"] == "no_privilege"] == [pid]
        assert not [a for a in audit if a["action"] == "terminated"]
        assert "GRANT pg_signal_backend TO lead;" in proc.stdout
        assert pid in alive_pids(server)


def test_a_refused_termination_is_a_statement_error_with_its_sqlstate(server: Cluster) -> None:
    """When PostgreSQL refuses a pg_terminate_backend, the whole statement fails: the thin layer
    turns it into StatementError (SQLSTATE and message), on a connection that still works."""
    with sessions(server) as s:
        pid = s.open(app="leaky", idle_in_tx=True).info.backend_pid
        conn = live.connect(server.dsn(user="lead", password="lead"), "pgfunnel reap")
        try:
            with pytest.raises(live.StatementError) as err:
                live.run_reap_statement(
                    conn,
                    "SELECT pid, pg_terminate_backend(pid) AS terminated FROM pg_stat_activity "
                    f"WHERE pid = {pid}",
                )
            assert err.value.sqlstate == "42501"
            assert "SQLSTATE 42501" in str(err.value)
            assert "terminate" in err.value.message
            assert live.take_snapshot(conn).server.current_user == "lead"
        finally:
            conn.close()
        assert pid in alive_pids(server)


def test_hidden_sessions_are_reported_with_the_missing_privilege(server: Cluster) -> None:
    """Without pg_read_all_stats (pg_monitor), other roles' sessions are <insufficient
    privilege>: reap lists those matching its filters as not visible and names the GRANT, and
    still ends the sessions it can see and signal (its own role's)."""
    with sessions(server) as s:
        hidden = s.open(app="leaky", idle_in_tx=True).info.backend_pid
        other_db = s.open(app="leaky", idle_in_tx=True, dbname="template1").info.backend_pid
        own = s.open(user="nomon", password="nomon", app="mine", idle_in_tx=True).info.backend_pid
        for pid in (hidden, other_db, own):
            wait_for(lambda pid=pid: state_age(server, pid) >= 1.0)
        proc = run_cli(
            "reap",
            server.dsn(user="nomon", password="nomon"),
            "--execute",
            "--idle-in-transaction",
            "1s",
            "--database",
            "postgres",
            "--format",
            "json",
        )
        assert proc.returncode == 1, proc.stdout + proc.stderr
        report = json.loads(proc.stdout)
        assert [x["pid"] for x in report["not_visible"]] == [hidden]  # template1's is filtered
        assert "pg_read_all_stats" in report["not_visible"][0]["reason"]
        assert any(
            "GRANT pg_read_all_stats TO nomon;" in line for line in report["missing_privileges"]
        )
        assert [a["pid"] for a in report["audit"] if a["action"] == "terminated"] == [own]
        wait_for(lambda: own not in alive_pids(server))
        assert {hidden, other_db} <= alive_pids(server)
        text = run_cli(
            "reap", server.dsn(user="nomon", password="nomon"), "--idle-in-transaction", "1s"
        )
        assert "Not visible" in text.stdout and "pg_read_all_stats" in text.stdout


class _Loop:
    """A `pgfunnel reap --loop` subprocess whose output is collected as it comes."""

    def __init__(self, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pgfunnel", "reap", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._readers:
            t.start()

    @staticmethod
    def _read(stream: Any, sink: list[str]) -> None:
        for line in stream:
            sink.append(line)

    def rounds(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.out) if line.startswith("{")]

    def stderr(self) -> str:
        return "".join(self.err)

    def finish(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout)
        for t in self._readers:
            t.join(10)
        return code

    def kill(self) -> None:
        """Ends the process if it still runs and closes its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for t in self._readers:
            t.join(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def _reaper_pids(cluster: Cluster) -> set[int]:
    out = cluster.psql("SELECT pid FROM pg_stat_activity WHERE application_name = 'pgfunnel reap'")
    return {int(x) for x in out.split()}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_loop_stops_cleanly_on_signal(server: Cluster, sig: int) -> None:
    loop = _Loop(
        server.dsn(),
        "--execute",
        "--idle-in-transaction",
        "1s",
        "--loop",
        "0.2",
        "--format",
        "json",
    )
    try:
        wait_for(lambda: len(loop.rounds()) >= 2 or loop.proc.poll() is not None)
        assert loop.proc.poll() is None, loop.stderr()
        loop.proc.send_signal(sig)
        code = loop.finish()
    finally:
        loop.kill()
    assert code == 0, loop.stderr()
    assert "Traceback" not in loop.stderr()
    assert f"stopped by {signal.Signals(sig).name}" in loop.stderr()
    assert all(r["executed"] is False or r["statement"] for r in loop.rounds())
    wait_for(lambda: not _reaper_pids(server))


def test_loop_survives_a_dropped_connection(server: Cluster) -> None:
    """Its own backend terminated under it, reap --loop reconnects and goes on reaping."""
    loop = _Loop(
        server.dsn(),
        "--execute",
        "--idle-in-transaction",
        "1s",
        "--loop",
        "0.2",
        "--format",
        "json",
    )
    try:
        with sessions(server) as s:
            wait_for(lambda: len(loop.rounds()) >= 1 and len(_reaper_pids(server)) == 1)
            (first,) = _reaper_pids(server)
            server.psql(f"SELECT pg_terminate_backend({first})")
            wait_for(lambda: "reconnected" in loop.stderr() or loop.proc.poll() is not None)
            assert loop.proc.poll() is None, loop.stderr()
            assert "lost the connection" in loop.stderr()
            (second,) = _reaper_pids(server)
            assert second != first
            pid = s.open(app="leaky", idle_in_tx=True).info.backend_pid
            wait_for(lambda: pid not in alive_pids(server))
            ended = [
                a["pid"] for r in loop.rounds() for a in r["audit"] if a["action"] == "terminated"
            ]
            assert pid in ended
            loop.proc.send_signal(signal.SIGTERM)
            assert loop.finish() == 0, loop.stderr()
    finally:
        loop.kill()
    assert "Traceback" not in loop.stderr()


def test_loop_gives_up_with_a_clear_error_when_the_server_stays_away() -> None:
    cluster = Cluster(max_connections=10)
    cluster.start()
    loop = None
    try:
        loop = _Loop(cluster.dsn(), "--idle-in-transaction", "1s", "--loop", "0.2")
        wait_for(
            lambda: any("The durable fix" in x for x in loop.out) or loop.proc.poll() is not None
        )
        assert loop.proc.poll() is None, loop.stderr()
        cluster.stop()
        code = loop.finish()
        assert code == 3, loop.stderr()
        err = loop.stderr()
        assert "lost the connection" in err
        assert "gave up after 6 reconnect attempts" in err
        assert "Traceback" not in err
    finally:
        if loop is not None:
            loop.kill()
        cluster.destroy()


# --- issue 13 point 7 --------------------------------------------------------------------------
def test_the_table_shows_what_happened_to_each_session(
    server: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two of three planned sessions turn active between reap's look and its statement: the
    statement spares them, and the title and the table say so."""
    from pgfunnel.cli import main

    with sessions(server) as s:
        holder = s.open(user="postgres", password="postgres", app="lock-holder")
        holder.execute("SELECT pg_advisory_lock(4343)")
        victims = [s.open(app="leaky", idle_in_tx=True) for _ in range(3)]
        pids = [v.info.backend_pid for v in victims]
        wait_for(lambda: min(state_age(server, p) for p in pids) >= 1.0)
        workers: list[threading.Thread] = []
        real = live.take_snapshot

        def look_then_wake_two(conn: Any) -> Any:
            snap = real(conn)
            for v in victims[:2]:
                workers.append(
                    threading.Thread(
                        target=lambda v=v: v.execute("SELECT pg_advisory_lock_shared(4343)"),
                        daemon=True,
                    )
                )
                workers[-1].start()
            wait_for(lambda: all(state_of(server, p) == "active" for p in pids[:2]))
            return snap

        monkeypatch.setattr(live, "take_snapshot", look_then_wake_two)
        args = ["reap", server.dsn(), "--idle-in-transaction", "1s", "--application", "^leaky$"]
        code = main([*args, "--execute"])
        out = capsys.readouterr().out
        holder.execute("SELECT pg_advisory_unlock(4343)")
        for w in workers:
            w.join(10)
    assert code == 0
    assert "Ended: 1 of 3 planned session(s); 2 spared (changed since planning)" in out
    assert "Ending" not in out
    rows = {pid: line for line in out.splitlines() for pid in pids if line.startswith(f"│ {pid} ")}
    assert set(rows) == set(pids)
    assert rows[pids[2]].rstrip(" │").endswith("│ ended")
    for pid in pids[:2]:
        assert "│ spared: its state, age or backend" in rows[pid]
    actions = {a["pid"]: a["action"] for a in _audit(out)}
    assert actions == {
        pids[0]: "spared_changed",
        pids[1]: "spared_changed",
        pids[2]: "terminated",
    }


def test_reap_falls_back_to_the_reserved_dsn_when_the_server_is_full(
    make_cluster: Any,
) -> None:
    full = make_cluster(max_connections=6)  # 3 slots for ordinary roles
    full.psql("CREATE ROLE app LOGIN PASSWORD 'app'")
    with sessions(full) as s:
        leaked = [s.open(app="leaky", idle_in_tx=True).info.backend_pid for _ in range(3)]
        wait_for(lambda: min(state_age(full, p) for p in leaked) >= 1.0)
        refused = full.dsn(user="app", password="app")
        proc = run_cli("reap", refused, "--idle-in-transaction", "1s", "--execute")
        assert proc.returncode == 3
        assert "remaining connection slots are reserved" in proc.stderr
        assert "pass --reserved-dsn" in proc.stderr
        assert set(leaked) <= alive_pids(full)
        proc = run_cli(
            "reap",
            refused,
            "--reserved-dsn",
            full.dsn(),
            "--idle-in-transaction",
            "1s",
            "--execute",
        )
        assert proc.returncode == 0, proc.stderr
        assert "connected through --reserved-dsn" in proc.stderr
        assert "Ended: 3 of 3 planned session(s)" in proc.stdout
        wait_for(lambda: not set(leaked) & alive_pids(full))
        # With slots free again, DSN itself is used.
        proc = run_cli("reap", refused, "--reserved-dsn", full.dsn(), "--idle-in-transaction", "1s")
        assert proc.returncode == 0 and "reserved-dsn" not in proc.stderr
