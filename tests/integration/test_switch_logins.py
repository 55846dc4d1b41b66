"""Logins the switch runs alone (src/pgfunnel/_switch/fastlogin.c, net/fast_login.py).

After a client of a (database, user) pair has logged in through Python, the next logins of
the pair are checked and welcomed in the switch's thread. Seen from a client nothing differs:
the same exchange, the same errors with the same SQLSTATEs, the same parameters, a cancel key
that cancels, the same limits. The /metrics counter `pgfunnel_client_logins_total{path}` says
where each login ran, so each test here proves it exercised the switch's path.
"""

from __future__ import annotations

import hashlib
import re
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from pgfunnel.proto import messages as m
from pgfunnel.proto.auth import ServerAuth, md5_response, scram_keys
from pgfunnel.proto.messages import ServerError
from pgfunnel.throwaway import SUPERUSER, SUPERUSER_PASSWORD, Cluster
from tests.integration.harness import ADMIN_PASSWORD, ADMIN_USER, Funnel, wait_for
from tests.integration.test_metrics import scrape, start_with_metrics
from tests.switch.conftest import read_msg

USER = "alice"
PASSWORD = "alice-secret"


def _scram_secret(password: str) -> str:
    import base64

    salt = b"0123456789abcdef"
    _, stored, server = scram_keys(password, salt, 4096)
    b64 = base64.b64encode
    return f"SCRAM-SHA-256$4096:{b64(salt).decode()}${b64(stored).decode()}:{b64(server).decode()}"


def _start(
    funnel: Callable[..., Funnel],
    pg: Cluster,
    *,
    auth_type: str = "md5",
    secret: str = PASSWORD,
    **settings: Any,
) -> tuple[Funnel, str]:
    """A pooler whose clients log in as alice (known to the auth file only); its servers log in
    as the superuser the [databases] entry names."""
    server = (
        f"host=127.0.0.1 port={pg.port} dbname=postgres"
        f" user={SUPERUSER} password={SUPERUSER_PASSWORD}"
    )
    return start_with_metrics(
        funnel,
        settings={"auth_type": auth_type, **settings},
        databases={"postgres": server},
        userlist={USER: secret},
    )


