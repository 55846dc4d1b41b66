"""Authentication through pgfunnel: client auth_types, userlist secrets, server logins, admin."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import psycopg
import pytest

from pgfunnel.throwaway import SUPERUSER, SUPERUSER_PASSWORD, Cluster
from tests.integration.harness import ADMIN_PASSWORD, ADMIN_USER, Funnel, wait_for

TAG = secrets.token_hex(3)
# Userlist entries that only the pooler knows (client side of the login).
PLAIN_USER, PLAIN_PW = f"pgf_auth_plain_{TAG}", "plain-pw-1"
MD5_USER, MD5_PW = f"pgf_auth_md5_{TAG}", "md5-pw-2"
SCRAM_USER, SCRAM_PW = f"pgf_auth_scram_{TAG}", "scram-pw-3"
EMPTY_USER = f"pgf_auth_empty_{TAG}"
STATS_USER, STATS_PW = f"pgf_auth_stats_{TAG}", "stats-pw-4"
STRANGER = f"pgf_auth_nobody_{TAG}"
# Roles on the shared (SCRAM) cluster.
SRV_SCRAM, SRV_SCRAM_PW = f"pgf_auth_srv_scram_{TAG}", "srv-scram-pw-5"
PASSTHRU, PASSTHRU_PW = f"pgf_auth_passthru_{TAG}", "passthru-pw-6"
BADPW, BADPW_PW = f"pgf_auth_badpw_{TAG}", "badpw-pw-7"
# Roles on the private cluster whose pg_hba.conf says md5.
SRV_MD5, SRV_MD5_PW = f"pgf_auth_srv_md5_{TAG}", "srv-md5-pw-8"
SRV_MD5_HASHED, SRV_MD5_HASHED_PW = f"pgf_auth_srv_md5h_{TAG}", "srv-md5h-pw-9"


def md5_secret(user: str, password: str) -> str:
    return "md5" + hashlib.md5((password + user).encode()).hexdigest()


def create_role(cluster: Cluster, role: str, password: str, encryption: str) -> str:
    """Create a login role with its password stored as `encryption`; returns pg_authid's secret."""
    cluster.psql(
        f"SET password_encryption = '{encryption}'; CREATE ROLE {role} LOGIN PASSWORD '{password}'"
    )
    return cluster.psql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'")


def drop_roles(cluster: Cluster, *roles: str) -> None:
    names = ", ".join(f"'{r}'" for r in roles)
    cluster.psql(
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename IN ({names})",
        check=False,
    )
    for role in roles:
        cluster.psql(f"DROP ROLE IF EXISTS {role}", check=False)


def login_error(port: int, user: str, password: str | None, database: str = "forced") -> Any:
    """Log in with asyncpg, which reports the SQLSTATE of a login failure; return the error."""

    async def attempt() -> Any:
        try:
            conn = await asyncpg.connect(
                host="127.0.0.1",
                port=port,
                user=user,
                password=password,
                database=database,
                statement_cache_size=0,
                timeout=20,
            )
        except asyncpg.PostgresError as exc:
            return exc
        await conn.close()
        raise AssertionError(f"login as {user!r} to {database!r} unexpectedly succeeded")

    return asyncio.run(attempt())


def query_one(dsn: str, sql: str) -> Any:
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None, connect_timeout=20) as conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return row[0]


@dataclass
class Servers:
    md5_cluster: Cluster
    scram_secret: str  # the SCRAM secret of SCRAM_USER (password SCRAM_PW)
    passthru_secret: str  # PASSTHRU's SCRAM secret, exactly as pg_authid stores it
    md5_hashed_secret: str  # SRV_MD5_HASHED's md5 secret, as pg_authid stores it


