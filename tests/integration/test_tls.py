"""Issue 15: TLS on both sides, in the switch. Certificates are made here (trustme); the
PostgreSQL behind is `ssl=on` with a hostssl-only pg_hba. Clients: psql, psycopg 3, asyncpg,
and raw sockets for what drivers never send."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
import trustme

from pgfunnel._switch import TLS_MODES
from pgfunnel.throwaway import SUPERUSER, SUPERUSER_PASSWORD, Cluster, pg_tool
from tests.integration.harness import Funnel, pgpass_env, wait_for
from tests.integration.rawproto import error_fields, read_message, startup

TLS_TEXT = re.compile(r"^TLSv1\.[23]/[A-Z0-9_-]+(/ECDH=[A-Za-z0-9-]+)?$")
CERT_USER = "certuser"


class Pki:
    """A CA and the files made from it in one directory."""

    def __init__(self, root: Path, name: str) -> None:
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA()
        self.ca_file = self.dir / "ca.crt"
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    def leaf(
        self, name: str, *identities: str, common_name: str | None = None
    ) -> tuple[Path, Path]:
        """(certificate chain, key) files of a certificate this CA signs."""
        cert = self.ca.issue_cert(*identities, common_name=common_name)
        crt, key = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        crt.write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
        cert.private_key_pem.write_to_path(str(key))
        key.chmod(0o600)
        return crt, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("tls"), "main")


@pytest.fixture(scope="module")
def pooler_cert(pki: Pki) -> tuple[Path, Path]:
    return pki.leaf("pooler", "localhost", "127.0.0.1")


@pytest.fixture(scope="module")
def client_cert(pki: Pki) -> tuple[Path, Path]:
    """A client certificate whose CommonName is the superuser."""
    return pki.leaf("client", "client.example", common_name=SUPERUSER)


@pytest.fixture(scope="module")
def tls_pg(pki: Pki) -> Iterator[Cluster]:
    """PostgreSQL with ssl=on that refuses TCP in clear; `certuser` logs in by certificate."""
    cluster = Cluster(
        settings={
            "ssl": "on",
            "ssl_cert_file": "'server.crt'",
            "ssl_key_file": "'server.key'",
            "ssl_ca_file": "'root.crt'",
        },
        hba=[
            "hostnossl all all 0.0.0.0/0 reject",
            f"hostssl all {CERT_USER} 127.0.0.1/32 cert",
            "hostssl all all 127.0.0.1/32 scram-sha-256",
        ],
    )
    cluster.init()
    crt, key = pki.leaf("pg", "localhost", "127.0.0.1")
    for src, dst in ((crt, "server.crt"), (key, "server.key"), (pki.ca_file, "root.crt")):
        target = cluster.data / dst
        target.write_bytes(src.read_bytes())
        target.chmod(0o600)
        cluster._chown(target)
    cluster.start()
    cluster.psql(f"CREATE ROLE {CERT_USER} LOGIN")
    try:
        yield cluster
    finally:
        cluster.destroy()


def tls_funnel(
    funnel: Callable[..., Funnel],
    cluster: Cluster,
    cert: tuple[Path, Path],
    mode: str,
    ca: Path | None = None,
    **settings: Any,
) -> Funnel:
    conf: dict[str, Any] = {
        "client_tls_sslmode": mode,
        "client_tls_cert_file": str(cert[0]),
        "client_tls_key_file": str(cert[1]),
    }
    if ca is not None:
        conf["client_tls_ca_file"] = str(ca)
    conf.update(settings)
    return funnel(cluster, settings=conf)


def psycopg_try(f: Funnel, **extra: Any) -> tuple[bool, str]:
    """(TLS in use, error text ""): one query through the pooler with libpq's options."""
    try:
        with psycopg.connect(f.dsn(**extra), autocommit=True, connect_timeout=10) as conn:
            assert conn.execute("SELECT 7").fetchone() == (7,)
            return bool(conn.pgconn.ssl_in_use), ""
    except psycopg.OperationalError as exc:
        return False, str(exc)


def own_admin(f: Funnel, command: str) -> list[dict[str, Any]]:
    """A console command over the unix socket as the pooler's own OS user (no TLS, no
    password: PgBouncer's rule for its own user)."""
    with psycopg.connect(
        host=str(f.dir), port=f.port, user="pgbouncer", dbname="pgbouncer", autocommit=True
    ) as conn:
        cur = conn.execute(command, prepare=False)
        names = [d.name for d in cur.description or []]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def client_tls_rows(f: Funnel) -> list[str]:
    return [r["tls"] for r in f.admin("SHOW CLIENTS") if r["user"] == SUPERUSER]


