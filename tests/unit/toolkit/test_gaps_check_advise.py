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


# --- advise --pgtune: PGTune's own mode, no fleet --------------------------------------------
PGTUNE_16G_8CPU_200_WEB = """\
# WARNING
# wal_compression = lz4 needs a PostgreSQL built with lz4 (--with-lz4)
# io_method = io_uring needs a PostgreSQL built with liburing (--with-liburing)

# DB Version: 18
# OS Type: linux
# DB Type: web
# Total Memory (RAM): 16 GB
# CPUs num: 8
# Connections num: 200
# Data Storage: ssd

max_connections = 200
shared_buffers = 4GB
effective_cache_size = 12GB
maintenance_work_mem = 1GB
checkpoint_completion_target = 0.9
wal_buffers = 16MB
default_statistics_target = 100
random_page_cost = 1.1
effective_io_concurrency = 200
work_mem = 20164kB
huge_pages = try
jit = off
wal_compression = lz4
io_method = io_uring
min_wal_size = 1GB
max_wal_size = 4GB
max_worker_processes = 8
max_parallel_workers_per_gather = 4
max_parallel_workers = 8
max_parallel_maintenance_workers = 4
"""


def _settings(out: str) -> dict[str, str]:
    return dict(
        line.split(" = ", 1) for line in out.splitlines() if " = " in line and line[0] != "#"
    )