def _connect(f: Funnel, password: str = PASSWORD, **extra: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(
        f.dsn(user=USER, password=password, **extra), autocommit=True, prepare_threshold=None
    )


def _logins(base: str) -> dict[str, float]:
    samples = scrape(base)
    return {
        dict(labels)["path"]: value
        for (name, labels), value in samples.items()
        if name == "pgfunnel_client_logins_total"
    }


def _warm(f: Funnel, base: str, pooler: int = 1) -> None:
    """A login through Python, then a wait until Python has counted it: the route for the next
    ones is given just after the welcome goes out, so a client quicker than that would log in
    through Python again. A query first: a client gone before Python hands it to its pool is
    never pooled (nor counted)."""
    with _connect(f) as conn:
        conn.execute("SELECT 1")
    wait_for(lambda: _logins(base)["pooler"] == pooler, timeout=5)


def _logins_reach(base: str, pooler: int, switch: int) -> None:
    """Python hears of a switch login just after the client does: wait for its count."""
    want = {"pooler": pooler, "switch": switch}
    try:
        wait_for(lambda: _logins(base) == want, timeout=5)
    except AssertionError:
        assert _logins(base) == want  # the figures in the failure


@pytest.mark.parametrize(
    ("auth_type", "secret"),
    [
        ("md5", PASSWORD),
        ("md5", "md5" + hashlib.md5((PASSWORD + USER).encode()).hexdigest()),
        ("scram-sha-256", PASSWORD),
        ("scram-sha-256", _scram_secret(PASSWORD)),
        ("md5", _scram_secret(PASSWORD)),  # md5 answered with SCRAM, as PgBouncer does
    ],
    ids=["md5-plain", "md5-secret", "scram-plain", "scram-secret", "md5-auth-scram-secret"],
)
def test_repeat_logins_run_in_the_switch_and_look_the_same(
    funnel: Callable[..., Funnel], pg: Cluster, auth_type: str, secret: str
) -> None:
    f, base = _start(funnel, pg, auth_type=auth_type, secret=secret)
    with _connect(f) as first:
        assert first.execute("SELECT 1").fetchone() == (1,)
    _logins_reach(base, 1, 0)
    for i in range(10):
        with _connect(f, application_name=f"app{i}", client_encoding="LATIN1") as conn:
            # The welcome shows the client's own values; the server runs with them.
            assert conn.info.parameter_status("application_name") == f"app{i}"
            assert conn.info.parameter_status("client_encoding") == "LATIN1"
            assert conn.info.parameter_status("server_version")  # the pool's, as Python's
            assert conn.info.backend_pid != 0
            row = conn.execute(
                "SELECT current_user, current_setting('application_name'),"
                " current_setting('client_encoding')"
            ).fetchone()
            assert row == (SUPERUSER, f"app{i}", "LATIN1")
    _logins_reach(base, 1, 10)
    # SHOW CLIENTS lists a switch login as any other.
    with _connect(f, application_name="shown") as conn:
        conn.execute("SELECT 1")
        local_port = conn.pgconn.port
        rows = [r for r in f.admin("SHOW CLIENTS") if r["user"] == USER]
        assert len(rows) == 1
        row = rows[0]
        assert (row["database"], row["addr"], row["local_addr"]) == (
            "postgres",
            "127.0.0.1",
            "127.0.0.1",
        )
        assert row["local_port"] == int(local_port) and row["port"] > 0
        assert row["application_name"] == "shown"
        assert row["state"] in ("idle", "active")
    # Every login of the run is in the log, as Python's are.
    attempt = f"login attempt: db=postgres user={USER} tls=no"
    wait_for(lambda: f.log().count(attempt) == 12)


def test_a_burst_of_short_switch_logins_is_logged_and_counted_out(
    funnel: Callable[..., Funnel], pg: Cluster
) -> None:
    """Logins that come and go within one of Python's drains (a connection storm's) get both
    log lines with their reasons, and leave no client counted or listed behind."""
    f, base = _start(funnel, pg)
    _warm(f, base)

    def one(i: int) -> None:
        with _connect(f, application_name=f"burst{i}") as conn:
            assert conn.execute("SELECT %s::int", (i,)).fetchone() == (i,)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _logins_reach(base, 1, 40)
    log = f.log()
    assert log.count(f"login attempt: db=postgres user={USER} tls=no") == 41
    wait_for(lambda: f.log().count("closing because: client close request") >= 41, timeout=5)
    samples = scrape(base)
    assert samples[("pgfunnel_client_connections", ())] == 0
    assert [r for r in f.admin("SHOW CLIENTS") if r["user"] == USER] == []
    pool = f.pool(user=SUPERUSER)
    assert (pool["cl_active"], pool["cl_waiting"]) == (0, 0)


def test_a_switch_login_that_sends_an_unknown_message_at_once_is_logged_as_such(
    funnel: Callable[..., Funnel], pg: Cluster
) -> None:
    """A client logged in by the switch whose next message has an unknown type: it gets
    PgBouncer's FATAL, and its lines say so even when its login and its close reach Python in
    one drain (no Client is made for such a login, net/fast_login.py's Fleeting)."""
    f, base = _start(funnel, pg)
    _warm(f, base)
    sock = socket.create_connection(("127.0.0.1", f.port), timeout=10)
    port = sock.getsockname()[1]
    with sock:
        sock.sendall(m.startup_message({"user": USER, "database": "postgres"}))
        auth = ServerAuth(USER, PASSWORD)
        while (kind := read_msg(sock))[0] != b"Z":
            if kind[0] == b"R":
                (code,) = struct.unpack("!i", kind[1][:4])
                reply = auth.respond(code, kind[1][4:])
                if reply:
                    sock.sendall(reply)
        sock.sendall(b"?" + struct.pack("!i", 8) + b"abcd")
        kind, body = read_msg(sock)
    assert kind == b"E"
    error = m.parse_error_fields(body)
    assert (error.severity, error.sqlstate, error.message) == ("FATAL", "08P01", "unknown pkt")
    _logins_reach(base, 1, 1)
    wait_for(lambda: "unknown pkt from client: 63/0x3f" in f.log(), timeout=5)
    lines = [line for line in f.log().splitlines() if f"@127.0.0.1:{port} " in line]
    assert [re.sub(r".* C-0x[0-9a-f]+: \S+ ", "", line) for line in lines] == [
        f"login attempt: db=postgres user={USER} tls=no",
        "unknown pkt from client: 63/0x3f",
        "closing because: unknown pkt (age=0s)",
    ]
    assert len({re.search(r"C-0x[0-9a-f]+", line)[0] for line in lines}) == 1  # type: ignore[index]
    assert scrape(base)[("pgfunnel_client_connections", ())] == 0


def _raw_login(f: Funnel, password: str, **params: str) -> tuple[list[bytes], ServerError | None]:
    """A login by hand (ServerAuth plays the client): the message types received up to the
    first ReadyForQuery or ErrorResponse, and the error's fields if one came."""
    sock = socket.create_connection(("127.0.0.1", f.port), timeout=10)
    with sock:
        sock.sendall(m.startup_message({"user": USER, "database": "postgres", **params}))
        auth = ServerAuth(USER, password)
        kinds: list[bytes] = []
        while True:
            kind, body = read_msg(sock)
            kinds.append(kind)
            if kind == b"E":
                return kinds, m.parse_error_fields(body)
            if kind == b"Z":
                # A query first: Python hands the client to its pool (and counts the login)
                # just after the welcome, and a client gone before that is never pooled.
                sock.sendall(m.query("SELECT 1"))
                while read_msg(sock)[0] != b"Z":
                    pass
                sock.sendall(m.message(b"X", b""))
                return kinds, None
            if kind == b"R":
                (code,) = struct.unpack("!i", body[:4])
                reply = auth.respond(code, body[4:])
                if reply:
                    sock.sendall(reply)


@pytest.mark.parametrize("auth_type", ["md5", "scram-sha-256"])
def test_a_wrong_password_is_refused_by_the_switch_as_by_python(
    funnel: Callable[..., Funnel], pg: Cluster, auth_type: str
) -> None:
    f, base = _start(funnel, pg, auth_type=auth_type)
    _, slow = _raw_login(f, "wrong")  # no route yet: Python refuses
    kinds, ok = _raw_login(f, PASSWORD)
    assert ok is None and kinds[-1] == b"Z" and b"K" in kinds
    wait_for(lambda: _logins(base)["pooler"] == 1, timeout=5)  # the route is given
    _, fast = _raw_login(f, "wrong")  # the route: the switch refuses
    assert slow is not None and fast is not None
    assert (fast.severity, fast.sqlstate, fast.message) == (
        slow.severity,
        slow.sqlstate,
        slow.message,
    )
    assert (fast.sqlstate, fast.message) == (
        "28P01",
        f'password authentication failed for user "{USER}"',
    )
    _logins_reach(base, 1, 0)
    samples = scrape(base)
    refused = samples[("pgfunnel_clients_refused_total", (("reason", "auth_failed"),))]
    assert refused == 2
    closing = f'closing because: password authentication failed for user "{USER}"'
    wait_for(lambda: f.log().count(closing) == 2)
    # Each refusal's lines name its own connection (the switch's id), as Python's do.
    log_text = f.log()
    ids = re.findall(r"C-(0x[0-9a-f]+): \S+ " + re.escape(closing), log_text)
    assert len(set(ids)) == 2 and "0x0" not in ids, ids
    for cid in ids:
        assert re.search(rf"C-{cid}: \S+ login attempt: ", log_text), cid
    with _connect(f):  # and the route still serves the right password
        pass
    wait_for(lambda: _logins(base)["switch"] == 1, timeout=5)


def test_reload_with_a_new_password_ends_the_old_one_at_once(
    funnel: Callable[..., Funnel], pg: Cluster
) -> None:
    f, base = _start(funnel, pg)
    _warm(f, base)
    with _connect(f):
        pass
    _logins_reach(base, 1, 1)
    f.userlist_path.write_text(
        f'"{USER}" "new-secret"\n"{ADMIN_USER}" "{ADMIN_PASSWORD}"\n', encoding="utf-8"
    )
    f.admin("RELOAD")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _connect(f)
    with _connect(f, password="new-secret") as conn:
        assert conn.execute("SELECT 2").fetchone() == (2,)


def test_a_login_the_switch_ran_before_a_sighup_is_judged_by_the_old_config(
    funnel: Callable[..., Funnel], pg: Cluster
) -> None:
    """The switch lets a pooled client's login event wait some milliseconds before Python hears
    of it. A SIGHUP that changes the password in that time must not make Python judge the
    login by the new file, and close a client that logged in rightly."""
    f, base = _start(funnel, pg)
    _warm(f, base)
    with _connect(f) as conn:
        f.userlist_path.write_text(
            f'"{USER}" "new-secret"\n"{ADMIN_USER}" "{ADMIN_PASSWORD}"\n', encoding="utf-8"
        )
        f.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "got SIGHUP, re-reading config" in f.log(), timeout=10)
        with _connect(f, password="new-secret") as other:  # the reload is done
            assert other.execute("SELECT 1").fetchone() == (1,)
        assert conn.execute("SELECT 2").fetchone() == (2,)
    assert "configuration changed during this login" not in f.log()
    _logins_reach(base, 2, 1)  # after the reload the pair logs in through Python again
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _connect(f)


