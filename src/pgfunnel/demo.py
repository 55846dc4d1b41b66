"""`make demo`: 500 clients at a max_connections=20 PostgreSQL, direct and then through pgfunnel."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pwd
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from pgfunnel.throwaway import SUPERUSER, SUPERUSER_PASSWORD, Cluster, free_port

TOO_MANY_CONNECTIONS = "53300"
DEMO_DB = "demo"
# Each round is three short transactions, so a client holds a server connection only briefly:
# the workload a transaction pooler is for.
ROUNDS_PER_CLIENT = 2
TRANSACTIONS_PER_ROUND = 3


# --- pooler processes (shared with bench/run.py) -----------------------------------------------
class PoolerError(RuntimeError):
    """A pooler did not start, did not accept connections, or died."""


def pooler_ini(
    *,
    databases: Mapping[str, str],
    port: int,
    workdir: Path,
    auth_type: str = "md5",
    pool_size: int = 20,
    max_client_conn: int = 1000,
    extra: Mapping[str, str | int] | None = None,
) -> str:
    """A pgbouncer.ini that PgBouncer and pgfunnel both read, listening on loopback TCP only."""
    lines = ["[databases]"]
    lines += [f"{name} = {conninfo}" for name, conninfo in databases.items()]
    settings: dict[str, str | int] = {
        "listen_addr": "127.0.0.1",
        "listen_port": port,
        # Empty turns the unix socket off: nothing outside loopback TCP, no stray socket files.
        "unix_socket_dir": "",
        "auth_type": auth_type,
        "auth_file": str(workdir / "userlist.txt"),
        "pool_mode": "transaction",
        "default_pool_size": pool_size,
        "max_client_conn": max_client_conn,
        "logfile": str(workdir / "pooler.log"),
        "pidfile": str(workdir / "pooler.pid"),
        "admin_users": SUPERUSER,
        **(extra or {}),
    }
    lines += ["", "[pgbouncer]"]
    lines += [f"{key} = {value}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


class PoolerProcess:
    """One pooler subprocess (pgfunnel or PgBouncer) with its ini and logs in its own directory."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        port: int,
        workdir: Path,
        run_as: str | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.port = port
        self.workdir = workdir
        self.run_as = run_as
        self.ini = workdir / "pooler.ini"
        self.stderr_path = workdir / "stderr.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr: TextIO | None = None

    def write_config(self, ini_text: str, users: Mapping[str, str]) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ini.write_text(ini_text)
        userlist = "".join(f'"{user}" "{password}"\n' for user, password in users.items())
        (self.workdir / "userlist.txt").write_text(userlist)
        if self.run_as is not None:
            # PgBouncer refuses to run as root, so it runs as an unprivileged user that must be
            # able to read its config and write its log and pidfile.
            pw = pwd.getpwnam(self.run_as)
            for path in [self.workdir, *self.workdir.iterdir()]:
                os.chown(path, pw.pw_uid, pw.pw_gid)

    def start(self, timeout: float = 15.0) -> None:
        self._stderr = self.stderr_path.open("w")
        self.proc = subprocess.Popen(
            [*self.argv, str(self.ini)],
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
            user=self.run_as,
            # Its own session: a terminal's Ctrl-C reaches us, and we stop the pooler in order.
            start_new_session=True,
        )
        try:
            self.wait_accepting(timeout)
        except BaseException:
            # Ctrl-C or SIGTERM while waiting too: nobody else holds this process yet.
            self.stop()
            raise

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_accepting(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                code = self.proc.returncode if self.proc is not None else None
                raise PoolerError(f"{self.name} exited with status {code}\n{self.log_tail()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 1),
            ):
                return
            time.sleep(0.05)
        raise PoolerError(
            f"{self.name} did not accept on 127.0.0.1:{self.port} in {timeout:.0f}s\n"
            f"{self.log_tail()}"
        )

    def log_tail(self, lines: int = 15) -> str:
        # A pooler may log the same lines to stderr and to its logfile: show each line once.
        out: dict[str, None] = {}
        for path in (self.stderr_path, self.workdir / "pooler.log"):
            if path.exists():
                out.update(dict.fromkeys(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # SIGQUIT is PgBouncer's immediate shutdown (SIGTERM waits for clients to leave).
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


def pgfunnel_argv() -> list[str]:
    return [sys.executable, "-m", "pgfunnel", "serve"]


# --- the client workload -----------------------------------------------------------------------
@dataclass
class Outcome:
    """What one side of the demo did: clients that finished, transactions, failures by cause."""

    label: str
    clients: int
    succeeded: int = 0
    transactions: int = 0
    failures: Counter[tuple[str, str]] = field(default_factory=Counter)
    wall_seconds: float = 0.0
    error: str | None = None  # the side could not run at all (pooler missing or broken)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def throughput(self) -> float:
        return self.transactions / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def count(self, sqlstate: str) -> int:
        return sum(n for (state, _), n in self.failures.items() if state == sqlstate)


@dataclass
class DemoResult:
    direct: Outcome
    pooled: Outcome
    max_connections: int

    @property
    def ok(self) -> bool:
        return (
            self.direct.count(TOO_MANY_CONNECTIONS) > 0
            and self.pooled.error is None
            and self.pooled.failed == 0
            and self.pooled.succeeded == self.pooled.clients
        )

    def verdict(self) -> str:
        if self.pooled.error is not None:
            return f"{self.pooled.label} could not run: {self.pooled.error}"
        if self.direct.count(TOO_MANY_CONNECTIONS) == 0:
            return "the direct clients did not hit 53300: the demo proves nothing (raise --clients)"
        if self.pooled.failed or self.pooled.succeeded != self.pooled.clients:
            return f"{self.pooled.label}: {self.pooled.failed} clients failed"
        return (
            f"direct: {self.direct.count(TOO_MANY_CONNECTIONS)} of {self.direct.clients} clients "
            f"refused with SQLSTATE 53300; {self.pooled.label}: all {self.pooled.clients} finished"
        )


def _failure_key(exc: BaseException) -> tuple[str, str]:
    # asyncpg carries the server's SQLSTATE even for a refused login; other errors (a reset
    # socket, a timeout) have none, so their class name stands in.
    sqlstate = getattr(exc, "sqlstate", None)
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return (str(sqlstate) if sqlstate else type(exc).__name__, message)


async def _client(
    number: int, connect: Callable[[], Awaitable[Any]], outcome: Outcome, done: Callable[[], None]
) -> None:
    try:
        conn = await connect()
    except Exception as exc:
        outcome.failures[_failure_key(exc)] += 1
        done()
        return
    try:
        for _ in range(ROUNDS_PER_CLIENT):
            await conn.execute("SELECT pg_sleep(0.01)")
            async with conn.transaction():
                await conn.execute("INSERT INTO demo_events (client) VALUES ($1)", number)
            await conn.fetchval("SELECT count(*) FROM demo_events")
            outcome.transactions += TRANSACTIONS_PER_ROUND
        outcome.succeeded += 1
    except Exception as exc:
        outcome.failures[_failure_key(exc)] += 1
    finally:
        with contextlib.suppress(Exception):
            await conn.close(timeout=5)
        done()


async def run_clients(
    label: str, host: str, port: int, dbname: str, clients: int, done: Callable[[], None]
) -> Outcome:
    """Start `clients` connections at once; each runs a few short transactions and leaves."""
    # asyncpg reports a refused login's SQLSTATE (psycopg's connection errors carry none). It is
    # installed with the project's test extras, which `make demo` installs.
    import asyncpg  # type: ignore[import-untyped]

    def connect() -> Awaitable[Any]:
        connection: Awaitable[Any] = asyncpg.connect(
            host=host,
            port=port,
            user=SUPERUSER,
            password=SUPERUSER_PASSWORD,
            database=dbname,
            # asyncpg's defaults, statement cache included: through pgfunnel's transaction
            # pooling its named prepared statements follow each client (max_prepared_statements).
            timeout=30,
        )
        return connection

    outcome = Outcome(label, clients)
    started = time.monotonic()
    await asyncio.gather(*(_client(n, connect, outcome, done) for n in range(clients)))
    outcome.wall_seconds = time.monotonic() - started
    return outcome


# --- the demo ----------------------------------------------------------------------------------
def _raise_open_files_limit(needed: int) -> None:
    # 500 client sockets in one process pass the common soft limit of 1024 with little to spare.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


@contextlib.contextmanager
def signals_as_interrupt() -> Iterator[None]:
    """SIGTERM, and SIGINT even where a shell started us with it ignored, raise KeyboardInterrupt.

    Both must unwind through the finally blocks that stop the pooler and remove the cluster.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous_term = signal.signal(signal.SIGTERM, handler)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)


def _phase(
    progress: Progress | None, label: str, host: str, port: int, dbname: str, clients: int
) -> Outcome:
    if progress is None:
        return asyncio.run(run_clients(label, host, port, dbname, clients, lambda: None))
    task = progress.add_task(label, total=clients)
    return asyncio.run(
        run_clients(label, host, port, dbname, clients, lambda: progress.advance(task))
    )


def _configure_pooler(
    name: str,
    argv: Sequence[str],
    run_as: str | None,
    cluster: Cluster,
    workdir: Path,
    *,
    pool_size: int,
    clients: int,
) -> PoolerProcess:
    port = free_port()
    pooler = PoolerProcess(name, argv, port=port, workdir=workdir, run_as=run_as)
    server = (
        f"host={cluster.host} port={cluster.port} dbname={DEMO_DB} "
        f"user={SUPERUSER} password={SUPERUSER_PASSWORD}"
    )
    ini = pooler_ini(
        databases={DEMO_DB: server},
        port=port,
        workdir=workdir,
        pool_size=pool_size,
        max_client_conn=max(1000, clients + 50),
    )
    pooler.write_config(ini, {SUPERUSER: SUPERUSER_PASSWORD})
    return pooler


def run_demo(
    *,
    clients: int = 500,
    max_connections: int = 20,
    pool_size: int = 15,
    console: Console | None = None,
    pooler_name: str = "pgfunnel",
    pooler_argv: Sequence[str] | None = None,
    pooler_user: str | None = None,
) -> DemoResult:
    """The whole demo: cluster up, clients direct, pooler up, clients through it, all down.

    `pooler_argv` (with `pooler_user`) swaps pgfunnel for another pooler command, such as
    PgBouncer, to check the demo itself against a known-good pooler.
    """
    say = console.print if console is not None else (lambda *a, **k: None)
    _raise_open_files_limit(clients + 200)
    cluster = Cluster(max_connections=max_connections)
    workdir = Path(tempfile.mkdtemp(prefix="pgf-demo-"))
    pooler: PoolerProcess | None = None
    progress = (
        Progress(
            TextColumn("{task.description:<24}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        if console is not None
        else None
    )
    try:
        with signals_as_interrupt():
            say(f"starting a throwaway PostgreSQL with max_connections={max_connections} ...")
            cluster.start()
            cluster.psql(f"CREATE DATABASE {DEMO_DB}")
            cluster.psql(
                "CREATE TABLE demo_events (id bigserial PRIMARY KEY, client int NOT NULL, "
                "at timestamptz NOT NULL DEFAULT now())",
                dbname=DEMO_DB,
            )
            say(
                f"{clients} concurrent clients, each: connect, {ROUNDS_PER_CLIENT} x "
                "(SELECT pg_sleep(0.01); INSERT in a transaction; SELECT count(*)), disconnect"
            )
            pooled = Outcome(f"through {pooler_name}", clients)
            with progress or contextlib.nullcontext():
                direct = _phase(
                    progress, "direct to PostgreSQL", cluster.host, cluster.port, DEMO_DB, clients
                )
                if pooled.error is None:
                    pooler = _configure_pooler(
                        pooler_name,
                        pooler_argv or pgfunnel_argv(),
                        pooler_user,
                        cluster,
                        workdir,
                        pool_size=pool_size,
                        clients=clients,
                    )
                    try:
                        pooler.start()
                    except PoolerError as exc:
                        pooled.error = str(exc)
                if pooler is not None and pooled.error is None:
                    say(
                        f"{pooler_name} listening on 127.0.0.1:{pooler.port}, pool size {pool_size}"
                    )
                    pooled = _phase(
                        progress, pooled.label, "127.0.0.1", pooler.port, DEMO_DB, clients
                    )
        return DemoResult(direct, pooled, max_connections)
    finally:
        if pooler is not None:
            pooler.stop()
        cluster.destroy()
        shutil.rmtree(workdir, ignore_errors=True)


def render(result: DemoResult) -> Table:
    table = Table(
        title=f"{result.direct.clients} clients, PostgreSQL max_connections="
        f"{result.max_connections}"
    )
    table.add_column("")
    table.add_column(result.direct.label, justify="right")
    table.add_column(result.pooled.label, justify="right")

    def cell(outcome: Outcome, text: str) -> str:
        return "[dim]did not run[/dim]" if outcome.error is not None else text

    rows: list[tuple[str, Callable[[Outcome], str]]] = [
        ("clients", lambda o: str(o.clients)),
        ("finished", lambda o: str(o.succeeded)),
        ("failed", lambda o: f"[red]{o.failed}[/red]" if o.failed else "[green]0[/green]"),
        ("transactions", lambda o: str(o.transactions)),
        ("wall time", lambda o: f"{o.wall_seconds:.2f} s"),
        ("throughput", lambda o: f"{o.throughput:,.0f} tx/s"),
    ]
    for name, fmt in rows:
        table.add_row(
            name, cell(result.direct, fmt(result.direct)), cell(result.pooled, fmt(result.pooled))
        )
    causes = sorted(set(result.direct.failures) | set(result.pooled.failures))
    if causes:
        table.add_row("failures by SQLSTATE", "", "")
    for state, message in causes:
        table.add_row(
            Text(f"  {state}: {message}"),
            str(result.direct.failures.get((state, message), 0)),
            cell(result.pooled, str(result.pooled.failures.get((state, message), 0))),
        )
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pgfunnel.demo",
        description="Many clients at a small PostgreSQL, direct (SQLSTATE 53300) then through "
        "pgfunnel (none fail).",
    )
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--max-connections", type=int, default=20)
    parser.add_argument("--pool-size", type=int, default=15, help="pgfunnel default_pool_size")
    args = parser.parse_args(argv)
    console = Console()
    try:
        result = run_demo(
            clients=args.clients,
            max_connections=args.max_connections,
            pool_size=args.pool_size,
            console=console,
        )
    except KeyboardInterrupt:
        console.print("interrupted; the cluster and pooler are stopped and their files removed")
        return 130
    console.print(render(result))
    # Plain text: a pooler's log tail may hold brackets that rich would read as markup.
    console.print(result.verdict(), style="green" if result.ok else "red", markup=False)
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
