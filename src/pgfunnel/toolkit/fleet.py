"""The application fleet: services, jobs, serverless and poolers, and their worst-case demand."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

# Pool sizes frameworks use when a service sets none: (pool, overflow, note).
FRAMEWORK_DEFAULTS: dict[str, tuple[int | None, int, str]] = {
    "sqlalchemy": (5, 10, "SQLAlchemy QueuePool default pool_size=5 + max_overflow=10"),
    "hikaricp": (10, 0, "HikariCP default maximumPoolSize=10"),
    "node-postgres": (10, 0, "node-postgres Pool default max=10"),
    "prisma": (None, 0, "Prisma default connection_limit = CPUs x 2 + 1"),
    "activerecord": (5, 0, "ActiveRecord default pool=5"),
    "django": (1, 0, "Django: one connection per worker thread/process"),
    "sequelize": (5, 0, "Sequelize default pool.max=5"),
    "typeorm": (10, 0, "TypeORM on node-postgres default max=10"),
    "knex": (10, 0, "knex default pool max=10"),
    "asyncpg": (10, 0, "asyncpg create_pool default max_size=10"),
    "psycopg-pool": (4, 0, "psycopg_pool default min_size=4, max_size=min_size"),
    "pgx": (None, 0, "pgxpool default max_conns = max(4, CPUs)"),
    "generic": (10, 0, "no framework named: assumed a pool of 10"),
}
ALIASES = {
    "hikari": "hikaricp",
    "spring": "hikaricp",
    "pg": "node-postgres",
    "node": "node-postgres",
    "rails": "activerecord",
    "psycopg_pool": "psycopg-pool",
    "pgxpool": "pgx",
}


def framework_pool(framework: str | None, cpus: float = 1) -> tuple[int, int, str]:
    """The default (pool, overflow, why) for a framework name (case-insensitive)."""
    key = (framework or "generic").lower()
    key = ALIASES.get(key, key)
    if key not in FRAMEWORK_DEFAULTS:
        key = "generic"
    pool, overflow, note = FRAMEWORK_DEFAULTS[key]
    ncpu = max(1, math.ceil(cpus))
    if key == "prisma":
        pool = ncpu * 2 + 1
        note += f" = {pool} with {ncpu} CPU(s)"
    elif key == "pgx":
        pool = max(4, ncpu)
        note += f" = {pool}"
    assert pool is not None
    return pool, overflow, note


def surge_count(surge: str | int | None, replicas: int) -> int:
    """Kubernetes maxSurge: an absolute count or a percentage of replicas, rounded up."""
    if surge is None:
        return math.ceil(replicas * 0.25)  # the Deployment default, 25%
    text = str(surge).strip()
    if text.endswith("%"):
        return math.ceil(replicas * float(text[:-1]) / 100)
    return int(text)


@dataclass
class Service:
    """A long-running service with a client-side pool in every process."""

    name: str
    instances: int = 1
    max_instances: int | None = None
    surge: str | int | None = 0
    processes: int = 1
    pool_size: int | None = None
    max_overflow: int | None = None
    framework: str | None = None
    cpus: float = 1
    role: str | None = None
    database: str | None = None
    via_pooler: bool = False
    source: str = ""
    line: int = 0
    notes: list[str] = field(default_factory=list)

    def pool(self) -> tuple[int, int, str | None]:
        """(pool, overflow, note when a framework default filled in)."""
        if self.pool_size is not None:
            return self.pool_size, self.max_overflow or 0, None
        pool, overflow, note = framework_pool(self.framework, self.cpus)
        if self.max_overflow is not None:
            overflow = self.max_overflow
        return pool, overflow, f"default used: {note}"

    def worst_instances(self) -> tuple[int, int]:
        top = max(self.instances, self.max_instances or 0)
        return top, surge_count(self.surge, top)

    def demand(self) -> int:
        top, surge = self.worst_instances()
        pool, overflow, _ = self.pool()
        return (top + surge) * self.processes * (pool + overflow)

    def arithmetic(self) -> str:
        top, surge = self.worst_instances()
        pool, overflow, _ = self.pool()
        return f"({top} + {surge} surge) x {self.processes} proc x ({pool} + {overflow})"


@dataclass
class Job:
    name: str
    concurrency: int = 1
    connections: int = 1
    via_pooler: bool = False
    role: str | None = None
    database: str | None = None
    kind: str = "job"
    source: str = ""
    line: int = 0

    def demand(self) -> int:
        return self.concurrency * self.connections

    def arithmetic(self) -> str:
        return f"{self.concurrency} x {self.connections}"


@dataclass
class PoolerSpec:
    """A PgBouncer-compatible pooler tier: its replicas and pool settings."""

    replicas: int = 1
    pool_mode: str = "transaction"
    default_pool_size: int = 20
    reserve_pool_size: int = 0
    max_db_connections: int = 0
    max_user_connections: int = 0
    max_client_conn: int = 100
    pools: list[tuple[str, str]] = field(default_factory=list)  # (database, user)
    pool_sizes: dict[str, int] = field(default_factory=dict)  # per-database pool_size
    # Read from a pgbouncer.ini: per (database, user) pool its pool_size + reserve_pool_size,
    # and the per-entry max_db_connections / max_user_connections, as the pooler resolves them
    # ([users] over [databases] over [pgbouncer]: config.pools.resolve_pool_settings).
    pool_caps: dict[tuple[str, str], int] = field(default_factory=dict)
    db_caps: dict[str, int] = field(default_factory=dict)
    user_caps: dict[str, int] = field(default_factory=dict)
    dbnames: dict[str, str] = field(default_factory=dict)  # [databases] name -> real dbname
    source: str = ""
    line: int = 0
    notes: list[str] = field(default_factory=list)

    def server_connections_per_replica(
        self,
        pools: list[tuple[str, str]] | None = None,
        *,
        role: str | None = None,
        database: str | None = None,
    ) -> int:
        """Server connections one replica may open at most: each pool's pool_size +
        reserve_pool_size, capped per database by max_db_connections and per user by
        max_user_connections. With `role` / `database` (the real dbname), only the pools that
        log in as that role / into that database: what counts against its CONNECTION LIMIT."""
        pools = pools if pools is not None else self.pools
        if not pools:
            pools = [("*", "*")]
        per_db: dict[str, int] = {}
        per_user: dict[str, int] = {}
        for db, user in pools:
            # '*' (users from an unknown userlist, the fallback database) may be anyone: counted.
            if role is not None and user not in (role, "*"):
                continue
            if database is not None and self.dbnames.get(db, db) not in (database, "*"):
                continue
            size = self.pool_caps.get((db, user))
            if size is None:
                size = self.pool_sizes.get(db, self.default_pool_size) + self.reserve_pool_size
            per_db[db] = per_db.get(db, 0) + size
            per_user[user] = per_user.get(user, 0) + size

        def capped(total: int, cap: int) -> int:
            return min(total, cap) if cap else total

        by_db = sum(
            capped(n, self.db_caps.get(db, self.max_db_connections)) for db, n in per_db.items()
        )
        by_user = sum(
            capped(n, self.user_caps.get(user, self.max_user_connections))
            for user, n in per_user.items()
        )
        return min(by_db, by_user)


@dataclass
class Fleet:
    services: list[Service] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)
    pooler: PoolerSpec | None = None
    role_limits: dict[str, int] = field(default_factory=dict)
    database_limits: dict[str, int] = field(default_factory=dict)

    def members(self) -> list[Service | Job]:
        """Every client of the server: services, then jobs, migrations and serverless."""
        return [*self.services, *self.jobs]


def _int(v: Any, default: int | None = None) -> int | None:
    if v is None or v == "":
        return default
    if isinstance(v, bool):
        raise ValueError(f"expected a number, got {v!r}")
    return int(v)


def from_yaml(data: dict[str, Any], source: str = "") -> Fleet:
    """The advise YAML's fleet description (services, jobs, migrations, serverless, pooler)."""
    fleet = Fleet()
    for s in data.get("services") or []:
        fleet.services.append(
            Service(
                name=str(s["name"]),
                instances=_int(s.get("instances"), 1) or 1,
                max_instances=_int(s.get("max_instances")),
                surge=s.get("surge", 0),
                processes=_int(s.get("processes"), 1) or 1,
                pool_size=_int(s.get("pool_size")),
                max_overflow=_int(s.get("max_overflow", s.get("overflow"))),
                framework=s.get("framework"),
                cpus=float(s.get("cpus", 1)),
                role=s.get("role"),
                database=s.get("database"),
                via_pooler=bool(s.get("via_pooler", False)),
                source=source,
            )
        )
    for kind, key in (("job", "jobs"), ("migration", "migrations")):
        for j in data.get(key) or []:
            fleet.jobs.append(
                Job(
                    name=str(j["name"]),
                    concurrency=_int(j.get("concurrency"), 1) or 1,
                    connections=_int(j.get("connections"), 1) or 1,
                    via_pooler=bool(j.get("via_pooler", False)),
                    role=j.get("role"),
                    database=j.get("database"),
                    kind=kind,
                    source=source,
                )
            )
    for f in data.get("serverless") or []:
        fleet.jobs.append(
            Job(
                name=str(f["name"]),
                concurrency=_int(f.get("concurrency"), 1) or 1,
                connections=_int(f.get("connections_per_invocation", f.get("connections")), 1) or 1,
                via_pooler=bool(f.get("via_pooler", False)),
                role=f.get("role"),
                database=f.get("database"),
                kind="serverless",
                source=source,
            )
        )
    p = data.get("pooler")
    if p:
        fleet.pooler = PoolerSpec(
            replicas=_int(p.get("replicas"), 1) or 1,
            pool_mode=str(p.get("pool_mode", "transaction")),
            default_pool_size=_int(p.get("default_pool_size"), 20) or 20,
            reserve_pool_size=_int(p.get("reserve_pool_size"), 0) or 0,
            max_db_connections=_int(p.get("max_db_connections"), 0) or 0,
            max_user_connections=_int(p.get("max_user_connections"), 0) or 0,
            max_client_conn=_int(p.get("max_client_conn"), 100) or 100,
            source=source,
        )
    limits = data.get("limits") or {}
    fleet.role_limits = {str(k): int(v) for k, v in (limits.get("roles") or {}).items()}
    fleet.database_limits = {str(k): int(v) for k, v in (limits.get("databases") or {}).items()}
    return fleet


