#!/usr/bin/env python3
"""pgbench through pgfunnel, PgBouncer and direct, round by round: TPS, latency, pooler CPU,
connection storms, idle clients' memory, and the issue's targets as MET / NOT MET."""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import json
import math
import os
import platform
import pwd
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

# bench/ is no package: run as a script, its directory is on sys.path; loaded by path (the unit
# tests), it may not be.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from idle_rss import IdleResult, measure_idle, raise_nofile
from rich.console import Console
from rich.table import Table
from rich.text import Text

from pgfunnel import __version__
from pgfunnel.demo import (
    PoolerError,
    PoolerProcess,
    pgfunnel_argv,
    pooler_ini,
    signals_as_interrupt,
)
from pgfunnel.proto.auth import md5_secret, scram_keys
from pgfunnel.throwaway import SUPERUSER, SUPERUSER_PASSWORD, Cluster, free_port, pg_tool

BENCH_DB = "bench"
TARGETS = ("direct", "pgbouncer", "pgfunnel")
LABELS = {"direct": "direct", "pgbouncer": "PgBouncer", "pgfunnel": "pgfunnel"}
MODES = ("select", "tpcb")
PROTOCOLS = ("simple", "extended")
# Connection storms: pgbench -C -S, a login per transaction. Their cells are (STORM, auth,
# clients), and each auth logs in as its own role, whose stored secret makes PostgreSQL and both
# poolers (auth_type md5 with a SCRAM secret means SCRAM) ask for that method.
STORM = "storm"
STORM_AUTHS = ("md5", "scram-sha-256")
STORM_USERS = {"md5": "storm_md5", "scram-sha-256": "storm_scram"}
# The targets of issue 11, pgfunnel against PgBouncer in the same run.
SELECT_TARGET_CELLS = tuple((p, c) for p in PROTOCOLS for c in (10, 200, 1000))
SELECT_TPS_GEOMEAN, SELECT_TPS_FLOOR, SELECT_CPU_MAX = 1.1, 1.0, 0.85
TPCB_TARGET_CELLS = tuple((p, c) for p in PROTOCOLS for c in (200, 1000))
TPCB_TPS_FLOOR, TPCB_CPU_MAX = 1.0, 0.9
STORM_TARGET_CELLS = tuple((a, c) for a in STORM_AUTHS for c in (50, 200))
STORM_TPS_FLOOR = 1.0
# Issue 14: select-only with named prepared statements (pgbench -M prepared) through
# transaction pooling. PgBouncer does that from 1.21; Debian's is 1.18, so pgfunnel's cells are
# held against its own -M extended cells of the same run (CPU per transaction at most 10 %
# more) instead of against PgBouncer 1.25's TPS.
PREPARED = "prepared"
PREPARED_TARGET_CLIENTS = (200, 1000)
PREPARED_CPU_MAX = 1.10
PGBOUNCER_NO_PREPARED = (
    "PgBouncer 1.18 cannot pool named prepared statements (max_prepared_statements is 1.21+)"
)
# Issue 15: TLS at both ends (clients to the pooler, the pooler to PostgreSQL, both poolers
# with sslmode require), select-only and connection storms; pgfunnel against PgBouncer in the
# same run: at least its TPS at no more CPU per transaction. Direct runs use TLS to PostgreSQL.
TLS = "tls"
TLS_STORM = "tls-storm"
TLS_PROTOCOL = "simple"
TLS_STORM_AUTH = "scram-sha-256"
TLS_TARGET_CELLS = ((TLS, TLS_PROTOCOL, 200), (TLS, TLS_PROTOCOL, 1000))
TLS_STORM_TARGET_CELLS = ((TLS_STORM, TLS_STORM_AUTH, 50), (TLS_STORM, TLS_STORM_AUTH, 200))
TLS_TPS_FLOOR, TLS_CPU_MAX = 1.0, 1.0
IDLE_TARGET_CLIENTS = 10_000
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Wide when piped (to a file, to tee), where rich would otherwise wrap the tables at 80 columns.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 150)


# --- measurements ------------------------------------------------------------------------------
@dataclass
class Run:
    """One pgbench run against one target; status is ok, failed, refused or unavailable."""

    round: int
    target: str
    mode: str
    protocol: str
    clients: int
    status: str
    tps: float | None = None
    latency_ms: float | None = None
    transactions: int = 0
    failed: int = 0
    pooler_cpu_s: float | None = None
    cpu_us_per_xact: float | None = None
    seconds: float = 0.0
    note: str = ""


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of a whole process (all its threads), in clock ticks, from /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields start after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # fields 14 (utime) and 15 (stime) of proc(5)


_PGBENCH_FIGURES = {
    "transactions": re.compile(r"number of transactions actually processed: (\d+)"),
    "failed": re.compile(r"number of failed transactions: (\d+)"),
    "latency_ms": re.compile(r"latency average = ([\d.]+) ms"),
    # With -C pgbench counts the logins in: "(including reconnection times)".
    "tps": re.compile(
        r"tps = ([\d.]+) \((?:without initial connection time|including reconnection times)\)"
    ),
}


