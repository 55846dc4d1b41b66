"""The application side of advise: per-process pool sizes, timeouts and the pooler's address,
written as the configuration each client library takes."""

from __future__ import annotations

from dataclasses import dataclass

from pgfunnel.toolkit import fleet as fl

# Behind a pooler, a client pool only needs to cover a process's own concurrency: 5-10 per
# process; more would only queue in the pooler, fewer stalls the process on its own pool.
APP_POOL_MIN = 5
APP_POOL_MAX = 10
# An idle client connection is closed after 5 minutes (below the usual 10-minute idle cutoffs
# of load balancers and NAT tables, which otherwise drop it silently), and a connection attempt
# that takes longer than 5 seconds fails fast instead of stacking requests behind it.
IDLE_TIMEOUT_S = 300
CONNECT_TIMEOUT_S = 5
POOLER_PORT = 6432

# The libraries whose settings a service that names none is shown (knex runs on node-postgres'
# driver); Prisma's form is shown to services that name it.
SNIPPET_LIBRARIES = ("sqlalchemy", "node-postgres", "knex", "hikaricp", "activerecord", "django")
_LIBRARY_OF = {
    "sqlalchemy": "sqlalchemy",
    "node-postgres": "node-postgres",
    "pg": "node-postgres",
    "node": "node-postgres",
    "typeorm": "node-postgres",
    "knex": "knex",
    "hikaricp": "hikaricp",
    "hikari": "hikaricp",
    "spring": "hikaricp",
    "activerecord": "activerecord",
    "rails": "activerecord",
    "django": "django",
    "prisma": "prisma",
}


@dataclass
class ClientAdvice:
    """What one service's client pool should be, and where it connects."""

    name: str
    library: str | None  # a key of _SNIPPETS, None when the service names no known library
    pool: int
    current: str  # the pool as found: "5 + 10 overflow"
    processes: int
    host: str
    port: int
    database: str
    user: str
    via_pooler: bool
    transaction_pooling: bool

    def summary(self) -> str:
        where = "the pooler" if self.via_pooler else "PostgreSQL directly"
        return (
            f"{self.name}: pool {self.pool} per process, no overflow (was {self.current}), "
            f"{self.processes} process(es) per instance; idle timeout {IDLE_TIMEOUT_S}s, connect "
            f"timeout {CONNECT_TIMEOUT_S}s; to {where} at {self.host}:{self.port}"
        )

    def snippet(self, library: str | None = None) -> list[str]:
        """The settings in `library`'s own form (this service's library by default)."""
        lib = library or self.library or "sqlalchemy"
        return _SNIPPETS[lib](self)


def for_service(
    svc: fl.Service, *, host: str, port: int, database: str, user: str, transaction: bool
) -> ClientAdvice:
    pool, overflow, _ = svc.pool()
    key = (svc.framework or "").lower()
    if _LIBRARY_OF.get(key) == "django":
        # One connection per worker thread: the "pool" is the thread count, not a setting.
        per_process = pool
    elif svc.via_pooler:
        per_process = min(APP_POOL_MAX, max(APP_POOL_MIN, pool + overflow))
    else:
        # A direct service keeps what it has (its demand is what max_connections was sized
        # for), without an overflow that check could not bound.
        per_process = pool + overflow
    return ClientAdvice(
        name=svc.name,
        library=_LIBRARY_OF.get(key),
        pool=per_process,
        current=f"{pool}" + (f" + {overflow} overflow" if overflow else ""),
        processes=svc.processes,
        host=host,
        port=port,
        database=svc.database or database,
        user=svc.role or user,
        via_pooler=svc.via_pooler,
        transaction_pooling=transaction and svc.via_pooler,
    )


def _sqlalchemy(a: ClientAdvice) -> list[str]:
    lines = [
        "# SQLAlchemy (psycopg 3)",
        "engine = create_engine(",
        f'    "postgresql+psycopg://{a.user}@{a.host}:{a.port}/{a.database}",',
        f"    pool_size={a.pool}, max_overflow=0, pool_timeout={CONNECT_TIMEOUT_S},",
        f"    pool_recycle={IDLE_TIMEOUT_S}, pool_pre_ping=True,",
    ]
    if a.transaction_pooling:
        # pgfunnel does not track protocol-level prepared statements yet: psycopg must not
        # prepare them server-side.
        lines.append(
            f'    connect_args={{"connect_timeout": {CONNECT_TIMEOUT_S}, '
            '"prepare_threshold": None},'
        )
    else:
        lines.append(f'    connect_args={{"connect_timeout": {CONNECT_TIMEOUT_S}}},')
    lines.append(")")
    return lines