def test_disable_and_kill_reach_the_switch_logins(
    funnel: Callable[..., Funnel], pg: Cluster
) -> None:
    f, base = _start(funnel, pg)
    _warm(f, base)
    with _connect(f):
        pass
    wait_for(lambda: _logins(base)["switch"] == 1, timeout=5)
    f.admin("DISABLE postgres")
    with pytest.raises(psycopg.OperationalError, match="database does not allow connections"):
        _connect(f)
    f.admin("ENABLE postgres")
    _warm(f, base, pooler=2)  # the route comes back after a Python login
    with _connect(f) as conn:
        conn.execute("SELECT 1")
    wait_for(lambda: _logins(base)["switch"] == 2, timeout=5)


def test_a_switch_login_can_be_cancelled(funnel: Callable[..., Funnel], pg: Cluster) -> None:
    f, base = _start(funnel, pg)
    _warm(f, base)
    with _connect(f) as conn:
        wait_for(lambda: _logins(base)["switch"] == 1, timeout=5)
        timer = threading.Timer(0.5, conn.cancel)
        timer.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(30)")
        timer.join()
        assert conn.execute("SELECT 3").fetchone() == (3,)


def test_startup_packets_the_switch_does_not_run_go_to_python(
    funnel: Callable[..., Funnel], pg: Cluster
) -> None:
    f, base = _start(funnel, pg, ignore_startup_parameters="extra_float_digits")
    _warm(f, base)
    # A parameter Python refuses, one it ignores, and no SSLRequest at all.
    with pytest.raises(psycopg.OperationalError, match="unsupported startup parameter: options"):
        _connect(f, options="'-c work_mem=1MB'")
    with _connect(f, sslmode="disable") as conn:
        conn.execute("SELECT 1")
    raw = _raw(f)
    raw.sendall(
        m.startup_message({"user": USER, "database": "postgres", "extra_float_digits": "2"})
    )
    kind, body = read_msg(raw)
    assert kind == b"R" and struct.unpack("!i", body[:4])[0] == m.AUTH_MD5
    raw.close()
    with pytest.raises(psycopg.OperationalError, match="SSL"):
        _connect(f, sslmode="require")  # the switch says 'N' as Python does
    _logins_reach(base, 1, 1)


