"""The issue's load checks: 1000 pgbench clients against max_connections=30 lose nothing."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from pgfunnel.throwaway import Cluster, pg_tool
from tests.integration.harness import Funnel, pgbench_init, pgpass_env


@pytest.fixture(scope="module")
def thirty() -> Iterator[Cluster]:
    cluster = Cluster(max_connections=30)
    cluster.start()
    pgbench_init(cluster)
    try:
        yield cluster
    finally:
        cluster.destroy()


def _servers(row: dict[str, Any]) -> int:
    return int(row["sv_active"] + row["sv_idle"] + row["sv_used"] + row["sv_tested"])


@pytest.mark.parametrize("pool_size", [20, 50])
def test_1000_pgbench_clients_no_failures(thirty: Cluster, pool_size: int) -> None:
    """pool 20 fits; pool 50 is more than the server allows and must hold at what it grants."""
    f = Funnel(
        thirty,
        settings={"default_pool_size": pool_size, "max_client_conn": 2000, "auth_type": "md5"},
    ).start()
    peak = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.wait(0.25):
            try:
                peak = max(peak, _servers(f.pool()))
            except KeyError:
                continue

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        out = subprocess.run(
            [
                pg_tool("pgbench"),
                "-n",
                "-S",
                "-c",
                "1000",
                "-j",
                "2",
                "-t",
                "10",
                "-h",
                "127.0.0.1",
                "-p",
                str(f.port),
                "-U",
                "postgres",
                "postgres",
            ],
            env=pgpass_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        done.set()
        watcher.join()
    try:
        assert out.returncode == 0, out.stderr[-2000:]
        assert "number of transactions actually processed: 10000/10000" in out.stdout
        assert "number of failed transactions: 0 (0.000%)" in out.stdout
        assert 0 < peak <= min(pool_size, 30)
        if pool_size > 30:
            # The server said no before the pool reached its size: back-pressure, not errors.
            assert "sorry, too many clients already" in f.log()
    finally:
        f.stop()
