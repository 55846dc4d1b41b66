"""auth_type = hba through pgfunnel serve: every rule kind from TCP and the unix socket, peer
with the test's own OS user and an ident map, the console's own user, RELOAD, SHOW CLIENTS."""

from __future__ import annotations

import asyncio
import hashlib
import os
import pwd
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from pgfunnel.throwaway import SUPERUSER, SUPERUSER_PASSWORD, Cluster
from tests.integration.harness import ADMIN_USER, Funnel, wait_for

ME = pwd.getpwuid(os.getuid()).pw_name  # the OS user running the tests (and the pooler)
MAPPED = "pgf_hba_mapped"  # reached through the ident map from ME
STRANGER_PEER = "pgf_hba_peer_other"  # a peer rule, but the OS user is not this name
PASSWORDS = {
    "plainu": "plain-pw",
    "md5u": "md5-pw",
    "scramu": "scram-pw",
    "blocked": "blocked-pw",
    "certu": "cert-pw",
    "incuser": "inc-pw",
    ME: "me-pw",
    MAPPED: "mapped-pw",
    STRANGER_PEER: "other-pw",
}

HBA = f"""\
# local rules first: peer as-is, peer through a map, everything else refused
local   all          {ME}              peer
local   all          {MAPPED}          peer map=tests
local   all          {STRANGER_PEER}   peer
local   nossldb      plainu            trust
local   ssldb        all               scram-sha-256
local   all          all               reject
host    all          blocked           127.0.0.1/32              reject
hostssl ssldb        all               127.0.0.1/32              trust
hostnossl nossldb    all               127.0.0.1 255.255.255.255 trust
host    @dbs.txt     @users.txt        127.0.0.1/32              trust
host    all          plainu            127.0.0.1/32              password
host    all          md5u              127.0.0.1/32              md5
host    all          certu             127.0.0.1/32              cert
host    all          all               ::1/128                   scram-sha-256
host    postgres,ssldb all             127.0.0.1/32              scram-sha-256
host    pgbouncer    all               127.0.0.1/32              scram-sha-256
"""


def line_of(start: str) -> int:
    """The line number of the HBA rule that starts with `start`."""
    [number] = [i for i, line in enumerate(HBA.splitlines(), 1) if line.startswith(start)]
    return number


def md5_secret(user: str, password: str) -> str:
    return "md5" + hashlib.md5((password + user).encode()).hexdigest()


@pytest.fixture(scope="module")
def hba_funnel(pg: Cluster) -> Iterator[Funnel]:
    forced = (
        f"host=127.0.0.1 port={pg.port} dbname=postgres "
        f"user={SUPERUSER} password={SUPERUSER_PASSWORD}"
    )
    userlist = dict(PASSWORDS)
    userlist["md5u"] = md5_secret("md5u", PASSWORDS["md5u"])
    f = Funnel(
        pg,
        settings={"auth_type": "hba", "pool_mode": "session"},
        databases={name: forced for name in ("postgres", "ssldb", "nossldb", "incdb", "other")},
        userlist=userlist,
    )
    (f.dir / "hba.conf").write_text(HBA)
    (f.dir / "dbs.txt").write_text("incdb\n")
    (f.dir / "users.txt").write_text("incuser, nobody-else\n")
    (f.dir / "ident.conf").write_text(f"tests  {ME}  {MAPPED}\n")
    text = f.config.read_text()
    f.config.write_text(
        text + f"auth_hba_file = {f.dir / 'hba.conf'}\nauth_ident_file = {f.dir / 'ident.conf'}\n"
    )
    f.start()
    try:
        yield f
    finally:
        f.stop()


def tcp_login(
    f: Funnel, user: str, password: str | None, db: str = "postgres", host: str = "127.0.0.1"
) -> Any:
    """Log in with asyncpg (it reports SQLSTATEs of login failures), over TCP unless `host` is
    the socket directory: the error, or the server's current_user when the login worked."""

    async def attempt() -> Any:
        try:
            conn = await asyncpg.connect(
                host=host,
                port=f.port,
                user=user,
                password=password,
                database=db,
                statement_cache_size=0,
                timeout=20,
            )
        except asyncpg.PostgresError as exc:
            return exc
        try:
            return await conn.fetchval("SELECT current_user")
        finally:
            await conn.close()

    return asyncio.run(attempt())


def unix_dsn(f: Funnel, user: str, db: str = "postgres", password: str | None = None) -> str:
    dsn = f"host={f.dir} port={f.port} user={user} dbname={db} connect_timeout=20"
    return dsn + (f" password={password}" if password else "")