async def asyncpg_session(
    f: Funnel, ssl_arg: Any, queries: list[str], **kw: Any
) -> tuple[list[Any], bool]:
    """One asyncpg connection through the pooler: each query's value, and whether TLS ran."""
    conn = await asyncpg.connect(
        host="127.0.0.1",
        port=f.port,
        user=SUPERUSER,
        password=SUPERUSER_PASSWORD,
        database="postgres",
        ssl=ssl_arg,
        statement_cache_size=0,
        **kw,
    )
    try:
        ssl_obj = conn._transport.get_extra_info("ssl_object")
        return [await conn.fetchval(q) for q in queries], ssl_obj is not None
    finally:
        await conn.close()


# --- client side -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["disable", "allow", "prefer", "require"])
def test_every_client_sslmode_with_psycopg(
    funnel: Callable[..., Funnel], pg: Cluster, pki: Pki, pooler_cert: tuple[Path, Path], mode: str
) -> None:
    f = tls_funnel(funnel, pg, pooler_cert, mode)
    ca = str(pki.ca_file)
    for client_mode in ("disable", "prefer", "require", "verify-full"):
        used, err = psycopg_try(f, sslmode=client_mode, sslrootcert=ca)
        if mode == "disable":
            if client_mode in ("disable", "prefer"):
                assert (used, err) == (False, ""), client_mode
            else:
                assert "server does not support SSL" in err, (client_mode, err)
        elif mode == "require" and client_mode == "disable":
            assert "SSL required" in err, err
        else:
            assert err == "", (mode, client_mode, err)
            assert used is (client_mode != "disable"), (mode, client_mode)
    # One held open: the pooler's SHOW CLIENTS says what it runs
    held = "prefer" if mode == "disable" else "verify-full"
    with psycopg.connect(f.dsn(sslmode=held, sslrootcert=ca), autocommit=True) as conn:
        conn.execute("SELECT 1")
        tls = client_tls_rows(f)
        if mode == "disable":
            assert conn.pgconn.ssl_in_use is False
        else:
            assert conn.pgconn.ssl_in_use is True
            assert any(TLS_TEXT.match(t) for t in tls), tls
    if mode != "disable":
        assert re.search(r"login attempt: db=postgres user=\S+ tls=TLSv1\.3/", f.log())


def test_ssl_required_carries_its_sqlstate(
    funnel: Callable[..., Funnel], pg: Cluster, pooler_cert: tuple[Path, Path]
) -> None:
    f = tls_funnel(funnel, pg, pooler_cert, "require")
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(f.dsn(sslmode="disable"))
    assert "SSL required" in str(info.value)
    sock = socket.create_connection(("127.0.0.1", f.port), timeout=10)
    sock.sendall(startup(SUPERUSER, "postgres"))
    msg = read_message(sock)
    assert msg is not None and msg[0] == b"E"
    fields = error_fields(msg[1])
    assert (fields["C"], fields["M"]) == ("08P01", "SSL required")
    sock.close()
    # the unix socket is not TCP: no TLS asked of it, as PgBouncer
    env = pgpass_env()
    out = subprocess.run(
        [
            pg_tool("psql"),
            "-h",
            str(f.dir),
            "-p",
            str(f.port),
            "-U",
            SUPERUSER,
            "-d",
            "postgres",
            "-Atc",
            "SELECT 5",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert out.stdout.strip() == "5", out.stderr


@pytest.mark.parametrize("mode", ["verify-ca", "verify-full"])
def test_verify_modes_want_a_client_certificate(
    funnel: Callable[..., Funnel],
    pg: Cluster,
    pki: Pki,
    pooler_cert: tuple[Path, Path],
    client_cert: tuple[Path, Path],
    mode: str,
) -> None:
    f = tls_funnel(funnel, pg, pooler_cert, mode, ca=pki.ca_file)
    ca = str(pki.ca_file)
    used, err = psycopg_try(f, sslmode="verify-full", sslrootcert=ca)
    assert err and not used  # no certificate: the handshake is refused
    other = Pki(pki.dir.parent, f"other-{mode}")
    crt, key = other.leaf("stranger", "stranger.example", common_name=SUPERUSER)
    used, err = psycopg_try(f, sslmode="require", sslcert=str(crt), sslkey=str(key))
    assert err and not used  # a certificate from another CA
    assert wait_for(lambda: "TLS handshake error" in f.log())
    crt, key = client_cert
    used, err = psycopg_try(
        f, sslmode="verify-full", sslrootcert=ca, sslcert=str(crt), sslkey=str(key)
    )
    assert (used, err) == (True, "")


def test_asyncpg_every_way(
    funnel: Callable[..., Funnel], pg: Cluster, pki: Pki, pooler_cert: tuple[Path, Path]
) -> None:
    f = tls_funnel(funnel, pg, pooler_cert, "prefer")
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))  # verify-full

    queries = ["SELECT 21 * 2", "SELECT 1", "SELECT 1", "SELECT 1"]

    def run(ssl_arg: Any, **kw: Any) -> tuple[list[Any], bool]:
        return asyncio.run(asyncpg_session(f, ssl_arg, queries, **kw))

    assert run(ctx) == ([42, 1, 1, 1], True)
    assert run("require") == ([42, 1, 1, 1], True)
    assert run("disable") == ([42, 1, 1, 1], False)
    # asyncpg's direct TLS (PostgreSQL 17's sslnegotiation=direct): with its own context
    # asyncpg leaves ALPN to the caller, and without "postgresql" the pooler refuses, as
    # PostgreSQL 17 does
    ctx.set_alpn_protocols(["postgresql"])
    assert run(ctx, direct_tls=True) == ([42, 1, 1, 1], True)


