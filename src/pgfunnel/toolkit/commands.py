"""The toolkit commands' entry points: glue between parsed arguments, I/O and the pure planners."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import psycopg
from psycopg.conninfo import conninfo_to_dict
from rich.console import Console

from pgfunnel.toolkit import diagnose as dg
from pgfunnel.toolkit import live, render
from pgfunnel.toolkit import reap as rp
from pgfunnel.toolkit.limits import LimitHit, classify_53300
from pgfunnel.toolkit.units import format_age, parse_duration

APP_DIAGNOSE = "pgfunnel diagnose"
APP_REAP = "pgfunnel reap"


def display_dsn(dsn: str | None) -> str:
    """The DSN as it may be printed in a remedy: passwords dropped (libpq finds them elsewhere)."""
    if not dsn:
        return ""
    text = re.sub(r"(?i)\s*\bpassword\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", "", dsn).strip()
    text = re.sub(r"(://[^:/@\s]+):[^@\s]*@", r"\1@", text)
    return f"'{text}'" if " " in text else text


def _console(stream: TextIO | None = None) -> Console:
    return Console(file=stream or sys.stdout, width=160, soft_wrap=False)


# --- diagnose ------------------------------------------------------------------------------
def diagnose_main(args: argparse.Namespace) -> int:
    opts = dg.Options(
        top=args.top,
        show_queries=args.show_queries,
        idle_in_transaction_warn_s=parse_duration(args.idle_in_transaction_warn),
        idle_warn_s=parse_duration(args.idle_warn),
        dsn_hint=display_dsn(args.dsn) or "",
    )
    if not args.watch:
        report = diagnose_once(args, opts)
        _print_diagnose(report, args)
        return int(report["exit_code"])
    # --watch runs until interrupted: Ctrl-C (SIGINT) or SIGTERM end it quietly with 0, once
    # the round in progress is printed. Not a KeyboardInterrupt inside the round: raised in a
    # query, it makes psycopg cancel and wait for the query, and a watch under load once hung
    # there past 30 s.
    stop = _Stop()
    with stop.installed():
        while not stop.requested:
            _print_diagnose(diagnose_once(args, opts), args)
            stop.sleep(args.watch)
    return 0


def _print_diagnose(report: dict[str, Any], args: argparse.Namespace) -> None:
    if args.format == "json" and args.watch:
        # One report per line (JSON Lines): `| jq -c`, `| while read` and log shippers split
        # the stream by newline.
        print(json.dumps(report, default=str))
    elif args.format == "json":
        print(json.dumps(report, indent=2, default=str))
    else:
        if args.watch:
            print("\033[2J\033[H", end="")
        render.diagnose(report, _console())
    sys.stdout.flush()


def diagnose_once(args: argparse.Namespace, opts: dg.Options) -> dict[str, Any]:
    if args.from_file:
        try:
            snap = live.load_snapshot_file(args.from_file)
        except OSError as exc:
            return dg.unreachable_report(
                None, f"{args.from_file}: {exc.strerror or exc}", "file", title=FILE_TITLE
            )
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            # Not JSON, a JSON object that is no snapshot, rows of the wrong shape.
            return dg.unreachable_report(None, _file_error(args.from_file, exc), "file", FILE_TITLE)
        if args.max_connections is not None:
            snap.server.max_connections = args.max_connections
        if args.superuser_reserved_connections is not None:
            snap.server.superuser_reserved_connections = args.superuser_reserved_connections
        if args.reserved_connections is not None:
            snap.server.reserved_connections = args.reserved_connections
        return dg.analyse(snap, opts, via="file")
    hit = None
    via = "dsn"
    try:
        conn = live.connect(args.dsn or "", APP_DIAGNOSE)
    except live.ConnectError as exc:
        hit = classify_53300(exc.message, exc.sqlstate)
        if hit is not None:
            hit = _concrete_next_command(hit, args.dsn or "")
        if hit is None or not args.reserved_dsn:
            return dg.unreachable_report(hit, exc.message, via)
        via = "reserved-dsn"
        try:
            conn = live.connect(args.reserved_dsn, APP_DIAGNOSE)
        except live.ConnectError as exc2:
            again = classify_53300(exc2.message, exc2.sqlstate)
            if again is not None:
                again = _concrete_next_command(again, args.reserved_dsn)
            return dg.unreachable_report(again or hit, exc2.message, via)
        # The refused DSN would be refused again: remedies name the one that got in.
        opts = dataclasses.replace(opts, dsn_hint=display_dsn(args.reserved_dsn))
    try:
        snap = live.take_snapshot(conn)
    except (live.StatementError, live.ConnectionLost) as exc:
        return dg.unreachable_report(None, str(exc), via, title="Could not read the server")
    finally:
        conn.close()
    if args.save_snapshot:
        Path(args.save_snapshot).write_text(json.dumps(snap.to_dict(), indent=2, default=str))
    pooler = None
    if args.pooler:
        try:
            pooler = {"pools": live.pooler_show(args.pooler, "SHOW POOLS"), "databases": []}
        except live.ConnectError as exc:
            print(f"pgfunnel diagnose: pooler console: {exc.message}", file=sys.stderr)
        if pooler is not None:
            # pool_size and max_db_connections come from SHOW DATABASES (PgBouncer's and
            # pgfunnel's consoles have it); a console without it still gives the pools alone.
            try:
                pooler["databases"] = live.pooler_show(args.pooler, "SHOW DATABASES")
            except live.ConnectError as exc:
                print(
                    f"pgfunnel diagnose: pooler console: {exc.message} (pool_size unknown)",
                    file=sys.stderr,
                )
    return dg.analyse(snap, opts, connect_error=hit, pooler=pooler, via=via)


FILE_TITLE = "Could not read the snapshot file"


def _file_error(path: str, exc: Exception) -> str:
    text = str(exc)
    return text if text.startswith(str(path)) else f"{path}: not a snapshot ({text})"


def _concrete_next_command(hit: LimitHit, dsn: str) -> LimitHit:
    """The refusal's next command with the refused DSN's host and port for the HOST
    placeholder, so that it can be run as printed."""
    if "HOST" not in hit.next_command:
        return hit
    try:
        info = conninfo_to_dict(dsn)
    except (psycopg.Error, ValueError):
        return hit
    host = str(info.get("host") or "").split(",")[0]
    if not host or host.startswith("/"):
        return hit  # a unix socket: no host to name in a URI
    port = str(info.get("port") or "").split(",")[0]
    where = f"[{host}]" if ":" in host else host
    return dataclasses.replace(
        hit, next_command=hit.next_command.replace("HOST", where + (f":{port}" if port else ""))
    )


# --- reap ----------------------------------------------------------------------------------
def reap_filters(args: argparse.Namespace) -> rp.Filters:
    return rp.Filters(
        idle_in_transaction_s=_dur(args.idle_in_transaction),
        idle_s=_dur(args.idle),
        states={rp.parse_state(s) for s in args.state or []},
        min_idle_age_s=_dur(args.min_idle_age),
        min_xact_age_s=_dur(args.min_xact_age),
        roles=list(args.role or []),
        application=args.application,
        databases=list(args.database or []),
        client_cidrs=list(args.client or []),
        include_superusers=args.include_superusers,
        include_replication=args.include_replication,
        include_tools=args.include_tools,
        max_targets=args.max,
        max_share=args.max_share,
    )


def _dur(text: str | None) -> float | None:
    return parse_duration(text) if text is not None else None


RECONNECT_ATTEMPTS = 6


class _Stop:
    """SIGINT/SIGTERM ask a loop (reap, diagnose --watch) to stop: the round in progress
    finishes (its statements are bounded by statement_timeout) and its output (reap's audit
    lines) is written; sleeps end at once."""

    def __init__(self) -> None:
        self.signal: int | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: object) -> None:
            self.signal = signum

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.requested:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.1))


def reap_main(args: argparse.Namespace) -> int:
    try:
        filters = reap_filters(args)
        filters.validate()
    except ValueError as exc:
        print(f"pgfunnel reap: {exc}", file=sys.stderr)
        return 2
    stop = _Stop()
    with stop.installed():
        try:
            conn = reap_connect(args)
        except live.ConnectError:
            return 3
        audit = open(args.audit_log, "a") if args.audit_log else None  # noqa: SIM115
        session = _ReapSession(args, filters, conn, audit, stop)
        try:
            return session.run()
        finally:
            session.close()


def reap_connect(args: argparse.Namespace, quiet: bool = False) -> Any:
    """reap's connection: DSN, or --reserved-dsn when DSN is refused with 53300 (as diagnose
    does: a full server is when reap is needed most). Raises live.ConnectError, said on
    stderr unless `quiet`."""
    try:
        return live.connect(args.dsn or "", APP_REAP)
    except live.ConnectError as exc:
        hit = classify_53300(exc.message, exc.sqlstate)
        if hit is None or not args.reserved_dsn:
            if not quiet:
                _print_connect_failure(exc.message, exc.sqlstate)
            raise
        first = exc
    try:
        conn = live.connect(args.reserved_dsn, APP_REAP)
    except live.ConnectError as exc:
        if not quiet:
            print(f"pgfunnel reap: cannot connect: {first.message}", file=sys.stderr)
            print(f"pgfunnel reap: --reserved-dsn refused too: {exc.message}", file=sys.stderr)
        raise
    if not quiet:
        print(
            f"pgfunnel reap: DSN refused (53300, limit: {hit.limit_setting}); connected through "
            "--reserved-dsn",
            file=sys.stderr,
        )
    return conn


def _print_connect_failure(message: str, sqlstate: str | None) -> None:
    hit = classify_53300(message, sqlstate)
    print(f"pgfunnel reap: cannot connect: {message}", file=sys.stderr)
    if hit:
        print(
            f"limit hit: {hit.limit_setting}; pass --reserved-dsn with a reserved-slot DSN "
            "(a superuser, or a member of pg_use_reserved_connections on PostgreSQL 16+)",
            file=sys.stderr,
        )


class _ReapSession:
    """The rounds of one `pgfunnel reap` run: a dry run or --execute, once or --loop."""

    def __init__(
        self,
        args: argparse.Namespace,
        filters: rp.Filters,
        conn: Any,
        audit: TextIO | None,
        stop: _Stop,
    ) -> None:
        self.args = args
        self.filters = filters
        self.conn = conn
        self.audit = audit
        self.stop = stop

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        if self.audit:
            self.audit.close()

    def run(self) -> int:
        args = self.args
        code = 0
        rounds = 0
        while True:
            rounds += 1
            try:
                code = max(code, self.round())
            except live.ConnectionLost as exc:
                print(f"pgfunnel reap: lost the connection: {exc.message}", file=sys.stderr)
                if not args.loop:
                    return 3
                if not self.reconnect():
                    return code if self.stop.requested else 3
            except live.StatementError as exc:
                print(f"pgfunnel reap: {exc}", file=sys.stderr)
                code = 3
                if not args.loop:
                    return code
            sys.stdout.flush()
            done = not args.loop or (args.iterations and rounds >= args.iterations)
            if not done and not self.stop.requested:
                self.stop.sleep(args.loop)
            if self.stop.requested:
                name = signal.Signals(self.stop.signal or signal.SIGTERM).name
                print(f"pgfunnel reap: stopped by {name} after {rounds} round(s)", file=sys.stderr)
                return code
            if done:
                return code

    def reconnect(self) -> bool:
        """Backoff doubling from min(1 s, the loop interval), RECONNECT_ATTEMPTS times."""
        with contextlib.suppress(Exception):
            self.conn.close()
        self.conn = None
        delay = min(1.0, self.args.loop)
        cap = max(2.0, self.args.loop / 2)
        last = ""
        for attempt in range(1, RECONNECT_ATTEMPTS + 1):
            self.stop.sleep(delay)
            if self.stop.requested:
                return False
            try:
                self.conn = reap_connect(self.args, quiet=True)
            except live.ConnectError as exc:
                last = exc.message
                print(
                    f"pgfunnel reap: reconnect {attempt}/{RECONNECT_ATTEMPTS} failed: {last}",
                    file=sys.stderr,
                )
                delay = min(cap, delay * 2)
                continue
            print(f"pgfunnel reap: reconnected (attempt {attempt})", file=sys.stderr)
            return True
        print(
            f"pgfunnel reap: gave up after {RECONNECT_ATTEMPTS} reconnect attempts: {last}",
            file=sys.stderr,
        )
        return False

    def round(self) -> int:
        """One look and, with --execute, one statement; 1 when some sessions were not ours."""
        args = self.args
        plan = rp.plan(live.take_snapshot(self.conn), self.filters)
        results: dict[int, bool] | None = None
        failure: Exception | None = None
        executed = bool(args.execute and plan.statement and not self.stop.requested)
        if executed:
            assert plan.statement is not None
            try:
                results = live.run_reap_statement(self.conn, plan.statement)
            except (live.StatementError, live.ConnectionLost) as exc:
                failure = exc
        lines = audit_lines(plan, results, executed=executed, failure=failure)
        if args.format == "json":
            print(json.dumps({**plan.as_dict(), "executed": executed, "audit": lines}, default=str))
        else:
            # --execute with nothing to end is still not a dry run: say "Ended: 0".
            print_plan(plan, executed or bool(args.execute), _console(), outcomes(lines))
            for line in lines:
                print(json.dumps(line, default=str))
        if self.audit:
            for line in lines:
                self.audit.write(json.dumps(line, default=str) + "\n")
            self.audit.flush()
        sys.stdout.flush()
        if failure is not None:
            if isinstance(failure, live.StatementError):
                print(
                    "pgfunnel reap: the statement failed, so its result is unknown: sessions "
                    "listed before the failing one may have been ended. Run reap again (dry run) "
                    "to see what is left.",
                    file=sys.stderr,
                )
            raise failure
        return 1 if plan.incomplete else 0


def audit_lines(
    plan: rp.Plan,
    results: dict[int, bool] | None,
    executed: bool,
    failure: Exception | None = None,
) -> list[dict[str, Any]]:
    now = dt.datetime.now(dt.UTC).isoformat()
    out = []
    for t in plan.targets:
        brief = rp._brief(t.backend)
        extra: dict[str, Any] = {}
        if not executed:
            action = "would_terminate"
        elif failure is not None:
            action = "outcome_unknown"  # the statement failed or the connection broke under it
            extra["error"] = str(failure)
        elif results is None or t.backend.pid not in results:
            action = "spared_changed"  # state, age or backend changed since planning
        else:
            action = "terminated" if results[t.backend.pid] else "terminate_failed"
        out.append(
            {
                "ts": now,
                "tool": "pgfunnel reap",
                "action": action,
                **brief,
                "reason": t.reason,
                **extra,
            }
        )
    for s in plan.skipped:
        out.append(
            {
                "ts": now,
                "tool": "pgfunnel reap",
                "action": "skipped",
                **rp._brief(s.backend),
                "reason": s.reason,
            }
        )
    for action, rows in (("no_privilege", plan.no_privilege), ("not_visible", plan.not_visible)):
        for s in rows:
            out.append(
                {
                    "ts": now,
                    "tool": "pgfunnel reap",
                    "action": action,
                    **rp._brief(s.backend),
                    "reason": s.reason,
                }
            )
    return out


# What each audit action means for the person reading the table.
OUTCOME_TEXT = {
    "terminated": "ended",
    "spared_changed": "spared: its state, age or backend changed since planning",
    "terminate_failed": "not ended: pg_terminate_backend returned false (already gone?)",
    "outcome_unknown": "unknown: the statement failed (run reap again to see what is left)",
    "would_terminate": "not run: reap was stopped before the statement",
}


def outcomes(lines: list[dict[str, Any]]) -> dict[int, str]:
    """pid -> the audit action of each planned session."""
    return {int(a["pid"]): str(a["action"]) for a in lines if a["action"] in OUTCOME_TEXT}


def print_plan(
    plan: rp.Plan, executed: bool, console: Console, actions: dict[int, str] | None = None
) -> None:
    columns = ["pid", "user", "database", "application", "client", "state", "idle", "xact", "why"]
    rows: list[list[Any]] = [
        [
            t.backend.pid,
            t.backend.usename,
            t.backend.datname,
            t.backend.application_name,
            t.backend.client_addr,
            t.backend.state,
            format_age(t.backend.state_age_s),
            format_age(t.backend.xact_age_s),
            t.reason,
        ]
        for t in plan.targets
    ]
    if executed:
        # The title counts what happened, not what was planned: the statement re-checks each
        # session and spares the ones that changed.
        actions = actions or {}
        done = Counter(actions.get(t.backend.pid, "outcome_unknown") for t in plan.targets)
        title = f"Ended: {done['terminated']} of {len(plan.targets)} planned session(s)"
        others = [
            f"{done[action]} {word}"
            for action, word in (
                ("spared_changed", "spared (changed since planning)"),
                ("terminate_failed", "not ended"),
                ("outcome_unknown", "outcome unknown"),
                ("would_terminate", "not run (stopped)"),
            )
            if done[action]
        ]
        if others:
            title += "; " + ", ".join(others)
        columns.append("outcome")
        for row, t in zip(rows, plan.targets, strict=True):
            row.append(OUTCOME_TEXT[actions.get(t.backend.pid, "outcome_unknown")])
    else:
        title = f"Would end (dry run; add --execute): {len(plan.targets)} session(s)"
    console.print(render.table(title, columns, rows))
    if plan.statement:
        console.print("The statement (it re-checks every session at the moment of termination):")
        console.print(plan.statement, markup=False, highlight=False, soft_wrap=True)
    for title, why, sessions in (
        ("Left alone", "why", plan.skipped),
        ("Not ours to end (missing privilege)", "needs", plan.no_privilege),
    ):
        if sessions:
            rows = [
                [b.pid, b.usename, b.application_name, b.state, s.reason]
                for s in sessions
                for b in (s.backend,)
            ]
            console.print(render.table(title, ["pid", "user", "application", "state", why], rows))
    if plan.not_visible:
        console.print(
            render.table(
                "Not visible (<insufficient privilege>): state and ages hidden",
                ["pid", "user", "database", "application", "needs"],
                [
                    [
                        s.backend.pid,
                        s.backend.usename,
                        s.backend.datname,
                        s.backend.application_name,
                        s.reason,
                    ]
                    for s in plan.not_visible
                ],
            )
        )
    if plan.missing_privileges:
        console.print("Missing privileges:")
        for line in plan.missing_privileges:
            console.print(f"  {line}", markup=False)
    console.print("The durable fix:")
    for line in plan.durable_fix:
        console.print(f"  {line}", markup=False)


# --- check ---------------------------------------------------------------------------------
def check_main(args: argparse.Namespace) -> int:
    from pgfunnel.toolkit import check as ck
    from pgfunnel.toolkit import inputs as ip

    try:
        inp = ip.read_inputs(list(args.files), args.instance_class)
        if args.max_connections is not None:
            inp.supply.max_connections = args.max_connections
            inp.supply.steps.append(f"max_connections = {args.max_connections} (--max-connections)")
        if args.superuser_reserved_connections is not None:
            inp.supply.superuser_reserved = args.superuser_reserved_connections
        if args.reserved_connections is not None:
            inp.supply.reserved = args.reserved_connections
        if args.pooler_replicas is not None and inp.fleet.pooler is not None:
            inp.fleet.pooler.replicas = args.pooler_replicas
        if not inp.fleet.services and not inp.fleet.jobs:
            raise ip.InputError("no services found in the inputs")
        if inp.supply.usable is None:
            raise ip.InputError(
                "max_connections unknown: pass --max-connections, a postgresql.conf, Terraform or "
                "an advise YAML with server.max_connections"
            )
    except (ip.InputError, ValueError, KeyError) as exc:
        print(f"pgfunnel check: {exc}", file=sys.stderr)
        return 2
    result = ck.evaluate(inp.fleet, inp.supply, args.ratio, require_pooler=args.require_pooler)
    result.notes += inp.notes
    result.notes.append(inp.redactor.summary())
    if args.format == "json":
        text = json.dumps(result.as_dict(), indent=2)
    elif args.format == "sarif":
        text = json.dumps(ck.to_sarif(result), indent=2)
    else:
        text = ck.render_text(result)
    print(inp.redactor.mask(text), end="" if text.endswith("\n") else "\n")
    return 0 if result.passed else 1


# --- advise --------------------------------------------------------------------------------
def advise_main(args: argparse.Namespace) -> int:
    from pgfunnel.toolkit import advise as ad
    from pgfunnel.toolkit import inputs as ip

    if args.pgtune:
        return pgtune_main(args)
    if not args.fleet:
        print("pgfunnel advise: --fleet YAML is required (or --pgtune alone)", file=sys.stderr)
        return 2
    try:
        files = [args.fleet] + ([args.postgresql_conf] if args.postgresql_conf else [])
        inp = ip.read_inputs(files, args.instance_class)
        if args.max_connections is not None:
            inp.supply.max_connections = args.max_connections
            inp.supply.steps.append(f"max_connections = {args.max_connections} (--max-connections)")
        server = inp.raw_fleet.get("server") or {}
        if args.from_cgroup:
            hw = ad.hardware_from_cgroup()
        else:
            hw = ad.resolve_hardware(
                args.ram or server.get("ram"),
                args.cpus or server.get("cpus"),
                inp.instance_class,
                ram_from="--ram" if args.ram else f"{args.fleet} server.ram",
                cpus_from="--cpus" if args.cpus else f"{args.fleet} server.cpus",
            )
        advice = ad.advise(
            inp,
            hw,
            ratio=args.ratio,
            backend_mem_mb=args.backend_mem_mb,
            db_type=args.db_type,
            pg_version=args.pg_version or 15,
            storage=args.storage,
            db_size=args.db_size,
            os_type=args.os,
        )
    except (ip.InputError, ValueError, KeyError) as exc:
        print(f"pgfunnel advise: {exc}", file=sys.stderr)
        return 2
    if args.out_dir:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if advice.pooled:
            (out / "pgbouncer.ini").write_text(inp.redactor.mask(advice.pgbouncer_ini()))
        (out / "alter_system.sql").write_text(inp.redactor.mask(advice.alter_system()))
        conf_lines = [f"{r.name} = '{r.recommended}'  # {r.reason}" for r in advice.conf_rows]
        (out / "postgresql.recommended.conf").write_text(
            inp.redactor.mask("\n".join(conf_lines) + "\n")
        )
    if args.format == "json":
        text = json.dumps({**advice.as_dict(), "redacted": inp.redactor.counts}, indent=2) + "\n"
    else:
        text = ad.render_text(advice) + inp.redactor.summary() + "\n"
    print(inp.redactor.mask(text), end="")
    return 1 if advice.warnings or not advice.check.passed else 0


def pgtune_main(args: argparse.Namespace) -> int:
    """`advise --pgtune`: PGTune's output for the hardware and the connection count given."""
    import yaml

    from pgfunnel.toolkit import advise as ad
    from pgfunnel.toolkit import pgtune as pt
    from pgfunnel.toolkit.redact import redact_text
    from pgfunnel.toolkit.units import parse_size

    try:
        server: dict[str, Any] = {}
        if args.fleet:
            # Only RAM and CPUs may come from the fleet; the connection count is PGTune's input
            # as given, never one derived from the fleet.
            data = yaml.safe_load(redact_text(Path(args.fleet).read_text(encoding="utf-8"))) or {}
            server = (data.get("server") or {}) if isinstance(data, dict) else {}
        cpus: Any
        if args.from_cgroup:
            hw = ad.hardware_from_cgroup()
            ram, cpus = hw.ram_bytes, hw.cpus
        else:
            ram_text = args.ram or server.get("ram")
            if ram_text is None:
                raise ValueError("--pgtune needs --ram (e.g. 16GB), or --from-cgroup")
            ram = parse_size(ram_text)
            cpus = args.cpus or server.get("cpus")
        inp = pt.PgTuneInput(
            ram_bytes=ram,
            cpus=int(cpus) if cpus else None,
            connections=args.max_connections,
            db_type=args.db_type,
            version=args.pg_version or pt.DEFAULT_VERSION,
            os_type=args.os,
            storage=args.storage,
            db_size=args.db_size,
        )
        rows = pt.pgtune(inp)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"pgfunnel advise --pgtune: {exc}", file=sys.stderr)
        return 2
    if args.format == "json":
        doc = {
            "schema": "pgfunnel.pgtune/1",
            "input": {
                "db_version": inp.version,
                "os_type": inp.os_type,
                "db_type": inp.db_type,
                "ram_bytes": inp.ram_bytes,
                "cpus": inp.cpus,
                "connections": inp.connections,
                "storage": inp.storage,
                "db_size": inp.db_size,
            },
            "settings": [{"name": k, "value": v} for k, v in rows],
            "warnings": pt.pgtune_warnings(inp),
        }
        print(json.dumps(doc, indent=2))
    else:
        print(pt.render_pgtune(inp), end="")
    return 0


# --- alerts --------------------------------------------------------------------------------
def alerts_main(args: argparse.Namespace) -> int:
    from pgfunnel.toolkit import alerts as al

    try:
        opts = al.AlertOptions(
            exporter=args.exporter,
            warning_ratio=args.slots_warning,
            warning_for=args.slots_warning_for,
            critical_ratio=args.slots_critical,
            critical_for=args.slots_critical_for,
            limit_ratio=args.limit_ratio,
            limit_for=args.limit_for,
            idle_in_transaction_for=args.idle_in_transaction_for,
            idle_in_transaction_max_age_s=int(parse_duration(args.idle_in_transaction_age)),
            dsn=display_dsn(args.dsn) if args.dsn else "$DSN",
            include_pooler=not args.no_pooler,
            postgres_exporter_version=args.postgres_exporter_version,
        )
        text = al.render(opts)
    except ValueError as exc:
        print(f"pgfunnel alerts: {exc}", file=sys.stderr)
        return 2
    if args.output:
        Path(args.output).write_text(text)
    else:
        print(text, end="")
    return 0