@pytest.fixture(scope="module")
def servers(pg: Cluster) -> Iterator[Servers]:
    md5_cluster = Cluster(hba=["host all all 127.0.0.1/32 md5"])
    shared_roles = (SCRAM_USER, SRV_SCRAM, PASSTHRU, BADPW)
    try:
        md5_cluster.start()
        scram = create_role(pg, SCRAM_USER, SCRAM_PW, "scram-sha-256")
        create_role(pg, SRV_SCRAM, SRV_SCRAM_PW, "scram-sha-256")
        passthru = create_role(pg, PASSTHRU, PASSTHRU_PW, "scram-sha-256")
        create_role(pg, BADPW, BADPW_PW, "scram-sha-256")
        assert scram.startswith("SCRAM-SHA-256$") and passthru.startswith("SCRAM-SHA-256$")
        create_role(md5_cluster, SRV_MD5, SRV_MD5_PW, "md5")
        hashed = create_role(md5_cluster, SRV_MD5_HASHED, SRV_MD5_HASHED_PW, "md5")
        assert hashed == md5_secret(SRV_MD5_HASHED, SRV_MD5_HASHED_PW)
        yield Servers(md5_cluster, scram, passthru, hashed)
    finally:
        drop_roles(pg, *shared_roles)
        md5_cluster.destroy()


@pytest.fixture(scope="module")
def funnels(pg: Cluster, servers: Servers) -> Iterator[Callable[[str], Funnel]]:
    """One Funnel per auth_type, started on first use, all with the same userlist and databases:

    forced     the shared cluster as the superuser (only the client side of the login varies)
    postgres   the shared cluster as the client's own user (password from the userlist)
    srv_scram  the shared cluster as SRV_SCRAM, password from [databases]
    md5db      the md5 cluster as the client's own user
    md5forced  the md5 cluster as SRV_MD5, password from [databases]
    """
    cache: dict[str, Funnel] = {}
    md5_port = servers.md5_cluster.port
    databases = {
        "forced": f"host=127.0.0.1 port={pg.port} dbname=postgres "
        f"user={SUPERUSER} password={SUPERUSER_PASSWORD}",
        "postgres": f"host=127.0.0.1 port={pg.port} dbname=postgres",
        "srv_scram": f"host=127.0.0.1 port={pg.port} dbname=postgres "
        f"user={SRV_SCRAM} password={SRV_SCRAM_PW}",
        "md5db": f"host=127.0.0.1 port={md5_port} dbname=postgres",
        "md5forced": f"host=127.0.0.1 port={md5_port} dbname=postgres "
        f"user={SRV_MD5} password={SRV_MD5_PW}",
    }
    userlist = {
        PLAIN_USER: PLAIN_PW,
        MD5_USER: md5_secret(MD5_USER, MD5_PW),
        SCRAM_USER: servers.scram_secret,
        EMPTY_USER: "",
        STATS_USER: STATS_PW,
        SRV_SCRAM: SRV_SCRAM_PW,
        PASSTHRU: servers.passthru_secret,
        BADPW: "not-what-the-server-has",
        SRV_MD5: SRV_MD5_PW,
        SRV_MD5_HASHED: servers.md5_hashed_secret,
    }

    def get(auth_type: str) -> Funnel:
        if auth_type not in cache:
            funnel = Funnel(
                pg,
                settings={"auth_type": auth_type, "stats_users": STATS_USER},
                databases=databases,
                userlist=userlist,
            )
            cache[auth_type] = funnel
            funnel.start()
        return cache[auth_type]

    yield get
    for funnel in cache.values():
        funnel.stop()


# --- client authentication -------------------------------------------------------------------
USERS = {
    "plain": (PLAIN_USER, PLAIN_PW),
    "md5": (MD5_USER, MD5_PW),
    "scram": (SCRAM_USER, SCRAM_PW),
}

# (auth_type, kind of userlist secret) -> the method libpq must be asked for (require_auth).
ACCEPTED = {
    ("trust", "plain"): "none",
    ("trust", "md5"): "none",
    ("trust", "scram"): "none",
    ("plain", "plain"): "password",
    ("plain", "md5"): "password",
    ("plain", "scram"): "password",
    ("md5", "plain"): "md5",
    ("md5", "md5"): "md5",
    ("md5", "scram"): "scram-sha-256",  # md5 upgrades to SCRAM for a SCRAM secret, as PgBouncer
    ("scram-sha-256", "plain"): "scram-sha-256",
    ("scram-sha-256", "scram"): "scram-sha-256",
}


