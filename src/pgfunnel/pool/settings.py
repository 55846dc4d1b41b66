"""The one rule for a pool's effective settings: [users] over [databases] over [pgbouncer].

The scheduler, the admin console (SHOW DATABASES, POOLS, USERS) and /metrics all take their
figures from `resolve_pool_settings`, so a pool never runs with one size while SHOW or a
dashboard reports another. The order per setting is PgBouncer 1.25's (src/server.c
pool_pool_size, pool_res_pool_size, probably_wrong_pool_pool_mode, database_max_connections,
user_max_connections):

- pool_mode, pool_size, reserve_pool_size: the user's, else the database's, else the global;
- min_pool_size, server_lifetime, max_db_connections: the database's, else the global;
- max_user_connections, query_timeout, idle_transaction_timeout, client_idle_timeout: the
  user's, else the global.

A per-entry value that means "not set" (a negative size, a zero connection cap or time) is
already None in the loaded entry, except the connection caps, where 0 falls back here too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pgfunnel.pool.scheduler import PoolSettings

if TYPE_CHECKING:
    from pgfunnel.config.loader import DatabaseConfig, UserConfig
    from pgfunnel.config.settings import Settings

__all__ = ["resolve_pool_settings"]


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
    )
