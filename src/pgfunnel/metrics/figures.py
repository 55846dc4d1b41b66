"""The per-pool and per-database figures /metrics and the status page both show, read live."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pgfunnel.admin.console import POOLS_COLUMNS, Console
from pgfunnel.config.loader import ADMIN_DATABASE
from pgfunnel.config.pools import resolve_pool_settings
from pgfunnel.pool.objects import ServerState

if TYPE_CHECKING:
    from pgfunnel.admin.host import Host
    from pgfunnel.pool.scheduler import Database, Pool

POOLS_NAMES = tuple(name for name, _ in POOLS_COLUMNS)


def pool_row(pool: Pool, now: float) -> dict[str, Any]:
    """SHOW POOLS' row for `pool`, keyed by column name: the console's own rule, so the page,
    the metrics and the console never disagree on what sv_used or cl_waiting count."""
    return dict(zip(POOLS_NAMES, Console.pool_row(pool, now), strict=True))


def admin_pool_row(host: Host) -> dict[str, Any]:
    """SHOW POOLS' row for the admin console, which PgBouncer lists as pool pgbouncer/pgbouncer:
    its clients are the console's, it has no servers."""
    row: dict[str, Any] = dict.fromkeys(POOLS_NAMES, 0)
    row.update(
        database=ADMIN_DATABASE,
        user=ADMIN_DATABASE,
        cl_active=len(host.admin_clients),
        pool_mode="statement",
        load_balance_hosts=None,
    )
    return row


def maxwait_seconds(row: dict[str, Any]) -> float:
    return float(row["maxwait"]) + float(row["maxwait_us"]) / 1_000_000


@dataclass(frozen=True)
class Saturation:
    """Servers busy against the size the server currently grants the pool."""

    in_use: int  # active + used + tested: not available to the next waiter
    granted: int  # pool_size, or what the server let us keep under back-pressure
    pool_size: int
    backpressure: bool

    @property
    def ratio(self) -> float:
        if self.granted <= 0:
            return 1.0 if self.backpressure or self.in_use else 0.0
        return self.in_use / self.granted


def saturation(pool: Pool) -> Saturation:
    s = pool.servers
    in_use = len(s[ServerState.ACTIVE]) + len(s[ServerState.USED]) + len(s[ServerState.TESTED])
    return Saturation(in_use, granted_size(pool), pool.settings.pool_size, pool.backoff.active)


def granted_size(pool: Pool) -> int:
    granted = pool.backoff.granted
    return pool.settings.pool_size if granted is None else granted


def database_pool_size(host: Host, dbc: Any) -> int:
    """pool_size as SHOW DATABASES reports it: the entry's own, else default_pool_size (a
    [users] pool_size applies to that user's pools, which pools_pool_size reports)."""
    return resolve_pool_settings(host.settings, dbc).pool_size


def database_max_connections(host: Host, dbc: Any) -> int:
    """max_db_connections of a database (0: no limit), as SHOW DATABASES' max_connections."""
    return resolve_pool_settings(host.settings, dbc).max_db_connections


def databases(host: Host) -> list[tuple[str, Any, Database | None]]:
    """Every database worth showing: the configured ones (not `*`) and those made on demand
    from `*`, with the scheduler's Database when one exists yet."""
    known = host.pooler.databases
    out: list[tuple[str, Any, Database | None]] = []
    for name, dbc in host.config.databases.items():
        if name != "*":
            out.append((name, dbc, known.get(name)))
    for name, db in known.items():
        if name not in host.config.databases:
            out.append((name, db.config, db))
    return out
