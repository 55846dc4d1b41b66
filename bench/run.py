#!/usr/bin/env python3
"""pgbench through pgfunnel, PgBouncer and direct, round by round: TPS, latency, pooler CPU."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
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
from pgfunnel.throwaway import SUPERUSER, SUPERUSER_PASSWORD, Cluster, free_port, pg_tool

BENCH_DB = "bench"
TARGETS = ("direct", "pgbouncer", "pgfunnel")
LABELS = {"direct": "direct", "pgbouncer": "PgBouncer", "pgfunnel": "pgfunnel"}
MODES = ("select", "tpcb")
PROTOCOLS = ("simple", "extended")
# The issue's acceptance line: select-only at these client counts, pgfunnel against PgBouncer.
GOAL_MODE = "select"
GOAL_CLIENTS = (200, 1000)
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
    "tps": re.compile(r"tps = ([\d.]+) \(without initial connection time\)"),
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
    """Debian's pgbouncer, installed when absent and we are root; None (and why) otherwise."""
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
    install = ["apt-get", "install", "-y", "-q", "pgbouncer"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        # A fresh image may have no package lists yet.
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
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


def start_pooler(
    name: str,
    argv: Sequence[str],
    run_as: str | None,
    cluster: Cluster,
    workdir: Path,
    args: argparse.Namespace,
) -> Target:
    port = free_port()
    pooler = PoolerProcess(LABELS[name], argv, port=port, workdir=workdir, run_as=run_as)
    target = Target(name, port, pooler)
    server = (
        f"host={cluster.host} port={cluster.port} dbname={BENCH_DB} "
        f"user={SUPERUSER} password={SUPERUSER_PASSWORD}"
    )
    # Both poolers read the very same ini: only the binary differs between the two columns.
    ini = pooler_ini(
        databases={BENCH_DB: server},
        port=port,
        workdir=workdir,
        auth_type=args.auth_type,
        pool_size=args.pool_size,
        max_client_conn=max(args.clients) + 100,
    )
    pooler.write_config(ini, {SUPERUSER: SUPERUSER_PASSWORD})
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
    argv = [pg_tool("pgbench"), "-h", "127.0.0.1", "-p", str(target.port), "-U", SUPERUSER]
    argv += ["-n", "-c", str(clients), "-j", str(min(args.jobs, clients))]
    argv += ["-T", str(args.duration + login_allowance(target, clients)), "-M", protocol]
    if mode == "select":
        argv.append("-S")
    return [*argv, BENCH_DB]


def one_run(
    target: Target, mode: str, protocol: str, clients: int, rnd: int, args: argparse.Namespace
) -> Run:
    run = Run(rnd, target.name, mode, protocol, clients, status="ok")
    reason = target.ready()
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
            env={**os.environ, "PGPASSWORD": SUPERUSER_PASSWORD},
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


def goal_verdicts(summary: dict[tuple[str, str, int], dict[str, Cell]]) -> list[str]:
    lines = []
    for (mode, protocol, clients), cells in sorted(summary.items()):
        if mode != GOAL_MODE or clients not in GOAL_CLIENTS:
            continue
        tps, cpu = ratios(cells)
        where = f"select-only, {protocol}, {clients} clients"
        if tps is None or cpu is None:
            lines.append(f"{where}: no verdict (pgfunnel or PgBouncer has no figures)")
            continue
        met = tps >= 1.0 and cpu <= 1.0
        lines.append(
            f"{where}: TPS {tps:.2f}x PgBouncer (goal >= 1.00), CPU/xact {cpu:.2f}x "
            f"(goal <= 1.00): {'MET' if met else 'NOT MET'}"
        )
    return lines


def print_tables(
    summary: dict[tuple[str, str, int], dict[str, Cell]], targets: Sequence[str]
) -> None:
    # Reasons are long (a pooler's log tail); the table shows a number, the text follows once.
    notes: dict[str, int] = {}
    for mode in MODES:
        for protocol in PROTOCOLS:
            keys = sorted(k for k in summary if k[0] == mode and k[1] == protocol)
            if not keys:
                continue
            name = "select-only (-S)" if mode == "select" else "tpcb-like"
            table = Table(title=f"{name}, -M {protocol}", title_justify="left")
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
    head = ["mode", "protocol", "clients"]
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
    parser.add_argument("--modes", type=_csv(str, MODES), default=list(MODES))
    parser.add_argument("--protocols", type=_csv(str, PROTOCOLS), default=list(PROTOCOLS))
    parser.add_argument("--targets", type=_csv(str, TARGETS), default=list(TARGETS))
    parser.add_argument("--rounds", type=int, default=3, help="rounds; figures are medians")
    parser.add_argument("--pool-size", type=int, default=20, help="default_pool_size of both")
    parser.add_argument("--jobs", type=int, default=2, help="pgbench -j (threads)")
    parser.add_argument("--scale", type=int, default=10, help="pgbench -i scale")
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


def start_cluster(args: argparse.Namespace, max_connections: int) -> tuple[Cluster, int]:
    """The one PostgreSQL of the run, its client auth matching the poolers', pgbench -i done."""
    # pgbench logs in the same way whichever target it meets: the method the poolers ask of
    # clients is also what PostgreSQL asks of direct clients (md5 needs an md5 verifier).
    settings: dict[str, str | int] = {"shared_buffers": "256MB"}
    if args.auth_type == "md5":
        settings["password_encryption"] = "md5"
    hba = [f"host all all 127.0.0.1/32 {args.auth_type}"]
    cluster = Cluster(max_connections=max_connections, settings=settings, hba=hba)
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
        cluster = Cluster(max_connections=max_connections, settings=settings, hba=hba)
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
    return cluster, max_connections


def start_targets(
    args: argparse.Namespace, cluster: Cluster, pgbouncer: str | None, workdir: Path
) -> dict[str, Target]:
    targets: dict[str, Target] = {}
    for name in args.targets:
        if name == "direct":
            target = Target(name, cluster.port)
        elif name == "pgbouncer" and pgbouncer is not None:
            target = start_pooler(
                name, [pgbouncer], unprivileged_user(), cluster, workdir / name, args
            )
        elif name == "pgbouncer":
            target = Target(name, 0)
            target.unavailable = "PgBouncer is not installed (apt-get install -y pgbouncer)"
        else:
            target = start_pooler(name, pgfunnel_argv(), None, cluster, workdir / name, args)
        targets[name] = target
        if target.unavailable is not None:
            console.print(
                Text(f"{target.label}: unavailable: {target.unavailable}"), style="yellow"
            )
        else:
            # The pid is there to attach a profiler (py-spy) to the pooler during the run.
            pid = f" (pid {target.pooler.pid})" if target.pooler is not None else ""
            console.print(f"{target.label}: 127.0.0.1:{target.port}{pid}")
    return targets


def run_rounds(
    args: argparse.Namespace, cluster: Cluster, targets: dict[str, Target], runs: list[Run]
) -> None:
    configs = [
        (mode, protocol, clients)
        for mode in args.modes
        for protocol in args.protocols
        for clients in args.clients
    ]
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
    # Direct runs need a backend per client, pgbench's first connection, both pools' servers
    # and a little room; without direct runs the pools are all PostgreSQL sees.
    pooled = args.pool_size * len([t for t in args.targets if t != "direct"])
    wanted = (max(args.clients) + 1 if "direct" in args.targets else 0) + pooled + 10
    max_connections = wanted
    interrupted = False
    try:
        with signals_as_interrupt():
            console.print(f"PostgreSQL: max_connections={wanted}, pgbench -i -s {args.scale}")
            cluster, max_connections = start_cluster(args, wanted)
            targets = start_targets(args, cluster, pgbouncer, workdir)
            run_rounds(args, cluster, targets, runs)
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
    verdicts = goal_verdicts(summary)
    for line in verdicts:
        console.print(line, style="green" if line.endswith(": MET") else "yellow", markup=False)
    if args.markdown:
        console.print(markdown(summary, args.targets), markup=False, soft_wrap=True)
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
            "goal": verdicts,
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
