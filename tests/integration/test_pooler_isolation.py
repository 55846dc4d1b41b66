"""No client's unfinished work reaches another client: batches without Sync, partial headers,
refused message types, bounded logins and SETs safe in every encoding (issue 10, 1-3)."""

from __future__ import annotations

import contextlib
import itertools
import secrets
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgfunnel.proto import messages as m
from pgfunnel.throwaway import Cluster, free_port
from tests.integration.harness import Funnel, backends, own_role, wait_for
from tests.integration.rawproto import (
    error_fields,
    flush,
    raw_login,
    read_message,
    read_until,
    read_until_closed,
    recv_exact,
    rows,
    run_raw,
    startup,
    statement,
    sync,
)

TAG = secrets.token_hex(3)
ROLE, ROLE_PW = f"pgf_iso_{TAG}", "iso-pw"
TABLE = f"pgf_iso_t_{TAG}"


@pytest.fixture(scope="module")
def role(pg: Cluster) -> Iterator[str]:
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
    """Trust, so raw sockets log in; `one` has a single server, so every next client gets the
    backend the last one left behind."""
    own = f"host=127.0.0.1 port={pg.port} dbname=postgres user={ROLE} password={ROLE_PW}"
    funnel = Funnel(
        pg,
        settings={"auth_type": "trust", "query_wait_timeout": 60},
        databases={"main": own, "one": f"{own} pool_size=1"},
    )
    try:
        yield funnel.start()
    finally:
        funnel.stop()
    assert backends(pg, user=ROLE, state="idle in transaction") == 0


def committed(pg: Cluster, marker: str) -> int:
    return int(pg.psql(f"SELECT count(*) FROM {TABLE} WHERE marker = '{marker}'"))


def insert(marker: str) -> str:
    return f"INSERT INTO {TABLE} VALUES ('{marker}')"


def pid_on_one(f: Funnel) -> int:
    with raw_login(f.port, "one") as sock:
        return int(rows(run_raw(sock, "SELECT pg_backend_pid()"))[0][0] or 0)


def next_client_is_clean(f: Funnel, pg: Cluster) -> None:
    """The single server of `one` answers the next client's query with its own rows, outside
    any transaction, and nothing of this module sits idle in transaction."""
    with raw_login(f.port, "one") as sock:
        answer = run_raw(
            sock, "SELECT 'own answer', now() = statement_timestamp(), txid_current_if_assigned()"
        )
    assert rows(answer) == [["own answer", "t", None]], answer
    assert answer[-1] == (b"Z", b"I")
    wait_for(lambda: backends(pg, user=ROLE, state="idle in transaction") == 0, 10)


# --- 1. an extended-protocol batch without Sync ----------------------------------------------
@pytest.mark.parametrize("leave", ["close", "terminate"])
def test_unsynced_insert_of_a_client_that_leaves_is_never_committed(
    f: Funnel, pg: Cluster, leave: str
) -> None:
    marker = f"nosync-{secrets.token_hex(3)}"
    with raw_login(f.port, "one") as sock:
        sock.sendall(statement(insert(marker)) + flush())
        answer = read_until(sock, b"C")  # the INSERT ran, in a transaction no Sync has ended
        assert (b"C", b"INSERT 0 1\0") in answer
        if leave == "terminate":
            sock.sendall(m.terminate())
    for _ in range(3):  # other clients, each landing on the backend the batch ran on
        next_client_is_clean(f, pg)
    assert committed(pg, marker) == 0


def test_psycopg_pipeline_flushed_without_sync_then_the_process_dies(
    f: Funnel, pg: Cluster, tmp_path: Path
) -> None:
    marker = f"pipe-{secrets.token_hex(3)}"
    script = tmp_path / "die.py"
    script.write_text(
        "import os, sys, psycopg\n"
        "conn = psycopg.connect(sys.argv[1], autocommit=True)\n"
        "with conn.pipeline():\n"
        f"    conn.execute({insert(marker)!r})\n"
        "    conn.pgconn.send_flush_request()\n"
        "    conn.pgconn.flush()\n"
        "    import time; time.sleep(0.5)\n"
        "    os._exit(3)\n",
        encoding="utf-8",
    )
    proc = subprocess.run(
        [sys.executable, str(script), f.dsn(dbname="one", password=None)], timeout=60
    )
    assert proc.returncode == 3
    for _ in range(3):
        next_client_is_clean(f, pg)
    assert committed(pg, marker) == 0