def unix_error(f: Funnel, user: str, db: str = "postgres") -> Any:
    err = tcp_login(f, user, None, db, host=str(f.dir))
    assert isinstance(err, asyncpg.PostgresError), err
    return err


def test_password_methods_from_tcp(hba_funnel: Funnel) -> None:
    f = hba_funnel
    assert tcp_login(f, "plainu", PASSWORDS["plainu"]) == SUPERUSER  # password (clear text)
    assert tcp_login(f, "md5u", PASSWORDS["md5u"]) == SUPERUSER  # md5 against an md5 secret
    assert tcp_login(f, "scramu", PASSWORDS["scramu"]) == SUPERUSER  # the last rule: SCRAM
    err = tcp_login(f, "md5u", "wrong")
    assert (err.sqlstate, err.message) == (
        "28P01",
        'password authentication failed for user "md5u"',
    )


def test_reject_and_no_rule_give_postgres_texts(hba_funnel: Funnel) -> None:
    f = hba_funnel
    err = tcp_login(f, "blocked", PASSWORDS["blocked"])
    assert err.sqlstate == "28000"
    assert err.message == (
        'pg_hba.conf rejects connection for host "127.0.0.1", user "blocked", '
        'database "postgres", no encryption'
    )
    err = tcp_login(f, "scramu", PASSWORDS["scramu"], db="other")
    assert err.sqlstate == "28000"
    assert err.message == (
        'no pg_hba.conf entry for host "127.0.0.1", user "scramu", database "other", no encryption'
    )


def test_hostssl_hostnossl_and_includes(hba_funnel: Funnel) -> None:
    f = hba_funnel
    # hostnossl with an address and mask: trust, no password asked.
    assert tcp_login(f, "scramu", None, db="nossldb") == SUPERUSER
    # hostssl does not match a clear-text client: the SCRAM rule further down applies, so a
    # wrong password is refused where trust would have let it in.
    assert tcp_login(f, "scramu", "wrong", db="ssldb").sqlstate == "28P01"
    assert tcp_login(f, "scramu", PASSWORDS["scramu"], db="ssldb") == SUPERUSER
    # @dbs.txt and @users.txt: trust for the listed pair only.
    assert tcp_login(f, "incuser", None, db="incdb") == SUPERUSER
    assert tcp_login(f, "scramu", None, db="incdb").sqlstate == "28000"


def test_cert_rule_refuses_without_tls(hba_funnel: Funnel) -> None:
    # (tests/integration/test_tls.py: a cert rule's logins with TLS and certificates)
    err = tcp_login(hba_funnel, "certu", PASSWORDS["certu"])
    assert (err.sqlstate, err.message) == ("28000", "certificate authentication failed")
    assert wait_for(lambda: "TLS connection required" in hba_funnel.log())


