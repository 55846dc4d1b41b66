"""advise never trades 53300 for an out-of-memory kill (issue 13.3): no max_connections whose
memory budget exceeds the RAM; a pooler when the demand does not fit (serverless always);
max_connections lowered to what the poolers, superusers and monitoring need; and advise's
verdict on the files as given is check's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pgfunnel.cli import main

FIXTURES = Path(__file__).parent / "fixtures"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def advise_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code, out, err = run(capsys, "advise", *args, "--format", "json")
    assert code in (0, 1), err
    data: dict[str, Any] = json.loads(out)
    return code, data


def advised_max_connections(data: dict[str, Any]) -> int:
    row = next(r for r in data["postgresql_conf"] if r["name"] == "max_connections")
    return int(row["recommended"])


@pytest.fixture(autouse=True)
def _in_fixtures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FIXTURES)


def test_direct_fleet_gets_a_pooler_not_194_percent_of_ram(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """600 direct connections on 8 GB used to get max_connections 753 (budget 194% of RAM)."""
    code, out, err = run(
        capsys, "advise", "--fleet", "fleet-direct-8gb.yaml", "--out-dir", str(tmp_path)
    )
    assert code == 0, out + err
    # 753 as before, plus 5 monitoring slots
    assert (
        "route api through the pooler: with its 600 direct connections the server needs "
        "max_connections 758 and a memory budget of 15.6 GiB (work_mem at 4MB), over 90% of "
        "8.0 GiB RAM" in out
    )
    assert "out-of-memory risk: no" in out and "WARNING" not in out
    assert (tmp_path / "pgbouncer.ini").exists()
    code, data = advise_json(capsys, "--fleet", "fleet-direct-8gb.yaml")
    assert data["memory"]["share_of_ram"] <= 0.9 and not data["memory"]["oom_risk"]
    assert data["rerouted_through_pooler"] == ["api"]
    assert advised_max_connections(data) <= 100  # the current 100 is enough behind a pooler
    assert data["check"]["passed"] is True


def test_serverless_always_gets_a_pooler(capsys: pytest.CaptureFixture[str]) -> None:
    """A Lambda at concurrency 1000 on 4 GB used to get 1253 (545% of RAM), 'pooler not
    needed' and PASS 1000 <= 1000."""
    code, out, _ = run(capsys, "advise", "--fleet", "fleet-lambda-4gb.yaml")
    assert code == 0
    assert "route ingest (serverless) through the pooler: serverless always needs one" in out
    assert "PASS: 1000 <= 1000" not in out and "not needed" not in out
    assert "max_client_conn = 1100" in out
    _, data = advise_json(capsys, "--fleet", "fleet-lambda-4gb.yaml")
    assert not data["memory"]["oom_risk"]
    ingest = next(r for r in data["check"]["rows"] if r["name"] == "ingest")
    assert ingest["target"] == "pooler"


def test_serverless_is_routed_even_when_the_server_could_afford_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fleet = tmp_path / "f.yaml"
    fleet.write_text(
        "server: {ram: 64GB, cpus: 16, max_connections: 500}\n"
        "serverless:\n  - {name: fn, concurrency: 20, via_pooler: false}\n"
    )
    _, data = advise_json(capsys, "--fleet", str(fleet))
    assert data["rerouted_through_pooler"] == ["fn"] and data["pooler"] is not None


def test_pooled_fleet_lowers_max_connections_to_what_it_needs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A pooled fleet needing a few server connections used to keep 450 on 2 GB (267%)."""
    code, out, _ = run(capsys, "advise", "--fleet", "fleet-pooled-450-2gb.yaml")
    assert code == 0
    assert "current max_connections 450 is above what RAM affords" in out
    assert "recommended 40 (current 450)" in out
    assert "max_connections: (default) -> 40" in out  # the conf row: no postgresql.conf given
    assert (
        "max_connections needed = ceil((25 pooled + 0 direct) / 0.8) + 5 monitoring + "
        "3 superuser_reserved + 0 reserved = 40" in out
    )
    assert "out-of-memory risk: no" in out and "WARNING" not in out


def test_current_max_connections_that_fits_is_kept(capsys: pytest.CaptureFixture[str]) -> None:
    _, data = advise_json(capsys, "--fleet", "fleet.yaml", "--postgresql-conf", "postgresql.conf")
    assert advised_max_connections(data) == 200  # 16 GB affords it, and it is enough


def test_advise_as_given_agrees_with_check(capsys: pytest.CaptureFixture[str]) -> None:
    for fleet in ("fleet-lambda-4gb.yaml", "fleet-direct-8gb.yaml", "fleet.yaml"):
        code, check_out, _ = run(capsys, "check", fleet)
        assert code == 1
        fails = [line for line in check_out.splitlines() if line.startswith("FAIL ")]
        _, out, _ = run(capsys, "advise", "--fleet", fleet)
        given = out.split("As given (what pgfunnel check says of these files)\n", 1)[1]
        given = given.split("\n\n", 1)[0]
        assert given.splitlines() == [f"  {line}" for line in fails]
        _, data = advise_json(capsys, "--fleet", fleet)
        assert data["as_given"]["passed"] is False
        assert data["as_given"]["violations"][0]["rule"] == "PGF001"


def test_pinned_max_connections_above_what_ram_affords_warns(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fleet = tmp_path / "f.yaml"
    fleet.write_text(
        "server: {ram: 2GB, cpus: 2}\npin: {max_connections: 1000}\n"
        "services:\n  - {name: api, instances: 2, pool_size: 5}\n"
    )
    code, out, _ = run(capsys, "advise", "--fleet", str(fleet))
    assert code == 1
    assert "WARNING: max_connections is pinned at 1000; above" in out


@pytest.mark.parametrize("ram", ["1GB", "2GB", "4GB", "8GB", "32GB"])
@pytest.mark.parametrize("instances", [1, 10, 100])
@pytest.mark.parametrize("via_pooler", ["true", "false"])
def test_no_advice_exceeds_the_memory_ceiling(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, ram: str, instances: int, via_pooler: str
) -> None:
    """Whatever the fleet and the RAM: the advised budget stays within 90% of RAM and the
    advised fleet passes check, or advise says it cannot and exits 1."""
    fleet = tmp_path / "f.yaml"
    fleet.write_text(
        f"server: {{ram: {ram}, cpus: 4, max_connections: 3000}}\n"
        "services:\n"
        f"  - {{name: api, instances: {instances}, processes: 4, pool_size: 10, "
        f"via_pooler: {via_pooler}}}\n"
        "  - {name: worker, instances: 2, pool_size: 5, via_pooler: false}\n"
        "jobs:\n  - {name: etl, concurrency: 4, connections: 2}\n"
        "migrations:\n  - {name: migrate, connections: 1}\n"
        "serverless:\n  - {name: fn, concurrency: 200}\n"
    )
    code, data = advise_json(capsys, "--fleet", str(fleet))
    if code == 0:
        assert data["memory"]["share_of_ram"] <= 0.9, data["memory"]["formula"]
        assert data["check"]["passed"] is True
        assert advised_max_connections(data) < 3000
    else:
        assert any("RAM" in w for w in data["warnings"]), data["warnings"]