def test_direct_tls_needs_alpn(
    funnel: Callable[..., Funnel], pg: Cluster, pki: Pki, pooler_cert: tuple[Path, Path]
) -> None:
    f = tls_funnel(funnel, pg, pooler_cert, "require")
    ca = str(pki.ca_file)
    used, err = psycopg_try(f, sslmode="verify-full", sslrootcert=ca, sslnegotiation="direct")
    assert (used, err) == (True, "")
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["http/1.1"])  # not postgresql: refused in the handshake
    raw = socket.create_connection(("127.0.0.1", f.port), timeout=10)
    with pytest.raises(ssl.SSLError):
        ctx.wrap_socket(raw, server_hostname="localhost")
    raw.close()
    ctx = ssl.create_default_context(cafile=ca)  # no ALPN at all: closed after the handshake
    raw = socket.create_connection(("127.0.0.1", f.port), timeout=10)
    tls = ctx.wrap_socket(raw, server_hostname="localhost")
    tls.sendall(startup(SUPERUSER, "postgres"))
    with contextlib.suppress(ssl.SSLError, ConnectionResetError):
        assert tls.recv(100) == b""
    tls.close()
    assert wait_for(lambda: 'direct TLS without the ALPN protocol "postgresql"' in f.log())


def test_a_query_glued_to_the_ssl_request_is_refused(
    funnel: Callable[..., Funnel], pg: Cluster, pooler_cert: tuple[Path, Path]
) -> None:
    f = tls_funnel(funnel, pg, pooler_cert, "prefer")
    sock = socket.create_connection(("127.0.0.1", f.port), timeout=10)
    query = b"Q" + struct.pack("!i", 13) + b"SELECT 1\0"
    sock.sendall(struct.pack("!ii", 8, 80877103) + startup(SUPERUSER, "postgres") + query)
    data = sock.recv(1)
    assert data != b"S"  # no handshake over bytes sent in clear
    rest = data + sock.recv(1000)
    assert b"received unencrypted data after SSL request" in rest
    assert sock.recv(100) == b""
    sock.close()
    # and the pooler goes on serving
    assert psycopg_try(f, sslmode="require") == (True, "")


# --- auth_type cert ----------------------------------------------------------------------------


def test_cert_auth_takes_the_user_from_the_certificate(
    funnel: Callable[..., Funnel],
    pg: Cluster,
    pki: Pki,
    pooler_cert: tuple[Path, Path],
    client_cert: tuple[Path, Path],
) -> None:
    f = tls_funnel(funnel, pg, pooler_cert, "verify-full", ca=pki.ca_file, auth_type="cert")
    crt, key = client_cert
    ca = str(pki.ca_file)
    with psycopg.connect(
        f.dsn(
            password=None, sslmode="verify-full", sslrootcert=ca, sslcert=str(crt), sslkey=str(key)
        ),
        autocommit=True,
    ) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (SUPERUSER,)
        rows = [r for r in own_admin(f, "SHOW CLIENTS") if r["user"] == SUPERUSER]
        assert rows and rows[0]["auth_method"].startswith("cert")
        assert TLS_TEXT.match(rows[0]["tls"]), rows
    crt2, key2 = pki.leaf("mallory", "mallory.example", common_name="mallory")
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(
            f.dsn(
                password=None,
                sslmode="verify-full",
                sslrootcert=ca,
                sslcert=str(crt2),
                sslkey=str(key2),
            ),
        )
    assert "certificate authentication failed" in str(info.value)
    assert wait_for(lambda: "TLS certificate name mismatch" in f.log())


