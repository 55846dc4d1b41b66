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
        # shop/batch: no client waits now, but the oldest waited 3 s: PoolerMaxWait only.
        _series(m["waiting"], {**pools, "user": "batch"}, "0x15"),
        _series(m["maxwait"], {**pools, "user": "batch"}, "3x15"),
        _series(m["sv_active"], pools, "19x15"),
        _series(m["sv_idle"], pools, "0x15"),
        _series(m["sv_used"], pools, "0x15"),
        _series(m["pool_size"], db_labels, "20x15"),
        _series("postgres_exporter_build_info", {"instance": "a", "version": "0.17.1"}, "1x15"),
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
        (
            "PoolerMaxWait",
            [
                alert(
                    "PoolerMaxWait",
                    {"severity": "critical", **pools, "user": "batch"},
                    **{"$labels.database": "shop", "$labels.user": "batch", "$value": "3"},
                ),
            ],
        ),
        # An exporter >= 0.17 exports its version; the guard stays quiet.
        ("PostgresExporterTooOldForTheseRules", []),
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
    tests = _tests(exporter)
    # Every rule fires in some case (the exporter guard in the tests further down).
    fired = {c["alertname"] for c in tests["tests"][0]["alert_rule_test"] if c["exp_alerts"]}
    names = {
        r["alert"]
        for g in al.rules(al.AlertOptions(exporter=exporter))["groups"]
        for r in g["rules"]
    }
    assert names - fired == {"PostgresExporterTooOldForTheseRules"}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = _promtool("test", "rules", str(tmp_path / "tests.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_names_a_runbook_command() -> None:
    for exporter in al.EXPORTERS:
        for group in al.rules(al.AlertOptions(exporter=exporter))["groups"]:
            for rule in group["rules"]:
                runbook = rule["annotations"]["runbook"]
                if rule["alert"] == "PostgresExporterTooOldForTheseRules":
                    assert runbook.startswith("pgfunnel alerts --postgres-exporter-version")
                    continue
                assert "pgfunnel diagnose" in runbook or "pgfunnel reap" in runbook


# --- issue 13 point 8 --------------------------------------------------------------------------
def _run_promtool(
    tmp_path: Path, cli_args: list[str], series: list[dict[str, str]], cases: Any
) -> str:
    """Writes the rules with `pgfunnel alerts ARGS`, checks them and runs `promtool test rules`
    with `cases` ([(eval_time, alertname, expected alerts)]); returns the rule file."""
    rules_file = tmp_path / "rules.yml"
    proc = run_cli("alerts", *cli_args, "-o", str(rules_file))
    assert proc.returncode == 0, proc.stderr
    check = _promtool("check", "rules", str(rules_file))
    assert check.returncode == 0, check.stdout + check.stderr
    doc = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {"eval_time": t, "alertname": name, "exp_alerts": exp} for t, name, exp in cases
                ],
            }
        ],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    result = _promtool("test", "rules", str(tmp_path / "tests.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    return rules_file.read_text()


def _exprs(text: str) -> list[str]:
    return [r["expr"] for g in yaml.safe_load(text)["groups"] for r in g["rules"]]


def _slots(instance: str, max_connections: int = 100) -> list[dict[str, str]]:
    return [
        _series("pg_settings_max_connections", {"instance": instance}, f"{max_connections}x15"),
        _series("pg_settings_superuser_reserved_connections", {"instance": instance}, "3x15"),
    ]


def _expect(
    opts: al.AlertOptions, name: str, labels: dict[str, str], **values: str
) -> list[dict[str, Any]]:
    """One expected alert: its labels and its annotations with the templates filled in from
    the labels and from `values` ("$value | humanizePercentage": "62%", ...)."""
    rule = next(r for g in al.rules(opts)["groups"] for r in g["rules"] if r["alert"] == name)
    fill = {f"$labels.{k}": v for k, v in labels.items()} | values
    annotations = {}
    for key, text in rule["annotations"].items():
        for template, value in fill.items():
            text = text.replace("{{ " + template + " }}", value)
        assert "{{" not in text, text
        annotations[key] = text
    return [{"exp_labels": {**rule["labels"], **labels}, "exp_annotations": annotations}]


def test_slot_thresholds_and_for_durations_are_flags(tmp_path: Path) -> None:
    client = {"backend_type": "client backend", "datname": "shop", "usename": "app"}
    # 60 of 97 usable slots (61.86%) from the start.
    series = [
        _series("pg_stat_activity_count", {"instance": "a", **client, "state": "idle"}, "60x15"),
        *_slots("a"),
    ]
    opts = al.AlertOptions(
        warning_ratio=0.5, warning_for="3m", critical_ratio=0.6, critical_for="7m"
    )
    usage = {"$value | humanizePercentage": "61.86%"}
    where = {"instance": "a"}
    text = _run_promtool(
        tmp_path,
        [
            *("--slots-warning", "0.5", "--slots-warning-for", "3m"),
            *("--slots-critical", "0.6", "--slots-critical-for", "7m"),
        ],
        series,
        [
            ("2m", "PostgresConnectionSlotsWarning", []),  # pending: 3m not yet over
            (
                "4m",
                "PostgresConnectionSlotsWarning",
                _expect(opts, "PostgresConnectionSlotsWarning", where, **usage),
            ),
            ("6m", "PostgresConnectionSlotsCritical", []),
            (
                "8m",
                "PostgresConnectionSlotsCritical",
                _expect(opts, "PostgresConnectionSlotsCritical", where, **usage),
            ),
        ],
    )
    assert "> 0.5\n    for: 3m" in text and "> 0.6\n    for: 7m" in text
    # The defaults, 0.75 and 0.9 of usable slots, stay quiet at 62%.
    _run_promtool(
        tmp_path,
        [],
        series,
        [
            ("14m", "PostgresConnectionSlotsWarning", []),
            ("14m", "PostgresConnectionSlotsCritical", []),
        ],
    )


def test_bad_thresholds_are_refused() -> None:
    for args, message in (
        (["--slots-warning", "0.95"], "must be below --slots-critical 0.9"),
        (["--slots-critical", "1.5"], "in (0, 1]"),
        (["--slots-warning-for", "5 minutes"], "a Prometheus duration"),
        (["--postgres-exporter-version", "latest"], "expected e.g. 0.17.0"),
    ):
        proc = run_cli("alerts", *args)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
        assert proc.stdout == ""


def test_rules_for_exporters_before_backend_type(tmp_path: Path) -> None:
    """postgres_exporter 0.16 (no backend_type label): client backends are the rows with a
    usename; an autovacuum worker (no usename) does not count."""
    app = {"instance": "a", "datname": "shop", "usename": "app"}
    autovacuum = {"instance": "a", "datname": "shop", "usename": ""}
    series = [
        # 86 of 97 usable (88.66%): warning, not critical. With the 2 autovacuum workers it
        # would be 90.7%: critical.
        _series("pg_stat_activity_count", {**app, "state": "active"}, "85x15"),
        _series("pg_stat_activity_count", {**app, "state": "idle in transaction"}, "1x15"),
        _series("pg_stat_activity_count", {**autovacuum, "state": "active"}, "2x15"),
        _series(
            "pg_stat_activity_max_tx_duration", {**app, "state": "idle in transaction"}, "400x15"
        ),
        *_slots("a"),
        _series("pg_roles_connection_limit", {"instance": "a", "rolname": "app"}, "90x15"),
        _series("pg_database_connection_limit", {"instance": "a", "datname": "shop"}, "-1x15"),
        _series("postgres_exporter_build_info", {"instance": "a", "version": "0.16.0"}, "1x15"),
    ]
    old = al.AlertOptions(postgres_exporter_version="0.16.0")
    text = _run_promtool(
        tmp_path,
        ["--postgres-exporter-version", "0.16.0"],
        series,
        [
            (
                "10m",
                "PostgresConnectionSlotsWarning",
                _expect(
                    old,
                    "PostgresConnectionSlotsWarning",
                    {"instance": "a"},
                    **{"$value | humanizePercentage": "88.66%"},
                ),
            ),
            ("10m", "PostgresConnectionSlotsCritical", []),
            (
                "10m",
                "PostgresRoleConnectionLimit",
                _expect(
                    old,
                    "PostgresRoleConnectionLimit",
                    {"instance": "a", "usename": "app"},
                    **{"$value | humanizePercentage": "95.56%"},
                ),
            ),
            ("10m", "PostgresDatabaseConnectionLimit", []),
            (
                "10m",
                "PostgresIdleInTransaction",
                _expect(old, "PostgresIdleInTransaction", app, **{"$value": "1"}),
            ),
            (
                "10m",
                "PostgresIdleInTransactionAge",
                _expect(
                    old,
                    "PostgresIdleInTransactionAge",
                    app,
                    **{"$value | humanizeDuration": "6m 40s"},
                ),
            ),
            ("14m", "PostgresExporterTooOldForTheseRules", []),
        ],
    )
    assert not any("backend_type" in e for e in _exprs(text))
    # The same exporter under the rules for 0.17: the slot rules are blind to it, and the
    # guard says so.
    _run_promtool(
        tmp_path,
        [],
        series,
        [
            ("10m", "PostgresConnectionSlotsWarning", []),
            (
                "14m",
                "PostgresExporterTooOldForTheseRules",
                _expect(
                    al.AlertOptions(),
                    "PostgresExporterTooOldForTheseRules",
                    {"instance": "a", "version": "0.16.0"},
                ),
            ),
        ],
    )


def test_rules_for_exporters_before_the_limit_metrics_and_before_usename(tmp_path: Path) -> None:
    # 0.12 to 0.15: usename, but no pg_roles_connection_limit / pg_database_connection_limit.
    app = {"instance": "a", "datname": "shop", "usename": "app"}
    series = [
        _series("pg_stat_activity_count", {**app, "state": "idle in transaction"}, "95x15"),
        *_slots("a"),
        _series("postgres_exporter_build_info", {"instance": "a", "version": "0.11.1"}, "1x15"),
    ]
    gen12 = al.AlertOptions(postgres_exporter_version="0.15.0", include_pooler=False)
    full = {"$value | humanizePercentage": "97.94%"}
    text = _run_promtool(
        tmp_path,
        ["--postgres-exporter-version", "0.15.0", "--no-pooler"],
        series,
        [
            (
                "10m",
                "PostgresConnectionSlotsCritical",
                _expect(gen12, "PostgresConnectionSlotsCritical", {"instance": "a"}, **full),
            ),
            (
                "10m",
                "PostgresIdleInTransaction",
                _expect(gen12, "PostgresIdleInTransaction", app, **{"$value": "95"}),
            ),
            (
                "14m",
                "PostgresExporterTooOldForTheseRules",
                _expect(
                    gen12,
                    "PostgresExporterTooOldForTheseRules",
                    {"instance": "a", "version": "0.11.1"},
                ),
            ),
        ],
    )
    assert "PostgresRoleConnectionLimit" not in text
    assert "PostgresDatabaseConnectionLimit" not in text
    assert "# For postgres_exporter >= 0.12 and before 0.16" in text
    # Before 0.12: no usename label at all; idle transactions per database.
    plain = {"instance": "a", "datname": "shop"}
    series = [
        _series("pg_stat_activity_count", {**plain, "state": "idle in transaction"}, "95x15"),
        _series(
            "pg_stat_activity_max_tx_duration",
            {**plain, "state": "idle in transaction"},
            "400x15",
        ),
        *_slots("a"),
    ]
    gen0 = al.AlertOptions(postgres_exporter_version="0.11.1", include_pooler=False)
    text = _run_promtool(
        tmp_path,
        ["--postgres-exporter-version", "0.11.1", "--no-pooler"],
        series,
        [
            (
                "10m",
                "PostgresConnectionSlotsCritical",
                _expect(gen0, "PostgresConnectionSlotsCritical", {"instance": "a"}, **full),
            ),
            (
                "10m",
                "PostgresIdleInTransaction",
                _expect(gen0, "PostgresIdleInTransaction", plain, **{"$value": "95"}),
            ),
            (
                "10m",
                "PostgresIdleInTransactionAge",
                _expect(
                    gen0,
                    "PostgresIdleInTransactionAge",
                    plain,
                    **{"$value | humanizeDuration": "6m 40s"},
                ),
            ),
        ],
    )
    assert not any("usename" in e for e in _exprs(text))
    assert "PostgresExporterTooOldForTheseRules" not in text
