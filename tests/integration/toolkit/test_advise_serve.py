"""The pgbouncer.ini that `pgfunnel advise` writes loads in `pgfunnel serve` unchanged."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from pgfunnel.throwaway import Cluster, free_port
from tests.integration.toolkit.helpers import run_cli

try:
    from pgfunnel.net.serve import serve_main  # noqa: F401

    HAVE_SERVE = True
except ImportError:
    HAVE_SERVE = False


def _advise(pg: Cluster, tmp_path: Path, port: int) -> Path:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        f"server: {{ram: 4GB, cpus: 2, max_connections: 100, host: 127.0.0.1, port: {pg.port}}}\n"
        "services:\n"
        "  - {name: api, instances: 2, processes: 2, pool_size: 5, database: postgres, role: "
        "postgres}\n"
        f"pooler: {{replicas: 1, listen_addr: 127.0.0.1, listen_port: {port}, "
        "auth_type: scram-sha-256, auth_file: userlist.txt}\n"
    )
    out = tmp_path / "out"
    proc = run_cli("advise", "--fleet", str(fleet), "--out-dir", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (out / "userlist.txt").write_text('"postgres" "postgres"\n')
    return out


def test_advised_ini_loads_without_unsupported_settings(
    pg: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pgfunnel.config.loader import load_config

    out = _advise(pg, tmp_path, free_port())
    monkeypatch.chdir(out)
    cfg = load_config("pgbouncer.ini")
    assert cfg.unsupported == []
    assert list(cfg.databases) == ["postgres"]
    # the runbooks' pooler settings (issue 13.4), as pgfunnel serve reads them: 2 instances x
    # 2 processes x pool 5 = 20 clients, so a pool of 20 (2 CPUs) and a reserve of 5
    st = cfg.settings
    assert (st.default_pool_size, st.reserve_pool_size) == (20, 5)
    assert (float(st.reserve_pool_timeout), float(st.server_idle_timeout)) == (3.0, 300.0)


@pytest.mark.skipif(not HAVE_SERVE, reason="pgfunnel serve (net/serve.py serve_main) not there yet")
def test_advised_ini_serves_queries(pg: Cluster, tmp_path: Path) -> None:
    port = free_port()
    out = _advise(pg, tmp_path, port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgfunnel", "serve", "pgbouncer.ini"],
        cwd=out,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"pgfunnel serve did not listen: {proc.stdout and proc.stdout.read()}"
                    ) from None
                time.sleep(0.1)
        dsn = f"host=127.0.0.1 port={port} user=postgres password=postgres dbname=postgres"
        with psycopg.connect(dsn, prepare_threshold=None) as conn:
            assert conn.execute("SELECT 40 + 2").fetchone() == (42,)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