def test_unsynced_begin_does_not_swallow_the_next_clients_insert(f: Funnel, pg: Cluster) -> None:
    marker = f"afterbegin-{secrets.token_hex(3)}"
    with raw_login(f.port, "one") as sock:
        sock.sendall(statement("BEGIN") + flush())
        assert (b"C", b"BEGIN\0") in read_until(sock, b"C")
    with raw_login(f.port, "one") as other:
        answer = run_raw(other, insert(marker))
    assert (b"C", b"INSERT 0 1\0") in answer
    assert answer[-1] == (b"Z", b"I")
    assert committed(pg, marker) == 1  # autocommit: the client's row is there to stay
    next_client_is_clean(f, pg)


def test_an_unsynced_failed_statement_leaves_no_server_deaf_to_the_next_client(
    f: Funnel, pg: Cluster
) -> None:
    with raw_login(f.port, "one") as sock:
        sock.sendall(statement("SELECT 1/0") + flush())
        error = read_until(sock, b"E")[-1]
        assert error_fields(error[1])["C"] == "22012"
    next_client_is_clean(f, pg)


def test_server_is_not_released_while_a_batch_after_the_last_sync_is_open(
    f: Funnel, pg: Cluster
) -> None:
    """ReadyForQuery 'I' for the first batch arrives while a second, unsynced one is on its
    way: the server stays with its client, so another client neither sees nor commits it."""
    marker = f"second-{secrets.token_hex(3)}"
    with raw_login(f.port, "one") as sock:
        sock.sendall(statement("SELECT pg_sleep(0.5)") + sync())
        time.sleep(0.1)
        sock.sendall(statement(insert(marker)) + flush())
        answer = read_until(sock, b"Z")  # the first batch's answer
        assert answer[-1] == (b"Z", b"I")
        answer = read_until(sock, b"C")
        assert (b"C", b"INSERT 0 1\0") in answer

        seen: list[Any] = []

        def other_client() -> None:
            with raw_login(f.port, "one") as other:
                seen.append(
                    rows(run_raw(other, f"SELECT count(*) FROM {TABLE} WHERE marker = '{marker}'"))
                )

        thread = threading.Thread(target=other_client)
        thread.start()
        # The other client waits in the queue: the only server is inside this batch.
        wait_for(lambda: f.pool("one", ROLE)["cl_waiting"] == 1, 10)
        assert not seen
    # This client left without Sync: its insert is gone, and the waiter runs on a clean server.
    thread.join(30)
    assert seen == [[["0"]]]
    assert committed(pg, marker) == 0
    next_client_is_clean(f, pg)


def test_a_synced_batch_after_a_released_one_commits_and_releases(f: Funnel, pg: Cluster) -> None:
    marker = f"synced-{secrets.token_hex(3)}"
    with raw_login(f.port, "one") as sock:
        sock.sendall(statement("SELECT pg_sleep(0.2)") + sync())
        time.sleep(0.05)
        sock.sendall(statement(insert(marker)))
        time.sleep(0.3)
        sock.sendall(sync())
        answer = read_until(sock, b"Z", 2)
        assert answer[-1] == (b"Z", b"I")
        wait_for(lambda: f.pool("one", ROLE)["sv_idle"] == 1, 10)
    assert committed(pg, marker) == 1


# --- 3. protocol edges -----------------------------------------------------------------------
def test_terminate_split_across_two_reads_leaves_nothing_in_the_backend(
    f: Funnel, pg: Cluster
) -> None:
    before = pid_on_one(f)
    with raw_login(f.port, "one") as sock:
        assert rows(run_raw(sock, "SELECT 1")) == [["1"]]
        sock.sendall(b"X\0\0")
        time.sleep(0.2)
        sock.sendall(b"\0\x04")
        assert read_until_closed(sock) == []
    next_client_is_clean(f, pg)
    assert pid_on_one(f) == before  # the backend was clean, so it was kept


@pytest.mark.parametrize("kind", [b"\x00", b"?", b"p"], ids=["nul", "question-mark", "password"])
def test_unknown_message_type_is_refused_by_the_pooler_and_costs_no_backend(
    f: Funnel, pg: Cluster, kind: bytes
) -> None:
    before = pid_on_one(f)
    with raw_login(f.port, "one") as sock:
        assert rows(run_raw(sock, "SELECT 1")) == [["1"]]
        sock.sendall(kind + struct.pack("!i", 8) + b"abcd")
        messages = read_until_closed(sock)
    errors = [error_fields(p) for k, p in messages if k == b"E"]
    assert [(e["S"], e["C"], e["M"]) for e in errors] == [("FATAL", "08P01", "unknown pkt")]
    code = kind[0]
    wait_for(lambda: f"unknown pkt from client: {code}/{code:#x}" in f.log(), 10)
    assert pid_on_one(f) == before  # no FATAL on the server, no new fork
    next_client_is_clean(f, pg)


