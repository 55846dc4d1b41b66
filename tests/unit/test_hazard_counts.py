"""App.client_hazard's table (SHOW HAZARDS): counted per application, logged once per client and
kind, and bounded (application names are the clients' choice)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pgfunnel._switch import Hazard, HazardsMode
from pgfunnel.net import app as app_module
from pgfunnel.net.app import App
from pgfunnel.pool.scheduler import PoolStats


def _client(sid: int, name: str) -> SimpleNamespace:
    pool = SimpleNamespace(
        db=SimpleNamespace(name="db"), user=SimpleNamespace(name="u"), stats=PoolStats()
    )
    return SimpleNamespace(
        pool=pool,
        params={"application_name": name},
        app_name=name,
        sid=sid,
        id=sid,
        dbname="db",
        username="u",
        addr="127.0.0.1",
        port=5000 + sid,
    )


def test_counted_logged_once_and_bounded(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(app_module, "HAZARD_ROWS_MAX", 3)
    host = SimpleNamespace(hazards={}, _hazards_logged=set())
    a = _client(1, "web")
    for _ in range(2):
        App.client_hazard(host, a, Hazard.LISTEN, HazardsMode.WARN)  # type: ignore[arg-type]
    assert host.hazards[("db", "u", "web", "listen")].count == 2
    assert host.hazards[("db", "u", "web", "listen")].action == "warn"
    assert sum("cannot survive transaction pooling" in r.message for r in caplog.records) == 1
    assert a.pool.stats.hazards == {"listen": 2}
    for n in range(5):  # five more names: two rows fit, the rest are counted together
        App.client_hazard(host, _client(10 + n, f"app{n}"), Hazard.TEMP_TABLE, HazardsMode.PIN)  # type: ignore[arg-type]
    assert len(host.hazards) == 4
    assert host.hazards[("db", "u", "(others)", "temp_table")].count == 3