def test_cert_auth_without_a_certificate(
    funnel: Callable[..., Funnel], pg: Cluster, pki: Pki, pooler_cert: tuple[Path, Path]
) -> None:
    # require: a certificate is asked for (a CA file is set) but not demanded by TLS
    f = tls_funnel(funnel, pg, pooler_cert, "require", ca=pki.ca_file, auth_type="cert")
    sock = socket.create_connection(("127.0.0.1", f.port), timeout=10)
    sock.sendall(struct.pack("!ii", 8, 80877103))
    assert sock.recv(1) == b"S"
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    tls = ctx.wrap_socket(sock, server_hostname="localhost")
    tls.sendall(startup(SUPERUSER, "postgres"))
    msg = read_message(tls)  # type: ignore[arg-type]
    assert msg is not None and msg[0] == b"E"
    fields = error_fields(msg[1])
    assert (fields["C"], fields["M"]) == ("28000", "certificate authentication failed")
    tls.close()
    assert wait_for(lambda: "TLS client certificate required" in f.log())


# --- server side -------------------------------------------------------------------------------


def server_ssl(cluster: Cluster, app: str) -> list[bool]:
    out = cluster.psql(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
        f"WHERE a.application_name = '{app}'"
    )
    return [line.strip() == "t" for line in out.splitlines() if line.strip()]


@pytest.mark.parametrize("mode", ["allow", "prefer", "require", "verify-ca", "verify-full"])
def test_every_server_sslmode_to_a_tls_only_server(
    funnel: Callable[..., Funnel], tls_pg: Cluster, pki: Pki, mode: str
) -> None:
    settings: dict[str, Any] = {"server_tls_sslmode": mode}
    if mode.startswith("verify"):
        settings["server_tls_ca_file"] = str(pki.ca_file)
    f = funnel(tls_pg, settings=settings)
    app = f"tls-{mode}"
    with f.connect(application_name=app) as conn:
        assert conn.execute("SELECT 6 * 7").fetchone() == (42,)
        assert server_ssl(tls_pg, app) == [True]
        servers = f.admin("SHOW SERVERS")
        assert servers and all(TLS_TEXT.match(s["tls"]) for s in servers), servers


def test_server_disable_meets_a_tls_only_server(
    funnel: Callable[..., Funnel], tls_pg: Cluster
) -> None:
    f = funnel(tls_pg, settings={"server_tls_sslmode": "disable"})
    with pytest.raises(psycopg.OperationalError) as info:
        f.connect()
    assert "pg_hba.conf rejects connection" in str(info.value)
    assert "no encryption" in str(info.value)


def test_server_verify_failures_name_the_reason(
    funnel: Callable[..., Funnel], tls_pg: Cluster, pki: Pki
) -> None:
    stranger = Pki(pki.dir.parent, "stranger-ca")
    f = funnel(
        tls_pg,
        settings={"server_tls_sslmode": "verify-ca", "server_tls_ca_file": str(stranger.ca_file)},
    )
    with pytest.raises(psycopg.OperationalError) as info:
        f.connect()
    text = str(info.value)
    assert "TLS handshake error: certificate verify failed" in text, text
    assert wait_for(
        lambda: (
            "server login failed: 08001 TLS handshake error: certificate verify failed" in f.log()
        )
    )
    # verify-full against a name the certificate does not carry: "127.1" reaches 127.0.0.1
    # (inet_aton's short form) but is checked as a host name
    f2 = funnel(
        tls_pg,
        settings={
            "server_tls_sslmode": "verify-full",
            "server_tls_ca_file": str(pki.ca_file),
            "query_wait_timeout": 10,
        },
        databases={"postgres": f"host=127.1 port={tls_pg.port} dbname=postgres"},
    )
    with pytest.raises(psycopg.OperationalError) as info:
        f2.connect()
    assert "certificate verify failed: hostname mismatch" in str(info.value), str(info.value)
    # the right name passes
    f3 = funnel(
        tls_pg,
        settings={"server_tls_sslmode": "verify-full", "server_tls_ca_file": str(pki.ca_file)},
        databases={"postgres": f"host=localhost port={tls_pg.port} dbname=postgres"},
    )
    with f3.connect() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_server_require_meets_a_server_without_tls(
    funnel: Callable[..., Funnel], pg: Cluster
) -> None:
    f = funnel(pg, settings={"server_tls_sslmode": "require"})
    with pytest.raises(psycopg.OperationalError) as info:
        f.connect()
    assert "server refused SSL" in str(info.value)
    # prefer (the default) goes on in clear
    g = funnel(pg)
    with g.connect(application_name="plain-prefer") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert server_ssl(pg, "plain-prefer") == [False]