def parse_pgbench(output: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for key, pattern in _PGBENCH_FIGURES.items():
        match = pattern.search(output)
        if match:
            found[key] = float(match.group(1))
    return found


# --- targets -----------------------------------------------------------------------------------
class Target:
    """Where pgbench connects: PostgreSQL itself, or a pooler process we started and watch."""

    def __init__(self, name: str, port: int, pooler: PoolerProcess | None = None) -> None:
        self.name = name
        self.port = port
        self.pooler = pooler
        self.unavailable: str | None = None

    @property
    def label(self) -> str:
        return LABELS[self.name]

    def ready(self) -> str | None:
        """None when the target can take a run; a pooler that died is restarted once."""
        if self.unavailable is not None or self.pooler is None or self.pooler.alive():
            return self.unavailable
        console.print(f"[yellow]{self.label} died; restarting it[/yellow]")
        console.print(Text(self.pooler.log_tail()))
        try:
            self.pooler.stop()
            self.pooler.start()
        except PoolerError as exc:
            self.unavailable = f"died and did not restart: {exc}"
        return self.unavailable

    def cpu_ticks(self) -> int | None:
        if self.pooler is None or self.pooler.pid is None:
            return None
        return cpu_ticks(self.pooler.pid)


def unprivileged_user() -> str | None:
    """PgBouncer refuses to run as root: the account to run it as, or None when not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root and no unprivileged account (postgres, nobody) exists")


def find_pgbouncer() -> str | None:
    found = shutil.which("pgbouncer")
    if found:
        return found
    return "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None


def ensure_pgbouncer() -> str | None:
    """Debian's pgbouncer, installed when absent and we are root; None (and why) otherwise.

    Installed the way scripts/bootstrap.sh installs packages (apt-get, never built from
    source), so that the version measured is the distribution's, which the run prints.
    """
    found = find_pgbouncer()
    if found:
        return found
    if os.geteuid() != 0:
        console.print(
            "[yellow]PgBouncer is not installed: the PgBouncer column is skipped. "
            "Install it with `sudo apt-get install -y pgbouncer` and run again.[/yellow]"
        )
        return None
    console.print("installing Debian's pgbouncer (apt-get install -y pgbouncer) ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "pgbouncer"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        # A fresh image may have no package lists yet.
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        proc = subprocess.run(install, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            console.print(Text(f"apt-get install pgbouncer failed:\n{proc.stderr[-1500:]}"))
            return None
    # The package starts a service of its own on port 6432; we never use it (our pgbouncer runs
    # with our ini on a free port), so stop it rather than leave a stray daemon behind.
    for stop in (["systemctl", "stop", "pgbouncer"], ["service", "pgbouncer", "stop"]):
        with contextlib.suppress(OSError):
            if subprocess.run(stop, capture_output=True).returncode == 0:
                break
    return find_pgbouncer()


def tool_version(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.splitlines()[0].strip() if out else "unknown"


def smoke_test(port: int) -> str | None:
    """One real login and query through a pooler: accepting TCP alone proves little."""
    proc = subprocess.run(
        [
            *(pg_tool("psql"), "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(port)),
            *("-U", SUPERUSER, "-d", BENCH_DB, "-c", "SELECT count(*) FROM pgbench_branches"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PGPASSWORD": SUPERUSER_PASSWORD, "PGCONNECT_TIMEOUT": "10"},
    )
    if proc.returncode != 0:
        return f"psql through the pooler failed: {proc.stderr.strip()}"
    return None


def scram_secret(password: str, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL would store for a password (fresh random salt)."""
    salt = os.urandom(16)
    _, stored_key, server_key = scram_keys(password, salt, iterations)
    b64 = [base64.b64encode(b).decode() for b in (salt, stored_key, server_key)]
    return f"SCRAM-SHA-256${iterations}:{b64[0]}${b64[1]}:{b64[2]}"


def storm_secrets() -> dict[str, str]:
    """Stored secrets of the storm roles: the same strings in PostgreSQL and in both userlists."""
    return {
        STORM_USERS["md5"]: md5_secret(STORM_USERS["md5"], SUPERUSER_PASSWORD),
        STORM_USERS["scram-sha-256"]: scram_secret(SUPERUSER_PASSWORD),
    }


def tls_settings(workdir: Path, tls: tuple[bytes, bytes] | None) -> dict[str, str | int]:
    """The TLS lines of both poolers' ini. `tls`: their certificate and key (PEM), written to
    `workdir`: clients and servers both in TLS (require). None: no TLS at either end for
    either pooler. The run's PostgreSQL has ssl=on whenever TLS cells are in the run, and the
    default server_tls_sslmode differs (disable in PgBouncer 1.18, prefer in pgfunnel as in
    PgBouncer 1.20 and later), which would encrypt pgfunnel's server connections alone."""
    if tls is None:
        return {"server_tls_sslmode": "disable"}
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "tls.crt").write_bytes(tls[0])
    (workdir / "tls.key").write_bytes(tls[1])
    (workdir / "tls.key").chmod(0o600)  # write_config gives both to the pooler's user
    return {
        "client_tls_sslmode": "require",
        "client_tls_cert_file": str(workdir / "tls.crt"),
        "client_tls_key_file": str(workdir / "tls.key"),
        "server_tls_sslmode": "require",
    }


def start_pooler(
    name: str,
    argv: Sequence[str],
    run_as: str | None,
    cluster: Cluster,
    workdir: Path,
    args: argparse.Namespace,
    *,
    max_client_conn: int,
    users: dict[str, str],
    tls: tuple[bytes, bytes] | None = None,
) -> Target:
    """`tls`: the pooler's certificate and key (PEM): clients and servers both in TLS."""
    port = free_port()
    pooler = PoolerProcess(LABELS[name], argv, port=port, workdir=workdir, run_as=run_as)
    target = Target(name, port, pooler)
    server = (
        f"host={cluster.host} port={cluster.port} dbname={BENCH_DB} "
        f"user={SUPERUSER} password={SUPERUSER_PASSWORD}"
    )
    extra = tls_settings(workdir, tls)
    # Both poolers read the very same ini: only the binary differs between the two columns.
    ini = pooler_ini(
        databases={BENCH_DB: server},
        port=port,
        workdir=workdir,
        auth_type=args.auth_type,
        pool_size=args.pool_size,
        max_client_conn=max_client_conn,
        extra=extra,
    )
    pooler.write_config(ini, users)
    try:
        pooler.start()
        failure = smoke_test(port)
    except PoolerError as exc:
        failure = str(exc)
    except subprocess.TimeoutExpired:
        failure = "psql through the pooler timed out"
    except BaseException:
        # Interrupted before the caller holds the target: stop the pooler here.
        pooler.stop()
        raise
    if failure is not None:
        pooler.stop()
        target.unavailable = f"{failure}\n{pooler.log_tail()}".strip()
    return target