def test_unknown_message_right_after_an_unsynced_batch_rolls_it_back(
    f: Funnel, pg: Cluster
) -> None:
    marker = f"unknown-{secrets.token_hex(3)}"
    with raw_login(f.port, "one") as sock:
        sock.sendall(statement(insert(marker)) + flush())
        read_until(sock, b"C")
        sock.sendall(b"?" + struct.pack("!i", 4))
        read_until_closed(sock)
    next_client_is_clean(f, pg)
    assert committed(pg, marker) == 0


def test_a_sync_in_the_chunk_of_a_refused_message_is_not_taken_as_sent(
    f: Funnel, pg: Cluster
) -> None:
    """The chunk with the unknown message is not passed on at all, Sync included: the batch
    before it stays open on the server, so the server must not go back to the pool as clean."""
    marker = f"chunk-{secrets.token_hex(3)}"
    with raw_login(f.port, "one") as sock:
        sock.sendall(statement(insert(marker)) + flush())
        read_until(sock, b"C")
        sock.sendall(sync() + b"\x00" + struct.pack("!i", 4))
        read_until_closed(sock)
    next_client_is_clean(f, pg)
    assert committed(pg, marker) == 0


def test_pipelined_ssl_requests_get_one_answer_then_postgresqls_refusal(f: Funnel) -> None:
    ssl_request = struct.pack("!ii", 8, 80877103)
    with socket.create_connection(("127.0.0.1", f.port), timeout=30) as sock:
        sock.sendall(ssl_request * 5000)
        assert sock.recv(1) == b"N"
        messages = read_until_closed(sock)
    errors = [error_fields(p) for k, p in messages if k == b"E"]
    assert len(errors) == 1
    assert errors[0]["C"] == "0A000"
    assert errors[0]["M"] == "unsupported frontend protocol 1234.5679: server supports 3.0"
    assert "Traceback" not in f.log() and "RecursionError" not in f.log()
    with raw_login(f.port, "main") as sock:  # still serving
        assert rows(run_raw(sock, "SELECT 'up'")) == [["up"]]


def test_ssl_then_gss_request_is_allowed_once_each(f: Funnel) -> None:
    with socket.create_connection(("127.0.0.1", f.port), timeout=30) as sock:
        sock.sendall(struct.pack("!ii", 8, 80877103) + struct.pack("!ii", 8, 80877104))
        assert recv_exact(sock, 2) == b"NN"
        sock.sendall(startup("postgres", "main"))
        assert read_until(sock, b"Z")[-1] == (b"Z", b"I")


@pytest.fixture
def sjis(make_cluster: Callable[..., Cluster]) -> Iterator[tuple[Cluster, Funnel]]:
    cluster = make_cluster(settings={"backslash_quote": "on"})
    cluster.psql("CREATE TABLE t (v int)")
    funnel = Funnel(
        cluster,
        settings={"auth_type": "trust"},
        databases={"one": f"host=127.0.0.1 port={cluster.port} dbname=postgres pool_size=1"},
    )
    try:
        yield cluster, funnel.start()
    finally:
        funnel.stop()


def test_parameter_sets_are_safe_in_a_client_only_encoding(sjis: tuple[Cluster, Funnel]) -> None:
    """A client in SJIS names itself with text whose UTF-8 bytes, read as SJIS, would hide a
    backslash: the pooler's SET for it must not end its string early (backslash_quote=on)."""
    cluster, f = sjis
    evil = "Õ\\'; insert into t values (31337); --"

    def run(app: str) -> None:
        with psycopg.connect(
            f.dsn(dbname="one", password=None),
            autocommit=True,
            prepare_threshold=None,
            client_encoding="SJIS",
            application_name=app,
        ) as conn:
            assert conn.execute("SELECT 'ok'").fetchone() == ("ok",)

    run("first")  # leaves the shared server in SJIS
    run(evil)  # lands on it: only application_name is SET, in SJIS
    run("third")
    assert cluster.psql("SELECT count(*) FROM t") == "0"
    # PostgreSQL keeps only printable ASCII of an application_name: the rest arrived intact.
    log = cluster.logfile.read_text(errors="replace")
    assert "syntax error" not in log


