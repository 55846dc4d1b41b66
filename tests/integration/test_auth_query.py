"""auth_query through pgfunnel serve against a real PostgreSQL: the default query as a
superuser, a SECURITY DEFINER function for a non-superuser auth_user (as on RDS), md5 and SCRAM
roles, VALID UNTIL, per-database settings, failures and slowness, RELOAD / RECONNECT."""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import pytest

from pgfunnel.throwaway import SUPERUSER, Cluster
from tests.integration.harness import Funnel, wait_for

TAG = secrets.token_hex(3)
SCRAM_ROLE, SCRAM_PW = f"aq_scram_{TAG}", "scram-pw-1"
MD5_ROLE, MD5_PW = f"aq_md5_{TAG}", "md5-pw-2"
EXPIRED_ROLE, EXPIRED_PW = f"aq_expired_{TAG}", "expired-pw-3"
NOLOGIN_ROLE, NOLOGIN_PW = f"aq_nologin_{TAG}", "nologin-pw-4"
AUTH_ROLE, AUTH_PW = f"aq_auth_{TAG}", "auth-pw-5"  # a non-superuser auth_user
FILE_USER, FILE_PW = f"aq_file_{TAG}", "file-pw-6"  # in the auth file only
ROLES = (SCRAM_ROLE, MD5_ROLE, EXPIRED_ROLE, NOLOGIN_ROLE, AUTH_ROLE, FILE_USER)
LOOKUP = "SELECT * FROM pgfunnel_auth.lookup($1)"
SLOW_LOOKUP = "SELECT * FROM pgfunnel_auth.slow_lookup($1)"
APP_NAME = "pgfunnel auth_query"


@pytest.fixture(scope="module")
def server() -> Iterator[Cluster]:
    """A cluster whose pg_hba.conf says md5 for TCP, so that both md5 and SCRAM secrets can
    log in to it (PostgreSQL answers md5 with SCRAM for a SCRAM secret)."""
    cluster = Cluster(hba=["host all all 127.0.0.1/32 md5"])
    cluster.start()
    try:
        cluster.psql(
            f"SET password_encryption = 'scram-sha-256';"
            f"CREATE ROLE {SCRAM_ROLE} LOGIN PASSWORD '{SCRAM_PW}';"
            f"CREATE ROLE {EXPIRED_ROLE} LOGIN PASSWORD '{EXPIRED_PW}' VALID UNTIL '2001-01-01';"
            f"CREATE ROLE {NOLOGIN_ROLE} NOLOGIN PASSWORD '{NOLOGIN_PW}';"
            f"CREATE ROLE {AUTH_ROLE} LOGIN PASSWORD '{AUTH_PW}';"
            f"CREATE ROLE {FILE_USER} LOGIN PASSWORD '{FILE_PW}';"
            f"SET password_encryption = 'md5';"
            f"CREATE ROLE {MD5_ROLE} LOGIN PASSWORD '{MD5_PW}';"
        )
        # What RDS users do: pg_authid is not readable by auth_user, a SECURITY DEFINER function
        # owned by a superuser answers for it. RETURNS TABLE so an unknown name is no row.
        cluster.psql(
            "CREATE SCHEMA pgfunnel_auth;"
            "CREATE FUNCTION pgfunnel_auth.lookup(i_user text) "
            "RETURNS TABLE (uname text, phash text) LANGUAGE sql SECURITY DEFINER "
            "SET search_path = pg_catalog AS $$ "
            "SELECT rolname::text, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END "
            "FROM pg_authid WHERE rolname = i_user AND rolcanlogin $$;"
            "CREATE FUNCTION pgfunnel_auth.slow_lookup(i_user text) "
            "RETURNS TABLE (uname text, phash text) LANGUAGE sql SECURITY DEFINER "
            "SET search_path = pg_catalog AS $$ "
            "SELECT l.uname, l.phash FROM pg_sleep(8), pgfunnel_auth.lookup(i_user) l $$;"
            "REVOKE ALL ON FUNCTION pgfunnel_auth.lookup(text) FROM PUBLIC;"
            "REVOKE ALL ON FUNCTION pgfunnel_auth.slow_lookup(text) FROM PUBLIC;"
            f"GRANT USAGE ON SCHEMA pgfunnel_auth TO {AUTH_ROLE};"
            f"GRANT EXECUTE ON FUNCTION pgfunnel_auth.lookup(text) TO {AUTH_ROLE};"
            f"GRANT EXECUTE ON FUNCTION pgfunnel_auth.slow_lookup(text) TO {AUTH_ROLE};"
        )
        yield cluster
    finally:
        cluster.destroy()