# --- running pgbench ---------------------------------------------------------------------------
def login_allowance(target: Target, clients: int) -> int:
    """Seconds added to -T for direct runs, whose logins fork a backend each.

    pgbench's -T clock starts before its clients log in, and its TPS leaves login time out. A
    pooler takes 1000 logins in well under a second; PostgreSQL forks 1000 backends in several
    (about 10 s on 2 cores), which would leave a short direct run with no time to measure.
    """
    return 0 if target.pooler is not None else -(-clients // 100)


def pgbench_argv(
    target: Target, mode: str, protocol: str, clients: int, args: argparse.Namespace
) -> list[str]:
    # A storm's "protocol" is its auth method, and its role makes every target ask for that.
    storm = mode in (STORM, TLS_STORM)
    user = STORM_USERS[protocol] if storm else SUPERUSER
    argv = [pg_tool("pgbench"), "-h", "127.0.0.1", "-p", str(target.port), "-U", user]
    argv += ["-n", "-c", str(clients), "-j", str(min(args.jobs, clients))]
    # A storm logs in all the time, so logins are the measurement rather than a head start.
    seconds = args.duration + (0 if storm else login_allowance(target, clients))
    argv += ["-T", str(seconds), "-M", "simple" if storm else protocol]
    if storm:
        argv += ["-C", "-S"]
    elif mode in ("select", TLS):
        argv.append("-S")
    return [*argv, BENCH_DB]


def one_run(
    target: Target, mode: str, protocol: str, clients: int, rnd: int, args: argparse.Namespace
) -> Run:
    run = Run(rnd, target.name, mode, protocol, clients, status="ok")
    reason = target.ready()
    if reason is None and protocol == PREPARED and target.name == "pgbouncer":
        reason = PGBOUNCER_NO_PREPARED
    if reason is not None:
        run.status, run.note = "unavailable", reason.splitlines()[0]
        return run
    argv = pgbench_argv(target, mode, protocol, clients, args)
    before = target.cpu_ticks()
    started = time.monotonic()
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            # pgbench stops itself after -T; the slack covers 1000 logins and a stuck target.
            timeout=args.duration + login_allowance(target, clients) + 60 + clients / 10,
            # TLS cells ask for it; the others must not get it from PostgreSQL's ssl=on
            env={
                **os.environ,
                "PGPASSWORD": SUPERUSER_PASSWORD,
                "PGSSLMODE": "require" if mode in (TLS, TLS_STORM) else "disable",
            },
        )
        output, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        # TimeoutExpired holds bytes whatever text= said.
        captured = [
            b if isinstance(b, bytes) else b.encode() for b in (exc.stdout, exc.stderr) if b
        ]
        output, code = b"".join(captured).decode(errors="replace"), -1
        run.note = "pgbench timed out and was killed"
    run.seconds = time.monotonic() - started
    after = target.cpu_ticks()

    figures = parse_pgbench(output)
    run.tps = figures.get("tps")
    run.latency_ms = figures.get("latency_ms")
    run.transactions = int(figures.get("transactions", 0))
    run.failed = int(figures.get("failed", 0))
    if before is not None and after is not None and after >= before:
        run.pooler_cpu_s = (after - before) / CLK_TCK
        if run.transactions:
            run.cpu_us_per_xact = run.pooler_cpu_s * 1e6 / run.transactions
    if code == 0 and run.transactions == 0:
        run.status = "failed"
        run.note = run.note or "no transaction finished inside -T (logins too slow?)"
    elif code != 0:
        errors = [line for line in output.splitlines() if "error" in line or "FATAL" in line]
        refused = "too many clients" in output or "53300" in output
        run.status = "refused" if refused else "failed"
        run.note = run.note or (errors[0] if errors else f"pgbench exited with status {code}")
    return run


def wait_for_backends_to_leave(cluster: Cluster, limit: int, timeout: float = 30.0) -> None:
    # 1000 direct backends take a moment to exit; the next direct run must not meet them.
    deadline = time.monotonic() + timeout
    sql = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
    while time.monotonic() < deadline:
        with contextlib.suppress(RuntimeError, ValueError):
            if int(cluster.psql(sql)) <= limit:
                return
        time.sleep(0.2)


# --- reporting ---------------------------------------------------------------------------------
@dataclass
class Cell:
    """One target's figures for one (mode, protocol, clients): medians over its ok rounds."""

    runs: int
    ok: int
    tps: float | None
    tps_min: float | None
    tps_max: float | None
    latency_ms: float | None
    cpu_us_per_xact: float | None
    cpu_percent: float | None
    failed: int
    note: str


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(runs: Sequence[Run]) -> dict[tuple[str, str, int], dict[str, Cell]]:
    grouped: dict[tuple[str, str, int], dict[str, list[Run]]] = {}
    for run in runs:
        key = (run.mode, run.protocol, run.clients)
        grouped.setdefault(key, {}).setdefault(run.target, []).append(run)
    summary: dict[tuple[str, str, int], dict[str, Cell]] = {}
    for key, by_target in grouped.items():
        summary[key] = {}
        for target, target_runs in by_target.items():
            ok = [r for r in target_runs if r.status == "ok"]
            bad = [r for r in target_runs if r.status != "ok"]
            note = f"{bad[0].status}: {bad[0].note}" if bad else ""
            summary[key][target] = Cell(
                runs=len(target_runs),
                ok=len(ok),
                tps=_median([r.tps for r in ok]),
                tps_min=min((r.tps for r in ok if r.tps is not None), default=None),
                tps_max=max((r.tps for r in ok if r.tps is not None), default=None),
                latency_ms=_median([r.latency_ms for r in ok]),
                cpu_us_per_xact=_median([r.cpu_us_per_xact for r in ok]),
                cpu_percent=_median(
                    [
                        100 * r.pooler_cpu_s / r.seconds if r.pooler_cpu_s and r.seconds else None
                        for r in ok
                    ]
                ),
                failed=sum(r.failed for r in target_runs),
                note=note,
            )
    return summary


def ratios(cells: dict[str, Cell]) -> tuple[float | None, float | None]:
    """pgfunnel/PgBouncer for TPS (higher is better) and CPU per transaction (lower is better)."""
    ours, theirs = cells.get("pgfunnel"), cells.get("pgbouncer")
    if ours is None or theirs is None:
        return None, None
    tps = ours.tps / theirs.tps if ours.tps and theirs.tps else None
    cpu = (
        ours.cpu_us_per_xact / theirs.cpu_us_per_xact
        if ours.cpu_us_per_xact and theirs.cpu_us_per_xact
        else None
    )
    return tps, cpu


