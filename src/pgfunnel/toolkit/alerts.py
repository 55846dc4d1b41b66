"""Prometheus alert rules for connection-slot saturation, idle transactions and pooler waits."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

CLIENT = 'backend_type="client backend"'
IDLE_TX = 'state=~"idle in transaction.*"'


@dataclass(frozen=True)
class ExporterGeneration:
    """What one range of postgres_exporter releases exports about pg_stat_activity and limits
    (its CHANGELOG: usename/application_name labels 0.12.0, pg_roles_connection_limit and
    pg_database_connection_limit 0.16.0, backend_type 0.17.0)."""

    since: tuple[int, int]
    # Label matchers that select client backends in pg_stat_activity_count.
    client: str
    has_usename: bool
    has_limits: bool
    caveat: str


GENERATIONS = (
    ExporterGeneration(
        (0, 17),
        CLIENT,
        True,
        True,
        "client backends by their backend_type label (postgres_exporter >= 0.17.0, 2025-02-16)",
    ),
    # Before 0.17 there is no backend_type. Autovacuum workers have no role and walsenders are
    # in no listed state, so rows with a usename are client backends, or parallel workers (not
    # in max_connections: the slot alerts may fire a little early while parallel queries run).
    ExporterGeneration(
        (0, 16),
        'usename!=""',
        True,
        True,
        "no backend_type label (before 0.17.0): client backends are the rows with a usename; "
        "parallel workers count too",
    ),
    ExporterGeneration(
        (0, 12),
        'usename!=""',
        True,
        False,
        "no backend_type label (before 0.17.0) and no pg_roles_connection_limit / "
        "pg_database_connection_limit (before 0.16.0): client backends are the rows with a "
        "usename; the role and database limit rules are left out",
    ),
    ExporterGeneration(
        (0, 0),
        "",
        False,
        False,
        "no usename or backend_type label (before 0.12.0): every backend with a database counts, "
        "autovacuum workers too (up to autovacuum_max_workers early); no role labels, so idle "
        "transactions are per database and the role and database limit rules are left out",
    ),
)
DEFAULT_EXPORTER_VERSION = "0.17"
_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.\d+)?(?:[-+].*)?$")
_PROM_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


def exporter_generation(version: str) -> ExporterGeneration:
    """The generation of a postgres_exporter version ('0.15.0', 'v0.17', '0.11')."""
    m = _VERSION.match(version.strip())
    if not m:
        raise ValueError(f"postgres_exporter version {version!r}: expected e.g. 0.17.0")
    key = (int(m.group(1)), int(m.group(2)))
    return next(g for g in GENERATIONS if key >= g.since)


def versions(gen: ExporterGeneration) -> str:
    """The postgres_exporter releases a generation covers, in words."""
    i = GENERATIONS.index(gen)
    since = ".".join(map(str, gen.since))
    if i == 0:
        return f">= {since}"
    below = ".".join(map(str, GENERATIONS[i - 1].since))
    return f"before {below}" if gen.since == (0, 0) else f">= {since} and before {below}"


def _older_than(since: tuple[int, int]) -> str:
    """A regex (RE2, anchored) for postgres_exporter version labels older than `since` (every
    release so far is 0.x); '[.]' needs no escaping inside a PromQL string."""
    minors = "|".join(str(n) for n in range(since[1]))
    return f"v?0[.]({minors})([.].*)?"


# Pooler metric names: pgbouncer_exporter's, and pgfunnel's own /metrics (same shape, own prefix).
POOLER_METRICS = {
    "postgres_exporter": {
        "waiting": "pgbouncer_pools_client_waiting_connections",
        "maxwait": "pgbouncer_pools_client_maxwait_seconds",
        "sv_active": "pgbouncer_pools_server_active_connections",
        "sv_idle": "pgbouncer_pools_server_idle_connections",
        "sv_used": "pgbouncer_pools_server_used_connections",
        "pool_size": "pgbouncer_databases_pool_size",
    },
    "pgfunnel": {
        "waiting": "pgfunnel_pools_client_waiting_connections",
        "maxwait": "pgfunnel_pools_client_maxwait_seconds",
        "sv_active": "pgfunnel_pools_server_active_connections",
        "sv_idle": "pgfunnel_pools_server_idle_connections",
        "sv_used": "pgfunnel_pools_server_used_connections",
        "pool_size": "pgfunnel_databases_pool_size",
    },
}
EXPORTERS = tuple(POOLER_METRICS)


@dataclass
class AlertOptions:
    exporter: str = "postgres_exporter"
    warning_ratio: float = 0.75
    warning_for: str = "5m"
    critical_ratio: float = 0.9
    critical_for: str = "2m"
    limit_ratio: float = 0.9
    limit_for: str = "2m"
    idle_in_transaction_for: str = "5m"
    idle_in_transaction_max_age_s: int = 300
    maxwait_s: float = 1.0
    dsn: str = "$DSN"
    include_pooler: bool = True
    postgres_exporter_version: str = DEFAULT_EXPORTER_VERSION
    generation: ExporterGeneration = field(init=False)

    def __post_init__(self) -> None:
        self.generation = exporter_generation(self.postgres_exporter_version)

    def validate(self) -> None:
        """Raises ValueError for thresholds or durations Prometheus would reject or that make
        no sense (a warning at or above the critical threshold)."""
        for name, ratio in (
            ("--slots-warning", self.warning_ratio),
            ("--slots-critical", self.critical_ratio),
            ("--limit-ratio", self.limit_ratio),
        ):
            if not 0 < ratio <= 1:
                raise ValueError(f"{name} {ratio:g}: a share of the slots, in (0, 1]")
        if self.warning_ratio >= self.critical_ratio:
            raise ValueError(
                f"--slots-warning {self.warning_ratio:g} must be below --slots-critical "
                f"{self.critical_ratio:g}"
            )
        for name, text in (
            ("--slots-warning-for", self.warning_for),
            ("--slots-critical-for", self.critical_for),
            ("--limit-for", self.limit_for),
            ("--idle-in-transaction-for", self.idle_in_transaction_for),
        ):
            if not _PROM_DURATION.match(text):
                raise ValueError(f"{name} {text!r}: a Prometheus duration such as 30s, 5m, 1h")


def _selector(metric: str, *matchers: str) -> str:
    inner = ", ".join(m for m in matchers if m)
    return f"{metric}{{{inner}}}" if inner else metric


def usage_expr(gen: ExporterGeneration = GENERATIONS[0]) -> str:
    """Client backends over usable slots (max - superuser_reserved - reserved), per instance."""
    usable = (
        "(pg_settings_max_connections - pg_settings_superuser_reserved_connections"
        " - (pg_settings_reserved_connections or pg_settings_max_connections * 0))"
    )
    return (
        f"sum by (instance) ({_selector('pg_stat_activity_count', gen.client)})\n"
        f"  / on (instance) max by (instance) {usable}"
    )


def _rule(
    name: str, expr: str, for_: str, severity: str, summary: str, description: str, runbook: str
) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity},
        "annotations": {"summary": summary, "description": description, "runbook": runbook},
    }


def rules(opts: AlertOptions | None = None) -> dict[str, Any]:
    """The rule groups, ready for yaml.safe_dump."""
    o = opts or AlertOptions()
    if o.exporter not in POOLER_METRICS:
        raise ValueError(f"unknown exporter {o.exporter!r}: {', '.join(EXPORTERS)}")
    o.validate()
    gen = o.generation
    dsn = o.dsn
    diag = f"pgfunnel diagnose {dsn}"
    clients = _selector("pg_stat_activity_count", gen.client)
    idle_tx = _selector("pg_stat_activity_count", gen.client, IDLE_TX)
    idle_tx_age = _selector("pg_stat_activity_max_tx_duration", gen.client, IDLE_TX)
    by_session = "instance, datname, usename" if gen.has_usename else "instance, datname"
    who = "{{ $labels.usename }}" if gen.has_usename else "a client"
    pg_rules = [
        _rule(
            "PostgresConnectionSlotsWarning",
            f"{usage_expr(gen)}\n  > {o.warning_ratio}",
            o.warning_for,
            "warning",
            "PostgreSQL {{ $labels.instance }}: {{ $value | humanizePercentage }} of usable "
            "connection slots in use",
            "Client backends over max_connections minus reserved slots. New connections fail "
            "with SQLSTATE 53300 at 100%.",
            f"{diag}; then pgfunnel reap {dsn} --idle-in-transaction 5m",
        ),
        _rule(
            "PostgresConnectionSlotsCritical",
            f"{usage_expr(gen)}\n  > {o.critical_ratio}",
            o.critical_for,
            "critical",
            "PostgreSQL {{ $labels.instance }}: {{ $value | humanizePercentage }} of usable "
            "connection slots in use",
            "The server is close to refusing ordinary roles (53300).",
            f"{diag} --reserved-dsn SUPERUSER_DSN; then pgfunnel reap {dsn} "
            f"--idle-in-transaction 5m --execute",
        ),
        _rule(
            "PostgresRoleConnectionLimit",
            f"sum by (instance, usename) ({clients})\n"
            "  / on (instance, usename) group_left()\n"
            "    max by (instance, usename) (label_replace(pg_roles_connection_limit > 0,\n"
            '      "usename", "$1", "rolname", "(.*)"))\n'
            f"  > {o.limit_ratio}",
            o.limit_for,
            "warning",
            "Role {{ $labels.usename }} uses {{ $value | humanizePercentage }} of its "
            "CONNECTION LIMIT",
            'At the limit new sessions get 53300 "too many connections for role".',
            f"{diag}; pgfunnel reap {dsn} --role {{{{ $labels.usename }}}}"
            " --idle-in-transaction 5m",
        ),
        _rule(
            "PostgresDatabaseConnectionLimit",
            f"sum by (instance, datname) ({clients})\n"
            "  / on (instance, datname) group_left()\n"
            "    max by (instance, datname) (pg_database_connection_limit > 0)\n"
            f"  > {o.limit_ratio}",
            o.limit_for,
            "warning",
            "Database {{ $labels.datname }} uses {{ $value | humanizePercentage }} of its "
            "CONNECTION LIMIT",
            'At the limit new sessions get 53300 "too many connections for database".',
            f"{diag}; pgfunnel reap {dsn} --database {{{{ $labels.datname }}}} "
            f"--idle-in-transaction 5m",
        ),
        _rule(
            "PostgresIdleInTransaction",
            f"sum by ({by_session}) ({idle_tx}) > 0",
            o.idle_in_transaction_for,
            "warning",
            "{{ $value }} session(s)"
            + (" of {{ $labels.usename }}" if gen.has_usename else "")
            + " idle in transaction on {{ $labels.datname }}",
            "Sessions idle in transaction hold a slot, locks and the xmin horizon.",
            f"{diag} --idle-in-transaction-warn 1m; pgfunnel reap {dsn} --idle-in-transaction 5m",
        ),
        _rule(
            "PostgresIdleInTransactionAge",
            f"max by ({by_session}) ({idle_tx_age})\n  > {o.idle_in_transaction_max_age_s}",
            "1m",
            "critical",
            f"A transaction of {who} has been open {{{{ $value | humanizeDuration }}}} while idle",
            "Vacuum cannot clean up behind it; end it and set idle_in_transaction_session_timeout.",
            f"pgfunnel reap {dsn} --idle-in-transaction {o.idle_in_transaction_max_age_s}s "
            f"--execute",
        ),
    ]
    left_out = []
    if not gen.has_limits:
        left_out = ["PostgresRoleConnectionLimit", "PostgresDatabaseConnectionLimit"]
    pg_rules = [r for r in pg_rules if r["alert"] not in left_out]
    if gen.since > (0, 0):
        # An older exporter lacks the labels these rules select on: they would never fire.
        # postgres_exporter_build_info names the version, so say so instead of staying silent.
        since = ".".join(map(str, gen.since))
        pg_rules.append(
            _rule(
                "PostgresExporterTooOldForTheseRules",
                "count by (instance, version) (postgres_exporter_build_info"
                f'{{version=~"{_older_than(gen.since)}"}})',
                "10m",
                "warning",
                "postgres_exporter {{ $labels.version }} on {{ $labels.instance }} is older than "
                f"{since}: the connection-slot rules cannot see its sessions",
                f"These rules were written for postgres_exporter >= {since} ({gen.caveat}).",
                "pgfunnel alerts --postgres-exporter-version {{ $labels.version }} -o RULES_FILE",
            )
        )
    groups = [{"name": "pgfunnel-postgres-connections", "rules": pg_rules}]
    if o.include_pooler:
        m = POOLER_METRICS[o.exporter]
        servers = f"({m['sv_active']} + {m['sv_idle']} + {m['sv_used']})"
        pool_size = m["pool_size"]
        if o.exporter == "postgres_exporter":
            # pgbouncer_exporter labels the client-facing database name `name` on databases.
            pool_size = f'label_replace({pool_size}, "database", "$1", "name", "(.*)")'
        pooler_rules = [
            _rule(
                "PoolerClientsWaiting",
                f"sum by (instance, database, user) ({m['waiting']}) > 0",
                "1m",
                "warning",
                "{{ $value }} client(s) waiting for a server connection on {{ $labels.database "
                "}}/{{ $labels.user }}",
                "The pool is exhausted: clients queue in the pooler (cl_waiting).",
                f"{diag} --pooler POOLER_ADMIN_DSN",
            ),
            _rule(
                "PoolerMaxWait",
                f"max by (instance, database, user) ({m['maxwait']}) > {o.maxwait_s}",
                "1m",
                "critical",
                "Oldest waiting client on {{ $labels.database }}/{{ $labels.user }} waited {{ "
                "$value }}s",
                "maxwait grows when server connections are held by long or idle transactions.",
                f"{diag} --pooler POOLER_ADMIN_DSN; pgfunnel reap {dsn} --idle-in-transaction 1m",
            ),
            _rule(
                "PoolerServerConnectionsNearCap",
                f"sum by (instance, database, user) {servers}\n"
                "  / on (instance, database) group_left()\n"
                f"    max by (instance, database) ({pool_size} > 0)\n"
                "  > 0.9",
                "5m",
                "warning",
                "Pool {{ $labels.database }}/{{ $labels.user }} uses {{ $value | "
                "humanizePercentage }} of pool_size",
                "Server connections near pool_size: the next burst waits.",
                f"{diag} --pooler POOLER_ADMIN_DSN; pgfunnel advise --fleet fleet.yaml",
            ),
        ]
        groups.append({"name": f"pgfunnel-pooler-{o.exporter}", "rules": pooler_rules})
    return {"groups": groups}


class _Literal(str):
    pass


def _literal_representer(dumper: yaml.SafeDumper, data: _Literal) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(data), style="|")


def render(opts: AlertOptions | None = None) -> str:
    """The rules as a Prometheus rule file."""
    doc = rules(opts)
    for g in doc["groups"]:
        for r in g["rules"]:
            if "\n" in r["expr"]:
                r["expr"] = _Literal(r["expr"])

    class _Dumper(yaml.SafeDumper):
        pass

    _Dumper.add_representer(_Literal, _literal_representer)
    dumper = _Dumper
    o = opts or AlertOptions()
    header = (
        "# Prometheus alert rules written by `pgfunnel alerts`.\n"
        f"# For postgres_exporter {versions(o.generation)} (--postgres-exporter-version "
        f"{o.postgres_exporter_version}):\n# {o.generation.caveat}.\n"
    )
    return header + yaml.dump(doc, Dumper=dumper, sort_keys=False, width=120)