def test_mutual_tls_both_ways(
    funnel: Callable[..., Funnel],
    tls_pg: Cluster,
    pki: Pki,
    pooler_cert: tuple[Path, Path],
    client_cert: tuple[Path, Path],
) -> None:
    """Clients show the pooler a certificate, the pooler shows PostgreSQL one (cert auth)."""
    server_crt, server_key = pki.leaf("to-pg", "pooler.example", common_name=CERT_USER)
    f = tls_funnel(
        funnel,
        tls_pg,
        pooler_cert,
        "verify-full",
        ca=pki.ca_file,
        server_tls_sslmode="verify-full",
        server_tls_ca_file=str(pki.ca_file),
        server_tls_cert_file=str(server_crt),
        server_tls_key_file=str(server_key),
    )
    f.stop()
    f = funnel(
        tls_pg,
        settings={
            "client_tls_sslmode": "verify-full",
            "client_tls_cert_file": str(pooler_cert[0]),
            "client_tls_key_file": str(pooler_cert[1]),
            "client_tls_ca_file": str(pki.ca_file),
            "server_tls_sslmode": "verify-full",
            "server_tls_ca_file": str(pki.ca_file),
            "server_tls_cert_file": str(server_crt),
            "server_tls_key_file": str(server_key),
        },
        databases={
            "postgres": f"host=127.0.0.1 port={tls_pg.port} dbname=postgres user={CERT_USER}"
        },
    )
    crt, key = client_cert
    with psycopg.connect(
        f.dsn(
            sslmode="verify-full", sslrootcert=str(pki.ca_file), sslcert=str(crt), sslkey=str(key)
        ),
        autocommit=True,
    ) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (CERT_USER,)
        assert conn.pgconn.ssl_in_use


# --- reload ------------------------------------------------------------------------------------


def test_reload_swaps_certificates_while_a_client_keeps_querying(
    funnel: Callable[..., Funnel], pg: Cluster, pki: Pki, tmp_path: Path
) -> None:
    crt, key = pki.leaf("swap", "localhost", "127.0.0.1")
    live_crt, live_key = tmp_path / "live.crt", tmp_path / "live.key"
    live_crt.write_bytes(crt.read_bytes())
    live_key.write_bytes(key.read_bytes())
    f = tls_funnel(funnel, pg, (live_crt, live_key), "require")
    old_ca = str(pki.ca_file)
    stop = threading.Event()
    done: list[int] = []
    errors: list[BaseException] = []
    conn = psycopg.connect(f.dsn(sslmode="verify-full", sslrootcert=old_ca), autocommit=True)
    assert conn.pgconn.ssl_in_use

    def keep_querying() -> None:
        try:
            while not stop.is_set():
                row = conn.execute("SELECT count(*) FROM generate_series(1, 100)").fetchone()
                assert row == (100,)
                done.append(1)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=keep_querying)
    worker.start()
    try:
        wait_for(lambda: len(done) > 20)
        fresh = Pki(tmp_path, "renewed")
        crt2, key2 = fresh.leaf("renewed", "localhost", "127.0.0.1")
        live_crt.write_bytes(crt2.read_bytes())
        live_key.write_bytes(key2.read_bytes())
        f.admin("RELOAD")
        before = len(done)
        wait_for(lambda: len(done) > before + 20)
        # new logins get the renewed certificate, the old CA no longer verifies it
        assert psycopg_try(f, sslmode="verify-full", sslrootcert=str(fresh.ca_file)) == (True, "")
        used, err = psycopg_try(f, sslmode="verify-full", sslrootcert=old_ca)
        assert not used and "certificate verify failed" in err
        # a broken key: logged with its path, the renewed certificate keeps serving
        live_key.write_text("not a key\n")
        with pytest.raises(psycopg.Error) as info:
            f.admin("RELOAD")
        assert "RELOAD failed" in str(info.value)
        assert wait_for(lambda: str(live_key) in f.log())
        assert "TLS configuration could not be reloaded, keeping old configuration" in f.log()
        assert psycopg_try(f, sslmode="verify-full", sslrootcert=str(fresh.ca_file)) == (True, "")
        before = len(done)
        wait_for(lambda: len(done) > before + 20)
    finally:
        stop.set()
        worker.join(30)
        conn.close()
    assert errors == []