def _fmt(value: float | None, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def geomean(values: Sequence[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


def _verdict(met: bool, measured: int, wanted: int) -> str:
    # A target judged on part of its cells is not met, whatever those cells say.
    if measured < wanted:
        return f"NOT MET ({measured} of {wanted} cells measured)"
    return "MET" if met else "NOT MET"


def _ratio_cells(
    summary: dict[tuple[str, str, int], dict[str, Cell]],
    mode: str,
    cells: Sequence[tuple[str, int]],
) -> list[tuple[str, int, float, float | None]]:
    """(protocol, clients, TPS ratio, CPU ratio) of the wanted cells that have a TPS ratio."""
    found = []
    for protocol, clients in cells:
        tps, cpu = ratios(summary.get((mode, protocol, clients), {}))
        if tps is not None:
            found.append((protocol, clients, tps, cpu))
    return found


def target_verdicts(
    summary: dict[tuple[str, str, int], dict[str, Cell]],
    idle: dict[str, IdleResult] | None = None,
) -> list[str]:
    """Issue 11's targets, one line each, ending in MET or NOT MET (never MET on missing cells)."""
    lines = []

    select = _ratio_cells(summary, "select", SELECT_TARGET_CELLS)
    where = "select-only, simple+extended, 10/200/1000 clients, pool 20"
    if not select:
        lines.append(f"{where}: NOT MET (no cell has PgBouncer and pgfunnel figures)")
    else:
        tps_mean = geomean([c[2] for c in select])
        worst = min(select, key=lambda c: c[2])
        cpus = [c[3] for c in select if c[3] is not None]
        cpu_mean = geomean(cpus) if cpus else None
        met = (
            tps_mean >= SELECT_TPS_GEOMEAN
            and worst[2] >= SELECT_TPS_FLOOR
            and cpu_mean is not None
            and len(cpus) == len(select)
            and cpu_mean <= SELECT_CPU_MAX
        )
        lines.append(
            f"{where}: TPS {tps_mean:.2f}x PgBouncer (geometric mean, goal >= "
            f"{SELECT_TPS_GEOMEAN:.2f}), lowest cell {worst[2]:.2f}x ({worst[0]}, {worst[1]} "
            f"clients; goal >= {SELECT_TPS_FLOOR:.2f}), CPU/xact {_fmt(cpu_mean, '.2f')}x "
            f"(geometric mean, goal <= {SELECT_CPU_MAX:.2f}): "
            + _verdict(met, len(select), len(SELECT_TARGET_CELLS))
        )

    tpcb = _ratio_cells(summary, "tpcb", TPCB_TARGET_CELLS)
    where = "tpcb-like, simple+extended, 200/1000 clients"
    if not tpcb:
        lines.append(f"{where}: NOT MET (no cell has PgBouncer and pgfunnel figures)")
    else:
        worst = min(tpcb, key=lambda c: c[2])
        cpus = [c[3] for c in tpcb if c[3] is not None]
        cpu_max = max(cpus) if cpus else None
        met = (
            worst[2] >= TPCB_TPS_FLOOR
            and cpu_max is not None
            and len(cpus) == len(tpcb)
            and cpu_max <= TPCB_CPU_MAX
        )
        lines.append(
            f"{where}: lowest TPS {worst[2]:.2f}x PgBouncer ({worst[0]}, {worst[1]} clients; "
            f"goal >= {TPCB_TPS_FLOOR:.2f} in every cell), highest CPU/xact "
            f"{_fmt(cpu_max, '.2f')}x (goal <= {TPCB_CPU_MAX:.2f} in every cell): "
            + _verdict(met, len(tpcb), len(TPCB_TARGET_CELLS))
        )

    storms = _ratio_cells(summary, STORM, STORM_TARGET_CELLS)
    where = "connection storms (pgbench -C -S), md5+scram-sha-256, 50/200 clients"
    if not storms:
        lines.append(f"{where}: NOT MET (no cell has PgBouncer and pgfunnel figures)")
    else:
        worst = min(storms, key=lambda c: c[2])
        lines.append(
            f"{where}: lowest TPS {worst[2]:.2f}x PgBouncer ({worst[0]}, {worst[1]} clients; "
            f"goal >= {STORM_TPS_FLOOR:.2f} in every cell): "
            + _verdict(worst[2] >= STORM_TPS_FLOOR, len(storms), len(STORM_TARGET_CELLS))
        )

    lines += prepared_verdicts(summary)
    lines += tls_verdicts(summary)

    ours, theirs = (idle or {}).get("pgfunnel"), (idle or {}).get("pgbouncer")
    count = max(ours.clients if ours else 0, theirs.clients if theirs else 0)
    where = f"{count or IDLE_TARGET_CLIENTS:,} idle logged-in clients, pooler RSS per client"
    if ours is None or theirs is None:
        lines.append(f"{where}: NOT MET (not measured for both poolers)")
    else:
        mine, base = ours.kib_per_client, theirs.kib_per_client
        complete = all(
            r.held == r.clients and r.clients >= IDLE_TARGET_CLIENTS for r in (ours, theirs)
        )
        text = (
            f"{where}: pgfunnel {_fmt(mine, '.2f')} KiB, PgBouncer {_fmt(base, '.2f')} KiB "
            "(goal: pgfunnel <= PgBouncer): "
        )
        if mine is None or base is None or not complete:
            both = {"pgbouncer": theirs, "pgfunnel": ours}
            held = ", ".join(f"{LABELS[n]} held {r.held}/{r.clients}" for n, r in both.items())
            text += f"NOT MET ({held}; the target needs {IDLE_TARGET_CLIENTS:,} held by each)"
        else:
            text += "MET" if mine <= base else "NOT MET"
        lines.append(text)
    return lines


def tls_verdicts(summary: dict[tuple[str, str, int], dict[str, Cell]]) -> list[str]:
    """Issue 15's bench line: TLS at both ends, select-only and storms, against PgBouncer."""
    where = (
        "TLS (clients and servers), select-only 200/1000 clients and scram-sha-256 storms "
        "50/200 clients"
    )
    found = []
    for mode, protocol, clients in (*TLS_TARGET_CELLS, *TLS_STORM_TARGET_CELLS):
        tps, cpu = ratios(summary.get((mode, protocol, clients), {}))
        if tps is not None:
            found.append((mode, clients, tps, cpu))
    wanted = len(TLS_TARGET_CELLS) + len(TLS_STORM_TARGET_CELLS)
    if not found:
        return [f"{where}: NOT MET (no cell has PgBouncer and pgfunnel figures)"]
    worst = min(found, key=lambda c: c[2])
    cpus = [c[3] for c in found if c[3] is not None]
    cpu_max = max(cpus) if cpus else None
    met = (
        worst[2] >= TLS_TPS_FLOOR
        and cpu_max is not None
        and len(cpus) == len(found)
        and cpu_max <= TLS_CPU_MAX
    )
    return [
        f"{where}: lowest TPS {worst[2]:.2f}x PgBouncer ({worst[0]}, {worst[1]} clients; goal "
        f">= {TLS_TPS_FLOOR:.2f} in every cell), highest CPU/xact {_fmt(cpu_max, '.2f')}x (goal "
        f"<= {TLS_CPU_MAX:.2f} in every cell): " + _verdict(met, len(found), wanted)
    ]


def prepared_verdicts(summary: dict[tuple[str, str, int], dict[str, Cell]]) -> list[str]:
    """Issue 14's bench line: pgfunnel's -M prepared select-only cells against its own
    -M extended ones (PgBouncer 1.25, the issue's other yardstick, is not on this machine)."""
    where = "select-only -M prepared, 200/1000 clients, pgfunnel against its own -M extended"
    found = []
    for clients in PREPARED_TARGET_CLIENTS:
        mine = summary.get(("select", PREPARED, clients), {}).get("pgfunnel")
        base = summary.get(("select", "extended", clients), {}).get("pgfunnel")
        if (
            mine
            and base
            and mine.tps
            and base.tps
            and mine.cpu_us_per_xact
            and base.cpu_us_per_xact
        ):
            found.append(
                (clients, mine.tps / base.tps, mine.cpu_us_per_xact / base.cpu_us_per_xact)
            )
    if not found:
        return [f"{where}: NOT MET (no cell has both figures)"]
    worst_cpu = max(found, key=lambda c: c[2])
    tps = ", ".join(f"{c[1]:.2f}x at {c[0]}" for c in found)
    met = worst_cpu[2] <= PREPARED_CPU_MAX
    return [
        f"{where}: TPS {tps}, highest CPU/xact {worst_cpu[2]:.2f}x ({worst_cpu[0]} clients; "
        f"goal <= {PREPARED_CPU_MAX:.2f}; PgBouncer 1.25 not measured: Debian has 1.18): "
        + _verdict(met, len(found), len(PREPARED_TARGET_CLIENTS))
    ]


def print_tables(
    summary: dict[tuple[str, str, int], dict[str, Cell]], targets: Sequence[str]
) -> None:
    # Reasons are long (a pooler's log tail); the table shows a number, the text follows once.
    notes: dict[str, int] = {}
    for mode in (*MODES, STORM, TLS, TLS_STORM):
        storm = mode in (STORM, TLS_STORM)
        for protocol in STORM_AUTHS if storm else (*PROTOCOLS, PREPARED):
            keys = sorted(k for k in summary if k[0] == mode and k[1] == protocol)
            if not keys:
                continue
            titles = {
                "select": f"select-only (-S), -M {protocol}",
                "tpcb": f"tpcb-like, -M {protocol}",
                STORM: f"connection storm (-C -S, a login per transaction), auth {protocol}",
                TLS: f"TLS at both ends, select-only (-S), -M {protocol}",
                TLS_STORM: f"TLS at both ends, connection storm (-C -S), auth {protocol}",
            }
            table = Table(title=titles[mode], title_justify="left")
            for column in ("clients", "target", "TPS", "TPS min-max", "latency ms", "failed xacts"):
                table.add_column(column, justify="left" if column == "target" else "right")
            table.add_column("pooler CPU µs/xact", justify="right")
            table.add_column("pooler CPU %", justify="right")
            table.add_column("runs ok", justify="right")
            table.add_column("note")
            for key in keys:
                cells = summary[key]
                for target in targets:
                    cell = cells.get(target)
                    if cell is None:
                        continue
                    note = ""
                    if cell.note:
                        text = f"{LABELS[target]}: {cell.note}"
                        note = f"[{notes.setdefault(text, len(notes) + 1)}]"
                    table.add_row(
                        str(key[2]),
                        LABELS[target],
                        _fmt(cell.tps, ",.0f", cell.note.split(":")[0] or "-"),
                        f"{_fmt(cell.tps_min, ',.0f')}-{_fmt(cell.tps_max, ',.0f')}"
                        if cell.ok > 1
                        else "",
                        _fmt(cell.latency_ms, ".2f"),
                        str(cell.failed),
                        _fmt(cell.cpu_us_per_xact, ".1f"),
                        _fmt(cell.cpu_percent, ".0f"),
                        f"{cell.ok}/{cell.runs}",
                        Text(note),
                    )
                tps_ratio, cpu_ratio = ratios(cells)
                if tps_ratio is not None or cpu_ratio is not None:
                    table.add_row(
                        "",
                        Text("pgfunnel/PgBouncer", style="bold"),
                        Text(_fmt(tps_ratio, ".2f") + "x", style="bold"),
                        "",
                        "",
                        "",
                        Text(_fmt(cpu_ratio, ".2f") + "x", style="bold"),
                    )
                table.add_section()
            console.print(table)
    for text, number in notes.items():
        console.print(Text(f"[{number}] {text}"))


def markdown(summary: dict[tuple[str, str, int], dict[str, Cell]], targets: Sequence[str]) -> str:
    head = ["mode", "protocol (storm: auth)", "clients"]
    for target in targets:
        head += [f"{LABELS[target]} TPS", f"{LABELS[target]} lat ms"]
        if target != "direct":
            head.append(f"{LABELS[target]} CPU µs/xact")
    head += ["TPS ratio", "CPU ratio"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (mode, protocol, clients), cells in sorted(summary.items()):
        row = [mode, protocol, str(clients)]
        for target in targets:
            cell = cells.get(target)
            missing = cell.note.split(":")[0] if cell is not None and cell.note else "-"
            row.append(_fmt(cell.tps if cell else None, ".0f", missing))
            row.append(_fmt(cell.latency_ms if cell else None, ".2f"))
            if target != "direct":
                row.append(_fmt(cell.cpu_us_per_xact if cell else None, ".1f"))
        tps_ratio, cpu_ratio = ratios(cells)
        row += [_fmt(tps_ratio, ".2f"), _fmt(cpu_ratio, ".2f")]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# --- main --------------------------------------------------------------------------------------
def _csv(
    kind: Callable[[str], int | str], allowed: Sequence[str] | None = None
) -> Callable[[str], list[int | str]]:
    def parse(text: str) -> list[int | str]:
        items = [kind(part.strip()) for part in text.split(",") if part.strip()]
        if allowed is not None:
            bad = [item for item in items if item not in allowed]
            if bad:
                raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {','.join(allowed)}")
        if not items:
            raise argparse.ArgumentTypeError("empty list")
        return items

    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="pgbench through pgfunnel, PgBouncer and direct on one throwaway PostgreSQL, "
        "alternating the targets round by round.",
    )
    parser.add_argument("--duration", type=int, default=15, help="seconds per pgbench run")
    parser.add_argument("--clients", type=_csv(int), default=[10, 200, 1000])
    parser.add_argument(
        "--modes",
        type=_csv(str, (*MODES, "none")),
        default=list(MODES),
        help="pgbench workloads without TLS; none: skip them (the TLS cells have their own)",
    )
    parser.add_argument("--protocols", type=_csv(str, PROTOCOLS), default=list(PROTOCOLS))
    parser.add_argument("--targets", type=_csv(str, TARGETS), default=list(TARGETS))
    parser.add_argument("--rounds", type=int, default=3, help="rounds; figures are medians")
    parser.add_argument("--pool-size", type=int, default=20, help="default_pool_size of both")
    parser.add_argument("--jobs", type=int, default=2, help="pgbench -j (threads)")
    parser.add_argument("--scale", type=int, default=10, help="pgbench -i scale")
    parser.add_argument(
        "--storms",
        type=_csv(str, (*STORM_AUTHS, "none")),
        default=list(STORM_AUTHS),
        help="connection storms (pgbench -C -S) with these client auth methods; none: skip",
    )
    parser.add_argument(
        "--storm-clients", type=_csv(int), default=[50, 200], help="pgbench -c of the storms"
    )
    parser.add_argument(
        "--prepared-clients",
        type=_csv(int),
        default=list(PREPARED_TARGET_CLIENTS),
        help="pgbench -c of the select-only -M prepared runs (issue 14); 0: none",
    )
    parser.add_argument(
        "--tls-clients",
        type=_csv(int),
        default=[c for _, _, c in TLS_TARGET_CELLS],
        help="pgbench -c of the select-only runs with TLS at both ends (issue 15); 0: none",
    )
    parser.add_argument(
        "--tls-storm-clients",
        type=_csv(int),
        default=[c for _, _, c in TLS_STORM_TARGET_CELLS],
        help="pgbench -c of the scram-sha-256 storms with TLS at both ends; 0: none",
    )
    parser.add_argument(
        "--idle-clients",
        type=int,
        default=IDLE_TARGET_CLIENTS,
        help="idle logged-in clients for the RSS test (0: skip it)",
    )
    parser.add_argument(
        "--auth-type",
        default="md5",
        choices=["trust", "md5", "scram-sha-256"],
        help="client auth of both poolers (md5: 1000 logins cost little CPU next to the run)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="save every run and the summary")
    parser.add_argument("--markdown", action="store_true", help="also print a markdown table")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: --duration 5 --rounds 1 unless given"
    )
    args = parser.parse_args(argv)
    if args.quick:
        given = set(argv if argv is not None else sys.argv[1:])
        if not any(a.startswith("--duration") for a in given):
            args.duration = 5
        if not any(a.startswith("--rounds") for a in given):
            args.rounds = 1
    args.storms = [] if "none" in args.storms else args.storms
    args.modes = [] if "none" in args.modes else args.modes
    args.prepared_clients = [c for c in args.prepared_clients if c > 0]
    args.tls_clients = [c for c in args.tls_clients if c > 0]
    args.tls_storm_clients = [c for c in args.tls_storm_clients if c > 0]
    if (args.storms or args.tls_storm_clients) and args.auth_type != "md5":
        # The storm roles need auth_type md5, under which a SCRAM secret means SCRAM.
        parser.error("connection storms need --auth-type md5 (or --storms none)")
    return args


def environment(
    args: argparse.Namespace, pgbouncer: str | None, max_connections: int, started: dt.datetime
) -> dict[str, object]:
    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/run.py", *sys.argv[1:]]),
        "cores": os.cpu_count(),
        "cpu": cpu_model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pgfunnel": __version__,
        "pgbouncer": tool_version([pgbouncer, "--version"]) if pgbouncer else None,
        "pgbench": tool_version([pg_tool("pgbench"), "--version"]),
        "max_connections": max_connections,
        "settings": {k: v for k, v in vars(args).items() if k not in ("json",)},
    }


def start_cluster(
    args: argparse.Namespace,
    max_connections: int,
    secrets: dict[str, str],
    tls: tuple[bytes, bytes] | None = None,
) -> tuple[Cluster, int]:
    """The one PostgreSQL of the run, its client auth matching the poolers', pgbench -i done.
    `tls`: its certificate and key, ssl=on (only the TLS cells ask for it)."""
    # pgbench logs in the same way whichever target it meets: the method the poolers ask of
    # clients is also what PostgreSQL asks of direct clients (md5 needs an md5 verifier).
    settings: dict[str, str | int] = {"shared_buffers": "256MB"}
    if args.auth_type == "md5":
        settings["password_encryption"] = "md5"
    hba = [
        *(f"host all {STORM_USERS[a]} 127.0.0.1/32 {a}" for a in STORM_AUTHS),
        f"host all all 127.0.0.1/32 {args.auth_type}",
    ]
    if tls is not None:
        settings.update(ssl="on", ssl_cert_file="'server.crt'", ssl_key_file="'server.key'")

    def make(max_connections: int) -> Cluster:
        made = Cluster(max_connections=max_connections, settings=settings, hba=hba)
        if tls is not None:
            made.init()
            for data, name in zip(tls, ("server.crt", "server.key"), strict=True):
                (made.data / name).write_bytes(data)
                (made.data / name).chmod(0o600)
                made._chown(made.data / name)
        return made

    cluster = make(max_connections)
    try:
        cluster.start()
    except RuntimeError as exc:
        # A machine without the memory or semaphores for 1000+ backends: say so, run on with a
        # small server, and let the direct runs that do not fit be refused by PostgreSQL.
        cluster.destroy()
        fallback = 200
        console.print(
            Text(
                f"PostgreSQL would not start with max_connections={max_connections}; "
                f"retrying with {fallback}, so larger direct runs will be refused:\n"
                f"{str(exc)[-800:]}"
            ),
            style="yellow",
        )
        max_connections = fallback
        cluster = make(max_connections)
        cluster.start()
    if args.auth_type == "md5":
        cluster.psql(f"ALTER ROLE {SUPERUSER} PASSWORD '{SUPERUSER_PASSWORD}'")
    cluster.psql(f"CREATE DATABASE {BENCH_DB}")
    subprocess.run(
        [
            *(pg_tool("pgbench"), "-i", "-q", "-s", str(args.scale)),
            *("-h", str(cluster.sockdir), "-p", str(cluster.port), "-U", SUPERUSER),
            BENCH_DB,
        ],
        check=True,
        capture_output=True,
    )
    # The storm roles, stored as the very secrets the poolers' userlists hold; pgbench -S reads
    # pgbench_branches (its scale) and pgbench_accounts.
    for role, secret in secrets.items():
        cluster.psql(f"CREATE ROLE {role} LOGIN PASSWORD '{secret}'")
        cluster.psql(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}", dbname=BENCH_DB)
    return cluster, max_connections


def tls_material() -> tuple[bytes, bytes]:
    """One certificate and key (PEM) for PostgreSQL and both poolers: the clients (pgbench,
    the poolers to PostgreSQL) use sslmode require, which does not check it."""
    import trustme

    cert = trustme.CA().issue_cert("localhost", "127.0.0.1")
    return b"".join(p.bytes() for p in cert.cert_chain_pems), cert.private_key_pem.bytes()


def pooler_argv(name: str, pgbouncer: str | None) -> tuple[list[str], str | None] | None:
    """(argv, user to run as) of a pooler, or None when it is PgBouncer and none is installed."""
    if name == "pgbouncer":
        return None if pgbouncer is None else ([pgbouncer], unprivileged_user())
    return pgfunnel_argv(), None


def start_targets(
    args: argparse.Namespace,
    cluster: Cluster,
    pgbouncer: str | None,
    workdir: Path,
    users: dict[str, str],
    tls: tuple[bytes, bytes] | None = None,
) -> dict[str, Target]:
    """The targets; with `tls`, poolers in TLS at both ends (their own processes)."""
    targets: dict[str, Target] = {}
    max_client_conn = max([*args.clients, *args.storm_clients, *args.tls_clients]) + 100
    for name in args.targets:
        how = pooler_argv(name, pgbouncer)
        if name == "direct":
            target = Target(name, cluster.port)
        elif how is None:
            target = Target(name, 0)
            target.unavailable = "PgBouncer is not installed (apt-get install -y pgbouncer)"
        else:
            target = start_pooler(
                name,
                how[0],
                how[1],
                cluster,
                workdir / (f"{name}-tls" if tls else name),
                args,
                max_client_conn=max_client_conn,
                users=users,
                tls=tls,
            )
        targets[name] = target
        if target.unavailable is not None:
            console.print(
                Text(f"{target.label}: unavailable: {target.unavailable}"), style="yellow"
            )
        else:
            # The pid is there to attach a profiler (py-spy) to the pooler during the run.
            pid = f" (pid {target.pooler.pid})" if target.pooler is not None else ""
            how_tls = " (TLS at both ends)" if tls else ""
            console.print(f"{target.label}{how_tls}: 127.0.0.1:{target.port}{pid}")
    return targets


def run_rounds(
    args: argparse.Namespace,
    cluster: Cluster,
    targets: dict[str, Target],
    runs: list[Run],
    configs: list[tuple[str, str, int]] | None = None,
) -> None:
    if configs is None:
        configs = [
            (mode, protocol, clients)
            for mode in args.modes
            for protocol in args.protocols
            for clients in args.clients
        ]
        configs += [("select", PREPARED, clients) for clients in args.prepared_clients]
        configs += [
            (STORM, auth, clients) for auth in args.storms for clients in args.storm_clients
        ]
    if not configs:
        return
    total = len(configs) * len(args.targets) * args.rounds
    seconds = args.rounds * sum(
        args.duration + 2 + login_allowance(target, clients)
        for _, _, clients in configs
        for target in targets.values()
        if target.unavailable is None
    )
    eta = f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
    console.print(f"{total} runs of {args.duration}s in {args.rounds} round(s), about {eta}")
    server_connections = args.pool_size * (len(targets) - ("direct" in targets))
    done = 0
    for rnd in range(1, args.rounds + 1):
        # Rotate the order every round so no target always runs first or last (cache warmth,
        # autovacuum, the tables tpcb-like grows).
        shift = (rnd - 1) % len(args.targets)
        order = args.targets[shift:] + args.targets[:shift]
        for mode, protocol, clients in configs:
            for name in order:
                done += 1
                run = one_run(targets[name], mode, protocol, clients, rnd, args)
                runs.append(run)
                report_run(run, done, total)
                if name == "direct" and run.status != "unavailable":
                    # The pools' servers, and the psql that counts, may stay.
                    wait_for_backends_to_leave(cluster, server_connections + 1)


def run_idle(
    args: argparse.Namespace,
    cluster: Cluster,
    pgbouncer: str | None,
    workdir: Path,
    users: dict[str, str],
) -> dict[str, IdleResult]:
    """Each pooler afresh (no memory kept from the pgbench runs), then the idle clients."""
    results: dict[str, IdleResult] = {}
    for name in ("pgbouncer", "pgfunnel"):
        how = pooler_argv(name, pgbouncer)
        if name not in args.targets or how is None:
            continue
        target = start_pooler(
            name,
            how[0],
            how[1],
            cluster,
            workdir / f"{name}-idle",
            args,
            max_client_conn=args.idle_clients + 100,
            users=users,
        )
        if target.unavailable is not None or target.pooler is None or target.pooler.pid is None:
            console.print(Text(f"idle test, {target.label}: unavailable: {target.unavailable}"))
            continue
        try:
            console.print(f"idle test: {args.idle_clients:,} clients log in to {target.label} ...")
            result = measure_idle(
                target.pooler.pid,
                target.port,
                SUPERUSER,
                SUPERUSER_PASSWORD,
                BENCH_DB,
                args.idle_clients,
            )
            if not target.pooler.alive():
                result.note = result.note or "the pooler died"
        finally:
            target.pooler.stop()
        results[name] = result
        per = result.kib_per_client
        note = f" ({result.note})" if result.note else ""
        console.print(
            f"idle test, {target.label}: {result.held:,} held, {result.failed:,} failed in "
            f"{result.seconds:.1f} s; RSS {_fmt_kib(result.rss_before_kib)} -> "
            f"{_fmt_kib(result.rss_after_kib)}, {_fmt(per, '.2f')} KiB per client{note}",
            markup=False,
        )
    return results


def _fmt_kib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f} MiB"


def idle_markdown(idle: dict[str, IdleResult]) -> str:
    lines = [
        "| pooler | clients held | failed | RSS before MiB | RSS after MiB | KiB per client |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in idle.items():
        row = [LABELS[name], str(r.held), str(r.failed), _fmt_kib(r.rss_before_kib)]
        row += [_fmt_kib(r.rss_after_kib), _fmt(r.kib_per_client, ".2f")]
        lines.append("| " + " | ".join(row).replace(" MiB", "") + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    runs: list[Run] = []
    targets: dict[str, Target] = {}
    workdir = Path(tempfile.mkdtemp(prefix="pgf-bench-"))
    # PgBouncer runs unprivileged and must reach its own directory inside this one.
    workdir.chmod(0o711)
    cluster: Cluster | None = None
    pgbouncer = ensure_pgbouncer() if "pgbouncer" in args.targets else None
    if pgbouncer is not None:
        console.print(f"PgBouncer measured: {tool_version([pgbouncer, '--version'])} ({pgbouncer})")
    # 10,000 idle clients need as many descriptors in the pooler (which inherits our limit).
    nofile = raise_nofile(args.idle_clients + 1000)
    if args.idle_clients and nofile < args.idle_clients + 200:
        console.print(f"[yellow]RLIMIT_NOFILE is {nofile}: the idle test may fall short[/yellow]")
    secrets = storm_secrets()
    users = {SUPERUSER: SUPERUSER_PASSWORD, **secrets}
    idle: dict[str, IdleResult] = {}
    # Direct runs need a backend per client, pgbench's first connection, both pools' servers
    # and a little room; without direct runs the pools are all PostgreSQL sees.
    pooled = args.pool_size * len([t for t in args.targets if t != "direct"])
    most = max(
        [
            *args.clients,
            *(args.storm_clients if args.storms else []),
            *args.tls_clients,
            *args.tls_storm_clients,
        ]
    )
    wanted = (most + 1 if "direct" in args.targets else 0) + pooled + 10
    max_connections = wanted
    interrupted = False
    try:
        with signals_as_interrupt():
            console.print(f"PostgreSQL: max_connections={wanted}, pgbench -i -s {args.scale}")
            tls = tls_material() if args.tls_clients or args.tls_storm_clients else None
            cluster, max_connections = start_cluster(args, wanted, secrets, tls)
            targets = start_targets(args, cluster, pgbouncer, workdir, users)
            run_rounds(args, cluster, targets, runs)
            if tls is not None:
                # Poolers with TLS at both ends, each its own process; the others stop first
                # so as not to share the CPU (they are idle, but hold a pool each).
                for target in targets.values():
                    if target.pooler is not None:
                        target.pooler.stop()
                targets = start_targets(args, cluster, pgbouncer, workdir, users, tls)
                configs = [(TLS, TLS_PROTOCOL, c) for c in args.tls_clients]
                configs += [(TLS_STORM, TLS_STORM_AUTH, c) for c in args.tls_storm_clients]
                run_rounds(args, cluster, targets, runs, configs)
            if args.idle_clients > 0:
                # The pgbench poolers go first: the idle test's own must not share the CPU.
                for target in targets.values():
                    if target.pooler is not None:
                        target.pooler.stop()
                idle = run_idle(args, cluster, pgbouncer, workdir, users)
    except KeyboardInterrupt:
        interrupted = True
        console.print("[yellow]interrupted: reporting the runs done so far[/yellow]")
    finally:
        for target in targets.values():
            if target.pooler is not None:
                target.pooler.stop()
        if cluster is not None:
            cluster.destroy()
        shutil.rmtree(workdir, ignore_errors=True)

    summary = summarize(runs)
    print_tables(summary, args.targets)
    if pgbouncer is not None:
        console.print(f"PgBouncer measured: {tool_version([pgbouncer, '--version'])}")
    console.print(
        "pgfunnel's figures are whatever `python -m pgfunnel serve` runs today; the targets of "
        "issue 11:"
    )
    verdicts = target_verdicts(summary, idle)
    for line in verdicts:
        console.print(line, style="green" if line.endswith(": MET") else "yellow", markup=False)
    if args.markdown:
        console.print(markdown(summary, args.targets), markup=False, soft_wrap=True)
        if idle:
            console.print(idle_markdown(idle), markup=False, soft_wrap=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "environment": environment(args, pgbouncer, max_connections, started),
            "runs": [asdict(run) for run in runs],
            "summary": [
                {"mode": m, "protocol": p, "clients": c, "target": t, **asdict(cell)}
                for (m, p, c), cells in sorted(summary.items())
                for t, cell in cells.items()
            ],
            "idle": {
                name: {**asdict(r), "kib_per_client": r.kib_per_client} for name, r in idle.items()
            },
            "targets": verdicts,
        }
        args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")
        console.print(f"saved {args.json}")
    return 130 if interrupted else 0


def report_run(run: Run, done: int, total: int) -> None:
    where = f"[{done}/{total}] r{run.round} {run.mode:6} {run.protocol:8} {run.clients:>5} clients"
    who = f"{LABELS[run.target]:9}"
    if run.status != "ok":
        console.print(Text(f"{where} {who} {run.status}: {run.note}"), style="yellow")
        return
    cpu = f", pooler {run.cpu_us_per_xact:.1f} µs/xact" if run.cpu_us_per_xact else ""
    failed = f", {run.failed} failed" if run.failed else ""
    console.print(
        f"{where} {who} {_fmt(run.tps, ',.0f')} tps, {_fmt(run.latency_ms, '.2f')} ms{cpu}{failed}",
        markup=False,
    )


if __name__ == "__main__":
    raise SystemExit(main())