def pooled_pairs(
    fleet: Fleet, default_db: str = "app", default_user: str = "app"
) -> list[tuple[str, str]]:
    """The (database, user) pools the pooled services open."""
    pairs = sorted(
        {
            (s.database or default_db, s.role or default_user)
            for s in fleet.members()
            if s.via_pooler
        }
    )
    return pairs


def locate(fleet: Fleet, text: str, source: str) -> None:
    """The line of each member (`name: X`, block or flow style) and of `pooler:` in the fleet
    YAML `text`, so findings point where a reviewer would edit."""
    lines = text.splitlines()

    def line_of(pattern: str) -> int:
        rx = re.compile(pattern)
        return next((i for i, raw in enumerate(lines, 1) if rx.search(raw)), 0)

    for m in fleet.members():
        if m.line == 0:
            m.line = line_of(rf"""\bname:\s*["']?{re.escape(m.name)}["']?\s*(?:[,}}#]|$)""")
            m.source = m.source or source
    if fleet.pooler is not None and fleet.pooler.line == 0 and fleet.pooler.source == source:
        fleet.pooler.line = line_of(r"^pooler\s*:")


_NAME_OK = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def safe_name(name: str) -> str:
    return name if _NAME_OK.match(name) else re.sub(r"[^A-Za-z0-9_.-]", "_", name)