def _node_postgres(a: ClientAdvice) -> list[str]:
    return [
        "// node-postgres",
        "const pool = new Pool({",
        f'  host: "{a.host}", port: {a.port}, database: "{a.database}", user: "{a.user}",',
        f"  max: {a.pool}, idleTimeoutMillis: {IDLE_TIMEOUT_S * 1000}, "
        f"connectionTimeoutMillis: {CONNECT_TIMEOUT_S * 1000},",
        "});",
    ]


def _knex(a: ClientAdvice) -> list[str]:
    return [
        "// knex",
        "const db = knex({",
        '  client: "pg",',
        f'  connection: {{ host: "{a.host}", port: {a.port}, database: "{a.database}", '
        f'user: "{a.user}" }},',
        f"  pool: {{ min: 0, max: {a.pool}, idleTimeoutMillis: {IDLE_TIMEOUT_S * 1000}, "
        f"acquireTimeoutMillis: {CONNECT_TIMEOUT_S * 1000} }},",
        "});",
    ]


def _hikaricp(a: ClientAdvice) -> list[str]:
    # prepareThreshold=0: pgJDBC's server-side prepared statements do not survive transaction
    # pooling.
    query = "?prepareThreshold=0" if a.transaction_pooling else ""
    return [
        "# HikariCP (Spring Boot application.properties)",
        f"spring.datasource.url=jdbc:postgresql://{a.host}:{a.port}/{a.database}{query}",
        f"spring.datasource.username={a.user}",
        f"spring.datasource.hikari.maximum-pool-size={a.pool}",
        "spring.datasource.hikari.minimum-idle=1",
        f"spring.datasource.hikari.idle-timeout={IDLE_TIMEOUT_S * 1000}",
        f"spring.datasource.hikari.connection-timeout={CONNECT_TIMEOUT_S * 1000}",
    ]


def _activerecord(a: ClientAdvice) -> list[str]:
    lines = [
        "# Rails config/database.yml",
        "production:",
        "  adapter: postgresql",
        f"  host: {a.host}",
        f"  port: {a.port}",
        f"  database: {a.database}",
        f"  username: {a.user}",
        f"  pool: {a.pool}",
        f"  checkout_timeout: {CONNECT_TIMEOUT_S}",
        f"  connect_timeout: {CONNECT_TIMEOUT_S}",
        f"  idle_timeout: {IDLE_TIMEOUT_S}",
    ]
    if a.transaction_pooling:
        lines += ["  prepared_statements: false", "  advisory_locks: false"]
    return lines


def _django(a: ClientAdvice) -> list[str]:
    # Django opens one connection per worker thread: the pool is the worker count, so only the
    # connection's lifetime and timeouts are set here.
    lines = [
        "# Django settings.py",
        "DATABASES = {",
        '    "default": {',
        '        "ENGINE": "django.db.backends.postgresql",',
        f'        "HOST": "{a.host}", "PORT": {a.port}, "NAME": "{a.database}", '
        f'"USER": "{a.user}",',
        f'        "CONN_MAX_AGE": {IDLE_TIMEOUT_S}, "CONN_HEALTH_CHECKS": True,',
        f'        "OPTIONS": {{"connect_timeout": {CONNECT_TIMEOUT_S}}},',
    ]
    if a.transaction_pooling:
        lines.append('        "DISABLE_SERVER_SIDE_CURSORS": True,')
    lines += ["    }", "}"]
    return lines


def _prisma(a: ClientAdvice) -> list[str]:
    # Prisma's pool lives in the URL; pgbouncer=true turns off its prepared statements.
    query = f"connection_limit={a.pool}&pool_timeout={CONNECT_TIMEOUT_S}"
    query += f"&connect_timeout={CONNECT_TIMEOUT_S}"
    if a.transaction_pooling:
        query += "&pgbouncer=true"
    return [
        "# Prisma (environment)",
        f"DATABASE_URL=postgresql://{a.user}@{a.host}:{a.port}/{a.database}?{query}",
    ]


_SNIPPETS = {
    "prisma": _prisma,
    "sqlalchemy": _sqlalchemy,
    "node-postgres": _node_postgres,
    "knex": _knex,
    "hikaricp": _hikaricp,
    "activerecord": _activerecord,
    "django": _django,
}
