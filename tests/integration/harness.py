"""Runs a real `pgfunnel serve` subprocess with a generated pgbouncer.ini for integration tests."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg

from pgfunnel.throwaway import SUPERUSER, SUPERUSER_PASSWORD, Cluster, free_port, pg_tool

ADMIN_USER = "admin"
ADMIN_PASSWORD = "adminpw"


class Funnel:
    """One pgfunnel process. `settings` go to [pgbouncer]; `databases` lines to [databases]."""

    def __init__(
        self,
        cluster: Cluster | None,
        *,
        settings: Mapping[str, Any] | None = None,
        databases: Mapping[str, str] | None = None,
        users: Mapping[str, str] | None = None,
        userlist: Mapping[str, str] | None = None,
        nofile: int | None = None,
    ) -> None:
        self.cluster = cluster
        self.nofile = nofile  # RLIMIT_NOFILE (soft and hard) for the process, when given
        self.dir = Path(tempfile.mkdtemp(prefix="pgfunnel-"))
        self.port = free_port()
        self.logfile = self.dir / "pgfunnel.log"
        self.config = self.dir / "pgbouncer.ini"
        entries = dict(userlist or {})
        entries.setdefault(SUPERUSER, SUPERUSER_PASSWORD)
        entries.setdefault(ADMIN_USER, ADMIN_PASSWORD)
        self.userlist_path = self.dir / "userlist.txt"
        self.userlist_path.write_text(
            "".join(f'"{u}" "{p}"\n' for u, p in entries.items()), encoding="utf-8"
        )
        if databases is None:
            assert cluster is not None
            databases = {"postgres": f"host=127.0.0.1 port={cluster.port} dbname=postgres"}
        base: dict[str, Any] = {
            "listen_addr": "127.0.0.1",
            "listen_port": self.port,
            "unix_socket_dir": str(self.dir),
            "auth_type": "scram-sha-256",
            "auth_file": str(self.userlist_path),
            "admin_users": ADMIN_USER,
            "pool_mode": "transaction",
            "default_pool_size": 10,
            "logfile": str(self.logfile),
            "server_login_retry": 1,
        }
        base.update(settings or {})
        lines = ["[databases]"]
        lines += [f"{name} = {conn}" for name, conn in databases.items()]
        if users:
            lines.append("[users]")
            lines += [f"{name} = {conf}" for name, conf in users.items()]
        lines.append("[pgbouncer]")
        lines += [f"{k} = {v}" for k, v in base.items()]
        self.config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> Funnel:
        nofile = self.nofile

        def limit_fds() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pgfunnel", "serve", "-q", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=limit_fds if nofile is not None else None,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"pgfunnel exited {self.proc.returncode}: {err}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("pgfunnel did not start listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # SIGQUIT exits at once; SIGTERM would wait for the test's clients to leave.
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Funnel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- access ----------------------------------------------------------------------------------
    def dsn(
        self,
        user: str = SUPERUSER,
        dbname: str = "postgres",
        password: str | None = SUPERUSER_PASSWORD,
        **extra: Any,
    ) -> str:
        parts = [f"host=127.0.0.1 port={self.port} user={user} dbname={dbname}"]
        if password is not None:
            parts.append(f"password={password}")
        parts += [f"{k}={v}" for k, v in extra.items()]
        return " ".join(parts)

    def url(
        self, user: str = SUPERUSER, password: str = SUPERUSER_PASSWORD, db: str = "postgres"
    ) -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{db}"

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        """A psycopg connection through the pooler; prepared statements off (transaction mode)."""
        return psycopg.connect(self.dsn(**kwargs), autocommit=True, prepare_threshold=None)

    def admin(self, command: str) -> list[dict[str, Any]]:
        """Run an admin console command; rows as dicts keyed by PgBouncer's column names."""
        with psycopg.connect(
            self.dsn(user=ADMIN_USER, dbname="pgbouncer", password=ADMIN_PASSWORD),
            autocommit=True,
        ) as conn:
            cur = conn.execute(command, prepare=False)
            if cur.description is None:
                return []
            names = [d.name for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def pool(self, database: str = "postgres", user: str = SUPERUSER) -> dict[str, Any]:
        for row in self.admin("SHOW POOLS"):
            if row["database"] == database and row["user"] == user:
                return row
        raise KeyError((database, user))

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""


def backends(cluster: Cluster, *, user: str | None = None, state: str | None = None) -> int:
    """Client backends on the server, as pg_stat_activity counts them (excluding this probe)."""
    where = ["backend_type = 'client backend'", "pid <> pg_backend_pid()"]
    if user:
        where.append(f"usename = '{user}'")
    if state:
        where.append(f"state = '{state}'")
    return int(cluster.psql(f"SELECT count(*) FROM pg_stat_activity WHERE {' AND '.join(where)}"))


def wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.1) -> Any:
    """Poll until predicate() is truthy; returns its value or raises with the last one."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {value!r})")


def pgpass_env(password: str = SUPERUSER_PASSWORD) -> dict[str, str]:
    return {**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "10"}


def pgbench_init(cluster: Cluster, scale: int = 1) -> None:
    """`pgbench -i` straight at the cluster (not through a pooler)."""
    subprocess.run(
        [
            pg_tool("pgbench"),
            "-i",
            "-q",
            "-s",
            str(scale),
            "-h",
            "127.0.0.1",
            "-p",
            str(cluster.port),
            "-U",
            SUPERUSER,
            "postgres",
        ],
        env=pgpass_env(),
        capture_output=True,
        check=True,
    )


@contextlib.contextmanager
def own_role(cluster: Cluster, role: str, password: str, *setup_sql: str) -> Iterator[str]:
    """A superuser role of a test module's own, so pg_stat_activity counts see only its
    backends; its sessions are ended and it is dropped afterwards, with `setup_sql`'s objects
    (name them in the DROP statements the caller passes last)."""
    cluster.psql(f"CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{password}'")
    creates = [s for s in setup_sql if not s.lstrip().upper().startswith("DROP")]
    drops = [s for s in setup_sql if s.lstrip().upper().startswith("DROP")]
    for sql in creates:
        cluster.psql(sql)
    try:
        yield role
    finally:
        cluster.psql(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'",
            check=False,
        )
        for sql in drops:
            cluster.psql(sql, check=False)
        cluster.psql(f"DROP ROLE IF EXISTS {role}", check=False)