def db(cluster: Cluster, dbname: str = "postgres", extra: str = "") -> str:
    return f"host=127.0.0.1 port={cluster.port} dbname={dbname} {extra}".strip()


@pytest.fixture(scope="module")
def superuser_funnel(server: Cluster) -> Iterator[Funnel]:
    """The default auth_query, run as the superuser; clients log in as their own roles."""
    f = Funnel(
        server,
        settings={"auth_type": "md5", "auth_user": SUPERUSER, "default_pool_size": 2},
        databases={"postgres": db(server)},
        userlist={FILE_USER: FILE_PW},
    )
    f.start()
    try:
        yield f
    finally:
        f.stop()


@pytest.fixture(scope="module")
def definer_funnel(server: Cluster) -> Iterator[Funnel]:
    """auth_user without superuser rights, through the SECURITY DEFINER function; per-database
    auth_query and auth_dbname."""
    f = Funnel(
        server,
        settings={
            "auth_type": "scram-sha-256",
            "auth_user": AUTH_ROLE,
            "auth_query": LOOKUP,
            "server_connect_timeout": 3,
            "default_pool_size": 4,
        },
        databases={
            "postgres": db(server),
            # The default query: pg_authid is not readable by this auth_user.
            "denied": db(
                server,
                extra="auth_query='SELECT rolname, rolpassword FROM pg_authid WHERE rolname=$1'",
            ),
            "slow": db(server, extra=f"auth_query='{SLOW_LOOKUP}'"),
            # The function exists only in database postgres.
            "tmpl": db(server, "template1"),
            "tmpl_authdb": db(server, "template1", "auth_dbname=postgres"),
        },
        userlist={AUTH_ROLE: AUTH_PW},
    )
    f.start()
    try:
        yield f
    finally:
        f.stop()


def login(f: Funnel, user: str, password: str, database: str = "postgres") -> Any:
    """The error of a failed login (asyncpg reports its SQLSTATE), else current_user as the
    server sees it."""

    async def attempt() -> Any:
        try:
            conn = await asyncpg.connect(
                host="127.0.0.1",
                port=f.port,
                user=user,
                password=password,
                database=database,
                statement_cache_size=0,
                timeout=30,
            )
        except asyncpg.PostgresError as exc:
            return exc
        try:
            return await conn.fetchval("SELECT current_user")
        finally:
            await conn.close()

    return asyncio.run(attempt())


def failed(err: Any, user: str) -> bool:
    return (
        isinstance(err, asyncpg.PostgresError)
        and err.sqlstate == "28P01"
        and err.message == f'password authentication failed for user "{user}"'
    )


