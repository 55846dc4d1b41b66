"""The Prometheus collector: metric families built from the live pools at each scrape.

Names follow pgbouncer_exporter's (`pgbouncer_pools_*`, `pgbouncer_stats_*`,
`pgbouncer_databases_*`) with the prefix `pgfunnel_`, so its dashboards and the toolkit's alert
rules (`pgfunnel alerts --exporter pgfunnel`) work unchanged; what PgBouncer has no column for
(53300 back-pressure, login refusals by SQLSTATE, holders) has names of its own.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from pgfunnel import __version__
from pgfunnel.config.loader import ADMIN_DATABASE
from pgfunnel.metrics.figures import (
    admin_pool_row,
    database_max_connections,
    database_pool_size,
    databases,
    granted_size,
    maxwait_seconds,
    pool_row,
)
from pgfunnel.pool.objects import ClientState
from pgfunnel.pool.scheduler import WAIT_BUCKETS

if TYPE_CHECKING:
    from pgfunnel.admin.host import Host

PREFIX = "pgfunnel"
HOLDERS_EXPOSED = 10  # the longest holders get a series each; more would churn label sets
# Refusal reasons can carry client-chosen text ("no such database: x"): past this many distinct
# reasons the rarest are summed under "other", so a client cannot grow the scrape unboundedly.
REFUSAL_REASONS_EXPOSED = 20
POOL_LABELS = ("database", "user")

# (SHOW POOLS column, metric suffix, help): pgbouncer_exporter's names for the same columns.
POOL_GAUGES = (
    ("cl_active", "pools_client_active_connections", "Clients linked or idle (cl_active)"),
    ("cl_waiting", "pools_client_waiting_connections", "Client connections waiting (cl_waiting)"),
    ("sv_active", "pools_server_active_connections", "Server connections linked (sv_active)"),
    ("sv_idle", "pools_server_idle_connections", "Server connections idle, ready (sv_idle)"),
    ("sv_used", "pools_server_used_connections", "Server connections to check (sv_used)"),
    ("sv_tested", "pools_server_testing_connections", "Server connections being reset (sv_tested)"),
    ("sv_login", "pools_server_login_connections", "Server connections logging in (sv_login)"),
)
# (PoolStats field, metric suffix without _total, help)
POOL_COUNTERS = (
    ("xact_count", "stats_sql_transactions_pooled", "Transactions run through the pool"),
    ("query_count", "stats_queries_pooled", "Queries run through the pool"),
    ("xact_time", "stats_server_in_transaction_seconds", "Seconds servers spent in transactions"),
    ("query_time", "stats_queries_duration_seconds", "Seconds servers spent running queries"),
    ("wait_time", "stats_client_wait_seconds", "Seconds clients spent waiting for a server"),
    ("bytes_in", "stats_received_bytes", "Bytes received from clients"),
    ("bytes_out", "stats_sent_bytes", "Bytes sent to clients"),
    ("server_assignment_count", "stats_server_assignments", "Times a server was given a client"),
    (
        "client_parse_count",
        "stats_client_parses",
        "Named prepared statements clients created (max_prepared_statements)",
    ),
    (
        "server_parse_count",
        "stats_server_parses",
        "Prepared statements the pooler created on servers (max_prepared_statements)",
    ),
    ("bind_count", "stats_binds", "Named prepared statements clients executed (Bind)"),
    ("login_failures", "pools_server_login_failures", "Server logins that failed, for any reason"),
    (
        "refused_53300",
        "pools_server_refused_53300",
        "Server logins refused with SQLSTATE 53300 (too many connections): back-pressure events",
    ),
)


def _name(suffix: str) -> str:
    return f"{PREFIX}_{suffix}"


class PoolerCollector(Collector):
    """Reads the host's pools at scrape time; nothing is counted twice or cached."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def describe(self) -> Iterable[Metric]:
        return []  # no collect() at registration: the host may not be started yet

    def collect(self) -> Iterator[Metric]:
        self.host.refresh()  # the switch's states and counters, as of this scrape
        yield from self._process()
        yield from self._pools()
        yield from self._databases()
        yield from self._refusals()
        yield from self._holders()

    # --- process -----------------------------------------------------------------------------
    def _process(self) -> Iterator[Metric]:
        host = self.host
        yield GaugeMetricFamily(_name("up"), "The pooler is up and answering", value=1)
        build = GaugeMetricFamily(
            _name("build_info"),
            "Build information; the value is always 1",
            labels=("version", "pgbouncer_compat", "python"),
        )
        build.add_metric((__version__, "1.25.1", platform.python_version()), 1)
        yield build
        yield GaugeMetricFamily(
            _name("start_time_seconds"),
            "When the pooler started, seconds since the epoch",
            value=host.wall(host.started_at),
        )
        yield GaugeMetricFamily(
            _name("uptime_seconds"),
            "Seconds since the pooler started",
            value=host.now() - host.started_at,
        )
        s = host.settings
        yield GaugeMetricFamily(
            _name("config_max_client_connections"),
            "max_client_conn",
            value=int(s.max_client_conn),
        )
        yield GaugeMetricFamily(
            _name("config_max_user_connections"),
            "max_user_connections (0: no limit)",
            value=int(s.max_user_connections),
        )
        pooler = host.pooler
        clients = sum(
            len(members)
            for pool in pooler.pools.values()
            for state, members in pool.clients.items()
            if state is not ClientState.CLOSED
        )
        yield GaugeMetricFamily(
            _name("used_clients"),
            "Client connections in pools (logged in)",
            value=clients,
        )
        yield GaugeMetricFamily(
            _name("login_clients"),
            "Client connections still authenticating",
            value=len(host.logging_in),
        )
        yield GaugeMetricFamily(
            _name("admin_clients"),
            "Client connections to the admin console",
            value=len(host.admin_clients),
        )
        yield GaugeMetricFamily(
            _name("client_connections"),
            "All client connections the pooler holds (what max_client_conn limits)",
            value=host.client_count,
        )
        yield GaugeMetricFamily(
            _name("used_servers"),
            "Server connections in any state",
            value=sum(pool.server_count for pool in pooler.pools.values()),
        )
        yield GaugeMetricFamily(
            _name("pools"), "Pools (database, user pairs)", value=len(pooler.pools)
        )

    # --- per pool ----------------------------------------------------------------------------
    def _pools(self) -> Iterator[Metric]:
        host = self.host
        now = host.now()
        pools = list(host.pooler.pools.values())
        rows = [pool_row(pool, now) for pool in pools]
        keys = [(pool.db.name, pool.user.name) for pool in pools]

        # SHOW POOLS' figures include the admin console's pool, as PgBouncer's (and so
        # pgbouncer_exporter's) do; the figures below exist only for real pools.
        listed = [*zip(keys, rows, strict=True), ((ADMIN_DATABASE,) * 2, admin_pool_row(host))]
        for column, suffix, doc in POOL_GAUGES:
            g = GaugeMetricFamily(_name(suffix), doc, labels=POOL_LABELS)
            for key, row in listed:
                g.add_metric(key, int(row[column]))
            yield g
        g = GaugeMetricFamily(
            _name("pools_client_maxwait_seconds"),
            "Seconds the oldest waiting client has waited (maxwait + maxwait_us)",
            labels=POOL_LABELS,
        )
        for key, row in listed:
            g.add_metric(key, maxwait_seconds(row))
        yield g

        size = GaugeMetricFamily(
            _name("pools_pool_size"), "pool_size in force for the pool", labels=POOL_LABELS
        )
        granted = GaugeMetricFamily(
            _name("pools_server_granted_connections"),
            "Server connections the server currently grants the pool: pool_size, or fewer "
            "under 53300 back-pressure",
            labels=POOL_LABELS,
        )
        backpressure = GaugeMetricFamily(
            _name("pools_backpressure_active"),
            "1 while server logins are refused as transient (53300, restarts) and clients stay "
            "queued",
            labels=POOL_LABELS,
        )
        failing = GaugeMetricFamily(
            _name("pools_login_failing"),
            "1 while new clients are refused after a login failure waiting will not cure",
            labels=POOL_LABELS,
        )
        for key, pool in zip(keys, pools, strict=True):
            size.add_metric(key, pool.settings.pool_size)
            granted.add_metric(key, granted_size(pool))
            backpressure.add_metric(key, 1 if pool.backoff.active else 0)
            failing.add_metric(key, 1 if pool.login_failed_until > now else 0)
        yield from (size, granted, backpressure, failing)

        for field, suffix, doc in POOL_COUNTERS:
            c = CounterMetricFamily(_name(suffix), doc, labels=POOL_LABELS)
            for key, pool in zip(keys, pools, strict=True):
                c.add_metric(key, getattr(pool.stats, field))
            yield c

        h = HistogramMetricFamily(
            _name("pools_client_wait_seconds"),
            "How long clients waited for a server",
            labels=POOL_LABELS,
        )
        bounds = [*(_le(b) for b in WAIT_BUCKETS), "+Inf"]
        for key, pool in zip(keys, pools, strict=True):
            st = pool.stats
            running = 0
            buckets: list[tuple[str, float]] = []
            for le, count in zip(bounds, st.wait_buckets, strict=True):
                running += count
                buckets.append((le, running))
            h.add_metric(key, buckets, st.wait_time)
        yield h

        refusals = CounterMetricFamily(
            _name("pools_server_login_refusals"),
            "Server logins refused, by the server's SQLSTATE",
            labels=(*POOL_LABELS, "sqlstate"),
        )
        timeouts = CounterMetricFamily(
            _name("pools_timeouts"),
            "Clients and servers closed by a timeout, by reason (query_wait_timeout, ...)",
            labels=(*POOL_LABELS, "reason"),
        )
        hazards = CounterMetricFamily(
            _name("pools_hazards"),
            "Statements transaction pooling cannot keep (session advisory locks, LISTEN, "
            "temporary tables, cursors WITH HOLD), by kind (pooling_hazards)",
            labels=(*POOL_LABELS, "hazard"),
        )
        for key, pool in zip(keys, pools, strict=True):
            for code, count in sorted(pool.stats.login_refusals.items()):
                refusals.add_metric((*key, code), count)
            for reason, count in sorted(pool.stats.timeouts.items()):
                timeouts.add_metric((*key, reason), count)
            for kind, count in sorted(pool.stats.hazards.items()):
                hazards.add_metric((*key, kind), count)
        yield refusals
        yield timeouts
        yield hazards

    # --- per database ------------------------------------------------------------------------
    def _databases(self) -> Iterator[Metric]:
        host = self.host
        labels = ("database",)
        size = GaugeMetricFamily(
            _name("databases_pool_size"), "pool_size of the database", labels=labels
        )
        cap = GaugeMetricFamily(
            _name("databases_max_connections"),
            "max_db_connections of the database (0: no limit)",
            labels=labels,
        )
        current = GaugeMetricFamily(
            _name("databases_current_connections"),
            "Server connections the database's pools hold",
            labels=labels,
        )
        paused = GaugeMetricFamily(
            _name("databases_paused"), "1 when the database is paused", labels=labels
        )
        disabled = GaugeMetricFamily(
            _name("databases_disabled"), "1 when the database is disabled", labels=labels
        )
        for name, dbc, db in databases(host):
            key = (name,)
            size.add_metric(key, database_pool_size(host, dbc))
            cap.add_metric(key, database_max_connections(host, dbc))
            current.add_metric(key, db.server_count if db is not None else 0)
            is_paused = db.paused if db is not None else host.paused_all
            paused.add_metric(key, 1 if is_paused else 0)
            disabled.add_metric(key, 1 if db is not None and db.disabled else 0)
        yield from (size, cap, current, paused, disabled)

    def _refusals(self) -> Iterator[Metric]:
        c = CounterMetricFamily(
            _name("clients_refused"),
            "Clients refused before reaching a pool, by reason (max_client_conn, auth, ...)",
            labels=("reason",),
        )
        for reason, count in bounded(self.host.refused, REFUSAL_REASONS_EXPOSED):
            c.add_metric((reason,), count)
        yield c
        logins = CounterMetricFamily(
            _name("client_logins"),
            "Client logins into a pool, by where they ran: switch (alone, on a route Python "
            "gave it after an earlier login of the same database and user) or pooler (Python)",
            labels=("path",),
        )
        for path, count in self.host.logins.items():
            logins.add_metric((path,), count)
        yield logins

    def _holders(self) -> Iterator[Metric]:
        labels = (
            "database",
            "user",
            "application_name",
            "client_addr",
            "client",
            "state",
            "server_pid",
        )
        held = GaugeMetricFamily(
            _name("holder_held_seconds"),
            f"Seconds the {HOLDERS_EXPOSED} longest holders have held their server connection",
            labels=labels,
        )
        xact = GaugeMetricFamily(
            _name("holder_transaction_seconds"),
            "Seconds the longest holders' transactions have been open (0 when none)",
            labels=labels,
        )
        for h in self.host.holders(HOLDERS_EXPOSED):
            c = h.client
            key = (
                h.server.pool.db.name,
                c.username,
                h.application_name,
                f"{c.addr}:{c.port}",
                f"C-{c.id:#x}",
                h.state,
                str(h.server.pid),
            )
            held.add_metric(key, h.held)
            xact.add_metric(key, h.xact)
        yield held
        yield xact


def bounded(counts: dict[str, int], limit: int) -> list[tuple[str, int]]:
    """The `limit` most frequent reasons (sorted by name), the rest summed as "other"."""
    if len(counts) <= limit:
        return sorted(counts.items())
    ranked = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)
    kept = dict(ranked[: limit - 1])
    kept["other"] = kept.get("other", 0) + sum(count for _, count in ranked[limit - 1 :])
    return sorted(kept.items())


def _le(bound: float) -> str:
    return repr(float(bound))


def make_registry(host: Host) -> CollectorRegistry:
    """A registry of this server's own (never the global one), with the process metrics."""
    from prometheus_client import ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(PoolerCollector(host))
    ProcessCollector(registry=registry)
    return registry
