"""Prometheus alert rules for connection-slot saturation, idle transactions and pooler waits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

CLIENT = 'backend_type="client backend"'
IDLE_TX = 'state=~"idle in transaction.*"'

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
    idle_in_transaction_max_age_s: int = 300
    maxwait_s: float = 1.0
    dsn: str = "$DSN"
    include_pooler: bool = True


def usage_expr() -> str:
    """Client backends over usable slots (max - superuser_reserved - reserved), per instance."""
    usable = (
        "(pg_settings_max_connections - pg_settings_superuser_reserved_connections"
        " - (pg_settings_reserved_connections or pg_settings_max_connections * 0))"
    )
    return (
        f"sum by (instance) (pg_stat_activity_count{{{CLIENT}}})\n"
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
    dsn = o.dsn
    diag = f"pgfunnel diagnose {dsn}"
    pg_rules = [
        _rule(
            "PostgresConnectionSlotsWarning",
            f"{usage_expr()}\n  > {o.warning_ratio}",
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
            f"{usage_expr()}\n  > {o.critical_ratio}",
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
            f"sum by (instance, usename) (pg_stat_activity_count{{{CLIENT}}})\n"
            "  / on (instance, usename) group_left()\n"
            "    max by (instance, usename) (label_replace(pg_roles_connection_limit > 0,\n"
            '      "usename", "$1", "rolname", "(.*)"))\n'
            f"  > {o.limit_ratio}",
            "2m",
            "warning",
            "Role {{ $labels.usename }} uses {{ $value | humanizePercentage }} of its "
            "CONNECTION LIMIT",
            'At the limit new sessions get 53300 "too many connections for role".',
            f"{diag}; pgfunnel reap {dsn} --role {{{{ $labels.usename }}}}"
            " --idle-in-transaction 5m",
        ),
        _rule(
            "PostgresDatabaseConnectionLimit",
            f"sum by (instance, datname) (pg_stat_activity_count{{{CLIENT}}})\n"
            "  / on (instance, datname) group_left()\n"
            "    max by (instance, datname) (pg_database_connection_limit > 0)\n"
            f"  > {o.limit_ratio}",
            "2m",
            "warning",
            "Database {{ $labels.datname }} uses {{ $value | humanizePercentage }} of its "
            "CONNECTION LIMIT",
            'At the limit new sessions get 53300 "too many connections for database".',
            f"{diag}; pgfunnel reap {dsn} --database {{{{ $labels.datname }}}} "
            f"--idle-in-transaction 5m",
        ),
        _rule(
            "PostgresIdleInTransaction",
            "sum by (instance, datname, usename)"
            f" (pg_stat_activity_count{{{CLIENT}, {IDLE_TX}}}) > 0",
            "5m",
            "warning",
            "{{ $value }} session(s) of {{ $labels.usename }} idle in transaction on {{ "
            "$labels.datname }}",
            "Sessions idle in transaction hold a slot, locks and the xmin horizon.",
            f"{diag} --idle-in-transaction-warn 1m; pgfunnel reap {dsn} --idle-in-transaction 5m",
        ),
        _rule(
            "PostgresIdleInTransactionAge",
            "max by (instance, datname, usename)"
            f" (pg_stat_activity_max_tx_duration{{{CLIENT}, {IDLE_TX}}})\n"
            f"  > {o.idle_in_transaction_max_age_s}",
            "1m",
            "critical",
            "A transaction of {{ $labels.usename }} has been open {{ $value | humanizeDuration "
            "}} while idle",
            "Vacuum cannot clean up behind it; end it and set idle_in_transaction_session_timeout.",
            f"pgfunnel reap {dsn} --idle-in-transaction {o.idle_in_transaction_max_age_s}s "
            f"--execute",
        ),
    ]
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
    header = "# Prometheus alert rules written by `pgfunnel alerts`.\n"
    return header + yaml.dump(doc, Dumper=dumper, sort_keys=False, width=120)
