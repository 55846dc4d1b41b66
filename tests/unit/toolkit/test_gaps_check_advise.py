"""Spec gaps: check's per-role (PGF004) and per-database (PGF005) rules; advise --from-cgroup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pgfunnel.cli import main
from pgfunnel.toolkit.advise import hardware_from_cgroup


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def fleet(tmp_path: Path, *, role_limit: int, db_limit: int) -> Path:
    """Two services sharing role `app` and database `appdb`: (2 + 0) x 1 x (5 + 0) = 10 each,
    20 in all, far below 0.8 x 997 usable slots so that only the limit rules can fire."""
    path = tmp_path / "fleet.yaml"
    path.write_text(
        "server:\n"
        "  max_connections: 1000\n"
        "services:\n"
        "  - {name: api, instances: 2, surge: 0, pool_size: 5, role: app, database: appdb}\n"
        "  - {name: worker, instances: 2, surge: 0, pool_size: 5, role: app, database: appdb}\n"
        "  - {name: other, instances: 1, surge: 0, pool_size: 3, role: etl, database: dw}\n"
        "limits:\n"
        f"  roles: {{app: {role_limit}, etl: 100}}\n"
        f"  databases: {{appdb: {db_limit}, dw: 100}}\n",
        encoding="utf-8",
    )
    return path


def violations(out: str) -> dict[str, dict[str, object]]:
    report = json.loads(out)
    return {v["rule"]: v for v in report["violations"]}


def test_role_connection_limit_exceeded_fails_naming_the_role(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = str(fleet(tmp_path, role_limit=15, db_limit=50))
    code, out, _ = run(capsys, "check", path, "--format", "json")
    assert code == 1
    found = violations(out)
    assert set(found) == {"PGF004"}
    assert found["PGF004"]["message"] == "role app: worst-case demand 20 > CONNECTION LIMIT 15"
    assert sorted(found["PGF004"]["offenders"]) == ["api", "worker"]  # type: ignore[arg-type]
    code, text, _ = run(capsys, "check", path)
    assert code == 1
    assert "PGF004" in text and "role app" in text


def test_database_connection_limit_exceeded_fails_naming_the_database(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = str(fleet(tmp_path, role_limit=50, db_limit=19))
    code, out, _ = run(capsys, "check", path, "--format", "json")
    assert code == 1
    found = violations(out)
    assert set(found) == {"PGF005"}
    assert found["PGF005"]["message"] == (
        "database appdb: worst-case demand 20 > CONNECTION LIMIT 19"
    )
    code, sarif, _ = run(capsys, "check", path, "--format", "sarif")
    assert code == 1
    assert {r["ruleId"] for r in json.loads(sarif)["runs"][0]["results"]} == {"PGF005"}


def test_both_limits_exceeded_report_both_rules(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = run(
        capsys, "check", str(fleet(tmp_path, role_limit=10, db_limit=10)), "--format", "json"
    )
    assert code == 1
    assert set(violations(out)) == {"PGF004", "PGF005"}


@pytest.mark.parametrize("limit", [20, 21])
def test_demand_at_or_under_the_limits_passes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, limit: int
) -> None:
    """The rule is demand > limit: a demand equal to the limit still passes."""
    code, out, _ = run(
        capsys,
        "check",
        str(fleet(tmp_path, role_limit=limit, db_limit=limit)),
        "--format",
        "json",
    )
    assert code == 0, out
    assert json.loads(out)["passed"] is True
    assert json.loads(out)["violations"] == []


# --- advise --from-cgroup ----------------------------------------------------------------
def cgroup_v2(root: Path, memory_max: str, cpu_max: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "memory.max").write_text(memory_max + "\n")
    (root / "cpu.max").write_text(cpu_max + "\n")
    return root


def test_hardware_from_cgroup_v2_files(tmp_path: Path) -> None:
    root = cgroup_v2(tmp_path / "cg", str(4 * 1024**3), "150000 100000")
    hw = hardware_from_cgroup(str(root))
    assert (hw.ram_bytes, hw.cpus, hw.source) == (4 * 1024**3, 2, "cgroup")  # 1.5 CPUs -> 2


def test_hardware_from_cgroup_v1_files(tmp_path: Path) -> None:
    root = tmp_path / "cg1"
    (root / "memory").mkdir(parents=True)
    (root / "cpu").mkdir()
    (root / "memory" / "memory.limit_in_bytes").write_text(f"{2 * 1024**3}\n")
    (root / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    hw = hardware_from_cgroup(str(root))
    assert (hw.ram_bytes, hw.cpus) == (2 * 1024**3, 3)


def test_hardware_from_cgroup_unlimited_falls_back_to_the_host(tmp_path: Path) -> None:
    import os

    root = cgroup_v2(tmp_path / "cg", "max", "max 100000")
    hw = hardware_from_cgroup(str(root))
    meminfo = Path("/proc/meminfo").read_text()
    total_kb = next(int(x.split()[1]) for x in meminfo.splitlines() if x.startswith("MemTotal:"))
    assert hw.ram_bytes == total_kb * 1024
    assert hw.cpus == (os.cpu_count() or 1)


def test_advise_from_cgroup_reads_ram_and_cpus(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI path: --from-cgroup with PGFUNNEL_CGROUP_ROOT pointing at fake v2 files; the
    fleet YAML's server.ram/cpus (16GB, 8) must be ignored in favour of the cgroup limits."""
    root = cgroup_v2(tmp_path / "cg", str(6 * 1024**3), "400000 100000")
    monkeypatch.setenv("PGFUNNEL_CGROUP_ROOT", str(root))
    fleet_yaml = Path(__file__).parent / "fixtures" / "fleet.yaml"
    code, out, err = run(
        capsys, "advise", "--fleet", str(fleet_yaml), "--from-cgroup", "--format", "json"
    )
    assert code in (0, 1), err
    hw = json.loads(out)["hardware"]
    assert hw == {"ram_bytes": 6 * 1024**3, "cpus": 4, "source": "cgroup"}
    code, text, _ = run(capsys, "advise", "--fleet", str(fleet_yaml), "--from-cgroup")
    assert "Hardware: 6" in text and "4 CPUs (cgroup)" in text


