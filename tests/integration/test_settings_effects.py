"""Settings that must really act, through a real `pgfunnel serve` and real clients: each test
fails if pgfunnel ignored its setting (log switches, verbosity, [databases] hosts and the `*`
entry, per-database startup parameters, connection caps, reset and check queries, and the
startup parameters re-applied between clients sharing one server)."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from pgfunnel.throwaway import Cluster
from tests.integration.harness import Funnel, backends, own_role, wait_for

TAG = secrets.token_hex(3)
ROLE, ROLE_PW = f"pgf_eff_{TAG}", "eff-pw"
# Two more roles that log in as themselves, for the per-database and per-user caps.
ROLE_A, ROLE_B = f"pgf_eff_a_{TAG}", f"pgf_eff_b_{TAG}"
CHECKS = f"pgf_eff_checks_{TAG}"
STAR_DB = f"pgf_eff_star_{TAG}"


@pytest.fixture(scope="module")
def role(pg: Cluster) -> Iterator[str]:
    """The role the [databases] entries log in as, so pg_stat_activity counts see only ours."""
    with own_role(
        pg,
        ROLE,
        ROLE_PW,
        f"CREATE TABLE {CHECKS} (n serial); ALTER TABLE {CHECKS} OWNER TO {ROLE}",
        f"DROP TABLE IF EXISTS {CHECKS}",
    ) as name:
        yield name


@pytest.fixture(scope="module")
def roles_ab(pg: Cluster) -> Iterator[tuple[str, str]]:
    with own_role(pg, ROLE_A, ROLE_PW), own_role(pg, ROLE_B, ROLE_PW):
        yield ROLE_A, ROLE_B


def _entry(pg: Cluster, extra: str = "", *, user: str | None = ROLE) -> str:
    """A [databases] line for the shared cluster, logging in as `user` (None: the client's)."""
    who = f" user={user} password={ROLE_PW}" if user else ""
    return f"host=127.0.0.1 port={pg.port} dbname=postgres{who} {extra}".strip()


def _pid(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


# --- log_connections, log_disconnections ---------------------------------------------------
@pytest.mark.parametrize(("connections", "disconnections"), [(1, 0), (0, 1)])
def test_log_connections_and_log_disconnections(
    funnel: Callable[..., Funnel], pg: Cluster, role: str, connections: int, disconnections: int
) -> None:
    """Each switch on shows its lines (client logins and new server connections; client and
    server closes), each switch off removes them, as PgBouncer gates the same lines."""
    f = funnel(
        settings={"log_connections": connections, "log_disconnections": disconnections},
        databases={"postgres": _entry(pg)},
    )
    with f.connect() as conn:
        conn.execute("SELECT 1")
    # A server close too: RECONNECT closes the idle server ("obsolete connection").
    f.admin("RECONNECT postgres")
    wait_for(lambda: backends(pg, user=role) == 0, 10)
    wait_for(lambda: "closing because: obsolete connection" in f.log() or not disconnections, 10)
    log = f.log()
    login = "login attempt: db=postgres user=postgres"
    if connections:
        assert login in log, log
        assert "new connection to server" in log, log
    else:
        assert "login attempt" not in log, log
        assert "new connection to server" not in log, log
    if disconnections:
        assert "closing because: client close request (age=" in log, log
        assert "closing because: obsolete connection" in log, log
    else:
        assert "closing because" not in log, log


# --- verbose / -v ---------------------------------------------------------------------------
def _serve(f: Funnel, *flags: str, timeout: float = 15.0) -> Funnel:
    """Start `pgfunnel serve` on f's config with extra command-line flags."""
    f.proc = subprocess.Popen(
        [sys.executable, "-m", "pgfunnel", "serve", "-q", *flags, str(f.config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert f.proc.poll() is None, f.proc.stderr.read() if f.proc.stderr else ""
        try:
            with socket.create_connection(("127.0.0.1", f.port), timeout=0.2):
                return f
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("pgfunnel did not start listening")


def _debug_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if " DEBUG " in line]


@pytest.mark.parametrize("how", ["none", "verbose=1", "-v"])
def test_verbose_adds_debug_lines(pg: Cluster, role: str, how: str) -> None:
    """A login, a query, a server connection and a close: at verbose=1 (or -v) the log has
    DEBUG lines, at verbose=0 none."""
    settings = {"verbose": 1} if how == "verbose=1" else {}
    f = Funnel(pg, settings=settings, databases={"postgres": _entry(pg)})
    try:
        _serve(f, *(["-v"] if how == "-v" else []))
        with f.connect() as conn:
            conn.execute("SELECT 1")
        wait_for(lambda: "closing because: client close request" in f.log(), 10)
        debug = _debug_lines(f.log())
        if how == "none":
            assert debug == []
        else:
            assert debug, f.log()
    finally:
        f.stop()


# --- [databases] host: a unix socket directory, a host name ---------------------------------
def test_database_host_unix_socket_directory(
    funnel: Callable[..., Funnel], pg: Cluster, role: str
) -> None:
    entry = f"host={pg.sockdir} port={pg.port} dbname=postgres user={ROLE}"  # local: trust
    f = funnel(databases={"postgres": entry})
    with f.connect() as conn:
        # A backend reached over a unix socket has no client address.
        assert conn.execute("SELECT inet_client_addr()").fetchone() == (None,)
        assert conn.execute("SELECT current_user").fetchone() == (ROLE,)


def test_database_host_name_localhost(
    funnel: Callable[..., Funnel], pg: Cluster, role: str
) -> None:
    """`localhost` is resolved; the cluster listens on 127.0.0.1 only, so an address that
    does not answer (::1) must not end the login."""
    entry = f"host=localhost port={pg.port} dbname=postgres user={ROLE} password={ROLE_PW}"
    f = funnel(databases={"postgres": entry})
    with f.connect() as conn:
        row = conn.execute("SELECT host(inet_client_addr()), current_user").fetchone()
        assert row == ("127.0.0.1", ROLE)


# --- the `*` fallback entry -----------------------------------------------------------------
@pytest.fixture
def star_db(pg: Cluster, role: str) -> Iterator[str]:
    pg.psql(f"CREATE DATABASE {STAR_DB}")
    try:
        yield STAR_DB
    finally:
        pg.psql(f"DROP DATABASE IF EXISTS {STAR_DB} WITH (FORCE)", check=False)


def test_star_entry_serves_a_database_not_listed(
    funnel: Callable[..., Funnel], pg: Cluster, star_db: str
) -> None:
    f = funnel(
        databases={
            "listed": _entry(pg),
            "*": f"host=127.0.0.1 port={pg.port} user={ROLE} password={ROLE_PW}",
        }
    )
    with f.connect(dbname=star_db) as conn:
        assert conn.execute("SELECT current_database(), current_user").fetchone() == (
            star_db,
            ROLE,
        )
    assert (star_db, ROLE) in {(r["database"], r["user"]) for r in f.admin("SHOW POOLS")}


async def test_star_entry_passes_the_name_to_the_server(
    funnel: Callable[..., Funnel], pg: Cluster, star_db: str
) -> None:
    """A name the server does not have either gets the server's own error, SQLSTATE and all."""
    f = funnel(databases={"*": f"host=127.0.0.1 port={pg.port} user={ROLE} password={ROLE_PW}"})
    with pytest.raises(asyncpg.InvalidCatalogNameError) as info:
        await asyncpg.connect(f.url(db=f"{star_db}_missing"), statement_cache_size=0)
    assert info.value.sqlstate == "3D000"
    assert info.value.args[0] == f'database "{star_db}_missing" does not exist'


# --- client_encoding, datestyle, timezone in [databases] ------------------------------------
def test_database_startup_parameters_reach_the_client(
    funnel: Callable[..., Funnel], pg: Cluster, role: str
) -> None:
    direct = pg.psql("SELECT current_setting('TimeZone') || '|' || current_setting('DateStyle')")
    assert direct.split("|") != ["Asia/Tokyo", "German, DMY"]
    f = funnel(
        databases={
            "postgres": _entry(pg, "client_encoding=LATIN1 datestyle=German timezone=Asia/Tokyo")
        }
    )
    with f.connect() as conn:
        assert conn.info.parameter_status("TimeZone") == "Asia/Tokyo"
        assert conn.info.parameter_status("DateStyle") == "German, DMY"
        assert conn.info.parameter_status("client_encoding") == "LATIN1"
        assert conn.info.encoding == "iso8859-1"
        row = conn.execute(
            "SELECT current_setting('TimeZone'), current_setting('DateStyle'),"
            " current_setting('client_encoding'), '2024-03-05'::date::text, 'é', octet_length('é')"
        ).fetchone()
        assert row == ("Asia/Tokyo", "German, DMY", "LATIN1", "05.03.2024", "é", 2)


# --- max_db_connections, max_user_connections -----------------------------------------------
async def _queue_load(f: Funnel, who: list[tuple[str, str]], per: int, xacts: int) -> list[int]:
    """`per` clients for each (user, dbname), each running `xacts` short transactions."""

    async def one(user: str, db: str, k: int) -> list[int]:
        conn = await asyncpg.connect(
            f.url(user=user, password=ROLE_PW, db=db), statement_cache_size=0
        )
        try:
            out = []
            for j in range(xacts):
                async with conn.transaction():
                    out.append(
                        int(await conn.fetchval("SELECT $1::int FROM pg_sleep(0.05)", k * 100 + j))
                    )
            return out
        finally:
            await conn.close()

    jobs = [one(u, d, i * per + k) for i, (u, d) in enumerate(who) for k in range(per)]
    results = await asyncio.gather(*jobs)
    return [v for r in results for v in r]


def _count_servers(pg: Cluster, users: tuple[str, ...]) -> int:
    names = ", ".join(f"'{u}'" for u in users)
    return int(
        pg.psql(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
            f" AND usename IN ({names})"
        )
    )


async def _capped_run(
    f: Funnel, pg: Cluster, who: list[tuple[str, str]], users: tuple[str, ...]
) -> tuple[list[int], int, int]:
    """Run the load while sampling server backends (pg_stat_activity) and cl_waiting."""
    peak_servers = 0
    peak_waiting = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak_servers, peak_waiting
        while not stop.wait(0.05):
            peak_servers = max(peak_servers, _count_servers(pg, users))
            waiting = sum(int(r["cl_waiting"]) for r in f.admin("SHOW POOLS"))
            peak_waiting = max(peak_waiting, waiting)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        values = await _queue_load(f, who, per=6, xacts=5)
    finally:
        stop.set()
        sampler.join()
    return values, peak_servers, peak_waiting


@pytest.mark.parametrize("where", ["databases", "pgbouncer"])
async def test_max_db_connections_caps_servers_and_queues_clients(
    funnel: Callable[..., Funnel], pg: Cluster, roles_ab: tuple[str, str], where: str
) -> None:
    """Two users' pools of 10 share one database capped at 3 servers: pg_stat_activity never
    shows more than 3 of their backends, clients queue, and every transaction is served."""
    cap = "max_db_connections=3"
    f = funnel(
        settings={"default_pool_size": 10, "query_wait_timeout": 60}
        | ({"max_db_connections": 3} if where == "pgbouncer" else {}),
        databases={"capdb": _entry(pg, cap if where == "databases" else "", user=None)},
        userlist={ROLE_A: ROLE_PW, ROLE_B: ROLE_PW},
    )
    who = [(ROLE_A, "capdb"), (ROLE_B, "capdb")]
    values, peak, waiting = await _capped_run(f, pg, who, roles_ab)
    assert sorted(values) == sorted(k * 100 + j for k in range(12) for j in range(5))
    assert peak == 3
    assert waiting > 0
    assert _count_servers(pg, roles_ab) <= 3


@pytest.mark.parametrize("where", ["users", "pgbouncer"])
async def test_max_user_connections_caps_servers_and_queues_clients(
    funnel: Callable[..., Funnel], pg: Cluster, roles_ab: tuple[str, str], where: str
) -> None:
    """One user's pools of 10 in two databases, capped at 2 servers for the user."""
    f = funnel(
        settings={"default_pool_size": 10, "query_wait_timeout": 60}
        | ({"max_user_connections": 2} if where == "pgbouncer" else {}),
        databases={"one": _entry(pg, user=None), "two": _entry(pg, user=None)},
        users={ROLE_A: "max_user_connections=2"} if where == "users" else None,
        userlist={ROLE_A: ROLE_PW},
    )
    who = [(ROLE_A, "one"), (ROLE_A, "two")]
    values, peak, waiting = await _capped_run(f, pg, who, (ROLE_A,))
    assert sorted(values) == sorted(k * 100 + j for k in range(12) for j in range(5))
    assert peak == 2
    assert waiting > 0


# --- server_reset_query_always in transaction mode ------------------------------------------
@pytest.mark.parametrize("always", [1, 0])
async def test_server_reset_query_always_in_transaction_mode(
    funnel: Callable[..., Funnel], pg: Cluster, role: str, always: int
) -> None:
    """pool_size=1, transaction mode: a session SET one client left on the server is gone for
    the next, by DISCARD ALL after every transaction when server_reset_query_always=1, and when
    0 because the switch RESETs it at the next client's link (issue 14: settings follow their
    client). The startup parameters of each client survive the reset."""
    f = funnel(
        settings={"server_reset_query_always": always, "pool_mode": "transaction"},
        databases={"postgres": _entry(pg, "pool_size=1")},
    )
    a = await asyncpg.connect(
        f.url(), statement_cache_size=0, server_settings={"TimeZone": "Asia/Tokyo"}
    )
    b = await asyncpg.connect(
        f.url(), statement_cache_size=0, server_settings={"TimeZone": "America/Lima"}
    )
    try:
        default = await b.fetchval("SHOW work_mem")
        assert default != "7MB"
        pid = await a.fetchval("SELECT pg_backend_pid()")
        await a.execute("SET work_mem = '7MB'")
        row = await b.fetchrow("SELECT current_setting('work_mem'), pg_backend_pid()")
        assert row[1] == pid  # the same server
        assert row[0] == default
        if not always:  # a's SET follows a (with the reset query, DISCARD ALL ends it)
            assert await a.fetchval("SHOW work_mem") == "7MB"
        for conn, tz in ((a, "Asia/Tokyo"), (b, "America/Lima"), (a, "Asia/Tokyo")):
            assert await conn.fetchval("SHOW TimeZone") == tz
    finally:
        await a.close()
        await b.close()


# --- server_check_delay with server_check_query ---------------------------------------------
def _checks(pg: Cluster) -> int:
    return int(pg.psql(f"SELECT count(*) FROM {CHECKS}"))


def test_server_check_delay_checks_only_servers_idle_that_long(
    funnel: Callable[..., Funnel], pg: Cluster, role: str
) -> None:
    """server_check_delay=2: reuses within 2 s run no check; a reuse after 2.5 s idle runs
    server_check_query once."""
    f = funnel(
        settings={
            "server_check_delay": 2,
            "server_check_query": f"INSERT INTO {CHECKS} DEFAULT VALUES",
        },
        databases={"postgres": _entry(pg, "pool_size=1")},
    )
    with f.connect() as conn:
        conn.execute("SELECT 1")
        before = _checks(pg)
        for _ in range(5):
            assert conn.execute("SELECT 2").fetchone() == (2,)
        assert _checks(pg) == before
        time.sleep(2.5)
        assert conn.execute("SELECT 3").fetchone() == (3,)
        assert _checks(pg) == before + 1
        assert conn.execute("SELECT 4").fetchone() == (4,)
        assert _checks(pg) == before + 1


def test_server_terminated_while_idle_is_replaced_without_a_client_error(
    funnel: Callable[..., Funnel], pg: Cluster, role: str
) -> None:
    f = funnel(
        settings={"server_check_delay": 1, "server_check_query": "SELECT 1"},
        databases={"postgres": _entry(pg, "pool_size=1")},
    )
    with f.connect() as conn:
        first = _pid(conn)
        assert pg.psql(f"SELECT pg_terminate_backend({first})") == "t"
        wait_for(
            lambda: pg.psql(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {first}") == "0"
        )
        time.sleep(1.5)  # idle longer than server_check_delay
        second = _pid(conn)
        assert second != first
        assert conn.execute("SELECT 'no error'").fetchone() == ("no error",)
    assert _pool_servers(f) == 1


def _pool_servers(f: Funnel) -> int:
    row = f.pool(user=ROLE)
    return int(row["sv_active"] + row["sv_idle"] + row["sv_used"] + row["sv_tested"])


def test_server_check_query_finds_an_idle_server_that_no_longer_answers(
    funnel: Callable[..., Funnel], pg: Cluster, role: str
) -> None:
    """The idle server's backend is frozen (SIGSTOP) after pg_terminate_backend: its socket
    stays open, so only server_check_query can tell. The check gets no answer within
    server_connect_timeout, the server is replaced, and the client's query is answered by a
    new backend without an error."""
    f = funnel(
        settings={
            "server_check_delay": 1,
            "server_check_query": "SELECT 1",
            "server_connect_timeout": 2,
        },
        databases={"postgres": _entry(pg, "pool_size=1")},
    )
    with f.connect() as conn:
        frozen = _pid(conn)
        os.kill(frozen, signal.SIGSTOP)
        try:
            pg.psql(f"SELECT pg_terminate_backend({frozen}, 0)")
            time.sleep(1.5)  # idle longer than server_check_delay
            result: list[Any] = []

            def ask() -> None:
                try:
                    result.append(_pid(conn))
                except BaseException as exc:
                    result.append(exc)

            asker = threading.Thread(target=ask, daemon=True)
            asker.start()
            asker.join(30)
            assert result, "the query hung on the frozen server: it was handed out unchecked"
            assert isinstance(result[0], int), result
            assert result[0] != frozen
        finally:
            os.kill(frozen, signal.SIGCONT)
        assert conn.execute("SELECT 'no error'").fetchone() == ("no error",)
    wait_for(lambda: "server did not answer the pooler's own query" in f.log(), 10)


# --- tracked startup parameters re-applied on a shared server -------------------------------
# TimeZone and application_name: test_pooler_protocol.py's
# test_startup_parameters_follow_each_client_on_a_shared_backend.
TRACKED_SQL = (
    "SELECT current_setting('DateStyle'), '2024-03-05'::date::text,"
    " current_setting('IntervalStyle'), '1 day 2 hours'::interval::text,"
    " current_setting('standard_conforming_strings'), length('a\\b'), pg_backend_pid()"
)


async def test_datestyle_intervalstyle_standard_conforming_strings_follow_each_client(
    funnel: Callable[..., Funnel], pg: Cluster, role: str
) -> None:
    """pool_size=1, transaction mode: two clients with different DateStyle, IntervalStyle and
    standard_conforming_strings take turns on one backend; each always sees its own, by the
    settings and by what the server does with them; a SET follows its client too."""
    f = funnel(
        settings={"pool_mode": "transaction"},
        databases={"postgres": _entry(pg, "pool_size=1")},
    )
    a = await asyncpg.connect(
        f.url(),
        statement_cache_size=0,
        server_settings={
            "DateStyle": "German, DMY",
            "IntervalStyle": "sql_standard",
            "standard_conforming_strings": "off",
        },
    )
    b = await asyncpg.connect(
        f.url(),
        statement_cache_size=0,
        server_settings={
            "DateStyle": "SQL, MDY",
            "IntervalStyle": "iso_8601",
            "standard_conforming_strings": "on",
        },
    )
    want_a = ("German, DMY", "05.03.2024", "sql_standard", "1 2:00:00", "off", 2)
    want_b = ("SQL, MDY", "03/05/2024", "iso_8601", "P1DT2H", "on", 3)
    try:
        pids = set()
        for _ in range(3):
            for conn, want in ((a, want_a), (b, want_b)):
                async with conn.transaction():
                    row = await conn.fetchrow(TRACKED_SQL)
                assert tuple(row)[:6] == want
                pids.add(row[6])
        assert len(pids) == 1
        await a.execute("SET IntervalStyle = 'postgres_verbose'")
        for _ in range(2):
            assert tuple(await b.fetchrow(TRACKED_SQL))[:6] == want_b
            row = await a.fetchrow(TRACKED_SQL)
            assert tuple(row)[2:4] == ("postgres_verbose", "@ 1 day 2 hours")
    finally:
        await a.close()
        await b.close()


def test_client_encoding_follows_each_client(
    funnel: Callable[..., Funnel], pg: Cluster, role: str
) -> None:
    """LATIN1 and UTF8 clients take turns on one backend: the server decodes each client's
    bytes in that client's encoding (a wrong one would misread é or refuse it)."""
    f = funnel(
        settings={"pool_mode": "transaction"},
        databases={"postgres": _entry(pg, "pool_size=1")},
    )
    sql = "SELECT current_setting('client_encoding'), 'é', octet_length('é'), pg_backend_pid()"
    with (
        f.connect(client_encoding="LATIN1") as latin,
        f.connect(client_encoding="UTF8") as utf,
    ):
        pids = set()
        for _ in range(3):
            for conn, enc in ((latin, "LATIN1"), (utf, "UTF8")):
                with conn.transaction():
                    row = conn.execute(sql).fetchone()
                assert row is not None
                assert row[:3] == (enc, "é", 2)
                pids.add(row[3])
        assert len(pids) == 1
        assert latin.info.encoding == "iso8859-1"
        assert utf.info.encoding == "utf-8"