def test_max_client_conn_still_refuses(funnel: Callable[..., Funnel], pg: Cluster) -> None:
    f, base = _start(funnel, pg, max_client_conn=3)
    _warm(f, base)
    held = [_connect(f) for _ in range(3)]
    try:
        wait_for(lambda: _logins(base)["switch"] >= 1, timeout=5)
        with pytest.raises(psycopg.OperationalError, match="max_client_conn"):
            _connect(f)
    finally:
        for conn in held:
            conn.close()


def _raw(f: Funnel) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", f.port), timeout=10)
    return sock


def test_a_query_sent_with_the_password_is_run(funnel: Callable[..., Funnel], pg: Cluster) -> None:
    """A client that pipelines its first query after its password message (in one write):
    the switch welcomes it and carries the query on, answered after the ReadyForQuery."""
    f, base = _start(funnel, pg)
    _warm(f, base)
    sock = _raw(f)
    with sock:
        sock.sendall(m.startup_message({"user": USER, "database": "postgres"}))
        kind, body = read_msg(sock)
        assert kind == b"R" and struct.unpack("!i", body[:4])[0] == m.AUTH_MD5
        salt = body[4:8]
        answer = md5_response(USER, PASSWORD, salt).encode() + b"\0"
        sock.sendall(m.message(b"p", answer) + m.query("SELECT 40 + 2"))
        seen: list[bytes] = []
        data_rows: list[bytes] = []
        while seen.count(b"Z") < 2:
            kind, body = read_msg(sock)
            seen.append(kind)
            if kind == b"D":
                data_rows.append(body)
        assert seen[0] == b"R" and b"K" in seen and seen.index(b"Z") < seen.index(b"T")
        assert data_rows and data_rows[0].endswith(b"42")
        sock.sendall(m.message(b"X", b""))
    wait_for(lambda: _logins(base)["switch"] == 1, timeout=5)


def test_silent_and_stalled_logins_meet_client_login_timeout(
    funnel: Callable[..., Funnel], pg: Cluster
) -> None:
    f, base = _start(funnel, pg, client_login_timeout=2)
    _warm(f, base)
    silent = _raw(f)  # says nothing: the switch hands it to Python after a grace
    stalled = _raw(f)  # asked for its password, never answers: the switch times it out
    with silent, stalled:
        stalled.sendall(m.startup_message({"user": USER, "database": "postgres"}))
        kind, _ = read_msg(stalled)
        assert kind == b"R"
        started = time.monotonic()
        for sock in (stalled, silent):
            kind, body = read_msg(sock)
            assert kind == b"E"
            fields = m.parse_error_fields(body)
            assert (fields.sqlstate, fields.message) == ("08P01", "client_login_timeout")
            assert sock.recv(1) == b""
        assert time.monotonic() - started < 15
    wait_for(lambda: f.log().count("closing because: client_login_timeout") == 2)
    samples = scrape(base)
    assert samples[("pgfunnel_clients_refused_total", (("reason", "client_login_timeout"),))] == 2
