"""advise sizes the pooler and the clients as the runbooks do (issue 13.4): default_pool_size
20-25 per database/user pair scaled by cores and the server budget, reserve_pool_size 5 after
3 s, server_idle_timeout, max_client_conn from the worst case; per-process pools of 5-10 with
idle and connect timeouts on port 6432, written in each client library's own form."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgfunnel.cli import main
from pgfunnel.config.loader import load_config


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def advise(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str
) -> tuple[dict[str, Any], dict[str, str]]:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(text)
    out_dir = tmp_path / "out"
    code, out, err = run(
        capsys, "advise", "--fleet", str(fleet), "--format", "json", "--out-dir", str(out_dir)
    )
    assert code == 0, out + err
    data: dict[str, Any] = json.loads(out)
    (tmp_path / "userlist.txt").write_text('"app" "x"\n')  # auth_file is relative to the cwd
    cfg = load_config(out_dir / "pgbouncer.ini")  # loads in pgfunnel serve, as PgBouncer
    assert cfg.unsupported == []
    settings: dict[str, str] = data["pooler"]["settings"]
    assert float(cfg.settings.reserve_pool_timeout) == float(settings["reserve_pool_timeout"])
    assert float(cfg.settings.server_idle_timeout) == float(settings["server_idle_timeout"])
    return data, settings


@pytest.fixture(autouse=True)
def _in_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)


FLEET = """\
server: {{ram: {ram}, cpus: {cpus}, max_connections: 200}}
services:
  - {{name: api, instances: 10, processes: 2, pool_size: 5, max_overflow: 10,
      framework: sqlalchemy}}
  - {{name: web, instances: 4, pool_size: 20, framework: hikaricp, role: web}}
  - {{name: orders, instances: 3, pool_size: 2, framework: knex}}
  - {{name: shop, instances: 3, pool_size: 8, framework: rails}}
  - {{name: admin, instances: 2, processes: 3, framework: django}}
  - {{name: events, instances: 2, framework: node-postgres}}
pooler: {{replicas: {replicas}, host: pgbouncer.internal}}
"""


@pytest.mark.parametrize(("cpus", "pool"), [(4, 20), (8, 25), (32, 25)])
def test_pooler_settings_follow_the_runbook(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, cpus: int, pool: int
) -> None:
    data, ini = advise(capsys, tmp_path, FLEET.format(ram="32GB", cpus=cpus, replicas=3))
    assert ini["default_pool_size"] == str(pool)
    assert ini["reserve_pool_size"] == "5" and ini["reserve_pool_timeout"] == "3"
    assert ini["server_idle_timeout"] == "300" and ini["listen_port"] == "6432"
    clients = sum(r["demand"] for r in data["check"]["rows"] if r["target"] == "pooler")
    # every pooled client's worst case, spread over the replicas left when one is down
    assert ini["max_client_conn"] == str(max(100, -(-clients * 11 // 20)))
    # two pairs (app/app, app/web), 3 replicas, pool + reserve each
    assert data["check"]["pooler_server_connections"] == 3 * 2 * (pool + 5)


def test_pool_size_is_lowered_to_what_ram_affords(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data, ini = advise(capsys, tmp_path, FLEET.format(ram="1GB", cpus=8, replicas=4))
    assert int(ini["default_pool_size"]) < 25
    assert any("so the server connections fit what RAM affords" in s for s in data["steps"])
    assert not data["memory"]["oom_risk"] and data["check"]["passed"]


def test_pool_size_never_exceeds_the_clients(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data, ini = advise(
        capsys,
        tmp_path,
        "server: {ram: 16GB, cpus: 8}\nservices:\n  - {name: api, instances: 2, pool_size: 3}\n",
    )
    assert ini["default_pool_size"] == "6" and ini["reserve_pool_size"] == "1"
    assert any("capped at the busiest pair's 6 client(s)" in s for s in data["steps"])


def _clients(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in data["clients"]}


def test_client_pools_are_5_to_10_per_process_on_6432(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data, _ = advise(capsys, tmp_path, FLEET.format(ram="32GB", cpus=8, replicas=2))
    c = _clients(data)
    assert (c["api"]["pool"], c["web"]["pool"], c["orders"]["pool"]) == (10, 10, 5)
    assert {x["port"] for x in c.values()} == {6432}
    assert {x["host"] for x in c.values()} == {"pgbouncer.internal"}


def test_each_library_gets_its_own_form(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data, _ = advise(capsys, tmp_path, FLEET.format(ram="32GB", cpus=8, replicas=2))
    snippets = {name: "\n".join(c["snippet"]) for name, c in _clients(data).items()}
    # SQLAlchemy and Django: Python that parses
    ast.parse(snippets["api"])
    assert "pool_size=10, max_overflow=0, pool_timeout=5" in snippets["api"]
    assert '"prepare_threshold": None' in snippets["api"]
    admin: dict[str, Any] = {}
    exec(snippets["admin"], {}, admin)
    default = admin["DATABASES"]["default"]
    assert default["PORT"] == 6432 and default["DISABLE_SERVER_SIDE_CURSORS"] is True
    assert default["OPTIONS"]["connect_timeout"] == 5
    # Rails: database.yml
    rails = yaml.safe_load(snippets["shop"])["production"]
    assert rails["port"] == 6432 and rails["pool"] == 8 and rails["prepared_statements"] is False
    assert rails["idle_timeout"] == 300 and rails["connect_timeout"] == 5
    # HikariCP: Spring properties
    props = dict(
        line.split("=", 1) for line in snippets["web"].splitlines() if not line.startswith("#")
    )
    assert props["spring.datasource.hikari.maximum-pool-size"] == "10"
    assert props["spring.datasource.url"].endswith(":6432/app?prepareThreshold=0")
    assert props["spring.datasource.hikari.connection-timeout"] == "5000"
    # node-postgres and knex
    assert (
        "max: 10, idleTimeoutMillis: 300000, connectionTimeoutMillis: 5000" in (snippets["events"])
    )
    assert "port: 6432" in snippets["events"]
    assert "pool: { min: 0, max: 5, idleTimeoutMillis: 300000" in snippets["orders"]


def test_text_report_shows_client_settings(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "server: {ram: 16GB, cpus: 8}\nservices:\n  - {name: api, instances: 2, pool_size: 3}\n"
    )
    code, out, _ = run(capsys, "advise", "--fleet", str(fleet))
    assert code == 0
    section = out.split("Client settings (per process)\n", 1)[1]
    assert section.startswith(
        "  api: pool 5 per process, no overflow (was 3), 1 process(es) per instance; idle "
        "timeout 300s, connect timeout 5s; to the pooler at <pooler-host>:6432"
    )
    # no library named: its settings in each library advise knows
    for lib in ("sqlalchemy", "node-postgres", "knex", "hikaricp", "activerecord", "django"):
        assert f"  api ({lib}):" in section


def test_django_keeps_one_connection_per_worker(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data, _ = advise(capsys, tmp_path, FLEET.format(ram="32GB", cpus=8, replicas=2))
    assert _clients(data)["admin"]["pool"] == 1
