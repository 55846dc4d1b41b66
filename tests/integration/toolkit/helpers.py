"""Helpers for the toolkit integration tests: run the CLI, hold sessions, poll the server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psycopg

from pgfunnel.throwaway import Cluster


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return subprocess.run(
        [sys.executable, "-m", "pgfunnel", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**env, "COLUMNS": "200"},
    )


def run_json(*args: str) -> tuple[int, dict[str, Any]]:
    proc = run_cli(*args, "--format", "json")
    assert proc.stdout.strip(), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


class Sessions:
    """Connections a test holds open; all closed at the end."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.conns: list[psycopg.Connection[Any]] = []

    def open(
        self,
        user: str = "app",
        password: str = "app",
        app: str = "app",
        dbname: str = "postgres",
        idle_in_tx: bool = False,
        aborted: bool = False,
    ) -> psycopg.Connection[Any]:
        conn = psycopg.connect(
            self.cluster.dsn(user=user, password=password, dbname=dbname), application_name=app
        )
        if idle_in_tx or aborted:
            conn.execute("SELECT 42")
            if aborted:
                with suppress(psycopg.errors.DivisionByZero):
                    conn.execute("SELECT 1/0")
        else:
            conn.autocommit = True
            conn.execute("SELECT 1")
        self.conns.append(conn)
        return conn

    def close(self) -> None:
        for c in self.conns:
            c.close()
        self.conns.clear()


@contextmanager
def sessions(cluster: Cluster) -> Iterator[Sessions]:
    s = Sessions(cluster)
    try:
        yield s
    finally:
        s.close()
        wait_for(lambda: client_count(cluster) == 0)


def client_count(cluster: Cluster) -> int:
    out = cluster.psql(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
        "AND pid <> pg_backend_pid()"
    )
    return int(out)


def alive_pids(cluster: Cluster) -> set[int]:
    out = cluster.psql(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' "
        "AND pid <> pg_backend_pid()"
    )
    return {int(x) for x in out.split()}


def state_age(cluster: Cluster, pid: int) -> float:
    out = cluster.psql(
        f"SELECT extract(epoch FROM now() - state_change) FROM pg_stat_activity WHERE pid = {pid}"
    )
    return float(out) if out else -1.0


def state_of(cluster: Cluster, pid: int) -> str:
    return cluster.psql(f"SELECT state FROM pg_stat_activity WHERE pid = {pid}")


def wait_for(cond: Any, limit: float = 30.0) -> None:
    """Polls `cond` until true; the limit only guards against a hang, it is not asserted on."""
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.05)
