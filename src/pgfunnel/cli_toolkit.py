"""Argument parsing for the 53300 toolkit commands: diagnose, reap, advise, check, alerts."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def _lazy(name: str) -> Callable[[argparse.Namespace], int]:
    """Import the toolkit (psycopg, rich) only when a toolkit command runs: `pgfunnel serve`
    starts faster without them."""

    def run(args: argparse.Namespace) -> int:
        from pgfunnel.toolkit import commands

        result: int = getattr(commands, name)(args)
        return result

    return run


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _diagnose(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "diagnose",
        help="who holds the connection slots, what is leaking, and what to do (53300)",
        description="Diagnose connection-slot use on a live server (one connection, named "
        "'pgfunnel diagnose', statement_timeout 5s) or a saved snapshot. "
        "Exit codes: 0 OK, 1 warning, 2 critical, 3 unknown.",
    )
    p.add_argument(
        "dsn", nargs="?", default="", metavar="DSN", help="libpq DSN or URI (default: PG* env)"
    )
    p.add_argument(
        "--reserved-dsn",
        metavar="DSN",
        help="a DSN for a reserved slot (superuser or "
        "pg_use_reserved_connections member), tried when DSN is refused with 53300",
    )
    p.add_argument(
        "--from-file",
        metavar="FILE",
        help="a saved snapshot: pgfunnel JSON, or a JSON "
        "array / CSV (with header) of pg_stat_activity rows",
    )
    p.add_argument("--save-snapshot", metavar="FILE", help="also write the snapshot as JSON")
    p.add_argument(
        "--max-connections", type=int, help="for --from-file: the server's max_connections"
    )
    p.add_argument("--superuser-reserved-connections", type=int, help="for --from-file")
    p.add_argument("--reserved-connections", type=int, help="for --from-file")
    p.add_argument(
        "--pooler",
        metavar="DSN",
        help="a PgBouncer-compatible admin console "
        "(dbname=pgbouncer) to read SHOW POOLS / SHOW DATABASES from",
    )
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--watch", type=_positive_float, metavar="SECONDS", help="refresh every SECONDS")
    p.add_argument("--top", type=int, default=10, help="holder groups to show (default 10)")
    p.add_argument("--show-queries", action="store_true", help="show queries with their literals")
    p.add_argument(
        "--idle-in-transaction-warn",
        default="60s",
        metavar="AGE",
        help="warn about sessions idle in transaction longer (default 60s)",
    )
    p.add_argument(
        "--idle-warn",
        default="1h",
        metavar="AGE",
        help="report idle sessions older than this (default 1h)",
    )
    p.set_defaults(func=_lazy("diagnose_main"))


def _reap(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "reap",
        help="end leaked idle / idle-in-transaction sessions safely (dry run by default)",
        description="Plans which sessions to end and prints the exact SQL; --execute runs it. "
        "One statement re-checks pid, backend_start, state and age at the moment of "
        "termination. Never its own pid or non-client backends; superusers, replication and "
        "pg_dump/pg_basebackup/pg_restore sessions only when asked.",
    )
    p.add_argument("dsn", nargs="?", default="", metavar="DSN")
    p.add_argument(
        "--reserved-dsn",
        metavar="DSN",
        help="a DSN for a reserved slot (superuser or pg_use_reserved_connections member), "
        "used when DSN is refused with 53300",
    )
    p.add_argument("--execute", action="store_true", help="really end the sessions")
    p.add_argument(
        "--idle-in-transaction",
        metavar="AGE",
        help="idle in transaction (incl. aborted) longer than AGE",
    )
    p.add_argument("--idle", metavar="AGE", help="idle longer than AGE")
    p.add_argument(
        "--state",
        action="append",
        metavar="STATE",
        help="idle | idle-in-transaction | aborted (with --min-idle-age)",
    )
    p.add_argument(
        "--min-idle-age", metavar="AGE", help="minimum age since state_change for --state"
    )
    p.add_argument(
        "--min-xact-age", metavar="AGE", help="minimum transaction age (now - xact_start)"
    )
    p.add_argument("--role", action="append", help="only this role (repeatable)")
    p.add_argument("--application", metavar="REGEX", help="only application_name matching REGEX")
    p.add_argument("--database", action="append", help="only this database (repeatable)")
    p.add_argument(
        "--client", action="append", metavar="CIDR", help="only clients in CIDR (repeatable)"
    )
    p.add_argument("--include-superusers", action="store_true")
    p.add_argument("--include-replication", action="store_true")
    p.add_argument(
        "--include-tools", action="store_true", help="pg_dump, pg_basebackup, pg_restore"
    )
    p.add_argument(
        "--max", type=int, default=100, help="end at most N sessions a round (default 100)"
    )
    p.add_argument(
        "--max-share",
        type=float,
        default=None,
        metavar="SHARE",
        help="end at most this share (0-1] of one application's sessions a round, whatever "
        "their state. Default: idle sessions are capped at 0.5 (ending most of a pool at once "
        "causes a reconnect storm); sessions idle in transaction past the age are leaks holding "
        "locks and snapshots and are not capped",
    )
    p.add_argument("--loop", type=_positive_float, metavar="SECONDS", help="repeat every SECONDS")
    p.add_argument("--iterations", type=int, default=0, help="with --loop: stop after N rounds")
    p.add_argument("--audit-log", metavar="FILE", help="append the JSON audit lines to FILE")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=_lazy("reap_main"))


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers the toolkit subcommands."""
    _diagnose(sub)
    _reap(sub)
    _advise(sub)
    _check(sub)
    _alerts(sub)


