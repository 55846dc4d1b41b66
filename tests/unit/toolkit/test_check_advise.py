"""check and advise on every input format, against golden files; secrets never printed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pgfunnel.cli import main

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = Path(__file__).parent / "golden"
SECRETS = (
    "s3cr3t-pass",
    "hunter2-k8s",
    "composepw",
    "pw-in-uri",
    "envpassword",
    "AKIAIOSFODNN7EXAMPLE",
    "wJalrXUtnFEMI",
    "tf-master-password",
    "ini-secret",
    "plaintext-pw",
    "md5a3556571e93b0d20722ba62be61e8c2d",
    "c3RvcmVka2V5",
)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs; UPDATE_GOLDEN=1 rewrites it"


@pytest.fixture(autouse=True)
def _in_fixtures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FIXTURES)
    monkeypatch.delenv("PGPASSWORD", raising=False)


def test_helm_values_fail_naming_the_service_then_pass(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "check", "helm-values.yaml", "--max-connections", "200")
    assert code == 1
    assert "FAIL PGF001" in out and "biggest: api with 400" in out
    golden("check-helm-fail.txt", out)
    code, out, _ = run(capsys, "check", "helm-values-fixed.yaml", "--max-connections", "200")
    assert code == 0 and "PASS: 108 <= 157" in out
    golden("check-helm-pass.txt", out)


def test_check_json_and_sarif(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "check", "helm-values.yaml", "--max-connections", "200", "--format", "json"
    )
    data = json.loads(out)
    assert code == 1 and data["passed"] is False and data["supply"]["usable"] == 197
    assert data["violations"][0]["rule"] == "PGF001"
    code, out, _ = run(
        capsys, "check", "helm-values.yaml", "--max-connections", "200", "--format", "sarif"
    )
    sarif = json.loads(out)
    res = sarif["runs"][0]["results"][0]
    assert res["ruleId"] == "PGF001"
    loc = res["locations"][0]["physicalLocation"]
    assert loc["artifactLocation"]["uri"] == "helm-values.yaml" and loc["region"]["startLine"] == 2


@pytest.mark.parametrize(
    ("files", "golden_name", "expected"),
    [
        (["deployments.yaml", "rds-formula.tf"], "check-k8s-rds.txt", 0),
        (["docker-compose.yml", "app.env", "rds-literal.tf"], "check-compose-env.txt", 0),
        (["helm-values.yaml", "pgbouncer.ini", "postgresql.conf"], "check-pooler.txt", 1),
        (["fleet.yaml"], "check-fleet.txt", 1),
    ],
)
def test_every_input_format(
    capsys: pytest.CaptureFixture[str], files: list[str], golden_name: str, expected: int
) -> None:
    code, out, _ = run(capsys, "check", *files)
    assert code == expected
    golden(golden_name, out)
    for secret in SECRETS:
        assert secret not in out


def test_rds_formula_arithmetic(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "check", "deployments.yaml", "rds-formula.tf")
    # The formula in the parameter block is read (it used to be skipped for its braces) and
    # evaluated on db.r6g.large's estimated DBInstanceClassMemory: 1738, 1802 on the nominal
    # 16 GiB.
    assert "LEAST({DBInstanceClassMemory/9531392},5000) (rds-formula.tf:11)" in out
    assert "= LEAST(1738, 5000) = 1738 (1802 with the nominal 16 GiB" in out
    assert "usable = max_connections 1738 - superuser_reserved_connections 3" in out
    assert "no max_connections parameter" not in out


def test_secret_count_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "check", "docker-compose.yml", "app.env", "rds-literal.tf")
    assert "5 secret(s) redacted" in out
    _, out, _ = run(capsys, "check", "helm-values.yaml", "pgbouncer.ini", "postgresql.conf")
    assert "5 secret(s) redacted" in out  # uri, conninfo, scram, md5, plain userlist entry


def test_bad_input_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "check", "helm-values.yaml")
    assert code == 2 and "max_connections unknown" in err
    bad = tmp_path / "bad.ini"
    bad.write_text("[pgbouncer]\nno_such_key = 1\n")
    code, _, err = run(capsys, "check", str(bad), "helm-values.yaml", "--max-connections", "100")
    assert code == 2 and "bad.ini:2" in err
    code, _, err = run(capsys, "check", "missing.yaml")
    assert code == 2


def test_advise_golden_and_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(
        capsys,
        "advise",
        "--fleet",
        "fleet.yaml",
        "--postgresql-conf",
        "postgresql.conf",
        "--out-dir",
        str(tmp_path),
    )
    assert code == 0
    golden("advise-fleet.txt", out)
    ini = (tmp_path / "pgbouncer.ini").read_text()
    assert "default_pool_size = 25" in ini and "max_client_conn = 1078" in ini
    assert "reserve_pool_size = 5" in ini and "reserve_pool_timeout = 3" in ini
    assert "ALTER SYSTEM SET" in (tmp_path / "alter_system.sql").read_text()
    from pgfunnel.config.loader import load_config

    (tmp_path / "userlist.txt").write_text('"app" "x"\n')
    os.chdir(tmp_path)
    cfg = load_config(tmp_path / "pgbouncer.ini")
    assert cfg.unsupported == []
    assert cfg.settings.pool_mode == "transaction"


def test_advise_pgtune_mode_and_pins(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    fleet = tmp_path / "f.yaml"
    fleet.write_text(
        "server: {ram: 16GB, cpus: 8}\n"
        "pin: {shared_buffers: 2GB}\n"
        "services:\n  - {name: api, instances: 2, processes: 2, pool_size: 5}\n"
    )
    code, out, _ = run(
        capsys,
        "advise",
        "--fleet",
        str(fleet),
        "--max-connections",
        "200",
        "--pgtune",
        "--pg-version",
        "18",
    )
    assert "work_mem = 20164kB" in out and "shared_buffers = 4GB" in out
    code, out, _ = run(capsys, "advise", "--fleet", str(fleet), "--format", "json")
    data = json.loads(out)
    sb = next(r for r in data["postgresql_conf"] if r["name"] == "shared_buffers")
    assert sb["recommended"] == "2GB" and sb["pinned"] and "pinned by you" in sb["reason"]
    code, _, _err = run(capsys, "advise", "--fleet", str(fleet).replace("f.yaml", "nope.yaml"))
    assert code == 2


def test_advise_redacts_secrets(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    fleet = tmp_path / "f.yaml"
    fleet.write_text(
        "server: {ram: 8GB, cpus: 4, max_connections: 100, "
        "dsn: 'postgresql://app:topsecret@db/app'}\n"
        "services:\n  - {name: api, instances: 2, pool_size: 5}\n"
    )
    _code, out, _ = run(capsys, "advise", "--fleet", str(fleet))
    assert "topsecret" not in out and "1 secret(s) redacted" in out