def test_non_ascii_startup_values_reach_the_server_as_sent(f: Funnel, pg: Cluster) -> None:
    """The escapes the SETs use read back as the client's own text: the value a client sees
    on a shared backend is the one it gets connecting to PostgreSQL directly."""
    for name in ["héllo wörld", "it's \\ fine", "表示 ok", "tab\there"]:
        with psycopg.connect(
            f.dsn(dbname="one", password=None), autocommit=True, application_name="other"
        ) as conn:
            conn.execute("SELECT 1")  # the shared server now carries another name
        direct = f"host=127.0.0.1 port={pg.port} dbname=postgres user={ROLE} password={ROLE_PW}"
        got = []
        for dsn in (direct, f.dsn(dbname="one", password=None)):
            with psycopg.connect(
                dsn, autocommit=True, prepare_threshold=None, application_name=name
            ) as conn:
                got.append(conn.execute("SELECT current_setting('application_name')").fetchone())
        assert got[0] == got[1], name


def test_a_startup_value_too_long_to_track_is_refused_and_costs_no_slot(f: Funnel) -> None:
    """A 5000-byte application_name fits a startup packet but not the switch's tracked values:
    the client hears why (22023) before it is welcomed, and nothing is left counted."""
    before = f.admin("SHOW LISTS")
    with socket.create_connection(("127.0.0.1", f.port)) as sock:
        sock.settimeout(30)
        sock.sendall(startup("postgres", "one", application_name="x" * 5000))
        answer = read_until_closed(sock)
    assert [kind for kind, _ in answer] == [b"E"]  # refused before any welcome
    fields = error_fields(answer[0][1])
    assert (fields["S"], fields["C"]) == ("FATAL", "22023")
    assert fields["M"] == 'invalid value for parameter "application_name": over 4096 bytes'
    with psycopg.connect(
        f.dsn(dbname="one", password=None), autocommit=True, application_name="y" * 4000
    ) as conn:
        assert conn.execute("SELECT length(current_setting('application_name'))").fetchone()
    after = f.admin("SHOW LISTS")
    used = {r["list"]: r["items"] for r in after}["used_clients"]
    assert used == {r["list"]: r["items"] for r in before}["used_clients"]


# --- 2. bounded memory before and during login -----------------------------------------------
def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
def scram(pg: Cluster, role: str) -> Iterator[Funnel]:
    own = f"host=127.0.0.1 port={pg.port} dbname=postgres user={ROLE} password={ROLE_PW}"
    funnel = Funnel(pg, databases={"main": own}, settings={"max_packet_size": 2**31 - 1})
    try:
        yield funnel.start()
    finally:
        funnel.stop()