def _check(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "check",
        help="CI gate: worst-case pool demand against usable slots",
        description="Reads Helm values, Kubernetes manifests, docker-compose, .env, Terraform "
        "(aws_db_parameter_group), pgbouncer.ini, postgresql.conf or an advise YAML. Fails when "
        "(max replicas + surge) x processes x (pool + overflow) + pooler server connections > "
        "ratio x usable slots. Exit 0 pass, 1 violation, 2 bad input.",
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--max-connections", type=int)
    p.add_argument("--superuser-reserved-connections", type=int)
    p.add_argument("--reserved-connections", type=int)
    p.add_argument(
        "--instance-class", help="RDS instance class for the RDS max_connections formula"
    )
    p.add_argument("--pooler-replicas", type=int, help="replicas of the pooler in pgbouncer.ini")
    p.add_argument("--ratio", type=float, default=0.8, help="share of usable slots allowed (0.8)")
    p.add_argument(
        "--require-pooler",
        action="store_true",
        help="policy PGF006: fail for every workload (not migrations) that connects to "
        "PostgreSQL without a pooler in front",
    )
    p.add_argument("--format", choices=("text", "json", "sarif"), default="text")
    p.set_defaults(func=_lazy("check_main"))


def _advise(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "advise",
        help="size pools, the pooler and postgresql.conf for an application fleet",
        description="Demand against supply step by step, a memory budget, PGTune's formulas, "
        "and the decision: a pgbouncer.ini that pgfunnel serve loads, the postgresql.conf diff "
        "and its ALTER SYSTEM form. With --pgtune: PGTune's output alone, no fleet needed.",
    )
    p.add_argument(
        "--fleet", metavar="YAML", help="the fleet description (required unless --pgtune)"
    )
    p.add_argument("--postgresql-conf", metavar="FILE", help="the current postgresql.conf")
    p.add_argument("--ram", help="server RAM, e.g. 16GB")
    p.add_argument("--cpus", type=int, help="server CPUs")
    p.add_argument("--from-cgroup", action="store_true", help="read RAM/CPUs from cgroup limits")
    p.add_argument(
        "--max-connections",
        type=int,
        help="the server's max_connections; with --pgtune PGTune's 'Connections num' (default "
        "per --db-type, as PGTune: web 200, oltp 300, dw 40, desktop 20, mixed 100)",
    )
    p.add_argument("--instance-class", help="RDS instance class (RDS formula for max_connections)")
    p.add_argument("--ratio", type=float, default=0.8)
    p.add_argument(
        "--backend-mem-mb",
        type=float,
        default=10.0,
        help="per-backend baseline memory in MiB (default 10)",
    )
    p.add_argument(
        "--db-type",
        default="web",
        choices=("web", "oltp", "dw", "desktop", "mixed"),
        help="PGTune's DB type (default web)",
    )
    p.add_argument(
        "--storage",
        default="ssd",
        choices=("ssd", "hdd", "san", "nvme"),
        help="PGTune's data storage (default ssd)",
    )
    p.add_argument(
        "--db-size",
        default="mid",
        choices=("less", "mid", "greater"),
        help="PGTune's database size against RAM: less (fits in RAM), mid (default), greater",
    )
    p.add_argument(
        "--os", default="linux", choices=("linux", "windows", "mac"), help="PGTune's OS type"
    )
    p.add_argument(
        "--pg-version",
        type=int,
        help="PostgreSQL major version (default: 18 with --pgtune, as PGTune; 15 otherwise)",
    )
    p.add_argument(
        "--pgtune",
        action="store_true",
        help="print PGTune's output alone (le0pard/pgtune's current formulas) for --ram, --cpus, "
        "--max-connections, --db-type, --storage, --db-size, --os, --pg-version; no fleet needed",
    )
    p.add_argument(
        "--out-dir",
        metavar="DIR",
        help="write pgbouncer.ini, postgresql.recommended.conf, alter_system.sql",
    )
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=_lazy("advise_main"))


