"""check reads `postgres -c max_connections=...` from compose, writes SARIF a code-scanning
upload can place, and has a "require a pooler" policy rule of its own (issue 13.9)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pgfunnel.cli import main
from pgfunnel.toolkit.pgcommand import command_settings

FIXTURES = Path(__file__).parent / "fixtures"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _in_fixtures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FIXTURES)


def test_compose_command_string_sets_max_connections(capsys: pytest.CaptureFixture[str]) -> None:
    """It used to end with 'max_connections unknown' (exit 2)."""
    code, out, err = run(capsys, "check", "compose-pg-command.yml")
    assert code == 0, err
    assert "max_connections = 50 (compose-pg-command.yml:4, db: command)" in out
    assert "PASS: 30 <= 37" in out


def test_compose_command_list_sets_both_reservations(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "check", "compose-pg-command-list.yml")
    assert code == 0, err
    assert "max_connections = 40 (compose-pg-command-list.yml:10, db: command)" in out
    assert "usable = max_connections 40 - superuser_reserved_connections 5" in out
    assert "PASS: 20 <= 28" in out


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("postgres -c max_connections=300", {"max_connections": "300"}),
        ("postgres -c 'max_connections=300' -cshared_buffers=1GB", None),
        (["postgres", "--max-connections=250"], {"max_connections": "250"}),
        (["-c", "max_connections=10", "-c", "max_connections=20"], {"max_connections": "20"}),
        ("postgres -D /data", {}),
        (None, {}),
    ],
)
def test_command_settings(command: Any, expected: dict[str, str] | None) -> None:
    got = command_settings(command)
    if expected is None:
        assert got == {"max_connections": "300", "shared_buffers": "1GB"}
    else:
        assert got == expected


def _results(out: str) -> list[dict[str, Any]]:
    sarif = json.loads(out)
    assert sarif["version"] == "2.1.0"
    results: list[dict[str, Any]] = sarif["runs"][0]["results"]
    return results


def _where(result: dict[str, Any]) -> tuple[str, str | None, int]:
    loc = result["locations"][0]["physicalLocation"]
    return (
        loc["artifactLocation"]["uri"],
        loc["artifactLocation"].get("uriBaseId"),
        loc["region"]["startLine"],
    )


def test_sarif_uri_is_relative_even_for_an_absolute_path(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An absolute path under the working directory (as CI passes $PWD/...) used to be written
    as given; the fleet YAML's services were all at line 1."""
    _, out, _ = run(capsys, "check", str(FIXTURES / "fleet.yaml"), "--format", "sarif")
    (res,) = _results(out)
    assert res["ruleId"] == "PGF001"
    # the biggest direct workload, `- name: api` at line 11 of fleet.yaml
    assert _where(res) == ("fleet.yaml", "%SRCROOT%", 11)
    assert (FIXTURES / "fleet.yaml").read_text().splitlines()[10].strip() == "- name: api"


def test_sarif_lines_of_pooler_and_limit_findings(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fleet = tmp_path / "f.yaml"
    fleet.write_text(
        "server: {max_connections: 50}\n"
        "services:\n"
        "  - {name: web, instances: 10, surge: 0, pool_size: 10, via_pooler: true}\n"
        "jobs:\n"
        "  - name: etl\n"
        "    concurrency: 8\n"
        "    connections: 2\n"
        "    role: etl\n"
        "limits:\n"
        "  roles: {etl: 5}\n"
        "pooler:\n"
        "  replicas: 1\n"
        "  default_pool_size: 60\n"
        "  max_client_conn: 50\n"
    )
    code, out, _ = run(capsys, "check", str(fleet), "--format", "sarif")
    assert code == 1
    where = {r["ruleId"]: _where(r) for r in _results(out)}
    assert where["PGF004"][2] == 5  # etl's `- name: etl`
    assert where["PGF002"][2] == 3  # web
    # the pooler (60 server connections) is the biggest direct demand: `pooler:` at line 11
    assert where["PGF001"][2] == 11 and where["PGF003"][2] == 11
    # outside the working directory: an absolute file URI
    assert all(w[0] == fleet.as_uri() for w in where.values()), where


def test_require_pooler_flags_each_direct_workload_as_pgf006(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "check", "fleet.yaml", "--require-pooler", "--format", "sarif")
    assert code == 1
    pgf006 = {
        r["message"]["text"].split(" ", 1)[0]: _where(r)[2]
        for r in _results(out)
        if r["ruleId"] == "PGF006"
    }
    # thumbnailer goes through the pooler and alembic is a migration: neither is flagged
    assert pgf006 == {"api": 11, "frontend": 19, "nightly-report": 27}
    rules = json.loads(out)["runs"][0]["tool"]["driver"]["rules"]
    assert any(r["id"] == "PGF006" and "6432" in r["help"]["text"] for r in rules)


def test_require_pooler_alone_fails_a_deploy_that_fits(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "check", "compose-pg-command.yml")
    assert code == 0
    code, out, _ = run(capsys, "check", "compose-pg-command.yml", "--require-pooler")
    assert code == 1
    assert "FAIL PGF006: api (service) connects to PostgreSQL directly with up to 30" in out
    assert "PGF001" not in out


def test_require_pooler_passes_a_service_behind_a_pooler(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(
        "services:\n"
        "  db:\n    image: postgres:16\n    command: postgres -c max_connections=100\n"
        "  api:\n    image: shop:1\n    environment:\n"
        "      DATABASE_URL: postgresql://app@pgbouncer:6432/app\n"
        "      DB_POOL_SIZE: '5'\n"
    )
    code, out, err = run(capsys, "check", str(compose), "--require-pooler")
    assert code == 0, out + err
