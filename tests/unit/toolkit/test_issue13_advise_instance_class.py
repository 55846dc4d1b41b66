"""advise knows an RDS instance class's RAM and vCPUs (issue 13.10) and says where its
hardware figures came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pgfunnel.cli import main
from pgfunnel.toolkit import rds


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text("services:\n  - {name: api, instances: 3, processes: 2, pool_size: 5}\n")
    return path


def test_instance_class_alone_gives_ram_and_cpus(
    capsys: pytest.CaptureFixture[str], fleet: Path
) -> None:
    """It used to stop with 'give --ram and --cpus'."""
    code, out, err = run(
        capsys, "advise", "--fleet", str(fleet), "--instance-class", "db.t3.medium"
    )
    assert code == 0, err
    hardware = out.splitlines()[0]
    assert hardware.startswith("Hardware: 3.7 GiB RAM, 2 CPUs (RAM: RDS db.t3.medium 4 GiB less")
    assert "DBInstanceClassMemory" in hardware and "2 vCPUs of RDS db.t3.medium" in hardware
    assert "AWS RDS User Guide, Hardware specifications for DB instance classes" in hardware
    # max_connections as RDS's default parameter group sets it on that class
    assert "(the RDS default parameter group) = LEAST(413, 5000) = 413" in out
    code, out, _ = run(
        capsys,
        "advise",
        "--fleet",
        str(fleet),
        "--instance-class",
        "db.t3.medium",
        "--format",
        "json",
    )
    hw = json.loads(out)["hardware"]
    assert hw["cpus"] == 2
    assert hw["ram_bytes"] == rds.instance_class("db.t3.medium").class_memory_bytes


def test_instance_class_in_the_fleet_yaml(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(
        "server: {instance_class: db.r6g.xlarge}\n"
        "services:\n  - {name: api, instances: 3, pool_size: 5}\n"
    )
    code, out, _ = run(capsys, "advise", "--fleet", str(path))
    assert code == 0
    assert out.startswith("Hardware: 31.1 GiB RAM, 4 CPUs (RAM: RDS db.r6g.xlarge 32 GiB")


def test_flags_win_over_the_class_and_each_figure_names_its_source(
    capsys: pytest.CaptureFixture[str], fleet: Path
) -> None:
    code, out, _ = run(
        capsys,
        "advise",
        "--fleet",
        str(fleet),
        "--instance-class",
        "db.m5.large",
        "--ram",
        "6GB",
    )
    assert code == 0
    assert out.splitlines()[0].startswith(
        "Hardware: 6.0 GiB RAM, 2 CPUs (RAM from --ram; 2 vCPUs of RDS db.m5.large; class table:"
    )
    code, out, _ = run(capsys, "advise", "--fleet", str(fleet), "--ram", "6GB", "--cpus", "3")
    assert out.splitlines()[0] == "Hardware: 6.0 GiB RAM, 3 CPUs (RAM from --ram; CPUs from --cpus)"


def test_unknown_class_and_no_hardware_are_bad_input(
    capsys: pytest.CaptureFixture[str], fleet: Path
) -> None:
    code, _, err = run(capsys, "advise", "--fleet", str(fleet), "--instance-class", "db.z9.tiny")
    assert code == 2 and "table of RDS instance classes" in err
    code, _, err = run(capsys, "advise", "--fleet", str(fleet))
    assert code == 2 and "--instance-class" in err


def test_check_with_an_instance_class_and_no_terraform(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fixtures = Path(__file__).parent / "fixtures"
    code, out, _ = run(
        capsys,
        "check",
        str(fixtures / "helm-values-24x20.yaml"),
        "--instance-class",
        "db.r6g.large",
    )
    assert code == 0
    assert "(the RDS default parameter group) = LEAST(1738, 5000) = 1738" in out