def _cases(with_trust: bool) -> list[Any]:
    return [
        pytest.param(auth, kind, id=f"{auth}-{kind}")
        for (auth, kind) in sorted(ACCEPTED)
        if with_trust or auth != "trust"
    ]


@pytest.mark.parametrize(("auth_type", "kind"), _cases(with_trust=True))
def test_client_logs_in_with_the_expected_method(
    funnels: Callable[[str], Funnel], auth_type: str, kind: str
) -> None:
    f = funnels(auth_type)
    user, password = USERS[kind]
    method = ACCEPTED[(auth_type, kind)]
    # require_auth makes libpq refuse any other method, so this checks what the pooler asked for.
    dsn = f.dsn(
        user=user,
        dbname="forced",
        password=None if method == "none" else password,
        require_auth=method,
    )
    assert query_one(dsn, "SELECT 40 + 2") == 42


@pytest.mark.parametrize(("auth_type", "kind"), _cases(with_trust=False))
def test_wrong_password_is_28p01_with_postgres_text(
    funnels: Callable[[str], Funnel], auth_type: str, kind: str
) -> None:
    f = funnels(auth_type)
    user, _ = USERS[kind]
    err = login_error(f.port, user, "not-the-password")
    assert err.sqlstate == "28P01"
    assert err.message == f'password authentication failed for user "{user}"'


@pytest.mark.parametrize("auth_type", ["plain", "md5", "scram-sha-256"])
def test_user_not_in_userlist_is_28p01(funnels: Callable[[str], Funnel], auth_type: str) -> None:
    f = funnels(auth_type)
    err = login_error(f.port, STRANGER, "whatever")
    assert err.sqlstate == "28P01"
    assert err.message == f'password authentication failed for user "{STRANGER}"'
    line = f'closing because: password authentication failed for user "{STRANGER}"'
    wait_for(lambda: line in f.log(), timeout=10)


def test_scram_auth_type_cannot_use_an_md5_secret(funnels: Callable[[str], Funnel]) -> None:
    f = funnels("scram-sha-256")
    err = login_error(f.port, MD5_USER, MD5_PW)
    assert err.sqlstate == "28P01"
    assert err.message == f'password authentication failed for user "{MD5_USER}"'


@pytest.mark.parametrize("auth_type", ["plain", "md5"])
def test_empty_userlist_password_never_matches(
    funnels: Callable[[str], Funnel], auth_type: str
) -> None:
    f = funnels(auth_type)
    err = login_error(f.port, EMPTY_USER, "")
    assert err.sqlstate == "28P01"


def test_trust_still_requires_the_user_in_the_userlist(funnels: Callable[[str], Funnel]) -> None:
    f = funnels("trust")
    with pytest.raises(psycopg.OperationalError, match="authentication failed"):
        query_one(f.dsn(user=STRANGER, dbname="forced", password=None), "SELECT 1")


# --- server login ----------------------------------------------------------------------------
def test_server_scram_login_with_password_from_databases(
    funnels: Callable[[str], Funnel],
) -> None:
    f = funnels("md5")
    dsn = f.dsn(user=PLAIN_USER, dbname="srv_scram", password=PLAIN_PW)
    assert query_one(dsn, "SELECT current_user") == SRV_SCRAM


def test_server_scram_login_with_password_from_userlist(funnels: Callable[[str], Funnel]) -> None:
    # The client logs in with md5, so there is no SCRAM key to reuse: only the userlist password.
    f = funnels("md5")
    dsn = f.dsn(user=SRV_SCRAM, password=SRV_SCRAM_PW, require_auth="md5")
    assert query_one(dsn, "SELECT current_user") == SRV_SCRAM