# --- advise with nothing pooled --------------------------------------------------------------
@pytest.mark.parametrize(
    "fleet_text",
    [
        "services:\n"
        "  - {name: api, instances: 2, pool_size: 5, via_pooler: false}\n"
        "  - {name: worker, instances: 1, pool_size: 3, via_pooler: false}\n",
        "jobs:\n  - {name: etl, concurrency: 4, connections: 2}\n"
        "migrations:\n  - {name: migrate, concurrency: 1, connections: 1}\n",
    ],
    ids=["all-direct", "only-jobs"],
)
def test_advise_with_nothing_pooled_sizes_the_server_and_writes_no_pooler(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, fleet_text: str
) -> None:
    """Used to crash with `max() arg is an empty sequence`."""
    path = tmp_path / "fleet.yaml"
    path.write_text("server: {ram: 16GB, cpus: 8, max_connections: 100}\n" + fleet_text)
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "advise", "--fleet", str(path), "--out-dir", str(out_dir))
    assert code == 0, err
    assert "no pooler to size, every connection is direct" in out
    assert "pgbouncer.ini\n  not needed: nothing goes through the pooler" in out
    assert "Transaction pooling caveats" not in out
    assert not (out_dir / "pgbouncer.ini").exists()
    assert (out_dir / "alter_system.sql").exists()
    code, out, err = run(capsys, "advise", "--fleet", str(path), "--format", "json")
    data = json.loads(out)
    assert data["pooler"] is None
    assert data["check"]["passed"] is True
    assert data["check"]["pooler_server_connections"] == 0
    assert {r["target"] for r in data["check"]["rows"]} == {"server"}
    # the same fleet is read by check too (a jobs-only YAML is an advise YAML)
    code, out, err = run(capsys, "check", str(path))
    assert code == 0, err