def test_advise_pgtune_without_a_fleet_reproduces_pgtune(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ("advise", "--pgtune", "--ram", "16GB", "--cpus", "8", "--max-connections", "200")
    code, out, err = run(capsys, *args, "--db-type", "web")
    assert code == 0, err
    assert out == PGTUNE_16G_8CPU_200_WEB
    code, out, _ = run(capsys, *args, "--format", "json")
    data = json.loads(out)
    assert {s["name"]: s["value"] for s in data["settings"]}["work_mem"] == "20164kB"
    assert data["input"]["connections"] == 200 and data["input"]["db_version"] == 18


@pytest.mark.parametrize(
    ("db_type", "connections"),
    [("web", "200"), ("oltp", "300"), ("dw", "40"), ("desktop", "20"), ("mixed", "100")],
)
def test_advise_pgtune_default_connections_per_db_type(
    capsys: pytest.CaptureFixture[str], db_type: str, connections: str
) -> None:
    code, out, _ = run(capsys, "advise", "--pgtune", "--ram", "16GB", "--db-type", db_type)
    assert code == 0
    assert _settings(out)["max_connections"] == connections
    assert "Connections num" not in out and "CPUs num" not in out  # PGTune lists what is given


def test_advise_pgtune_uses_the_count_given_not_the_fleets(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fleet_yaml = tmp_path / "f.yaml"
    fleet_yaml.write_text(
        "server: {ram: 16GB, cpus: 8}\n"
        "services:\n  - {name: api, instances: 2, processes: 2, pool_size: 5}\n"
    )
    code, out, _ = run(capsys, "advise", "--fleet", str(fleet_yaml), "--format", "json")
    derived = next(
        r["recommended"]
        for r in json.loads(out)["postgresql_conf"]
        if r["name"] == "max_connections"
    )
    assert derived != "200"  # the fleet alone would size max_connections otherwise
    code, out, _ = run(capsys, "advise", "--fleet", str(fleet_yaml), "--pgtune")
    assert code == 0
    assert _settings(out)["max_connections"] == "200"  # PGTune's web default, not the fleet's
    assert _settings(out)["work_mem"] == "20164kB"  # RAM and CPUs from the fleet's server
    code, out, _ = run(
        capsys, "advise", "--fleet", str(fleet_yaml), "--pgtune", "--max-connections", "100"
    )
    assert _settings(out)["max_connections"] == "100"


def test_advise_pgtune_storage_db_size_and_os(capsys: pytest.CaptureFixture[str]) -> None:
    base = ("advise", "--pgtune", "--ram", "64GB", "--cpus", "16")
    _, out, _ = run(capsys, *base, "--db-type", "dw")
    dw = _settings(out)
    # le0pard/pgtune today: a data warehouse larger than RAM keeps PostgreSQL's 4, with a caveat.
    assert dw["random_page_cost"] == "4" and "random_page_cost stays at" in out
    assert (dw["max_connections"], dw["max_parallel_workers_per_gather"]) == ("40", "8")
    _, out, _ = run(capsys, *base, "--db-type", "dw", "--db-size", "less")
    assert _settings(out)["random_page_cost"] == "1.1" and "# DB Size: less" in out
    _, out, _ = run(capsys, *base, "--storage", "hdd")
    assert _settings(out)["random_page_cost"] == "4"
    assert _settings(out)["effective_io_concurrency"] == "2"
    _, out, _ = run(capsys, *base, "--storage", "nvme")
    assert _settings(out)["effective_io_concurrency"] == "1000"
    assert _settings(out)["random_page_cost"] == "1.1"
    _, out, _ = run(capsys, *base, "--os", "windows", "--pg-version", "17")
    win = _settings(out)
    assert "effective_io_concurrency" not in win and "io_method" not in win
    code, _, err = run(capsys, "advise", "--pgtune", "--cpus", "4")
    assert code == 2 and "--ram" in err
    code, _, err = run(capsys, "advise")
    assert code == 2 and "--fleet" in err


def test_pgtune_matches_upstreams_own_test_cases() -> None:
    """The expectations of le0pard/pgtune's configurationSlice tests, through our formulas."""
    from pgfunnel.toolkit.pgtune import PgTuneInput, pgtune

    gb = 1024**3

    def tune(**kw: object) -> dict[str, str]:
        return dict(pgtune(PgTuneInput(**kw)))  # type: ignore[arg-type]

    assert tune(ram_bytes=256 * gb, version=17)["maintenance_work_mem"] == "8GB"
    win17 = tune(ram_bytes=256 * gb, os_type="windows", version=17)
    assert win17["maintenance_work_mem"] == "2047MB"  # 2GB - 1MB
    assert "autovacuum_work_mem" not in win17
    assert tune(ram_bytes=256 * gb, os_type="windows", version=18)["maintenance_work_mem"] == "8GB"
    assert tune(ram_bytes=256 * gb, version=15)["autovacuum_work_mem"] == "2GB"
    assert "autovacuum_work_mem" not in tune(ram_bytes=4 * gb, version=15)
    assert tune(ram_bytes=4 * gb, version=15)["huge_pages"] == "off"
    assert tune(ram_bytes=16 * gb, version=15)["huge_pages"] == "try"
    assert tune(ram_bytes=128 * gb, os_type="mac", version=15)["huge_pages"] == "off"
    assert tune(ram_bytes=4 * gb, connections=9999, cpus=4, version=15)["work_mem"] == "4MB"
    w17 = tune(ram_bytes=256 * gb, connections=20, cpus=4, os_type="windows", version=17)
    assert w17["work_mem"] == "2047MB"
    w18 = tune(ram_bytes=256 * gb, connections=20, cpus=4, os_type="windows", version=18)
    assert w18["work_mem"] == "2796202kB"
    assert "jit" not in tune(ram_bytes=4 * gb, db_type="dw", version=15)
    assert tune(ram_bytes=4 * gb, version=14)["wal_compression"] == "on"
    assert tune(ram_bytes=4 * gb, cpus=32)["autovacuum_max_workers"] == "5"
    assert tune(ram_bytes=4 * gb, cpus=16)["autovacuum_max_workers"] == "4"
    assert "autovacuum_max_workers" not in tune(ram_bytes=4 * gb, cpus=8)
    assert "io_workers" not in tune(ram_bytes=4 * gb, cpus=32, version=17)
    assert "io_workers" not in tune(ram_bytes=4 * gb, cpus=8, version=18)
    assert [tune(ram_bytes=4 * gb, cpus=n)["io_workers"] for n in (32, 64, 256)] == [
        "8",
        "16",
        "32",
    ]
    assert tune(ram_bytes=4 * gb, os_type="mac")["io_method"] == "worker"
    p13 = tune(ram_bytes=4 * gb, cpus=12, version=13)
    assert (p13["max_parallel_workers_per_gather"], p13["max_parallel_maintenance_workers"]) == (
        "4",
        "4",
    )
    assert "max_parallel_maintenance_workers" not in tune(ram_bytes=4 * gb, cpus=12, version=10)
    dw12 = tune(ram_bytes=4 * gb, cpus=31, version=12, db_type="dw")
    assert dw12["max_parallel_workers_per_gather"] == "16"
    assert "max_worker_processes" not in tune(ram_bytes=4 * gb, cpus=1, version=14)


# --- check: the two-level rules with a pooler in front ---------------------------------------
FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = Path(__file__).parent / "golden"


def golden(name: str, text: str) -> None:
    import os

    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs; UPDATE_GOLDEN=1 rewrites it"


def test_check_two_level_rules_fail_then_pass(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """App clients <= replicas x max_client_conn (PGF002) and pooler server connections <=
    usable (PGF003), besides the overall budget (PGF001)."""
    monkeypatch.chdir(FIXTURES)
    code, out, _ = run(capsys, "check", "two-level.yaml")
    assert code == 1
    golden("check-two-level-fail.txt", out)
    assert "FAIL PGF002: pooled clients 400 > 2 x max_client_conn 150 = 300; biggest: web" in out
    assert "FAIL PGF003: pooler server connections 120 > usable 97" in out
    assert "FAIL PGF001: worst-case server connections 125 > 0.8 x 97 usable = 77" in out
    code, out, _ = run(capsys, "check", "two-level.yaml", "--format", "json")
    found = violations(out)
    assert set(found) == {"PGF001", "PGF002", "PGF003"}
    assert found["PGF002"]["offenders"] == ["web"]
    code, out, _ = run(capsys, "check", "two-level-fixed.yaml")
    assert code == 0
    golden("check-two-level-pass.txt", out)
    assert "PASS: 65 <= 77" in out


def _pooled_limits_fleet(tmp_path: Path, *, role: int, db: int, max_db: int = 0) -> str:
    path = tmp_path / "pooled-limits.yaml"
    path.write_text(
        "server: {max_connections: 500}\n"
        "services:\n"
        "  - {name: api, instances: 4, surge: 0, pool_size: 10, role: app, database: appdb,"
        " via_pooler: true}\n"
        "  - {name: cron, instances: 1, surge: 0, pool_size: 5, role: app, database: appdb}\n"
        f"pooler: {{replicas: 2, default_pool_size: 20, max_db_connections: {max_db}}}\n"
        f"limits: {{roles: {{app: {role}}}, databases: {{appdb: {db}}}}}\n",
        encoding="utf-8",
    )
    return str(path)


def test_role_and_database_limits_count_the_poolers_server_connections(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Pooled services reach the server as the pooler's connections (2 replicas x pool of 20,
    as role app into appdb), direct ones as themselves (cron: 5)."""
    code, out, _ = run(
        capsys, "check", _pooled_limits_fleet(tmp_path, role=40, db=44), "--format", "json"
    )
    assert code == 1
    found = violations(out)
    assert set(found) == {"PGF004", "PGF005"}
    assert found["PGF004"]["message"] == (
        "role app: worst-case demand 45 > CONNECTION LIMIT 40 (5 direct + pooler 2 replica(s) "
        "x 20 server connections as role app)"
    )
    assert found["PGF004"]["offenders"] == ["cron", "pooler"]
    assert found["PGF005"]["message"].startswith("database appdb: worst-case demand 45 > ")
    code, out, _ = run(
        capsys, "check", _pooled_limits_fleet(tmp_path, role=45, db=45), "--format", "json"
    )
    assert code == 0, out
    # max_db_connections 15 caps what each replica opens to appdb: 2 x 15 + 5 = 35 <= 40.
    code, out, _ = run(
        capsys,
        "check",
        _pooled_limits_fleet(tmp_path, role=40, db=40, max_db=15),
        "--format",
        "json",
    )
    assert code == 0, out


def test_poolers_unknown_users_count_against_every_role_limit() -> None:
    from pgfunnel.toolkit import fleet as fl

    spec = fl.PoolerSpec(default_pool_size=10, pools=[("appdb", "*")])
    assert spec.server_connections_per_replica(role="anyone") == 10
    spec = fl.PoolerSpec(
        default_pool_size=10,
        max_user_connections=4,
        pools=[("a", "u"), ("b", "u"), ("a", "v")],
        dbnames={"a": "real_a"},
    )
    assert spec.server_connections_per_replica() == 8  # u: min(20, 4) + v: min(10, 4)
    assert spec.server_connections_per_replica(role="u") == 4
    assert spec.server_connections_per_replica(database="real_a") == 8
    assert spec.server_connections_per_replica(database="a") == 0  # the alias is not the db