@pytest.mark.parametrize("auth_type", ["scram-sha-256", "md5"])
def test_scram_pass_through_with_only_the_secret_in_the_userlist(
    funnels: Callable[[str], Funnel], auth_type: str
) -> None:
    """No password anywhere: the pooler logs into the server with the key the client proved."""
    f = funnels(auth_type)
    assert PASSTHRU_PW not in f.config.read_text() + f.userlist_path.read_text()
    dsn = f.dsn(user=PASSTHRU, password=PASSTHRU_PW, require_auth="scram-sha-256")
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (PASSTHRU,)
        with conn.transaction():
            total = conn.execute("SELECT sum(g) FROM generate_series(1, 100) g").fetchone()
        assert total == (5050,)
    servers = [s for s in f.admin("SHOW SERVERS") if s["user"] == PASSTHRU]
    assert servers and all(s["remote_pid"] > 0 for s in servers)


def test_server_md5_login_with_password_from_databases(funnels: Callable[[str], Funnel]) -> None:
    f = funnels("scram-sha-256")
    dsn = f.dsn(user=PLAIN_USER, dbname="md5forced", password=PLAIN_PW)
    assert query_one(dsn, "SELECT current_user") == SRV_MD5


@pytest.mark.parametrize(
    ("role", "password"),
    [
        pytest.param(SRV_MD5, SRV_MD5_PW, id="plain-in-userlist"),
        pytest.param(SRV_MD5_HASHED, SRV_MD5_HASHED_PW, id="md5-secret-in-userlist"),
    ],
)
def test_server_md5_login_with_password_from_userlist(
    funnels: Callable[[str], Funnel], role: str, password: str
) -> None:
    f = funnels("md5")
    dsn = f.dsn(user=role, dbname="md5db", password=password, require_auth="md5")
    assert query_one(dsn, "SELECT current_user") == role


def test_server_refusing_the_password_gives_the_client_28p01(
    funnels: Callable[[str], Funnel],
) -> None:
    f = funnels("md5")
    err = login_error(f.port, BADPW, "not-what-the-server-has", database="postgres")
    assert err.sqlstate == "28P01"
    assert err.message == f'password authentication failed for user "{BADPW}"'


# --- admin console ---------------------------------------------------------------------------
def test_admin_user_runs_show_commands(funnels: Callable[[str], Funnel]) -> None:
    f = funnels("scram-sha-256")
    version = f.admin("SHOW VERSION")
    assert "pgfunnel" in version[0]["version"]
    clients = f.admin("SHOW CLIENTS")
    assert any(c["user"] == ADMIN_USER and c["database"] == "pgbouncer" for c in clients)


def test_admin_with_wrong_password_is_refused(funnels: Callable[[str], Funnel]) -> None:
    f = funnels("scram-sha-256")
    err = login_error(f.port, ADMIN_USER, ADMIN_PASSWORD + "x", database="pgbouncer")
    assert err.sqlstate == "28P01"
    assert err.message == f'password authentication failed for user "{ADMIN_USER}"'


def test_non_admin_user_is_refused_by_the_console(funnels: Callable[[str], Funnel]) -> None:
    f = funnels("scram-sha-256")
    err = login_error(f.port, PLAIN_USER, PLAIN_PW, database="pgbouncer")
    assert err.sqlstate == "28000"
    assert err.message == "not allowed"
    # The same user still reaches a real database.
    assert query_one(f.dsn(user=PLAIN_USER, dbname="forced", password=PLAIN_PW), "SELECT 1") == 1


def test_stats_user_may_read_the_console(funnels: Callable[[str], Funnel]) -> None:
    f = funnels("scram-sha-256")
    dsn = f.dsn(user=STATS_USER, password=STATS_PW, dbname="pgbouncer")
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute("SHOW POOLS", prepare=False)
        assert cur.description is not None
        assert [d.name for d in cur.description][:2] == ["database", "user"]
        cur.fetchall()
