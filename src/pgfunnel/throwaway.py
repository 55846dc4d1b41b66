"""A throwaway PostgreSQL cluster (initdb in a temp dir, a free port) for tests, demo and bench."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

SUPERUSER = "postgres"
SUPERUSER_PASSWORD = "postgres"


def pg_bindir() -> Path:
    """The newest installed PostgreSQL server's bin directory."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(os.path.realpath(initdb)).parent
    raise FileNotFoundError("initdb not found: install Debian's postgresql (make bootstrap)")


def pg_tool(name: str) -> str:
    """Path of a PostgreSQL client tool (psql, pgbench), preferring the server's version."""
    candidate = pg_bindir() / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> str | None:
    """initdb and postgres refuse to run as root: use an unprivileged account then."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and no unprivileged account (postgres, nobody) exists")


class Cluster:
    """One PostgreSQL cluster in its own directory; start(), stop(), restart(), dsn()."""

    def __init__(
        self,
        base_dir: str | Path | None = None,
        *,
        max_connections: int = 100,
        settings: Mapping[str, str | int] | None = None,
        hba: Sequence[str] = (),
        port: int | None = None,
    ) -> None:
        self._own_dir = base_dir is None
        self.base = Path(base_dir or tempfile.mkdtemp(prefix="pgf-"))
        self.data = self.base / "data"
        self.sockdir = self.base / "sock"
        self.logfile = self.base / "postgres.log"
        self.port = port or free_port()
        self.max_connections = max_connections
        self.settings: dict[str, str | int] = dict(settings or {})
        self.extra_hba = list(hba)
        self.host = "127.0.0.1"
        self.bindir = pg_bindir()
        self.user = _run_as()
        self._initialised = False

    # --- lifecycle -------------------------------------------------------------------------
    def _chown(self, path: Path) -> None:
        if self.user is not None:
            pw = pwd.getpwnam(self.user)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def _run(self, args: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args),
            user=self.user,
            capture_output=True,
            text=True,
            check=check,
            cwd=self.base,
            env={**os.environ, "LC_ALL": "C", "LANG": "C"},
        )

    def init(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self._chown(self.base)
        self.sockdir.mkdir(exist_ok=True)
        self._chown(self.sockdir)
        pwfile = self.base / "pwfile"
        pwfile.write_text(SUPERUSER_PASSWORD + "\n")
        self._chown(pwfile)
        self._run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                SUPERUSER,
                "--pwfile",
                str(pwfile),
                "-E",
                "UTF8",
                "--locale=C",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
            ]
        )
        conf = {
            "port": self.port,
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.sockdir}'",
            "max_connections": self.max_connections,
            "superuser_reserved_connections": 3,
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "32MB",
            "max_wal_senders": 0,
            "wal_level": "minimal",
            "log_min_messages": "warning",
            "log_line_prefix": "'%m [%p] %u@%d '",
            **self.settings,
        }
        with (self.data / "postgresql.conf").open("a") as f:
            for key, value in conf.items():
                f.write(f"{key} = {value}\n")
        hba_lines = [
            *self.extra_hba,
            "local all all trust",
            "host all all 127.0.0.1/32 scram-sha-256",
            "host all all ::1/128 scram-sha-256",
        ]
        (self.data / "pg_hba.conf").write_text("\n".join(hba_lines) + "\n")
        self._initialised = True

    def start(self) -> None:
        if not self._initialised:
            self.init()
        proc = self._run(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.logfile),
                "-w",
                "-t",
                "60",
                "start",
            ],
            check=False,
        )
        if proc.returncode != 0:
            log = self.logfile.read_text() if self.logfile.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {proc.stdout}{proc.stderr}\n{log[-2000:]}")

    def stop(self, mode: str = "fast") -> None:
        self._run(
            [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"],
            check=False,
        )

    def restart(self) -> None:
        self.stop()
        self.start()

    def reload(self) -> None:
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "reload"])

    def destroy(self) -> None:
        self.stop("immediate")
        if self._own_dir:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # --- access ----------------------------------------------------------------------------
    def dsn(
        self,
        user: str = SUPERUSER,
        dbname: str = "postgres",
        password: str | None = SUPERUSER_PASSWORD,
        **extra: str | int,
    ) -> str:
        parts = [f"host={self.host}", f"port={self.port}", f"user={user}", f"dbname={dbname}"]
        if password is not None:
            parts.append(f"password={password}")
        parts += [f"{k}={v}" for k, v in extra.items()]
        return " ".join(parts)

    def psql(self, sql: str, dbname: str = "postgres", check: bool = True) -> str:
        """Run SQL as the superuser over the unix socket; returns unaligned, tuples-only output."""
        proc = subprocess.run(
            [
                pg_tool("psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.sockdir),
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                dbname,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"psql failed: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = subprocess.run(
                [pg_tool("pg_isready"), "-h", str(self.sockdir), "-p", str(self.port)],
                capture_output=True,
            )
            if proc.returncode == 0:
                return
            time.sleep(0.1)
        raise TimeoutError("PostgreSQL did not become ready")
