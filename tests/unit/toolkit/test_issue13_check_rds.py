"""check evaluates the RDS max_connections formula of a Terraform parameter group (issue 13.1)
and knows the RDS instance classes it is evaluated on (issue 13.10)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgfunnel.cli import main
from pgfunnel.toolkit import rds

FIXTURES = Path(__file__).parent / "fixtures"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _in_fixtures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FIXTURES)


def test_custom_divisor_formula_fails_the_deploy_it_used_to_pass(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """24 replicas (+ 6 surge) x pool 20 = 600 against LEAST({DBInstanceClassMemory/25165824},
    5000) on db.r6g.large: 658 (682 on the nominal 16 GiB), budget 0.8 x 655 = 524. It used to
    print PASS 600 <= 1439 from the default divisor."""
    code, out, _ = run(capsys, "check", "rds-custom-divisor.tf", "helm-values-24x20.yaml")
    assert code == 1
    assert "no max_connections parameter" not in out
    assert (
        "max_connections = LEAST({DBInstanceClassMemory/25165824}, 5000) "
        "(rds-custom-divisor.tf:11) = LEAST(658, 5000) = 658 (682 with the nominal 16 GiB" in out
    )
    assert "db.r6g.large: 16 GiB, 2 vCPUs" in out and "DBInstanceClassMemory ~" in out
    assert "FAIL PGF001: worst-case server connections 600 > 0.8 x 655 usable = 524" in out
    assert "PASS" not in out


def test_max_connections_flag_overrides_the_formula(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "check",
        "rds-custom-divisor.tf",
        "helm-values-24x20.yaml",
        "--max-connections",
        "800",
    )
    assert code == 0 and "PASS: 600 <= 637" in out


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("GREATEST({DBInstanceClassMemory/25165824}, 700)", "= GREATEST(658, 700) = 700"),
        ("LEAST({DBInstanceClassMemory/25165824},500)", "= LEAST(658, 500) = 500"),
        ("{DBInstanceClassMemory/12582912}", "= 1316 = 1316"),
        ("SUM({DBInstanceVCPU*100}, 50)", "= SUM(200, 50) = 250"),
    ],
)
def test_formula_forms(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, value: str, expected: str
) -> None:
    tf = tmp_path / "pg.tf"
    tf.write_text(
        'resource "aws_db_parameter_group" "p" {\n  family = "postgres16"\n'
        f'  parameter {{\n    name  = "max_connections"\n    value = "{value}"\n  }}\n}}\n'
    )
    code, out, err = run(
        capsys, "check", str(tf), "helm-values-24x20.yaml", "--instance-class", "db.r6g.large"
    )
    assert expected in out, out + err
    assert code in (0, 1)


def test_unevaluable_formula_names_the_file_and_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    tf = tmp_path / "pg.tf"
    tf.write_text(
        'resource "aws_db_parameter_group" "p" {\n'
        '  parameter {\n    name  = "max_connections"\n'
        '    value = "LEAST({AllocatedStorage/10}, 5000)"\n  }\n}\n'
    )
    code, _, err = run(
        capsys, "check", str(tf), "helm-values-24x20.yaml", "--instance-class", "db.r6g.large"
    )
    assert code == 2 and "pg.tf:2" in err and "AllocatedStorage" in err


def test_no_parameter_uses_the_rds_default_on_the_estimated_memory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    tf = tmp_path / "pg.tf"
    tf.write_text(
        'resource "aws_db_instance" "m" {\n  instance_class = "db.t3.medium"\n}\n'
        'resource "aws_db_parameter_group" "p" {\n  family = "postgres16"\n}\n'
    )
    code, out, _ = run(capsys, "check", str(tf), "helm-values-24x20.yaml")
    assert "no max_connections parameter, the RDS default" in out
    # db.t3.medium: 4 GiB; published readings of the default give 413 (t2.medium, 4 GiB)
    assert "= LEAST(413, 5000) = 413 (450 with the nominal 4 GiB" in out
    assert code == 1


def test_unknown_instance_class_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        capsys,
        "check",
        "rds-formula.tf",
        "helm-values-24x20.yaml",
        "--instance-class",
        "db.q9.huge",
    )
    assert code == 2 and "db.q9.huge" in err and "table of RDS instance classes" in err


@pytest.mark.parametrize(
    ("name", "vcpus", "gib"),
    [
        ("db.t3.micro", 2, 1),
        ("db.t3.medium", 2, 4),
        ("db.t4g.large", 2, 8),
        ("db.t2.small", 1, 2),
        ("db.m5.large", 2, 8),
        ("db.m6g.4xlarge", 16, 64),
        ("db.m5.24xlarge", 96, 384),
        ("db.r6g.large", 2, 16),
        ("db.r5.12xlarge", 48, 384),
        ("db.r4.large", 2, 15.25),
        ("db.x2g.large", 2, 32),
        ("DB.R7G.XLARGE", 4, 32),
    ],
)
def test_instance_class_table(name: str, vcpus: int, gib: float) -> None:
    klass = rds.instance_class(name)
    assert (klass.vcpus, klass.memory_gib) == (vcpus, gib)


def test_estimated_class_memory_matches_published_readings_of_the_default() -> None:
    """Published SHOW max_connections on default parameter groups; the estimate stays at or
    below them (a gate that errs early) and within 4%."""
    for name, seen in (
        ("db.t2.small", 198),
        ("db.t2.medium", 413),
        ("db.t2.large", 856),
        ("db.m4.large", 856),
        ("db.r4.large", 1660),
    ):
        got = rds.evaluate_formula(rds.DEFAULT_MAX_CONNECTIONS_FORMULA, rds.instance_class(name))
        assert seen * 0.96 <= got.value <= seen, (name, got.value, seen)
