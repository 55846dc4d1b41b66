"""Session state follows its client through transaction pooling (issue 14, points 2 and 3): a
SET or RESET, and a SQL PREPARE or DEALLOCATE, run outside a transaction in either protocol, is
replayed on whichever server the client lands on, and never stays behind for the next client
of that server."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pgfunnel.throwaway import Cluster
from tests.integration.harness import Funnel, backends, own_role

TAG = secrets.token_hex(3)
ROLE, ROLE_PW = f"pgf_set_{TAG}", "set-pw"
SCHEMA_A, SCHEMA_B = f"pgf_set_a_{TAG}", f"pgf_set_b_{TAG}"


@pytest.fixture(scope="module")
def f(pg: Cluster) -> Iterator[Funnel]:
    setup = []
    for schema, value in ((SCHEMA_A, "a"), (SCHEMA_B, "b"), ("public", "public")):
        if schema != "public":
            setup.append(f"CREATE SCHEMA {schema}")
        table = f"{schema}.where_{TAG}"
        setup.append(f"CREATE TABLE {table} AS SELECT '{value}'::text AS v")
    drops = [f"DROP SCHEMA IF EXISTS {SCHEMA_A}, {SCHEMA_B} CASCADE"]
    drops.append(f"DROP TABLE IF EXISTS public.where_{TAG}")
    with own_role(pg, ROLE, ROLE_PW, *setup, *drops):
        dsn = f"host=127.0.0.1 port={pg.port} dbname=postgres user={ROLE} password={ROLE_PW}"
        funnel = Funnel(
            pg,
            settings={"auth_type": "trust"},
            databases={"two": f"{dsn} pool_size=2", "one": f"{dsn} pool_size=1"},
            userlist={ROLE: ROLE_PW},
        )
        try:
            yield funnel.start()
        finally:
            funnel.stop()
        assert backends(pg, user=ROLE, state="idle in transaction") == 0


def _connect(f: Funnel, db: str = "two", **kw: Any) -> psycopg.Connection[Any]:
    kw.setdefault("prepare_threshold", None)
    return psycopg.connect(f.dsn(user=ROLE, dbname=db, password=None), autocommit=True, **kw)


def _where(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute(f"SELECT v FROM where_{TAG}").fetchone()
    assert row is not None
    return str(row[0])


def _simple(conn: psycopg.Connection[Any], sql: str) -> None:
    """A simple-protocol Query (psycopg's ClientCursor sends the text as is)."""
    with psycopg.ClientCursor(conn) as cur:
        cur.execute(sql)


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_search_path_follows_its_client_and_stays_with_it(f: Funnel, protocol: str) -> None:
    with _connect(f) as a, _connect(f) as b:
        if protocol == "simple":
            _simple(a, f"SET search_path TO {SCHEMA_A}")
        else:
            a.execute(f"SET search_path TO {SCHEMA_A}")  # Parse/Bind/Execute
        assert _where(a) == "a"
        # b takes the server a just used: it must not see a's search_path.
        b.execute("BEGIN")
        assert _where(b) == "public"
        # a lands on the other server: its search_path goes with it.
        assert _where(a) == "a"
        assert a.execute("SHOW search_path").fetchone() == (SCHEMA_A,)
        b.execute("COMMIT")
        # Both servers have served a; b, on either of them, sees the default.
        for _ in range(3):
            assert _where(b) == "public"
            assert _where(a) == "a"


def test_a_later_set_replaces_and_reset_forgets(f: Funnel) -> None:
    with _connect(f) as a, _connect(f) as b:
        _simple(a, f"SET search_path TO {SCHEMA_A}")
        _simple(a, f"SET search_path = {SCHEMA_B};")
        b.execute("BEGIN")
        b.execute("SELECT 1")
        assert _where(a) == "b"
        b.execute("COMMIT")
        _simple(a, "RESET search_path")
        b.execute("BEGIN")
        b.execute("SELECT 1")
        assert _where(a) == "public"
        b.execute("COMMIT")


@pytest.mark.parametrize("command", ["RESET ALL", "DISCARD ALL"])
def test_reset_all_and_discard_all_forget_every_setting(f: Funnel, command: str) -> None:
    with _connect(f) as a, _connect(f) as b:
        _simple(a, f"SET search_path TO {SCHEMA_A}")
        _simple(a, "SET statement_timeout = '123s'")
        _simple(a, command)
        b.execute("BEGIN")
        b.execute("SELECT 1")
        assert _where(a) == "public"
        assert a.execute("SHOW statement_timeout").fetchone() == ("0",)
        b.execute("COMMIT")


def test_transaction_scoped_sets_are_not_replayed(f: Funnel) -> None:
    with _connect(f, "one") as a, _connect(f, "one") as b:
        a.execute("BEGIN")
        a.execute(f"SET LOCAL search_path TO {SCHEMA_A}")
        assert _where(a) == "a"
        a.execute("COMMIT")
        a.execute("BEGIN")
        a.execute(f"SET search_path TO {SCHEMA_B}")
        a.execute("ROLLBACK")
        assert _where(a) == "public"
        assert _where(b) == "public"


def test_settings_of_two_clients_on_one_server(f: Funnel) -> None:
    """pool_size=1: every query of either client runs on the same server, which is switched
    from one client's settings to the other's at each link."""
    with _connect(f, "one") as a, _connect(f, "one") as b:
        _simple(a, f"SET search_path TO {SCHEMA_A}")
        _simple(b, f"SET search_path TO {SCHEMA_B}")
        _simple(b, "SET work_mem = '7MB'")
        for _ in range(5):
            assert _where(a) == "a"
            assert a.execute("SHOW work_mem").fetchone() == ("4MB",)
            assert _where(b) == "b"
            assert b.execute("SHOW work_mem").fetchone() == ("7MB",)
    with _connect(f, "one") as c:
        assert _where(c) == "public"
        assert c.execute("SHOW work_mem").fetchone() == ("4MB",)


def test_custom_and_quoted_settings(f: Funnel) -> None:
    with _connect(f, "one") as a, _connect(f, "one") as b:
        _simple(a, "SET myapp.tenant = 'acme'")
        _simple(a, "SET \"myapp.region\" TO 'eu'")
        assert b.execute("SELECT current_setting('myapp.tenant', true)").fetchone() in (
            (None,),
            ("",),
        )
        row = a.execute(
            "SELECT current_setting('myapp.tenant'), current_setting('myapp.region')"
        ).fetchone()
        assert row == ("acme", "eu")


# --- SQL-level PREPARE / EXECUTE / DEALLOCATE (issue 14, point 2) -----------------------------
@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_sql_prepare_follows_its_client(f: Funnel, protocol: str) -> None:
    with _connect(f) as a, _connect(f) as b:
        sql = "PREPARE twice (int) AS SELECT $1 * 2"
        _simple(a, sql) if protocol == "simple" else a.execute(sql)
        assert a.execute("EXECUTE twice (21)").fetchone() == (42,)
        b.execute("BEGIN")  # b holds the server a prepared it on
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            b.execute("EXECUTE twice (1)")  # b never prepared it
        b.execute("ROLLBACK")
        b.execute("BEGIN")
        b.execute("SELECT 1")
        assert a.execute("EXECUTE twice (5)").fetchone() == (10,)  # on the other server
        b.execute("COMMIT")
        _simple(a, "DEALLOCATE twice")
        for _ in range(2):
            with pytest.raises(psycopg.errors.InvalidSqlStatementName):
                a.execute("EXECUTE twice (1)")


def test_same_name_two_clients_one_server(f: Funnel) -> None:
    with _connect(f, "one") as a, _connect(f, "one") as b:
        _simple(a, "PREPARE q AS SELECT 'from a'")
        _simple(b, "PREPARE q AS SELECT 'from b'")  # no 42P05: a's q is put away first
        for _ in range(3):
            assert a.execute("EXECUTE q").fetchone() == ("from a",)
            assert b.execute("EXECUTE q").fetchone() == ("from b",)


def test_deallocate_all_and_reset_all_each_forget_their_own(f: Funnel) -> None:
    with _connect(f, "one") as a, _connect(f, "one") as b:
        _simple(a, "PREPARE p1 AS SELECT 1")
        _simple(a, f"SET search_path TO {SCHEMA_A}")
        _simple(a, "RESET ALL")  # settings only
        assert b.execute("SELECT 1").fetchone() == (1,)
        assert a.execute("EXECUTE p1").fetchone() == (1,)
        assert _where(a) == "public"
        _simple(a, f"SET search_path TO {SCHEMA_A}")
        _simple(a, "DEALLOCATE ALL")  # statements only
        assert b.execute("SELECT 1").fetchone() == (1,)
        assert _where(a) == "a"
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            a.execute("EXECUTE p1")


def test_show_clients_says_what_a_client_carries(f: Funnel) -> None:
    with _connect(f, "one", application_name="carrier") as a:
        _simple(a, f"SET search_path TO {SCHEMA_A}")
        _simple(a, "SET work_mem = '6MB'")
        _simple(a, "PREPARE carried AS SELECT 1")
        row = next(r for r in f.admin("SHOW CLIENTS") if r["application_name"] == "carrier")
        assert row["carries"] == "search_path, work_mem, PREPARE carried"
        _simple(a, "RESET ALL")
        row = next(r for r in f.admin("SHOW CLIENTS") if r["application_name"] == "carrier")
        assert row["carries"] == "PREPARE carried"


def test_a_failing_replay_fails_alone(f: Funnel) -> None:
    """a's PREPARE needs a temporary table only its first server has: replayed elsewhere it
    fails, and fails alone, so the RESET of what the previous client left there still holds."""
    with _connect(f) as a, _connect(f) as b:
        a.execute("CREATE TEMP TABLE only_here (v int)")  # (a hazard: warned)
        _simple(a, "PREPARE needs_temp AS SELECT count(*) FROM only_here")
        a.execute("BEGIN")  # a holds that server
        _simple(b, f"SET search_path TO {SCHEMA_B}")  # on the other one
        assert _where(b) == "b"
        a.execute("COMMIT")
        b.execute("BEGIN")  # b keeps a's first server busy: a lands on b's
        b.execute("SELECT 1")
        assert _where(a) == "public"  # b's search_path was RESET for a
        b.execute("COMMIT")


# --- track_extra_parameters (PgBouncer 1.20+) -----------------------------------------------
def test_track_extra_parameters(f: Funnel, pg: Cluster) -> None:
    """A reported parameter named in track_extra_parameters may come in the startup packet and
    follows its client (default_transaction_read_only is reported from PostgreSQL 14); without
    it, the pooler refuses it as PgBouncer does."""
    import asyncio

    import asyncpg

    async def run(port: int) -> list[str]:
        ro = await asyncpg.connect(
            f"postgresql://{ROLE}@127.0.0.1:{port}/one",
            server_settings={"default_transaction_read_only": "on"},
        )
        rw = await asyncpg.connect(f"postgresql://{ROLE}@127.0.0.1:{port}/one")
        try:
            got = []
            for _ in range(3):  # pool_size=1: both on the one server, in turn
                got.append(await ro.fetchval("SHOW default_transaction_read_only"))
                got.append(await rw.fetchval("SHOW default_transaction_read_only"))
            return got
        finally:
            await ro.close()
            await rw.close()

    dsn = f"host=127.0.0.1 port={pg.port} dbname=postgres user={ROLE} password={ROLE_PW}"
    for extra, expect in (("IntervalStyle, default_transaction_read_only", True), ("", False)):
        settings = {"auth_type": "trust"}
        if extra:
            settings["track_extra_parameters"] = extra
        with Funnel(
            pg,
            settings=settings,
            databases={"one": f"{dsn} pool_size=1"},
            userlist={ROLE: ROLE_PW},
        ) as funnel:
            if expect:
                assert asyncio.run(run(funnel.port)) == ["on", "off"] * 3
            else:
                with pytest.raises(asyncpg.exceptions.ProtocolViolationError) as info:
                    asyncio.run(run(funnel.port))
                assert "unsupported startup parameter: default_transaction_read_only" in str(
                    info.value
                )
