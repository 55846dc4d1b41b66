"""diagnose against a real server: full slots, 53300 refusals, limits, privileges, idle ages."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgfunnel.throwaway import Cluster
from tests.integration.toolkit.helpers import run_cli, run_json, sessions, state_age, wait_for
from tests.unit.toolkit.schema_check import validate_diagnose


@pytest.fixture(scope="module")
def small() -> Iterator[Cluster]:
    """max_connections 10, 3 reserved for superusers: 7 usable slots."""
    cluster = Cluster(max_connections=10)
    cluster.start()
    cluster.psql(
        "CREATE ROLE app LOGIN PASSWORD 'app'; "
        "CREATE ROLE nomon LOGIN PASSWORD 'nomon'; "
        "CREATE ROLE capped LOGIN PASSWORD 'capped' CONNECTION LIMIT 1; "
        "ALTER ROLE capped SET idle_in_transaction_session_timeout = '30s';"
    )
    cluster.psql("CREATE DATABASE tiny CONNECTION LIMIT 1")
    try:
        yield cluster
    finally:
        cluster.destroy()


def test_full_server_names_apps_limit_headroom_and_exits_2(small: Cluster, tmp_path: Path) -> None:
    with sessions(small) as s:
        for app, n in (("billing", 3), ("web", 2), ("worker", 2)):
            for _ in range(n):
                s.open(app=app)
        app_dsn = small.dsn(user="app", password="app")
        proc = run_cli("diagnose", app_dsn, "--reserved-dsn", small.dsn())
        assert proc.returncode == 2, proc.stdout + proc.stderr
        out = proc.stdout
        for name in ("billing", "web", "worker"):
            assert name in out
        assert "remaining connection slots are reserved" in out
        assert "superuser_reserved_connections" in out
        assert "headroom: ordinary roles" in out

        code, report = run_json("diagnose", app_dsn, "--reserved-dsn", small.dsn())
        assert code == 2
        validate_diagnose(report)
        assert report["source"]["via"] == "reserved-dsn"
        assert report["connect_error"]["kind"] == "superuser_reserved"
        slots = report["slots"]
        assert (slots["usable"], slots["used_by_client_backends"]) == (7, 7)
        # PostgreSQL 15 has no reserved_connections tier: null, and no row in the text.
        assert report["server"]["version_num"] < 160000
        assert slots["headroom"] == {
            "ordinary_roles": 0,
            "reserved_connections_members": None,
            "superusers": 3,
        }
        assert "pg_use_reserved_connections" not in out
        assert "reserved_connections 0" not in out
        apps = {a["application_name"]: a["count"] for a in report["holders"]["applications"]}
        assert apps == {"billing": 3, "web": 2, "worker": 2}
        assert report["findings"][0]["severity"] == "critical"


def test_every_slot_taken_classifies_too_many_clients(small: Cluster) -> None:
    with sessions(small) as s:
        for _ in range(7):
            s.open(app="hog")
        for _ in range(3):
            s.open(user="postgres", password="postgres", app="admin")
        proc = run_cli(
            "diagnose", small.dsn(user="app", password="app"), "--reserved-dsn", small.dsn()
        )
        assert proc.returncode == 2
        assert "sorry, too many clients already" in proc.stdout
        assert "max_connections" in proc.stdout
        code, report = run_json("diagnose", small.dsn())
        assert code == 2
        validate_diagnose(report)
        assert report["connect_error"]["kind"] == "max_connections"


def test_role_and_database_limits_are_classified(small: Cluster) -> None:
    with sessions(small) as s:
        s.open(user="capped", password="capped", app="c")
        code, report = run_json("diagnose", small.dsn(user="capped", password="capped"))
        assert code == 2
        assert report["connect_error"]["kind"] == "role"
        assert report["connect_error"]["name"] == "capped"
        s.open(dbname="tiny", app="t")
        code, report = run_json("diagnose", small.dsn(user="app", password="app", dbname="tiny"))
        assert code == 2
        assert report["connect_error"]["kind"] == "database"
        # A superuser is exempt from both limits: diagnose gets in and reports them.
        code, report = run_json("diagnose", small.dsn())
        validate_diagnose(report)
        roles = {r["name"]: r for r in report["limits"]["roles"]}
        assert (roles["capped"]["used"], roles["capped"]["limit"]) == (1, 1)
        dbs = {d["name"]: d for d in report["limits"]["databases"]}
        assert (dbs["tiny"]["used"], dbs["tiny"]["limit"]) == (1, 1)
        ids = {f["id"] for f in report["findings"]}
        assert "role-limit-reached:capped" in ids
        assert "database-limit-reached:tiny" in ids
        overrides = report["timeouts"]["overrides"]
        assert {
            "role": "capped",
            "database": None,
            "name": "idle_in_transaction_session_timeout",
            "value": "30s",
        } in overrides
        assert report["session_stats"]


def test_role_without_pg_monitor_counts_hidden_rows_as_unknown(small: Cluster) -> None:
    with sessions(small) as s:
        s.open(app="leaky", idle_in_tx=True)
        s.open(app="web")
        code, report = run_json("diagnose", small.dsn(user="nomon", password="nomon"))
        validate_diagnose(report)
        priv = report["privileges"]
        assert priv["missing"] == ["pg_read_all_stats"]
        assert priv["insufficient_privilege_rows"] >= 2
        assert report["slots"]["unknown_backends"] >= 2
        assert report["idle"]["summary"]["idle in transaction"]["count"] == 0
        assert report["idle"]["summary"]["idle"]["count"] == 0
        finding = next(f for f in report["findings"] if f["id"] == "missing-privilege")
        assert "GRANT pg_monitor TO nomon;" in finding["remedy"]
        assert code == 1


def test_idle_in_transaction_aged_redacted_and_horizon(small: Cluster) -> None:
    with sessions(small) as s:
        conn = s.open(app="leaky")
        conn.autocommit = False
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        conn.execute("SELECT 'secret-literal', 42 FROM pg_class LIMIT 1")
        pid = conn.info.backend_pid
        wait_for(lambda: state_age(small, pid) >= 1.0)
        code, report = run_json("diagnose", small.dsn(), "--idle-in-transaction-warn", "1s")
        validate_diagnose(report)
        assert code == 1
        row = next(x for x in report["idle"]["sessions"] if x["pid"] == pid)
        assert row["state"] == "idle in transaction"
        assert row["state_age_s"] >= 1.0 and row["xact_age_s"] >= 1.0
        assert row["holds_xmin"] and row["holds_horizon"]
        assert "secret-literal" not in row["query"] and "42" not in row["query"]
        leak = next(f for f in report["findings"] if f["id"] == "idle-in-transaction")
        assert any("reap" in r and "--idle-in-transaction 1s" in r for r in leak["remedy"])
        assert "holds back the xmin horizon" in leak["detail"]
        _, shown = run_json("diagnose", small.dsn(), "--show-queries")
        row = next(x for x in shown["idle"]["sessions"] if x["pid"] == pid)
        assert "'secret-literal'" in row["query"]


def test_snapshot_round_trip_and_csv(small: Cluster, tmp_path: Path) -> None:
    with sessions(small) as s:
        s.open(app="billing")
        s.open(app="billing", idle_in_tx=True)
        snap = tmp_path / "snap.json"
        run_cli("diagnose", small.dsn(), "--save-snapshot", str(snap))
        code, report = run_json("diagnose", "--from-file", str(snap))
        validate_diagnose(report)
        assert report["source"]["kind"] == "file"
        assert report["slots"]["used_by_client_backends"] == 2
        csv_text = small.psql(
            "COPY (SELECT * FROM pg_stat_activity) TO STDOUT WITH (FORMAT csv, HEADER)"
        )
        csv_file = tmp_path / "activity.csv"
        csv_file.write_text(csv_text + "\n")
    code, report = run_json("diagnose", "--from-file", str(csv_file))
    validate_diagnose(report)
    assert code == 3  # no max_connections in a bare pg_stat_activity
    code, report = run_json("diagnose", "--from-file", str(csv_file), "--max-connections", "10")
    apps = {a["application_name"]: a["count"] for a in report["holders"]["applications"]}
    assert apps["billing"] == 2
    assert report["slots"]["usable"] == 7


def test_the_tool_names_itself_and_excludes_its_pid(small: Cluster) -> None:
    with psycopg.connect(small.dsn()) as watcher:
        _code, report = run_json("diagnose", small.dsn())
        validate_diagnose(report)
        own = report["server"]["own_pid"]
        assert report["slots"]["own_connection"] == 1
        assert report["slots"]["used_by_client_backends"] == 1  # the watcher only
        assert all(
            g["application_name"] != "pgfunnel diagnose" for g in report["holders"]["groups"]
        )
        assert own != watcher.info.backend_pid
    assert json.dumps(report)


def test_a_writer_idle_in_transaction_is_named_as_holding_the_horizon(small: Cluster) -> None:
    """READ COMMITTED keeps no snapshot between statements, so an idle-in-transaction session
    that UPDATEd has no backend_xmin, only its backend_xid: it still holds back the horizon."""
    small.psql(
        "CREATE TABLE IF NOT EXISTS horizon_t (x int); INSERT INTO horizon_t VALUES (1); "
        "GRANT UPDATE, SELECT ON horizon_t TO app"
    )
    with sessions(small) as s:
        conn = s.open(app="writer")
        conn.autocommit = False
        conn.execute("UPDATE horizon_t SET x = x + 1")
        pid = conn.info.backend_pid
        wait_for(lambda: state_age(small, pid) >= 1.0)
        code, report = run_json("diagnose", small.dsn(), "--idle-in-transaction-warn", "1s")
        validate_diagnose(report)
        row = next(x for x in report["idle"]["sessions"] if x["pid"] == pid)
        assert row["state"] == "idle in transaction"
        assert row["backend_xmin"] is None and row["backend_xid"] is not None
        assert row["xid_age"] is not None and row["xid_age"] >= 0
        assert row["holds_horizon"] is True
        assert report["idle"]["xmin_horizon_pid"] == pid
        leak = next(f for f in report["findings"] if f["id"] == "idle-in-transaction")
        assert f"pid {pid} holds back the xmin horizon" in leak["detail"]
        assert code == 1


def test_timeout_audit_reports_server_wide_values_apart_from_overrides() -> None:
    """The global column is the server-wide value (ALTER SYSTEM here), never the diagnosing
    role's or database's own ALTER ROLE/DATABASE SET value, which is listed as an override."""
    with Cluster(max_connections=10) as cluster:
        cluster.psql("ALTER SYSTEM SET idle_in_transaction_session_timeout = '10min'")
        cluster.psql("SELECT pg_reload_conf()")
        cluster.psql(
            "CREATE ROLE tuned LOGIN PASSWORD 'tuned'; "
            "ALTER ROLE tuned SET idle_in_transaction_session_timeout = '45s'; "
            "ALTER ROLE tuned SET statement_timeout = '7s'; "
            "ALTER ROLE postgres SET idle_in_transaction_session_timeout = '20s';"
        )
        cluster.psql("CREATE DATABASE tuneddb")
        cluster.psql("ALTER DATABASE tuneddb SET idle_session_timeout = '1h'")
        wait_for(
            lambda: (
                cluster.psql("SHOW idle_in_transaction_session_timeout", dbname="tuneddb") == "20s"
            )
        )

        # A superuser whose own role and database both carry overrides: pg_file_settings
        # gives the server-wide values.
        _, report = run_json("diagnose", cluster.dsn(dbname="tuneddb"))
        validate_diagnose(report)
        timeouts = report["timeouts"]
        assert timeouts["global"]["idle_in_transaction_session_timeout"] == "10min"
        assert timeouts["global_sources"]["idle_in_transaction_session_timeout"] == (
            "configuration file"
        )
        assert timeouts["global"]["idle_session_timeout"] == "0"
        assert timeouts["global"]["statement_timeout"] == "0"  # not diagnose's own 5s
        overrides = {
            (o["role"], o["database"], o["name"]): o["value"] for o in timeouts["overrides"]
        }
        assert overrides[("tuned", None, "idle_in_transaction_session_timeout")] == "45s"
        assert overrides[("postgres", None, "idle_in_transaction_session_timeout")] == "20s"
        assert overrides[(None, "tuneddb", "idle_session_timeout")] == "1h"

        # An ordinary role with its own overrides cannot read the files: those settings are
        # left out of the server-wide values, with the reason, rather than reported as 45s.
        _, report = run_json("diagnose", cluster.dsn(user="tuned", password="tuned"))
        validate_diagnose(report)
        timeouts = report["timeouts"]
        assert "idle_in_transaction_session_timeout" not in timeouts["global"]
        assert "statement_timeout" not in timeouts["global"]
        assert timeouts["global_sources"]["statement_timeout"].startswith("unknown")
        assert timeouts["global"]["idle_session_timeout"] == "0"
        assert "no-idle-in-transaction-timeout" not in {f["id"] for f in report["findings"]}


class _TranslatedRefusal:
    """A peer that answers every startup packet as a full PostgreSQL with German lc_messages
    does: FATAL, SQLSTATE 53300, a translated message (no German locale exists on this machine
    to run a real one with lc_messages = 'de_DE.UTF-8')."""

    MESSAGE = "tut mir leid, schon zu viele Verbindungen"

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError, ValueError):
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        while True:
            length, code = struct.unpack("!II", _recv(conn, 8))
            _recv(conn, length - 8)
            if code in (80877103, 80877104):  # SSLRequest, GSSENCRequest: not here
                conn.sendall(b"N")
                continue
            fields = b"SFATAL\0VFATAL\0C53300\0M" + self.MESSAGE.encode() + b"\0\0"
            conn.sendall(b"E" + struct.pack("!I", 4 + len(fields)) + fields)
            return

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


def _recv(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ValueError("peer closed")
        data += chunk
    return data


def test_a_translated_53300_still_exits_2_with_an_unrecognised_limit() -> None:
    peer = _TranslatedRefusal()
    try:
        dsn = f"host=127.0.0.1 port={peer.port} user=app dbname=app sslmode=disable"
        code, report = run_json("diagnose", dsn)
        validate_diagnose(report)
        assert code == 2
        err = report["connect_error"]
        assert (err["sqlstate"], err["kind"]) == ("53300", "unrecognised")
        assert peer.MESSAGE in err["message"]
        assert "non-English lc_messages?" in err["explanation"]
        assert report["findings"][0]["id"] == "server-full"
        text = run_cli("diagnose", dsn)
        assert text.returncode == 2
        assert "Refused with 53300" in text.stdout and "--reserved-dsn" in text.stdout
    finally:
        peer.close()


def test_from_file_reads_a_plain_json_array_of_pg_stat_activity(
    small: Cluster, tmp_path: Path
) -> None:
    """`SELECT json_agg(a) FROM pg_stat_activity a` saved as is: ages measured to the newest
    timestamp in it, non-client backends kept apart."""
    with sessions(small) as s:
        s.open(app="billing")
        s.open(app="billing")
        leak = s.open(app="leaky", idle_in_tx=True).info.backend_pid
        wait_for(lambda: state_age(small, leak) >= 1.0)
        rows = small.psql(
            # The dump keeps its own row: its query_start is the file's clock.
            "SELECT json_agg(a) FROM pg_stat_activity a"
        )
    path = tmp_path / "activity.json"
    path.write_text(rows)
    assert path.read_text().lstrip().startswith("[")
    code, report = run_json(
        "diagnose",
        "--from-file",
        str(path),
        "--max-connections",
        "10",
        "--idle-in-transaction-warn",
        "1s",
    )
    validate_diagnose(report)
    assert report["source"] == {"kind": "file", "via": "file"}
    apps = {a["application_name"]: a["count"] for a in report["holders"]["applications"]}
    assert apps == {"billing": 2, "leaky": 1, "psql": 1}
    assert report["slots"]["used_by_client_backends"] == 4
    assert report["slots"]["usable"] == 7
    assert any(o["backend_type"] == "checkpointer" for o in report["slots"]["other_backends"])
    assert report["idle"]["summary"]["idle in transaction"]["count"] == 1
    row = next(x for x in report["idle"]["sessions"] if x["pid"] == leak)
    assert row["state_age_s"] >= 1.0
    assert any(f["id"] == "idle-in-transaction" for f in report["findings"])
    assert code == 1


# --- issue 13 point 6 --------------------------------------------------------------------------
def _remedies(report: dict[str, object]) -> list[str]:
    findings = report["findings"]
    assert isinstance(findings, list)
    return [r for f in findings for r in f["remedy"]]


def test_after_a_reserved_dsn_fallback_every_next_step_names_the_dsn_that_got_in(
    small: Cluster,
) -> None:
    with sessions(small) as s:
        for _ in range(7):
            s.open(app="hog", idle_in_tx=True)
        refused = f"postgresql://app:app@127.0.0.1:{small.port}/postgres"
        code, report = run_json(
            "diagnose", refused, "--reserved-dsn", small.dsn(), "--idle-in-transaction-warn", "0s"
        )
        assert code == 2 and report["source"]["via"] == "reserved-dsn"
        reserved = f"'host=127.0.0.1 port={small.port} user=postgres dbname=postgres'"
        assert report["connect_error"]["next_command"].startswith(f"pgfunnel reap {reserved} ")
        reaps = [r for r in _remedies(report) if r.startswith("pgfunnel reap")]
        assert reaps and all(r.startswith(f"pgfunnel reap {reserved} ") for r in reaps), reaps
        text = json.dumps(report)
        assert "HOST" not in text and "app@127.0.0.1" not in text
        assert "password" not in text and "postgres@" not in text
        # Without a reserved DSN the next step names the refused server, not a placeholder.
        code, report = run_json("diagnose", refused)
        assert code == 2
        assert report["connect_error"]["next_command"].startswith(
            f"pgfunnel diagnose --reserved-dsn 'postgresql://postgres@127.0.0.1:{small.port}/"
        )


def test_an_unprivileged_run_counts_the_hidden_sessions_once_everywhere(small: Cluster) -> None:
    with sessions(small) as s:
        for _ in range(4):
            s.open(app="billing")
        for _ in range(2):
            s.open(app="web", idle_in_tx=True)
        code, report = run_json("diagnose", small.dsn(user="nomon", password="nomon"))
        proc = run_cli("diagnose", small.dsn(user="nomon", password="nomon"))
    validate_diagnose(report)
    assert code == 1
    slots = report["slots"]
    # The six app sessions, and not the background processes that also read
    # <insufficient privilege> (the logical replication launcher runs as postgres, no database).
    assert (slots["used_by_client_backends"], slots["unknown_backends"]) == (0, 6)
    assert report["privileges"]["unknown_client_backends"] == 6
    hidden_rows = report["privileges"]["insufficient_privilege_rows"]
    assert hidden_rows > 6
    assert slots["headroom"]["ordinary_roles"] == 7
    assert slots["headroom_lower_bound"]["ordinary_roles"] == 1
    findings = {f["id"]: f for f in report["findings"]}
    missing = findings["missing-privilege"]
    assert missing["title"].startswith("6 session(s) that may be clients are hidden")
    assert f"{hidden_rows} row(s)" in missing["detail"]
    assert f"{hidden_rows - 6} are background processes" in missing["detail"]
    maybe = findings["slots-maybe"]
    assert (
        "up to 6 more" in maybe["detail"] and "Headroom for ordinary roles: 1-7" in maybe["detail"]
    )
    assert "GRANT pg_monitor TO nomon;" in maybe["remedy"][0]
    assert "│ headroom: ordinary roles" in proc.stdout and "1-7" in proc.stdout
    assert "up to 86% with the hidden sessions" in proc.stdout


def test_a_database_limit_refusal_is_not_a_full_server_and_prints_plain_quotes(
    small: Cluster,
) -> None:
    with sessions(small) as s:
        s.open(dbname="tiny", app="t")
        args = (
            "diagnose",
            small.dsn(user="app", password="app", dbname="tiny"),
            "--reserved-dsn",
            small.dsn(user="app", password="app"),
        )
        code, report = run_json(*args)
        proc = run_cli(*args)
    assert code == 2
    ids = [f["id"] for f in report["findings"]]
    assert ids[0] == "database-limit-refused:tiny" and "server-full" not in ids
    assert "database-limit-reached:tiny" in ids
    reached = next(f for f in report["findings"] if f["id"] == "database-limit-reached:tiny")
    assert reached["detail"] == (
        'New connections to tiny get 53300: too many connections for database "tiny".'
    )
    assert "\\" not in proc.stdout
    assert 'too many connections for database "tiny"' in proc.stdout


def test_raising_a_connection_limit_is_suggested_only_within_the_servers_headroom(
    small: Cluster,
) -> None:
    with sessions(small) as s:
        s.open(user="capped", password="capped", app="c")
        _, report = run_json("diagnose", small.dsn())
        finding = next(f for f in report["findings"] if f["id"] == "role-limit-reached:capped")
        # 6 free slots for ordinary roles: at most half of them, not the old "limit + 10".
        assert (
            'ALTER ROLE "capped" CONNECTION LIMIT 4;  -- 3 more: the server has 6 free slots for '
            "ordinary roles"
        ) in finding["remedy"]
        for _ in range(6):
            s.open(app="hog")
        _, report = run_json("diagnose", small.dsn())
        finding = next(f for f in report["findings"] if f["id"] == "role-limit-reached:capped")
        assert not any("ALTER ROLE" in r for r in finding["remedy"])
        assert any(
            r.startswith("do not raise the CONNECTION LIMIT of role capped")
            for r in finding["remedy"]
        )


def test_watch_json_writes_one_report_per_line(small: Cluster) -> None:
    command = [sys.executable, "-m", "pgfunnel", "diagnose", small.dsn()]
    proc = subprocess.Popen(
        [*command, "--watch", "0.2", "--format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    for line in lines + out.splitlines():
        report = json.loads(line)
        validate_diagnose(report)
        assert report["status"] in ("ok", "warning", "critical", "unknown")
