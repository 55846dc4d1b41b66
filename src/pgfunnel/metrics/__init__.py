"""Counters and the Prometheus/health HTTP endpoint."""
