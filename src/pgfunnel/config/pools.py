"""A pool's settings (`PoolSettings`) and the one rule that resolves them: [users] over
[databases] over [pgbouncer].

The scheduler, the admin console (SHOW DATABASES, POOLS, USERS), /metrics and the toolkit's
`check` (reading a pgbouncer.ini) all take their figures from `resolve_pool_settings`, so a
pool never runs with one size while SHOW, a dashboard or the CI gate counts another. It lives
in config/ because each of those layers may import config/. The order per setting is
PgBouncer 1.25's (src/server.c pool_pool_size, pool_res_pool_size,
probably_wrong_pool_pool_mode, database_max_connections, user_max_connections):

- pool_mode, pool_size, reserve_pool_size: the user's, else the database's, else the global;
- min_pool_size, server_lifetime, max_db_connections: the database's, else the global;
- max_user_connections, query_timeout, idle_transaction_timeout, client_idle_timeout: the
  user's, else the global.

A per-entry value that means "not set" (a negative size, a zero connection cap or time) is
already None in the loaded entry, except the connection caps, where 0 falls back here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pgfunnel.config.loader import DatabaseConfig, UserConfig
    from pgfunnel.config.settings import Settings

__all__ = ["PoolSettings", "resolve_pool_settings"]


@dataclass
class PoolSettings:
    """The resolved limits of one pool ([users] over [databases] over [pgbouncer], as PgBouncer)."""

    pool_mode: str = "session"
    pool_size: int = 20
    min_pool_size: int = 0
    reserve_pool_size: int = 0
    reserve_pool_timeout: float = 5.0
    max_db_connections: int = 0
    max_user_connections: int = 0
    server_lifetime: float = 3600.0
    server_idle_timeout: float = 600.0
    server_connect_timeout: float = 15.0
    server_login_retry: float = 15.0
    server_reset_query: str = "DISCARD ALL"
    server_reset_query_always: bool = False
    server_check_query: str | None = ""  # None: no check; "": an empty query
    server_check_delay: float = 30.0
    query_timeout: float = 0.0
    query_wait_timeout: float = 120.0
    query_wait_notify: float = 5.0
    client_idle_timeout: float = 0.0
    idle_transaction_timeout: float = 0.0
    max_prepared_statements: int = 200
    pooling_hazards: str = "warn"


def _first(*values: Any) -> Any:
    for value in values:
        if value is not None:
            return value
    return None


def _cap(value: int | None, default: int) -> int:
    # PgBouncer: a per-entry max_db/user_connections of 0 (or less) means "use the global one".
    return int(value) if value is not None and value > 0 else int(default)


def resolve_pool_settings(
    settings: Settings,
    database: DatabaseConfig | None = None,
    user: UserConfig | None = None,
) -> PoolSettings:
    """The settings a pool of `database` and `user` runs with. Either may be None: with no
    user the result is the database's own figures (SHOW DATABASES' pool_size, reserve_pool_size
    and max_connections columns), with no database the user's (SHOW USERS' max_user_connections).
    """
    s = settings
    db: Any = database
    uc: Any = user

    def of_db(name: str) -> Any:
        return getattr(db, name, None)

    def of_user(name: str) -> Any:
        return getattr(uc, name, None)

    check = s.server_check_query
    return PoolSettings(
        pool_mode=_first(of_user("pool_mode"), of_db("pool_mode"), s.pool_mode),
        pool_size=_first(of_user("pool_size"), of_db("pool_size"), s.default_pool_size),
        min_pool_size=_first(of_db("min_pool_size"), s.min_pool_size),
        # The database entry keeps PgBouncer's older name, reserve_pool.
        reserve_pool_size=_first(
            of_user("reserve_pool_size"), of_db("reserve_pool"), s.reserve_pool_size
        ),
        reserve_pool_timeout=s.reserve_pool_timeout,
        max_db_connections=_cap(of_db("max_db_connections"), s.max_db_connections),
        max_user_connections=_cap(of_user("max_user_connections"), s.max_user_connections),
        server_lifetime=_first(of_db("server_lifetime"), s.server_lifetime),
        server_idle_timeout=s.server_idle_timeout,
        server_connect_timeout=s.server_connect_timeout,
        server_login_retry=s.server_login_retry,
        server_reset_query=s.server_reset_query,
        server_reset_query_always=s.server_reset_query_always,
        # "<empty>" is PgBouncer's spelling for "send an empty query"; "" turns checks off.
        server_check_query=None if not check else "" if check == "<empty>" else check,
        server_check_delay=s.server_check_delay,
        query_timeout=_first(of_user("query_timeout"), s.query_timeout),
        query_wait_timeout=s.query_wait_timeout,
        query_wait_notify=s.query_wait_notify,
        client_idle_timeout=_first(of_user("client_idle_timeout"), s.client_idle_timeout),
        idle_transaction_timeout=_first(
            of_user("idle_transaction_timeout"), s.idle_transaction_timeout
        ),
        max_prepared_statements=s.max_prepared_statements,
        pooling_hazards=s.pooling_hazards,
    )