def _alerts(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "alerts",
        help="write Prometheus alert rules for slot usage, idle transactions and pooler waits",
    )
    p.add_argument(
        "--exporter",
        choices=("postgres_exporter", "pgfunnel"),
        default="postgres_exporter",
        help="pooler metric names: pgbouncer_exporter's or pgfunnel's own",
    )
    p.add_argument(
        "--postgres-exporter-version",
        default="0.17",
        metavar="VERSION",
        help="the postgres_exporter version the rules are for (default 0.17: "
        "pg_stat_activity_count has backend_type from 0.17.0, usename from 0.12.0; "
        "pg_roles_connection_limit and pg_database_connection_limit from 0.16.0)",
    )
    p.add_argument("--dsn", help="DSN to name in the runbook commands (passwords dropped)")
    p.add_argument(
        "--slots-warning",
        type=float,
        default=0.75,
        metavar="RATIO",
        help="warn above this share of usable slots (default 0.75)",
    )
    p.add_argument(
        "--slots-warning-for", default="5m", metavar="DURATION", help="for how long (default 5m)"
    )
    p.add_argument(
        "--slots-critical",
        type=float,
        default=0.9,
        metavar="RATIO",
        help="critical above this share of usable slots (default 0.9)",
    )
    p.add_argument(
        "--slots-critical-for", default="2m", metavar="DURATION", help="for how long (default 2m)"
    )
    p.add_argument(
        "--limit-ratio",
        type=float,
        default=0.9,
        metavar="RATIO",
        help="warn above this share of a role's or database's CONNECTION LIMIT (default 0.9)",
    )
    p.add_argument("--limit-for", default="2m", metavar="DURATION", help="(default 2m)")
    p.add_argument(
        "--idle-in-transaction-for",
        default="5m",
        metavar="DURATION",
        help="warn about sessions idle in transaction for this long (default 5m)",
    )
    p.add_argument("--idle-in-transaction-age", default="5m")
    p.add_argument("--no-pooler", action="store_true", help="only the PostgreSQL rules")
    p.add_argument("-o", "--output", metavar="FILE")
    p.set_defaults(func=_lazy("alerts_main"))
