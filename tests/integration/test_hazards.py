"""What transaction pooling cannot keep is named (issue 14, point 4): session advisory locks,
LISTEN, temporary tables and cursors WITH HOLD, with each pooling_hazards value:
warn (counted per application in SHOW HAZARDS, logged once per client), refuse (SQLSTATE
0A000 with the reason, nothing run, the connection usable), pin (the client keeps its server
until it leaves; then server_reset_query ends what its session left)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors

from pgfunnel.throwaway import Cluster
from tests.integration.harness import Funnel, backends, own_role

TAG = secrets.token_hex(3)
ROLE, ROLE_PW = f"pgf_hz_{TAG}", "hz-pw"
LOCK_KEY = 424242

# Each hazard as the i-th statement of its kind (names differ: a second one on the same
# session must not fail for another reason).
HAZARDS = {
    "advisory_lock": lambda i: f"SELECT pg_advisory_lock({LOCK_KEY + i})",
    "listen": lambda i: f"LISTEN pgf_chan_{TAG}_{i}",
    "temp_table": lambda i: f"CREATE TEMP TABLE pgf_tmp_{TAG}_{i} (a int)",
    "hold_cursor": lambda i: f"DECLARE pgf_cur_{TAG}_{i} CURSOR WITH HOLD FOR SELECT 1",
}
# What a session left on its server, as a query that counts it there.
LEFT = {
    "advisory_lock": "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
    "AND pid = pg_backend_pid()",
    "listen": "SELECT count(*) FROM pg_listening_channels()",
    "temp_table": "SELECT count(*) FROM pg_class WHERE relpersistence = 't' "
    "AND pg_table_is_visible(oid)",
    "hold_cursor": "SELECT count(*) FROM pg_cursors",
}


@pytest.fixture(scope="module")
def role(pg: Cluster) -> Iterator[str]:
    with own_role(pg, ROLE, ROLE_PW) as name:
        yield name


@pytest.fixture(scope="module", params=["warn", "refuse", "pin"])
def f(request: pytest.FixtureRequest, pg: Cluster, role: str) -> Iterator[Funnel]:
    dsn = f"host=127.0.0.1 port={pg.port} dbname=postgres user={ROLE} password={ROLE_PW}"
    funnel = Funnel(
        pg,
        settings={"auth_type": "trust", "pooling_hazards": request.param},
        databases={"two": f"{dsn} pool_size=2"},
        userlist={ROLE: ROLE_PW},
    )
    try:
        yield funnel.start()
    finally:
        funnel.stop()
    assert backends(pg, user=ROLE, state="idle in transaction") == 0


def mode(f: Funnel) -> str:
    return next(str(r["value"]) for r in f.admin("SHOW CONFIG") if r["key"] == "pooling_hazards")


def connect(f: Funnel, app: str) -> psycopg.Connection[Any]:
    return psycopg.connect(
        f.dsn(user=ROLE, dbname="two", password=None, application_name=app),
        autocommit=True,
        prepare_threshold=None,
    )


def hazards(f: Funnel, app: str) -> dict[str, tuple[int, str]]:
    return {
        r["hazard"]: (r["count"], r["action"])
        for r in f.admin("SHOW HAZARDS")
        if r["application_name"] == app
    }


@pytest.mark.parametrize("hazard", sorted(HAZARDS))
def test_each_hazard_with_each_setting(f: Funnel, hazard: str) -> None:
    how = mode(f)
    app = f"app-{hazard}-{how}"
    with connect(f, app) as a, connect(f, f"other-{app}") as b:
        for i in range(2):
            if how == "refuse":
                with pytest.raises(errors.FeatureNotSupported) as info:
                    a.execute(HAZARDS[hazard](i))
                assert info.value.sqlstate == "0A000"
                assert "cannot survive transaction pooling" in str(info.value)
                assert a.execute(LEFT[hazard]).fetchone() == (0,)  # nothing of it ran
            else:
                a.execute(HAZARDS[hazard](i))
        assert a.execute("SELECT 1").fetchone() == (1,)  # the connection goes on
        if how == "pin":
            pid = a.execute("SELECT pg_backend_pid()").fetchone()
            b.execute("BEGIN")  # b gets the other server, never a's
            assert b.execute("SELECT pg_backend_pid()").fetchone() != pid
            b.execute("COMMIT")
            for _ in range(3):
                assert a.execute("SELECT pg_backend_pid()").fetchone() == pid
                assert a.execute(LEFT[hazard]).fetchone() == (2,)  # both, on a's server
    assert hazards(f, app) == {hazard: (2, how)}
    told = [line for line in f.log().splitlines() if f"application_name='{app}'" in line]
    assert len(told) == 1 and f"pooling_hazards={how}" in told[0], told
    if how == "pin":
        # a left: its server ran server_reset_query (DISCARD ALL) before serving again
        with connect(f, "after") as c, connect(f, "after2") as d:
            c.execute("BEGIN")
            d.execute("BEGIN")
            for conn in (c, d):
                assert conn.execute(LEFT[hazard]).fetchone() == (0,)
            c.execute("COMMIT")
            d.execute("COMMIT")


def test_simple_protocol_is_looked_at_too(f: Funnel) -> None:
    how = mode(f)
    app = f"simple-{how}"
    with connect(f, app) as a, psycopg.ClientCursor(a) as cur:
        if how == "refuse":
            with pytest.raises(errors.FeatureNotSupported):
                cur.execute(f"  listen pgf_simple_{TAG}")
        else:
            cur.execute(f"  listen pgf_simple_{TAG}")
        cur.execute("SELECT pg_advisory_xact_lock(1)")  # ends with its transaction: fine
        cur.execute(f"CREATE TABLE IF NOT EXISTS pgf_not_temp_{TAG} (a int)")
        cur.execute(f"DROP TABLE pgf_not_temp_{TAG}")
    assert hazards(f, app) == {"listen": (1, how)}


def test_a_pinned_client_leaving_inside_a_transaction(pg: Cluster, role: str) -> None:
    """pin: a client that leaves inside a transaction has it rolled back, and its session's
    state reset, before its server serves anyone else."""
    dsn = f"host=127.0.0.1 port={pg.port} dbname=postgres user={ROLE} password={ROLE_PW}"
    with Funnel(
        pg,
        settings={"auth_type": "trust", "pooling_hazards": "pin"},
        databases={"two": f"{dsn} pool_size=2"},
        userlist={ROLE: ROLE_PW},
    ) as f:
        with connect(f, "pinned-tx") as a:
            a.execute(HAZARDS["listen"](9))
            a.execute("BEGIN")
            a.execute(HAZARDS["advisory_lock"](9))
            a.close()  # inside the transaction (leaving the block would COMMIT first)
        with connect(f, "after-tx") as c, connect(f, "after-tx2") as d:
            c.execute("BEGIN")
            d.execute("BEGIN")
            for conn in (c, d):
                assert conn.execute(LEFT["listen"]).fetchone() == (0,)
                assert conn.execute(LEFT["advisory_lock"]).fetchone() == (0,)
            c.execute("COMMIT")
            d.execute("COMMIT")