def test_peer_on_the_unix_socket(hba_funnel: Funnel) -> None:
    f = hba_funnel
    # The test's own OS user, no password; and the name an ident map gives it.
    for user in (ME, MAPPED):
        with psycopg.connect(unix_dsn(f, user), autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    # local trust and local SCRAM rules.
    assert tcp_login(f, "plainu", None, "nossldb", host=str(f.dir)) == SUPERUSER
    assert tcp_login(f, "scramu", PASSWORDS["scramu"], "ssldb", host=str(f.dir)) == SUPERUSER
    assert tcp_login(f, "scramu", "wrong", "ssldb", host=str(f.dir)).sqlstate == "28P01"
    err = unix_error(f, STRANGER_PEER)
    assert err.sqlstate == "28000"
    assert err.message == f'Peer authentication failed for user "{STRANGER_PEER}"'
    err = unix_error(f, "plainu")
    assert err.sqlstate == "28000"
    assert err.message == (
        'pg_hba.conf rejects connection for host "[local]", user "plainu", '
        'database "postgres", no encryption'
    )


def test_pgbouncer_user_on_the_unix_socket_enters_the_console(hba_funnel: Funnel) -> None:
    """PgBouncer's rule: no password, no admin_users entry, whatever the hba file says."""
    f = hba_funnel
    with psycopg.connect(unix_dsn(f, "pgbouncer", "pgbouncer"), autocommit=True) as conn:
        rows = conn.execute("SHOW CLIENTS", prepare=False).fetchall()
        me = [r for r in rows if r[1] == "pgbouncer"]
        assert me and me[0][-3:-1] == ("peer", "")
        conn.execute("RELOAD", prepare=False)  # an admin command, not only SHOW
    # Over TCP the name is nothing special: not in the auth file, so no password matches.
    err = tcp_login(f, "pgbouncer", "any", db="pgbouncer")
    assert err.sqlstate == "28P01"


def test_show_clients_and_users_say_how_clients_authenticated(hba_funnel: Funnel) -> None:
    f = hba_funnel
    hba = str(f.dir / "hba.conf")
    with (
        psycopg.connect(unix_dsn(f, ME), autocommit=True),
        psycopg.connect(
            f"host=127.0.0.1 port={f.port} user=md5u dbname=postgres password={PASSWORDS['md5u']}",
            autocommit=True,
        ),
        psycopg.connect(unix_dsn(f, "pgbouncer", "pgbouncer"), autocommit=True) as admin,
    ):
        cur = admin.execute("SHOW CLIENTS", prepare=False)
        names = [d.name for d in cur.description or ()]
        assert names[-3:] == ["auth_method", "hba_line", "carries"]
        got = {(r[1], r[-3], r[-2]) for r in cur.fetchall()}
        peer_line = line_of(f"local   all          {ME} ")
        md5_line = line_of("host    all          md5u")
        assert (ME, "peer", f"{hba}:{peer_line}") in got
        assert ("md5u", "md5", f"{hba}:{md5_line}") in got
        cur = admin.execute("SHOW USERS", prepare=False)
        names = [d.name for d in cur.description or ()]
        users = {r[0]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}
        assert users["md5u"]["auth_source"] == "auth_file"
        assert users["md5u"]["auth_methods"] == f"md5 {hba}:{md5_line}"
        assert users[ME]["auth_methods"] == f"peer {hba}:{peer_line}"


def test_reload_rereads_the_hba_file_and_keeps_it_on_an_error(hba_funnel: Funnel) -> None:
    f = hba_funnel
    hba = f.dir / "hba.conf"
    assert tcp_login(f, "scramu", PASSWORDS["scramu"], db="other").sqlstate == "28000"
    hba.write_text(HBA + "host other all 127.0.0.1/32 scram-sha-256\n")
    try:
        f.admin("RELOAD")
        assert tcp_login(f, "scramu", PASSWORDS["scramu"], db="other") == SUPERUSER
        # A broken line: RELOAD fails naming it, the rules loaded before stay.
        hba.write_text(HBA + "host other all 127.0.0.1/99 trust\n")
        with pytest.raises(psycopg.Error) as info:
            f.admin("RELOAD")
        assert f"{hba}:{len(HBA.splitlines()) + 1}:" in str(info.value.diag.message_detail)
        assert tcp_login(f, "scramu", PASSWORDS["scramu"], db="other") == SUPERUSER
    finally:
        hba.write_text(HBA)
        f.admin("RELOAD")
    wait_for(lambda: tcp_login(f, "scramu", PASSWORDS["scramu"], db="other") != SUPERUSER)


def test_console_checks_rights_after_the_password(hba_funnel: Funnel) -> None:
    """A wrong password is refused alike for the admin and for anyone else; only a client that
    proved who it is learns whether it may use the console."""
    f = hba_funnel
    admin_err = tcp_login(f, ADMIN_USER, "wrong", db="pgbouncer")
    other_err = tcp_login(f, "scramu", "wrong", db="pgbouncer")
    assert (admin_err.sqlstate, other_err.sqlstate) == ("28P01", "28P01")
    assert admin_err.message == f'password authentication failed for user "{ADMIN_USER}"'
    assert other_err.message == 'password authentication failed for user "scramu"'
    err = tcp_login(f, "scramu", PASSWORDS["scramu"], db="pgbouncer")
    assert (err.sqlstate, err.message) == ("28000", "not allowed")
    assert f.admin("SHOW VERSION")


def test_login_failures_from_one_address_are_logged_a_few_times_only(hba_funnel: Funnel) -> None:
    """A guessing loop from one address: the first five failures of the minute are logged,
    the rest are not (the next minute's first line gives their count)."""
    f = hba_funnel
    for _ in range(8):
        assert tcp_login(f, "md5u", "guess").sqlstate == "28P01"
    # Still refused, and still with the right message, once the log has gone quiet.
    err = tcp_login(f, "md5u", "guess")
    assert err.message == 'password authentication failed for user "md5u"'
    texts = (
        "password authentication failed",
        "pg_hba.conf rejects",
        "no pg_hba.conf entry",
        "connection requires a valid client certificate",
        "not allowed",
    )

    def logged() -> int:
        return sum(
            1
            for line in f.log().splitlines()
            if "@127.0.0.1:" in line
            and "closing because: " in line
            and line.split("closing because: ", 1)[1].startswith(texts)
        )

    wait_for(lambda: logged() >= 5, timeout=10)
    assert logged() == 5
