"""Shared fixtures: throwaway PostgreSQL clusters made with initdb, each on a free port."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pgfunnel.throwaway import Cluster


@pytest.fixture(scope="session")
def pg() -> Iterator[Cluster]:
    """One cluster shared by the whole run (max_connections=100); tests must not restart it."""
    cluster = Cluster(max_connections=100)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def make_cluster() -> Iterator[Callable[..., Cluster]]:
    """A factory for clusters with per-test settings (max_connections, hba, ...)."""
    made: list[Cluster] = []

    def make(**kwargs: Any) -> Cluster:
        cluster = Cluster(**kwargs)
        made.append(cluster)
        cluster.start()
        return cluster

    yield make
    for cluster in made:
        cluster.destroy()


@pytest.fixture
def funnel(pg: Cluster) -> Iterator[Callable[..., Any]]:
    """Start pgfunnel processes in front of a cluster (the shared one unless given)."""
    from tests.integration.harness import Funnel

    started: list[Funnel] = []

    def start(cluster: Cluster | None = None, **kwargs: Any) -> Funnel:
        f = Funnel(cluster if cluster is not None else pg, **kwargs)
        started.append(f)
        return f.start()

    yield start
    for f in started:
        f.stop()
