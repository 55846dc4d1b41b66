"""`pgfunnel alerts` rules load in Prometheus and fire as designed (promtool test rules)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgfunnel.toolkit import alerts as al
from tests.integration.toolkit.helpers import run_cli

PROMTOOL = shutil.which("promtool")
if PROMTOOL is None and not os.environ.get("CI"):
    pytest.skip("promtool not installed (Debian package prometheus)", allow_module_level=True)


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None, "promtool is required in CI (make bootstrap installs prometheus)"
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)


def _annotations(exporter: str, alert: str, **values: str) -> dict[str, str]:
    rule = next(
        r
        for g in al.rules(al.AlertOptions(exporter=exporter))["groups"]
        for r in g["rules"]
        if r["alert"] == alert
    )
    out = {}
    for key, text in rule["annotations"].items():
        for template, value in values.items():
            text = text.replace("{{ " + template + " }}", value)
        out[key] = text
    return out


def _series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def _tests(exporter: str) -> dict[str, Any]:
    client = {"backend_type": "client backend", "datname": "shop", "usename": "app"}
    m = al.POOLER_METRICS[exporter]
    pools = {"instance": "pooler", "database": "shop", "user": "app"}
    db_labels = {"instance": "pooler", "name": "shop", "database": "shop_real"}
    if exporter == "pgfunnel":
        db_labels = {"instance": "pooler", "database": "shop"}
    series = [
        # instance a: 80 of 97 usable (82%): warning only.
        _series("pg_stat_activity_count", {"instance": "a", **client, "state": "idle"}, "80x15"),
        _series("pg_settings_max_connections", {"instance": "a"}, "100x15"),
        _series("pg_settings_superuser_reserved_connections", {"instance": "a"}, "3x15"),
        _series("pg_roles_connection_limit", {"instance": "a", "rolname": "app"}, "200x15"),
        # database limits: a's shop at 80 of 200 (40%), b's shop at 86 of 90 (96%): b fires.
        _series("pg_database_connection_limit", {"instance": "a", "datname": "shop"}, "200x15"),
        _series("pg_database_connection_limit", {"instance": "b", "datname": "shop"}, "90x15"),
        # -1 (no limit) never fires
        _series("pg_database_connection_limit", {"instance": "b", "datname": "other"}, "-1x15"),
        # instance b (PostgreSQL 16: reserved_connections 7): 85 + 1 idle in transaction of 90.
        _series("pg_stat_activity_count", {"instance": "b", **client, "state": "active"}, "85x15"),
        _series(
            "pg_stat_activity_count",
            {"instance": "b", **client, "state": "idle in transaction"},
            "1x15",
        ),
        _series(
            "pg_stat_activity_max_tx_duration",
            {"instance": "b", **client, "state": "idle in transaction"},
            "400x15",
        ),
        _series("pg_settings_max_connections", {"instance": "b"}, "100x15"),
        _series("pg_settings_superuser_reserved_connections", {"instance": "b"}, "3x15"),
        _series("pg_settings_reserved_connections", {"instance": "b"}, "7x15"),
        _series("pg_roles_connection_limit", {"instance": "b", "rolname": "app"}, "90x15"),
        # the pooler: 3 clients waiting, 19 of 20 server connections.
        _series(m["waiting"], pools, "3x15"),
        _series(m["maxwait"], pools, "0.5x15"),
        _series(m["sv_active"], pools, "19x15"),
        _series(m["sv_idle"], pools, "0x15"),
        _series(m["sv_used"], pools, "0x15"),
        _series(m["pool_size"], db_labels, "20x15"),
    ]

    def alert(name: str, labels: dict[str, str], **values: str) -> dict[str, Any]:
        return {"exp_labels": labels, "exp_annotations": _annotations(exporter, name, **values)}

    checks = [
        (
            "PostgresConnectionSlotsWarning",
            [
                alert(
                    "PostgresConnectionSlotsWarning",
                    {"severity": "warning", "instance": "a"},
                    **{"$labels.instance": "a", "$value | humanizePercentage": "82.47%"},
                ),
                alert(
                    "PostgresConnectionSlotsWarning",
                    {"severity": "warning", "instance": "b"},
                    **{"$labels.instance": "b", "$value | humanizePercentage": "95.56%"},
                ),
            ],
        ),
        (
            "PostgresConnectionSlotsCritical",
            [
                alert(
                    "PostgresConnectionSlotsCritical",
                    {"severity": "critical", "instance": "b"},
                    **{"$labels.instance": "b", "$value | humanizePercentage": "95.56%"},
                ),
            ],
        ),
        (
            "PostgresRoleConnectionLimit",
            [
                alert(
                    "PostgresRoleConnectionLimit",
                    {"severity": "warning", "instance": "b", "usename": "app"},
                    **{"$labels.usename": "app", "$value | humanizePercentage": "95.56%"},
                ),
            ],
        ),
        (
            "PostgresDatabaseConnectionLimit",
            [
                alert(
                    "PostgresDatabaseConnectionLimit",
                    {"severity": "warning", "instance": "b", "datname": "shop"},
                    **{"$labels.datname": "shop", "$value | humanizePercentage": "95.56%"},
                ),
            ],
        ),
        (
            "PostgresIdleInTransaction",
            [
                alert(
                    "PostgresIdleInTransaction",
                    {"severity": "warning", "instance": "b", "datname": "shop", "usename": "app"},
                    **{"$value": "1", "$labels.usename": "app", "$labels.datname": "shop"},
                ),
            ],
        ),
        (
            "PostgresIdleInTransactionAge",
            [
                alert(
                    "PostgresIdleInTransactionAge",
                    {"severity": "critical", "instance": "b", "datname": "shop", "usename": "app"},
                    **{"$labels.usename": "app", "$value | humanizeDuration": "6m 40s"},
                ),
            ],
        ),
        (
            "PoolerClientsWaiting",
            [
                alert(
                    "PoolerClientsWaiting",
                    {"severity": "warning", **pools},
                    **{"$value": "3", "$labels.database": "shop", "$labels.user": "app"},
                ),
            ],
        ),
        ("PoolerMaxWait", []),
        (
            "PoolerServerConnectionsNearCap",
            [
                alert(
                    "PoolerServerConnectionsNearCap",
                    {"severity": "warning", **pools},
                    **{
                        "$labels.database": "shop",
                        "$labels.user": "app",
                        "$value | humanizePercentage": "95%",
                    },
                ),
            ],
        ),
    ]
    early = [{"eval_time": "1m", "alertname": "PostgresConnectionSlotsWarning", "exp_alerts": []}]
    return {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": early
                + [
                    {"eval_time": "10m", "alertname": name, "exp_alerts": exp}
                    for name, exp in checks
                ],
            }
        ],
    }


@pytest.mark.parametrize("exporter", al.EXPORTERS)
def test_rules_fire_as_designed(exporter: str, tmp_path: Path) -> None:
    proc = run_cli("alerts", "--exporter", exporter, "-o", str(tmp_path / "rules.yml"))
    assert proc.returncode == 0, proc.stderr
    check = _promtool("check", "rules", str(tmp_path / "rules.yml"))
    assert check.returncode == 0, check.stdout + check.stderr
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(_tests(exporter), sort_keys=False))
    result = _promtool("test", "rules", str(tmp_path / "tests.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_names_a_runbook_command() -> None:
    for exporter in al.EXPORTERS:
        for group in al.rules(al.AlertOptions(exporter=exporter))["groups"]:
            for rule in group["rules"]:
                runbook = rule["annotations"]["runbook"]
                assert "pgfunnel diagnose" in runbook or "pgfunnel reap" in runbook