def test_servers_reconnect_only_when_server_tls_changed(
    funnel: Callable[..., Funnel], tls_pg: Cluster, pki: Pki
) -> None:
    f = funnel(tls_pg, settings={"server_tls_sslmode": "require", "pool_mode": "session"})
    conf = f.config.read_text()

    def pid() -> int:
        with f.connect() as conn:
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
            assert row is not None
            return int(row[0])

    first = pid()
    f.admin("RELOAD")  # nothing changed: the same server
    assert pid() == first
    f.config.write_text(
        conf.replace("server_tls_sslmode = require", "server_tls_sslmode = verify-ca")
        + f"server_tls_ca_file = {pki.ca_file}\n"
    )
    f.admin("RELOAD")
    assert wait_for(lambda: pid() != first)
    assert "server TLS settings changed" in f.log()


def test_tls_settings_that_cannot_work_stop_the_load(
    funnel: Callable[..., Funnel], pg: Cluster, pooler_cert: tuple[Path, Path], tmp_path: Path
) -> None:
    with pytest.raises(RuntimeError, match="needs client_tls_key_file"):
        funnel(pg, settings={"client_tls_sslmode": "require"})
    missing = tmp_path / "missing.key"
    f = Funnel(
        pg,
        settings={
            "client_tls_sslmode": "require",
            "client_tls_cert_file": str(pooler_cert[0]),
            "client_tls_key_file": str(missing),
        },
    )
    try:
        with pytest.raises(RuntimeError, match="exited 1"):
            f.start()
        assert f'client TLS configuration failed: cannot load private key "{missing}"' in f.log()
    finally:
        f.stop()