def _to_sasl(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(startup("postgres", "main"))
    msg = read_message(sock)
    assert msg is not None and msg[0] == b"R"
    return sock


def test_an_oversized_password_message_is_refused_before_it_is_buffered(scram: Funnel) -> None:
    assert scram.proc is not None
    base = rss_kib(scram.proc.pid)
    socks = [_to_sasl(scram.port) for _ in range(2)]
    chunk = b"x" * (1 << 20)
    for sock in socks:
        try:
            sock.sendall(b"p" + struct.pack("!i", 2**31 - 1))
            for _ in range(200):  # up to 200 MiB each, as the attack streamed
                sock.sendall(chunk)
        except OSError:
            pass  # refused and closed, as it must be
    for sock in socks:
        with sock:
            messages = read_until_closed(sock)
            errors = [error_fields(p) for k, p in messages if k == b"E"]
            assert errors and errors[0]["C"] == "08P01", messages
    assert rss_kib(scram.proc.pid) - base < 40 * 1024
    # A password message over PostgreSQL's 64 kB limit for auth tokens is refused too.
    with _to_sasl(scram.port) as sock:
        sock.sendall(m.message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", 70000) + b"y" * 70000))
        errors = [error_fields(p) for k, p in read_until_closed(sock) if k == b"E"]
        assert errors and errors[0]["C"] == "08P01"


class HeldRelay:
    """A TCP relay to the cluster that holds every connection until released: the pool's
    first server login hangs meanwhile, as behind a slow network or a stuck server."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target = target_port
        self.release = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.threads: list[threading.Thread] = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        self.release.wait(60)
        with conn, socket.create_connection(("127.0.0.1", self.target)) as up:

            def pump(src: socket.socket, dst: socket.socket) -> None:
                try:
                    while data := src.recv(65536):
                        dst.sendall(data)
                except OSError:
                    pass
                finally:
                    for s in (src, dst):
                        with contextlib.suppress(OSError):
                            s.shutdown(socket.SHUT_RDWR)

            t = threading.Thread(target=pump, args=(up, conn), daemon=True)
            t.start()
            pump(conn, up)
            t.join(10)

    def close(self) -> None:
        self.closed = True
        self.release.set()
        self.listener.close()


def test_a_client_waiting_for_the_first_server_login_is_paused_not_buffered(
    pg: Cluster, role: str
) -> None:
    relay = HeldRelay(pg.port)
    own = f"user={ROLE} password={ROLE_PW} dbname=postgres"
    funnel = Funnel(
        pg,
        settings={"auth_type": "trust", "server_connect_timeout": 120},
        databases={
            "held": f"host=127.0.0.1 port={relay.port} {own}",
            "main": f"host=127.0.0.1 port={pg.port} {own}",
        },
    )
    funnel.start()
    try:
        assert funnel.proc is not None
        base = rss_kib(funnel.proc.pid)
        sock = socket.create_connection(("127.0.0.1", funnel.port), timeout=60)
        sock.sendall(startup("postgres", "held"))
        big = m.query("SELECT 1 --" + "x" * (1 << 20))
        count = 40  # 40 MiB pushed while the login hangs
        sent = []

        def push() -> None:
            for _ in range(count):
                sock.sendall(big)
                sent.append(1)

        writer = threading.Thread(target=push, daemon=True)
        writer.start()
        time.sleep(3)
        assert len(sent) < count  # the pooler stopped reading: the writer is blocked
        assert rss_kib(funnel.proc.pid) - base < 20 * 1024
        # Everyone else is served meanwhile.
        with raw_login(funnel.port, "main") as other:
            assert rows(run_raw(other, "SELECT 'meanwhile'")) == [["meanwhile"]]
        relay.release.set()
        writer.join(120)
        assert len(sent) == count
        answers = read_until(sock, b"Z", count + 1)  # the login's, then one per query
        assert sum(k == b"D" for k, _ in answers) == count
        sock.close()
    finally:
        funnel.stop()
        relay.close()


def test_silent_sockets_count_against_max_client_conn_and_make_room(pg: Cluster, role: str) -> None:
    metrics_port = free_port()
    own = f"host=127.0.0.1 port={pg.port} dbname=postgres user={ROLE} password={ROLE_PW}"
    funnel = Funnel(
        pg,
        settings={
            "auth_type": "trust",
            "max_client_conn": 20,
            "metrics_addr": "127.0.0.1",
            "metrics_port": metrics_port,
        },
        databases={"main": own},
    )
    funnel.start()
    silent: list[socket.socket] = []
    try:
        for _ in range(200):
            silent.append(socket.create_connection(("127.0.0.1", funnel.port), timeout=10))
        time.sleep(1.5)  # older than the grace a fresh login gets
        with raw_login(funnel.port, "main") as sock:
            assert rows(run_raw(sock, "SELECT 'in'")) == [["in"]]
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/live", timeout=10) as r:
            assert r.status == 200
        # The pooler closed the silent sockets over max_client_conn, each with the reason.
        closed = 0
        for s in silent:
            s.settimeout(0.05)
            try:
                messages = read_until_closed(s)
            except TimeoutError:
                continue  # still open: among the 20 the limit allows
            closed += 1
            assert [error_fields(p)["M"] for k, p in messages if k == b"E"] == [
                "no more connections allowed (max_client_conn)"
            ]
        assert closed >= 180
        wait_for(lambda: "client limit reached" in funnel.log(), 10)
    finally:
        for s in silent:
            s.close()
        funnel.stop()


def test_a_socket_flood_over_the_fd_limit_leaves_the_console_and_live_reachable(
    pg: Cluster, role: str
) -> None:
    metrics_port = free_port()
    own = f"host=127.0.0.1 port={pg.port} dbname=postgres user={ROLE} password={ROLE_PW}"
    funnel = Funnel(
        pg,
        settings={
            "auth_type": "trust",
            "max_client_conn": 10000,
            "metrics_addr": "127.0.0.1",
            "metrics_port": metrics_port,
        },
        databases={"main": own},
        nofile=256,
    )
    funnel.start()
    silent: list[socket.socket] = []
    try:
        for _ in range(600):
            try:
                silent.append(socket.create_connection(("127.0.0.1", funnel.port), timeout=10))
            except OSError:
                break
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/live", timeout=10) as r:
            assert r.status == 200
        time.sleep(1.5)  # the flood's silent sockets are past the grace: room is made
        assert funnel.admin("SHOW VERSION")
        with raw_login(funnel.port, "main") as sock:
            assert rows(run_raw(sock, "SELECT 'in'")) == [["in"]]
        wait_for(lambda: "client limit reached" in funnel.log(), 10)
        assert "Too many open files" not in funnel.log()
    finally:
        for s in silent:
            s.close()
        funnel.stop()


# --- the property: whatever a client sends and however it leaves, the next one is clean ------
UNITS = ["autocommit", "transaction", "ext-synced", "error-synced"]
ENDINGS = [
    "close",
    "terminate",
    "terminate-split",
    "ext-unsynced",
    "tx-open",
    "half",
    "unknown",
    "error-unsynced",
]


def _send_in_pieces(sock: socket.socket, data: bytes, cuts: list[int]) -> None:
    """Send `data` cut where asked, each piece its own segment (TCP_NODELAY and a pause), so
    that the pooler reads it in those pieces."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for a, b in itertools.pairwise(points):
        sock.sendall(data[a:b])
        time.sleep(0.002)


def _unit(sock: socket.socket, unit: str, marker: str, cuts: list[int]) -> bool:
    """Run one self-contained unit; True if its marker is committed by it."""
    if unit == "autocommit":
        _send_in_pieces(sock, m.query(insert(marker)), cuts)
        assert read_until(sock, b"Z")[-1] == (b"Z", b"I")
        return True
    if unit == "transaction":
        data = m.query("BEGIN") + m.query(insert(marker)) + m.query("COMMIT")
        _send_in_pieces(sock, data, cuts)
        assert read_until(sock, b"Z", 3)[-1] == (b"Z", b"I")
        return True
    if unit == "ext-synced":
        _send_in_pieces(sock, statement(insert(marker)) + sync(), cuts)
        assert read_until(sock, b"Z")[-1] == (b"Z", b"I")
        return True
    _send_in_pieces(sock, statement("SELECT 1/0") + sync(), cuts)
    assert read_until(sock, b"Z")[-1] == (b"Z", b"I")
    return False


def _ending(sock: socket.socket, ending: str, marker: str, cuts: list[int]) -> None:
    """Leave in one of the ways a client can; nothing of `marker` may be committed."""
    if ending == "terminate":
        sock.sendall(m.terminate())
    elif ending == "terminate-split":
        _send_in_pieces(sock, m.terminate(), cuts or [2])
    elif ending == "ext-unsynced":
        _send_in_pieces(sock, statement(insert(marker)) + flush(), cuts)
        read_until(sock, b"C")
        if cuts and cuts[0] % 2:
            sock.sendall(m.terminate())
    elif ending == "tx-open":
        _send_in_pieces(sock, m.query("BEGIN") + m.query(insert(marker)), cuts)
        read_until(sock, b"Z", 2)
    elif ending == "half":
        q = m.query(insert(marker))
        sock.sendall(q[: max(1, (cuts[0] if cuts else 7) % len(q))])
        time.sleep(0.05)
    elif ending == "unknown":
        _send_in_pieces(sock, statement(insert(marker)) + flush(), cuts)
        read_until(sock, b"C")
        sock.sendall(b"\x00" + struct.pack("!i", 4))
        read_until_closed(sock)
    elif ending == "error-unsynced":
        _send_in_pieces(sock, statement("SELECT 1/0") + flush(), cuts)
        read_until(sock, b"E")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    units=st.lists(st.sampled_from(UNITS), max_size=3),
    ending=st.sampled_from(ENDINGS),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=4),
)
def test_no_client_leaves_unfinished_work_on_a_pooled_server(
    f: Funnel, pg: Cluster, units: list[str], ending: str, cuts: list[int]
) -> None:
    tag = secrets.token_hex(4)
    durable = []
    with raw_login(f.port, "one") as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i, unit in enumerate(units):
            marker = f"prop-{tag}-{i}"
            if _unit(sock, unit, marker, cuts):
                durable.append(marker)
        _ending(sock, ending, f"prop-{tag}-end", cuts)
    next_client_is_clean(f, pg)
    assert committed(pg, f"prop-{tag}-end") == 0
    for marker in durable:
        assert committed(pg, marker) == 1
    pool = f.pool("one", ROLE)
    assert pool["sv_active"] == 0 and pool["sv_tested"] == 0 and pool["cl_waiting"] == 0