def lookup_backends(server: Cluster) -> int:
    return int(
        server.psql(f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{APP_NAME}'")
    )


# --- the default query, superuser auth_user ----------------------------------------------------
def test_scram_and_md5_roles_log_in_with_no_stored_password(superuser_funnel: Funnel) -> None:
    f = superuser_funnel
    # The server login needs no password of ours: SCRAM with the client's recovered key,
    # md5 with the secret the query returned.
    assert login(f, SCRAM_ROLE, SCRAM_PW) == SCRAM_ROLE
    assert login(f, MD5_ROLE, MD5_PW) == MD5_ROLE
    assert login(f, FILE_USER, FILE_PW) == FILE_USER  # the auth file still comes first

    async def held() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        conns = [
            await asyncpg.connect(
                host="127.0.0.1",
                port=f.port,
                user=user,
                password=password,
                database="postgres",
                statement_cache_size=0,
            )
            for user, password in ((SCRAM_ROLE, SCRAM_PW), (MD5_ROLE, MD5_PW), (FILE_USER, FILE_PW))
        ]
        try:
            return f.admin("SHOW USERS"), f.admin("SHOW CLIENTS")
        finally:
            for conn in conns:
                await conn.close()

    users_rows, clients_rows = asyncio.run(held())
    users = {row["name"]: row for row in users_rows}
    assert users[SCRAM_ROLE]["auth_source"] == "auth_query"
    assert users[MD5_ROLE]["auth_source"] == "auth_query"
    assert users[FILE_USER]["auth_source"] == "auth_file"
    methods = {row["user"]: row["auth_method"] for row in clients_rows}
    # auth_type md5 upgrades to SCRAM for a SCRAM secret, as PgBouncer does.
    assert methods[SCRAM_ROLE] == "scram-sha-256"
    assert methods[MD5_ROLE] == "md5"


def test_wrong_password_unknown_expired_and_nologin_fail_alike(superuser_funnel: Funnel) -> None:
    f = superuser_funnel
    assert failed(login(f, SCRAM_ROLE, "wrong"), SCRAM_ROLE)
    assert failed(login(f, MD5_ROLE, "wrong"), MD5_ROLE)
    assert failed(login(f, f"aq_nobody_{TAG}", "whatever"), f"aq_nobody_{TAG}")
    # VALID UNTIL in the past: the default query returns NULL; the right password fails.
    assert failed(login(f, EXPIRED_ROLE, EXPIRED_PW), EXPIRED_ROLE)
    assert failed(login(f, NOLOGIN_ROLE, NOLOGIN_PW), NOLOGIN_ROLE)


def test_the_user_name_is_bound_not_spliced(superuser_funnel: Funnel) -> None:
    name = "x' OR rolname = 'postgres"
    assert failed(login(superuser_funnel, name, "postgres"), name)


def test_a_password_change_counts_at_the_next_login(
    superuser_funnel: Funnel, server: Cluster
) -> None:
    f = superuser_funnel
    assert login(f, MD5_ROLE, MD5_PW) == MD5_ROLE
    server.psql(f"SET password_encryption = 'md5'; ALTER ROLE {MD5_ROLE} PASSWORD 'changed'")
    try:
        assert failed(login(f, MD5_ROLE, MD5_PW), MD5_ROLE)
        assert login(f, MD5_ROLE, "changed") == MD5_ROLE
    finally:
        server.psql(f"SET password_encryption = 'md5'; ALTER ROLE {MD5_ROLE} PASSWORD '{MD5_PW}'")


def test_lookup_connections_are_bounded_and_reload_reconnect_close_them(
    superuser_funnel: Funnel, server: Cluster
) -> None:
    f = superuser_funnel

    async def many() -> list[Any]:
        async def one() -> Any:
            conn = await asyncpg.connect(
                host="127.0.0.1",
                port=f.port,
                user=SCRAM_ROLE,
                password=SCRAM_PW,
                database="postgres",
                statement_cache_size=0,
                timeout=30,
            )
            await conn.close()

        return await asyncio.gather(*(one() for _ in range(12)))

    asyncio.run(many())
    # default_pool_size = 2: never more lookup connections than that.
    assert 1 <= lookup_backends(server) <= 2
    for command in ("RELOAD", "RECONNECT"):
        assert login(f, SCRAM_ROLE, SCRAM_PW) == SCRAM_ROLE
        wait_for(lambda: lookup_backends(server) >= 1)
        f.admin(command)
        wait_for(lambda: lookup_backends(server) == 0)
        # And the next login looks the user up again.
        assert login(f, SCRAM_ROLE, SCRAM_PW) == SCRAM_ROLE


# --- a non-superuser auth_user through a SECURITY DEFINER function ------------------------------
def test_security_definer_function_for_a_non_superuser(definer_funnel: Funnel) -> None:
    f = definer_funnel
    assert login(f, SCRAM_ROLE, SCRAM_PW) == SCRAM_ROLE
    assert failed(login(f, SCRAM_ROLE, "wrong"), SCRAM_ROLE)
    assert failed(login(f, EXPIRED_ROLE, EXPIRED_PW), EXPIRED_ROLE)
    # scram-sha-256 with an md5 secret: no exchange can succeed, and it fails like the others.
    assert failed(login(f, MD5_ROLE, MD5_PW), MD5_ROLE)


def test_auth_dbname_chooses_where_the_query_runs(definer_funnel: Funnel) -> None:
    f = definer_funnel
    # In template1 the function does not exist: the lookup fails, and says so.
    err = login(f, SCRAM_ROLE, SCRAM_PW, database="tmpl")
    assert err.sqlstate == "08006"
    assert err.message == "authentication lookup failed (auth_query): the query failed"
    assert login(f, SCRAM_ROLE, SCRAM_PW, database="tmpl_authdb") == SCRAM_ROLE


def test_a_failing_query_answers_08006_without_details(definer_funnel: Funnel) -> None:
    f = definer_funnel
    err = login(f, SCRAM_ROLE, SCRAM_PW, database="denied")
    assert err.sqlstate == "08006"
    assert err.message == "authentication lookup failed (auth_query): the query failed"
    assert "pg_authid" not in str(err)  # the server's text goes to the log only
    wait_for(lambda: "permission denied" in f.log(), timeout=10)


def test_a_slow_query_times_out_and_blocks_no_other_login(definer_funnel: Funnel) -> None:
    f = definer_funnel
    results: list[Any] = []

    def slow() -> None:
        results.append(login(f, SCRAM_ROLE, SCRAM_PW, database="slow"))

    threads = [threading.Thread(target=slow) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        # While two lookups hang in pg_sleep, others log in: from the auth file (no lookup)
        # and through auth_query on the connections the pool has left.
        wait_for(lambda: any(t.is_alive() for t in threads))
        assert login(f, AUTH_ROLE, AUTH_PW) == AUTH_ROLE
        assert login(f, SCRAM_ROLE, SCRAM_PW) == SCRAM_ROLE
        assert any(t.is_alive() for t in threads)  # the slow ones are still waiting
    finally:
        for t in threads:
            t.join(60)
    assert len(results) == 2
    for err in results:
        assert err.sqlstate == "08006"
        assert err.message == "authentication lookup failed (auth_query): timed out"
        assert err.hint


@pytest.fixture
def any_funnel(server: Cluster, funnel: Callable[..., Funnel]) -> Funnel:
    return funnel(
        server,
        settings={"auth_type": "any"},
        databases={
            "forced": db(server, extra=f"user={SCRAM_ROLE} password={SCRAM_PW}"),
            "unforced": db(server),
        },
    )


def test_auth_type_any_needs_a_forced_user(any_funnel: Funnel) -> None:
    """PgBouncer's rule: the client's name is ignored, so a database must name its user."""
    assert login(any_funnel, "whoever", "anything", database="forced") == SCRAM_ROLE
    err = login(any_funnel, "whoever", "anything", database="unforced")
    assert (err.sqlstate, err.message) == ("08P01", "bouncer config error")


@pytest.fixture(scope="module")
def hba_query_funnel(server: Cluster) -> Iterator[Funnel]:
    """auth_type = hba with users found by auth_query: trust for one database, SCRAM else."""
    f = Funnel(
        server,
        settings={"auth_type": "hba", "auth_user": SUPERUSER},
        databases={"postgres": db(server), "trusted": db(server)},
    )
    (f.dir / "hba.conf").write_text(
        "host trusted all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
    )
    f.config.write_text(f.config.read_text() + f"auth_hba_file = {f.dir / 'hba.conf'}\n")
    f.start()
    try:
        yield f
    finally:
        f.stop()


def test_hba_methods_apply_to_users_found_by_auth_query(hba_query_funnel: Funnel) -> None:
    f = hba_query_funnel
    # trust: no password asked, but the user must exist (PgBouncer's rule); the server login
    # uses the md5 secret the query returned.
    assert login(f, MD5_ROLE, "not-asked", database="trusted") == MD5_ROLE
    assert failed(login(f, f"aq_nobody_{TAG}", "x", database="trusted"), f"aq_nobody_{TAG}")
    assert login(f, SCRAM_ROLE, SCRAM_PW) == SCRAM_ROLE
    assert failed(login(f, SCRAM_ROLE, "wrong"), SCRAM_ROLE)


def test_plain_auth_type_with_a_scram_secret_logs_in_to_the_server(
    server: Cluster, funnel: Callable[..., Funnel]
) -> None:
    """A clear-text password checked against the SCRAM secret auth_query returned also gives
    the key to log into the server as that user."""
    f = funnel(
        server,
        settings={"auth_type": "plain", "auth_user": SUPERUSER},
        databases={"postgres": db(server)},
    )
    assert login(f, SCRAM_ROLE, SCRAM_PW) == SCRAM_ROLE
    assert failed(login(f, SCRAM_ROLE, "wrong"), SCRAM_ROLE)