def test_many_tls_clients_through_one_pool(
    funnel: Callable[..., Funnel], tls_pg: Cluster, pki: Pki, pooler_cert: tuple[Path, Path]
) -> None:
    """pgbench over TLS at both ends, 200 clients logging in at once (handshakes and logins
    overlapping in the switch), then a transaction count by number: nothing is lost."""
    f = tls_funnel(
        funnel, tls_pg, pooler_cert, "require", server_tls_sslmode="require", max_client_conn=400
    )
    from tests.integration.harness import pgbench_init

    pgbench_init(tls_pg)
    env = {**pgpass_env(), "PGSSLMODE": "require", "PGCONNECT_TIMEOUT": "20"}
    base = [pg_tool("pgbench"), "-h", "127.0.0.1", "-p", str(f.port), "-U", SUPERUSER, "-n"]
    out = subprocess.run(
        [*base, "-c", "200", "-j", "2", "-t", "20", "-S", "postgres"],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "number of transactions actually processed: 4000/4000" in out.stdout
    # and a login per transaction (pgbench -C): each a handshake
    out = subprocess.run(
        [*base, "-C", "-c", "20", "-j", "2", "-t", "10", "-S", "postgres"],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "number of transactions actually processed: 200/200" in out.stdout
    stats = [r for r in f.admin("SHOW STATS") if r["database"] == "postgres"]
    assert stats and stats[0]["total_xact_count"] >= 4200


def route_funnel(
    funnel: Callable[..., Funnel], pg: Cluster, cert: tuple[Path, Path]
) -> tuple[Funnel, str]:
    """test_switch_logins' pooler (alice from the auth file: routes for the switch's own
    logins) with client TLS required."""
    from tests.integration.test_switch_logins import _start

    return _start(
        funnel,
        pg,
        client_tls_sslmode="require",
        client_tls_cert_file=str(cert[0]),
        client_tls_key_file=str(cert[1]),
    )


def test_repeat_tls_logins_run_in_the_switch(
    funnel: Callable[..., Funnel], pg: Cluster, pki: Pki, pooler_cert: tuple[Path, Path]
) -> None:
    """The logins the switch runs alone on a route (fastlogin.c) do the handshake too."""
    from tests.integration.test_switch_logins import _connect, _logins_reach, _warm

    f, base = route_funnel(funnel, pg, pooler_cert)
    ca = str(pki.ca_file)
    _warm(f, base)  # through Python (libpq's sslmode prefer: TLS)
    for _ in range(5):
        with _connect(f, sslmode="verify-full", sslrootcert=ca) as conn:
            assert conn.pgconn.ssl_in_use
            assert conn.execute("SELECT 3").fetchone() == (3,)
    _logins_reach(base, 1, 5)
    lines = [line for line in f.log().splitlines() if "login attempt" in line]
    assert len(lines) == 6 and all(" tls=TLSv1." in line for line in lines), lines
    # in clear under require: handed to Python, which refuses it
    with pytest.raises(psycopg.OperationalError, match="SSL required"):
        _connect(f, sslmode="disable")
    # a client that refuses the pooler's certificate: its end is logged, the pooler goes on
    other = Pki(pki.dir.parent, "fast-other")
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        _connect(f, sslmode="verify-full", sslrootcert=str(other.ca_file))
    assert wait_for(lambda: "TLS handshake error" in f.log())
    with _connect(f, sslmode="require") as conn:
        assert conn.execute("SELECT 4").fetchone() == (4,)


def test_a_protocol_version_refused_says_so(
    funnel: Callable[..., Funnel], pg: Cluster, pki: Pki, pooler_cert: tuple[Path, Path]
) -> None:
    f = tls_funnel(funnel, pg, pooler_cert, "require", client_tls_protocols="tlsv1.3")
    used, err = psycopg_try(f, sslmode="require", ssl_max_protocol_version="TLSv1.2")
    assert not used and "protocol version" in err, err
    assert wait_for(lambda: "TLS handshake error: unsupported protocol" in f.log())
    assert psycopg_try(f, sslmode="require") == (True, "")
    row = next(r for r in f.admin("SHOW CONFIG") if r["key"] == "client_tls_protocols")
    assert row["value"] == "tlsv1.3"


@pytest.mark.parametrize("mode", TLS_MODES)
def test_psql_and_asyncpg_against_each_pooler_mode(
    funnel: Callable[..., Funnel],
    pg: Cluster,
    pki: Pki,
    pooler_cert: tuple[Path, Path],
    client_cert: tuple[Path, Path],
    mode: str,
) -> None:
    """psql and asyncpg, verifying the pooler's certificate (verify-full) or in clear, with a
    client certificate where the mode wants one."""
    f = tls_funnel(funnel, pg, pooler_cert, mode, ca=pki.ca_file)
    wants_cert = mode.startswith("verify")
    crt, key = client_cert
    base = f"host=127.0.0.1 port={f.port} user={SUPERUSER} dbname=postgres"
    tls_args = f" sslmode=verify-full sslrootcert={pki.ca_file}"
    if wants_cert:
        tls_args += f" sslcert={crt} sslkey={key}"

    def psql(conninfo: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [pg_tool("psql"), conninfo, "-Atc", "SELECT 40 + 2", "-c", "\\conninfo"],
            capture_output=True,
            text=True,
            env=pgpass_env(),
            timeout=30,
        )

    verified = psql(base + tls_args)
    clear = psql(base + " sslmode=disable")
    if mode == "disable":
        assert verified.returncode != 0 and "does not support SSL" in verified.stderr
    else:
        assert verified.returncode == 0, verified.stderr
        assert verified.stdout.splitlines()[0] == "42"
        assert "SSL connection (protocol: TLSv1.3" in verified.stdout
    if mode in ("require", "verify-ca", "verify-full"):
        assert clear.returncode != 0 and "SSL required" in clear.stderr
    else:
        assert clear.returncode == 0 and clear.stdout.splitlines()[0] == "42", clear.stderr
        assert "SSL connection" not in clear.stdout

    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    if wants_cert:
        ctx.load_cert_chain(str(crt), str(key))

    def fetch(ssl_arg: Any) -> tuple[list[Any], bool]:
        return asyncio.run(asyncpg_session(f, ssl_arg, ["SELECT 6 * 7"]))

    if mode == "disable":
        with pytest.raises((ConnectionError, OSError, asyncpg.PostgresError)):
            fetch(ctx)
    else:
        assert fetch(ctx) == ([42], True)
    if mode in ("require", "verify-ca", "verify-full"):
        with pytest.raises(asyncpg.PostgresError, match="SSL required"):
            fetch("disable")
    else:
        assert fetch("disable") == ([42], False)


def test_a_switch_login_that_fails_after_its_handshake_logs_its_tls(
    funnel: Callable[..., Funnel], pg: Cluster, pki: Pki, pooler_cert: tuple[Path, Path]
) -> None:
    """A login the switch ran on a route, refused for its password: its lines say TLS."""
    from tests.integration.test_switch_logins import _connect, _warm

    f, base = route_funnel(funnel, pg, pooler_cert)
    _warm(f, base)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _connect(f, password="wrong", sslmode="require")
    assert wait_for(
        lambda: re.search(
            r"login attempt: db=postgres user=alice tls=TLSv1\.3/\S+\n.*"
            r"closing because: password authentication failed",
            f.log(),
        )
    )


@pytest.mark.parametrize("mode", ["verify-full", "disable"])
def test_auth_query_lookups_use_server_tls(
    funnel: Callable[..., Funnel], tls_pg: Cluster, pki: Pki, mode: str
) -> None:
    """auth_query's own connections follow server_tls_sslmode, as the pool's servers do."""
    role = f"aq_tls_{mode.replace('-', '_')}"
    tls_pg.psql(f"CREATE ROLE {role} LOGIN PASSWORD 'lookup-pw'")
    f = funnel(
        tls_pg,
        settings={
            "auth_type": "scram-sha-256",
            "auth_user": SUPERUSER,
            "server_tls_sslmode": mode,
            "server_tls_ca_file": str(pki.ca_file),
        },
    )
    if mode == "disable":  # the hostssl-only server refuses the lookup in clear
        with pytest.raises(psycopg.OperationalError, match="authentication lookup failed"):
            f.connect(user=role, password="lookup-pw")
        return
    with f.connect(user=role, password="lookup-pw", application_name="aq-tls") as conn:
        assert conn.execute("SELECT current_user").fetchone() == (role,)
    out = tls_pg.psql(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
        "WHERE a.application_name = 'pgfunnel auth_query'"
    )
    assert [line.strip() for line in out.splitlines() if line.strip()] == ["t"]


def test_an_ssl_request_inside_direct_tls_is_refused(
    funnel: Callable[..., Funnel], pg: Cluster, pki: Pki, pooler_cert: tuple[Path, Path]
) -> None:
    """As PostgreSQL: TLS is negotiated once; the login is refused, not left hanging."""
    f = tls_funnel(funnel, pg, pooler_cert, "require")
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    ctx.set_alpn_protocols(["postgresql"])
    for _ in range(2):  # the second may meet a route (the switch runs the login)
        raw = socket.create_connection(("127.0.0.1", f.port), timeout=10)
        tls = ctx.wrap_socket(raw, server_hostname="localhost")
        tls.sendall(struct.pack("!ii", 8, 80877103))
        msg = read_message(tls)  # type: ignore[arg-type]
        assert msg is not None and msg[0] == b"E"
        fields = error_fields(msg[1])
        assert fields["C"] == "0A000" and "unsupported frontend protocol" in fields["M"]
        tls.close()
        assert psycopg_try(f, sslmode="require") == (True, "")


def test_set_of_a_tls_setting_applies_or_is_refused(
    funnel: Callable[..., Funnel], pg: Cluster, pki: Pki, pooler_cert: tuple[Path, Path]
) -> None:
    """SET through the console: a working value takes effect at once, one that cannot run is
    refused with the reason, and what serves stays."""
    from tests.integration.test_admin_commands import command, refused

    f = tls_funnel(funnel, pg, pooler_cert, "prefer")
    assert psycopg_try(f, sslmode="require") == (True, "")
    err = refused(f, "SET client_tls_cert_file = '/nonexistent/cert.pem'")
    assert "/nonexistent/cert.pem" in str(err), err
    err = refused(f, "SET client_tls_protocols = 'tlsv1.4'")
    assert "unknown TLS protocol" in str(err), err
    assert psycopg_try(f, sslmode="require") == (True, "")  # the old context serves
    assert command(f, "SET client_tls_protocols = 'tlsv1.2'") == "SET client_tls_protocols=tlsv1.2"
    with psycopg.connect(f.dsn(sslmode="require"), autocommit=True):
        assert any(t.startswith("TLSv1.2/") for t in client_tls_rows(f)), client_tls_rows(f)
    assert command(f, "SET client_tls_sslmode = 'disable'") == "SET client_tls_sslmode=disable"
    used, err_text = psycopg_try(f, sslmode="require")
    assert not used and "does not support SSL" in err_text
