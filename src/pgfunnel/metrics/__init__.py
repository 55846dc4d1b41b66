"""Counters and the Prometheus/health HTTP endpoint, with the live status page."""

from pgfunnel.metrics.http import MetricsServer

__all__ = ["MetricsServer"]
