"""Pure sizing for `pgfunnel advise`: demand vs supply, memory budget, pooler and Postgres "
"settings."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pgfunnel.toolkit import check as ck
from pgfunnel.toolkit import clients as cl
from pgfunnel.toolkit import fleet as fl
from pgfunnel.toolkit import rds
from pgfunnel.toolkit.inputs import InputError, Inputs
from pgfunnel.toolkit.pgtune import PgTuneInput, pgtune
from pgfunnel.toolkit.units import format_bytes, format_kb, parse_size, pg_memory_to_kb

RESTART_NEEDED = {
    "max_connections",
    "shared_buffers",
    "huge_pages",
    "max_worker_processes",
    "wal_buffers",
    "superuser_reserved_connections",
    "reserved_connections",
    "autovacuum_max_workers",
    "max_wal_senders",
    "wal_level",
    "io_method",
    "io_workers",
    "max_locks_per_transaction",
}
# The memory budget (shared_buffers + max_connections x baseline + active x work_mem x
# hash_mem_multiplier + autovacuum) may reach this share of RAM; above it is an out-of-memory
# risk, and advise never recommends a max_connections that crosses it.
MEMORY_CEILING = 0.9
MIN_WORK_MEM_KB = 4 * 1024  # PostgreSQL's default work_mem; advise never goes below it
# Slots for postgres_exporter, backups and people with psql, on top of the pooler's.
MONITORING_CONNECTIONS = 5
# The runbooks' pooler settings: default_pool_size 20-25 per database/user pair (25 from 8 cores),
# a reserve of 5 a client may use after waiting 3 s, idle server connections closed after 5 min.
POOL_SIZE = 20
POOL_SIZE_MANY_CORES = 25
MANY_CORES = 8
RESERVE_POOL_SIZE = 5
RESERVE_POOL_TIMEOUT = 3
SERVER_IDLE_TIMEOUT = 300
TRANSACTION_POOLING_CAVEATS = [
    "SET / RESET of session settings leak to the next client: use SET LOCAL inside transactions, "
    "or ALTER ROLE ... SET",
    "session advisory locks (pg_advisory_lock) stay with the server connection: use "
    "pg_advisory_xact_lock",
    "LISTEN / NOTIFY listeners need a session: connect listeners directly or through a "
    "session-mode pool",
    "temporary tables outlive the transaction on the server connection: use ON COMMIT DROP",
    "WITH HOLD cursors survive the transaction: not usable",
    "SQL-level PREPARE / EXECUTE / DEALLOCATE: use protocol-level prepared statements "
    "(max_prepared_statements) instead",
]


@dataclass
class Hardware:
    ram_bytes: int
    cpus: int
    source: str = "flags"


@dataclass
class ConfRow:
    name: str
    current: str | None
    recommended: str
    reason: str
    restart: bool
    pinned: bool = False

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass
class Advice:
    hardware: Hardware
    check: ck.Result
    steps: list[str]
    pooler_settings: dict[str, str]
    pooler_databases: dict[str, str]
    conf_rows: list[ConfRow]
    pgtune_rows: list[tuple[str, str]]
    memory: dict[str, Any]
    validation: list[str]
    caveats: list[str]
    warnings: list[str] = field(default_factory=list)
    # What `pgfunnel check` says of the fleet and supply as given (None: max_connections unknown).
    as_given: ck.Result | None = None
    rerouted: list[str] = field(default_factory=list)  # direct clients advise routes via pooler
    clients: list[cl.ClientAdvice] = field(default_factory=list)

    @property
    def pooled(self) -> bool:
        """Whether anything goes through the pooler (else there is no pgbouncer.ini to write)."""
        return bool(self.pooler_settings)

    def pgbouncer_ini(self) -> str:
        lines = [
            "; pgbouncer.ini written by pgfunnel advise: loads in pgfunnel serve and PgBouncer.",
            "; The numbers and their reasons are in the advise report.",
            "",
            "[databases]",
        ]
        lines += [f"{db} = {conn}" for db, conn in self.pooler_databases.items()]
        lines += ["", "[pgbouncer]"]
        lines += [f"{k} = {v}" for k, v in self.pooler_settings.items()]
        return "\n".join(lines) + "\n"

    def alter_system(self) -> str:
        out = ["-- ALTER SYSTEM form of the recommended postgresql.conf changes (pgfunnel advise)."]
        for r in self.conf_rows:
            if r.pinned or r.current == r.recommended:
                continue
            out.append(
                f"ALTER SYSTEM SET {r.name} = '{r.recommended}';  -- {r.reason}"
                + (" (restart)" if r.restart else "")
            )
        restart = any(
            r.restart and not r.pinned and r.current != r.recommended for r in self.conf_rows
        )
        out.append("-- then: " + ("restart PostgreSQL" if restart else "SELECT pg_reload_conf();"))
        return "\n".join(out) + "\n"

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": "pgfunnel.advise/1",
            "hardware": self.hardware.__dict__,
            "steps": self.steps,
            "check": self.check.as_dict(),
            "pooler": {"databases": self.pooler_databases, "settings": self.pooler_settings}
            if self.pooled
            else None,
            "postgresql_conf": [r.as_dict() for r in self.conf_rows],
            "pgtune": [{"name": k, "value": v} for k, v in self.pgtune_rows],
            "memory": self.memory,
            "validation": self.validation,
            "transaction_pooling_caveats": self.caveats,
            "warnings": self.warnings,
            "as_given": self.as_given.as_dict() if self.as_given else None,
            "rerouted_through_pooler": self.rerouted,
            "clients": [
                {**c.__dict__, "snippet": c.snippet() if c.library else None} for c in self.clients
            ],
        }


def _kb(conf: dict[str, str], name: str, default_kb: int) -> int:
    try:
        return pg_memory_to_kb(conf[name], "kB") if name in conf else default_kb
    except ValueError:
        return default_kb


def advise(
    inp: Inputs,
    hw: Hardware,
    *,
    ratio: float = 0.8,
    backend_mem_mb: float = 10.0,
    db_type: str = "web",
    pg_version: int = 15,
    storage: str = "ssd",
    db_size: str = "mid",
    os_type: str = "linux",
) -> Advice:
    data = inp.raw_fleet
    server = data.get("server") or {}
    pooler_cfg = data.get("pooler") or {}
    supply = inp.supply
    # 0. The fleet as given, against the supply as given: what `pgfunnel check` says of it.
    as_given = (
        ck.evaluate(copy.deepcopy(inp.fleet), supply, ratio) if supply.usable is not None else None
    )
    fleet = inp.fleet
    steps: list[str] = []
    warnings: list[str] = []
    # 1. Which clients go through the pooler.
    raw_services = {
        str(s.get("name")): s for s in data.get("services") or [] if isinstance(s, dict)
    }
    routed = []
    for svc in fleet.services:
        if "via_pooler" not in raw_services.get(svc.name, {}):
            svc.via_pooler = True
            routed.append(svc.name)
    if routed:
        steps.append(f"routed through the pooler (no via_pooler: false given): {', '.join(routed)}")
    rerouted: list[str] = []
    for j in fleet.jobs:
        if j.kind == "serverless" and not j.via_pooler:
            # Nothing bounds a function's concurrency but the platform's limit, and each
            # invocation opens its own connections: only a pooler caps what reaches the server.
            j.via_pooler = True
            rerouted.append(j.name)
            steps.append(
                f"route {j.name} (serverless) through the pooler: serverless always needs one "
                f"(concurrency {j.concurrency} x {j.connections} connection(s), bounded only by "
                "the platform)"
            )
    replicas = int(pooler_cfg.get("replicas", 1))
    default_db = str(server.get("dbname", "app"))
    default_user = str(server.get("user", "app"))
    pool_mode = str(pooler_cfg.get("pool_mode", "transaction"))
    pinned = supply.pinned
    # 2. The memory that does not depend on max_connections: shared_buffers and autovacuum.
    base_tune = dict(
        pgtune(
            PgTuneInput(
                hw.ram_bytes,
                hw.cpus,
                100,
                db_type,
                pg_version,
                os_type=os_type,
                storage=storage,
                db_size=db_size,
            )
        )
    )
    fixed_settings = {**base_tune, **pinned}
    shared_kb = pg_memory_to_kb(fixed_settings["shared_buffers"])
    av_n = int(
        fixed_settings.get("autovacuum_max_workers", inp.conf.get("autovacuum_max_workers", "3"))
    )
    av_kb = pg_memory_to_kb(
        fixed_settings.get("autovacuum_work_mem")
        or fixed_settings.get("maintenance_work_mem", "64MB")
    )
    hmm = float(inp.conf.get("hash_mem_multiplier", "2.0"))
    monitoring = int(server.get("monitoring_connections", MONITORING_CONNECTIONS))
    reserved = supply.superuser_reserved + supply.reserved
    ceiling_kb = MEMORY_CEILING * hw.ram_bytes / 1024
    backend_kb = backend_mem_mb * 1024

    def mc_cap(active: int) -> int:
        """The largest max_connections whose memory budget stays under the ceiling, with
        `active` sessions at the smallest work_mem advise gives (4MB)."""
        spare = ceiling_kb - shared_kb - av_n * av_kb - active * MIN_WORK_MEM_KB * hmm
        return max(0, math.floor(spare / backend_kb))

    def needed_for(active: int) -> int:
        return math.ceil(active / ratio) + monitoring + reserved

    # 3. Size the pooler; route direct clients through it while the server cannot afford them.
    candidates = sorted(
        (m for m in fleet.members() if not m.via_pooler and getattr(m, "kind", "") != "migration"),
        key=lambda m: -m.demand(),
    )
    while True:
        plan = _size_pooler(fleet, replicas, default_db, default_user, hw.cpus, needed_for, mc_cap)
        if needed_for(plan.active) <= mc_cap(plan.active) or not candidates:
            break
        m = candidates.pop(0)
        m.via_pooler = True
        rerouted.append(m.name)
        need = needed_for(plan.active)
        budget_kb = shared_kb + av_n * av_kb + need * backend_kb
        budget_kb += plan.active * MIN_WORK_MEM_KB * hmm
        steps.append(
            f"route {m.name} through the pooler: with its {m.demand()} direct connections the "
            f"server needs max_connections {need} and a memory budget of "
            f"{format_bytes(budget_kb * 1024)} (work_mem at 4MB), over {MEMORY_CEILING:.0%} of "
            f"{format_bytes(hw.ram_bytes)} RAM"
        )
    pairs = plan.pairs
    direct, pooler_server = plan.direct, plan.pooler_server
    for s in fleet.services:
        steps.append(
            f"demand {s.name}: {s.arithmetic()} = {s.demand()}"
            + (" via pooler" if s.via_pooler else " direct")
        )
    for j in fleet.jobs:
        steps.append(
            f"demand {j.name} ({j.kind}): {j.arithmetic()} = {j.demand()}"
            + (" via pooler" if j.via_pooler else " direct")
        )
    pooled = bool(pairs)
    if not pooled:
        fleet.pooler = None
        steps.append(
            "no service or job goes through the pooler (via_pooler: false everywhere): no "
            "pooler to size, every connection is direct"
        )
    else:
        steps += plan.steps
    active = pooler_server + direct
    # 4. max_connections: what the poolers, direct clients, monitoring and the reservations
    # need, never more than the memory affords.
    needed = needed_for(active)
    cap = mc_cap(active)
    current_mc = supply.max_connections
    if "max_connections" in pinned:
        rec_mc = int(pinned["max_connections"])
        if rec_mc < needed:
            warnings.append(f"max_connections is pinned at {rec_mc}; the fleet needs {needed}")
        if rec_mc > cap:
            warnings.append(
                f"max_connections is pinned at {rec_mc}; above {cap} the memory budget exceeds "
                f"{MEMORY_CEILING:.0%} of RAM"
            )
    elif current_mc is not None and needed <= current_mc <= cap:
        rec_mc = current_mc
    else:
        rec_mc = needed
    steps.append(
        f"max_connections needed = ceil(({pooler_server} pooled + {direct} direct) / {ratio:g}) + "
        f"{monitoring} monitoring + {supply.superuser_reserved} superuser_reserved + "
        f"{supply.reserved} reserved = {needed}; RAM affords at most {cap}; recommended {rec_mc}"
        + (f" (current {current_mc})" if current_mc is not None else "")
    )
    if current_mc is not None and current_mc > cap and "max_connections" not in pinned:
        steps.append(
            f"current max_connections {current_mc} is above what RAM affords ({cap}): lowered to "
            f"what the pooler{'s' if replicas > 1 else ''}, direct clients, superusers and "
            "monitoring need"
        )
    if needed > cap:
        warnings.append(
            f"even with every client but migrations behind the pooler, the fleet needs "
            f"max_connections {needed}, above the {cap} that {format_bytes(hw.ram_bytes)} RAM "
            "affords: lower the pooler's pool sizes or give the server more memory"
        )
    # 5. PGTune, then our adjustments.
    tune = pgtune(
        PgTuneInput(
            hw.ram_bytes,
            hw.cpus,
            rec_mc,
            db_type,
            pg_version,
            os_type=os_type,
            storage=storage,
            db_size=db_size,
        )
    )
    tuned = dict(tune)
    ram_kb = hw.ram_bytes // 1024
    workers = int(tuned.get("max_worker_processes", 8))
    # Only the pooled + direct server connections run queries; keep the whole budget <= 75% RAM.
    spare_kb = 0.75 * ram_kb - shared_kb - rec_mc * backend_kb - av_n * av_kb
    fit_wm = math.floor(spare_kb / (max(1, active) * hmm))
    spread_wm = math.floor((ram_kb - shared_kb) / ((active + workers) * 3))
    recommended: list[tuple[str, str, str]] = []
    for name, value in tune:
        reason = "PGTune formula"
        if name == "max_connections":
            reason = "pooled + direct server connections / ratio + monitoring + reserved slots"
        if name == "work_mem":
            ours = max(MIN_WORK_MEM_KB, min(spread_wm, fit_wm))
            if ours > pg_memory_to_kb(value):
                value = format_kb(ours)
                reason = (
                    f"PGTune divides by max_connections; only {active} server connections "
                    "can be active behind the pooler (memory budget kept under 75% of RAM)"
                )
            elif pg_memory_to_kb(value) > max(MIN_WORK_MEM_KB, fit_wm):
                reason = (
                    f"lowered from PGTune's {value}: {active} active server connections at "
                    "PGTune's work_mem would take the memory budget over 75% of RAM"
                )
                value = format_kb(max(MIN_WORK_MEM_KB, fit_wm))
        recommended.append((name, value, reason))
    recommended.append(
        (
            "idle_in_transaction_session_timeout",
            "5min",
            "a leaked transaction gives its slot back (pooler also has idle_transaction_timeout)",
        )
    )
    conf = inp.conf
    rows: list[ConfRow] = []
    for name, value, reason in recommended:
        current = conf.get(name)
        is_pinned = name in pinned
        if is_pinned:
            reason = f"pinned by you at {pinned[name]}: kept (we would set {value}: {reason})"
            value = pinned[name]
        rows.append(ConfRow(name, current, value, reason, name in RESTART_NEEDED, is_pinned))
    # 6. Memory budget with the recommended settings.
    settings = {r.name: r.recommended for r in rows}
    sb_kb = pg_memory_to_kb(settings.get("shared_buffers", "128MB"))
    wm_kb = pg_memory_to_kb(settings.get("work_mem", "4MB"))
    av_workers = int(
        settings.get("autovacuum_max_workers", conf.get("autovacuum_max_workers", "3"))
    )
    av_mem_kb = pg_memory_to_kb(
        settings.get("autovacuum_work_mem") or settings.get("maintenance_work_mem", "64MB")
    )
    mc = int(settings.get("max_connections", rec_mc))
    parts = {
        "shared_buffers": sb_kb * 1024,
        "backends_baseline": int(mc * backend_mem_mb * 1024 * 1024),
        "work_mem_active": int(active * wm_kb * 1024 * hmm),
        "autovacuum": av_workers * av_mem_kb * 1024,
    }
    total = sum(parts.values())
    memory = {
        "ram_bytes": hw.ram_bytes,
        "parts_bytes": parts,
        "total_bytes": total,
        "share_of_ram": round(total / hw.ram_bytes, 4),
        "formula": (
            f"shared_buffers {format_bytes(parts['shared_buffers'])} + {mc} max_connections x "
            f"{backend_mem_mb:g} MiB baseline + {active} active x work_mem {format_kb(wm_kb)} x "
            f"hash_mem_multiplier {hmm:g} + {av_workers} autovacuum workers x "
            f"{format_kb(av_mem_kb)} "
            f"= {format_bytes(total)} of {format_bytes(hw.ram_bytes)} RAM"
        ),
        "oom_risk": total > MEMORY_CEILING * hw.ram_bytes,
    }
    if memory["oom_risk"]:
        warnings.append(f"out-of-memory risk: the budget is {total / hw.ram_bytes:.0%} of RAM")
    # 7. Cross-parameter validation.
    validation = _validate(settings, supply, rec_mc, pooler_server, direct, hw)
    # 8. The pooler configuration (none when nothing is pooled) and the clients' settings.
    host = str(server.get("host", "127.0.0.1"))
    port = int(server.get("port", 5432))
    pooler_databases: dict[str, str] = {}
    pooler_settings: dict[str, str] = {}
    if pooled:
        pooler_databases = {
            db: f"host={host} port={port} dbname={db}" for db in sorted({d for d, _ in pairs})
        }
        pooler_settings = {
            "listen_addr": str(pooler_cfg.get("listen_addr", "0.0.0.0")),
            "listen_port": str(pooler_cfg.get("listen_port", cl.POOLER_PORT)),
            "auth_type": str(pooler_cfg.get("auth_type", "scram-sha-256")),
            "auth_file": str(pooler_cfg.get("auth_file", "userlist.txt")),
            "pool_mode": pool_mode,
            "default_pool_size": str(plan.default_pool),
            "reserve_pool_size": str(plan.reserve),
            "reserve_pool_timeout": str(RESERVE_POOL_TIMEOUT),
            "max_db_connections": str(plan.max_db),
            "max_client_conn": str(plan.max_client),
            "server_idle_timeout": str(SERVER_IDLE_TIMEOUT),
            "idle_transaction_timeout": str(pooler_cfg.get("idle_transaction_timeout", 60)),
        }
        fleet.pooler = fl.PoolerSpec(
            replicas=replicas,
            pool_mode=pool_mode,
            default_pool_size=plan.default_pool,
            reserve_pool_size=plan.reserve,
            max_db_connections=plan.max_db,
            max_client_conn=plan.max_client,
            pools=pairs,
            source="pgbouncer.ini (advised)",
        )
    pooler_host = str(pooler_cfg.get("host", "<pooler-host>"))
    pooler_port = int(pooler_cfg.get("listen_port", cl.POOLER_PORT))
    clients_advice = [
        cl.for_service(
            s,
            host=pooler_host if s.via_pooler else host,
            port=pooler_port if s.via_pooler else port,
            database=default_db,
            user=default_user,
            transaction=pool_mode == "transaction",
        )
        for s in fleet.services
    ]
    result = ck.evaluate(fleet, supply_for(rec_mc, supply), ratio)
    caveats = TRANSACTION_POOLING_CAVEATS if pooled and pool_mode == "transaction" else []
    return Advice(
        hw,
        result,
        steps,
        pooler_settings,
        pooler_databases,
        rows,
        tune,
        memory,
        validation,
        caveats,
        warnings,
        as_given=as_given,
        rerouted=rerouted,
        clients=clients_advice,
    )


@dataclass
class PoolerPlan:
    pairs: list[tuple[str, str]]
    direct: int
    clients: int
    default_pool: int = 0
    reserve: int = 0
    max_db: int = 0
    max_client: int = 0
    pooler_server: int = 0
    steps: list[str] = field(default_factory=list)

    @property
    def active(self) -> int:
        return self.pooler_server + self.direct


def _size_pooler(
    fleet: fl.Fleet,
    replicas: int,
    default_db: str,
    default_user: str,
    cpus: int,
    needed_for: Callable[[int], int],
    mc_cap: Callable[[int], int],
) -> PoolerPlan:
    """The runbooks' pool sizes: default_pool_size 20 per (database, user) pair, 25 on 8+ cores,
    never more than a pair's clients per pooler replica, lowered until the server connections
    fit what RAM affords; reserve_pool_size 5 (fewer on small pools); max_client_conn for the
    worst case of every pooled client, with one pooler replica down."""
    pairs = fl.pooled_pairs(fleet, default_db, default_user)
    direct = sum(m.demand() for m in fleet.members() if not m.via_pooler)
    clients = sum(m.demand() for m in fleet.members() if m.via_pooler)
    plan = PoolerPlan(pairs, direct, clients)
    if not pairs:
        return plan
    base = POOL_SIZE_MANY_CORES if cpus >= MANY_CORES else POOL_SIZE
    per_pair_clients = {
        pair: sum(
            m.demand()
            for m in fleet.members()
            if m.via_pooler and (m.database or default_db, m.role or default_user) == pair
        )
        for pair in pairs
    }
    busiest = max(math.ceil(n / replicas) for n in per_pair_clients.values())
    default_pool = max(1, min(base, busiest))
    why = (
        f"runbook {POOL_SIZE}-{POOL_SIZE_MANY_CORES} per database/user pair: {base} with "
        f"{cpus} CPU(s)"
    )
    if busiest < base:
        why += f", capped at the busiest pair's {busiest} client(s) per pooler replica"
    while True:
        reserve = RESERVE_POOL_SIZE if default_pool >= 10 else default_pool // 4
        per_pair = default_pool + reserve
        server = replicas * len(pairs) * per_pair
        active = server + direct
        if needed_for(active) <= mc_cap(active) or default_pool == 1:
            break
        default_pool -= 1
    if default_pool < min(base, busiest):
        why += f", lowered to {default_pool} so the server connections fit what RAM affords"
    dbs = sorted({db for db, _ in pairs})
    plan.default_pool, plan.reserve = default_pool, reserve
    plan.max_db = max(per_pair * sum(1 for d, _ in pairs if d == db) for db in dbs)
    plan.pooler_server = replicas * per_pair * len(pairs)
    # A replica that goes away hands its clients to the others.
    survivors = max(1, replicas - 1)
    plan.max_client = max(100, math.ceil(clients / survivors * 1.1))
    plan.steps = [
        f"default_pool_size {default_pool} ({why}); reserve_pool_size {reserve} after "
        f"reserve_pool_timeout {RESERVE_POOL_TIMEOUT}s; {replicas} replica(s) x {len(pairs)} "
        f"pool(s) x {per_pair} = {plan.pooler_server} server connections",
        f"max_client_conn = max(100, {clients} clients / {survivors} replica(s) left with one "
        f"down x 1.1) = {plan.max_client}",
    ]
    return plan


def supply_for(max_connections: int, base: Any) -> Any:
    from pgfunnel.toolkit.inputs import Supply

    return Supply(
        max_connections,
        base.superuser_reserved,
        base.reserved,
        [*base.steps, f"advised max_connections = {max_connections}"],
    )


def _validate(
    settings: dict[str, str], supply: Any, mc: int, pooled: int, direct: int, hw: Hardware
) -> list[str]:
    out = []
    mwp = int(settings.get("max_worker_processes", 8))
    mpw = int(settings.get("max_parallel_workers", 8))
    gather = int(settings.get("max_parallel_workers_per_gather", 2))
    ok = "ok" if mpw <= mwp else "VIOLATED"
    out.append(f"max_parallel_workers {mpw} <= max_worker_processes {mwp}: {ok}")
    ok = "ok" if gather <= mpw else "VIOLATED"
    out.append(f"max_parallel_workers_per_gather {gather} <= max_parallel_workers {mpw}: {ok}")
    reserved = supply.superuser_reserved + supply.reserved
    ok = "ok" if reserved < mc else "VIOLATED"
    out.append(
        f"superuser_reserved_connections + reserved_connections {reserved} < max_connections "
        f"{mc}: {ok}"
    )
    usable = mc - reserved
    ok = "ok" if pooled + direct <= usable else "VIOLATED"
    out.append(f"pooler server connections {pooled} + direct {direct} <= usable {usable}: {ok}")
    sb = pg_memory_to_kb(settings.get("shared_buffers", "128MB")) * 1024
    ok = "ok" if sb <= 0.4 * hw.ram_bytes else "VIOLATED"
    out.append(f"shared_buffers {format_bytes(sb)} <= 40% of RAM: {ok}")
    if settings.get("wal_level") == "minimal":
        ok = "ok" if settings.get("max_wal_senders") == "0" else "VIOLATED"
        out.append(f"wal_level minimal needs max_wal_senders 0: {ok}")
    return out


def resolve_hardware(
    ram: str | int | None,
    cpus: int | None,
    instance_class: str | None,
    ram_from: str = "--ram",
    cpus_from: str = "--cpus",
) -> Hardware:
    """RAM and CPUs from what was given, the rest from the RDS instance class; the source says
    where each figure came from. On RDS the RAM is DBInstanceClassMemory (the class's memory
    less RDS's own share, estimated), the memory PostgreSQL's settings are sized from."""
    klass = None
    if instance_class and (ram is None or cpus is None):
        try:
            klass = rds.instance_class(instance_class)
        except rds.RdsError as exc:
            raise InputError(str(exc)) from exc
    if klass is None and (ram is None or cpus is None):
        raise InputError(
            "give --ram and --cpus (or server.ram/cpus in the fleet YAML), --instance-class "
            "for an RDS class, or --from-cgroup beside the server"
        )
    parts = []
    if ram is not None:
        ram_bytes = parse_size(ram)
        parts.append(f"RAM from {ram_from}")
    else:
        assert klass is not None
        ram_bytes = klass.class_memory_bytes
        parts.append(
            f"RAM: RDS {klass.name} {klass.memory_gib:g} GiB less RDS's share = "
            f"DBInstanceClassMemory ({rds.RESERVE_NOTE})"
        )
    if cpus is not None:
        n = int(cpus)
        parts.append(f"CPUs from {cpus_from}")
    else:
        assert klass is not None
        n = klass.vcpus
        parts.append(f"{klass.vcpus} vCPUs of RDS {klass.name}")
    if klass is not None:
        parts.append(f"class table: {rds.SOURCE}")
    return Hardware(ram_bytes, n, "; ".join(parts))


def hardware_from_cgroup(root: str | None = None) -> Hardware:
    """RAM and CPUs as the container sees them: cgroup v2/v1 limits, else the host's.

    `root` is the cgroup mount (default /sys/fs/cgroup, or $PGFUNNEL_CGROUP_ROOT when set)."""
    import os
    from pathlib import Path

    base = Path(root or os.environ.get("PGFUNNEL_CGROUP_ROOT") or "/sys/fs/cgroup")
    ram = None
    for p in (base / "memory.max", base / "memory" / "memory.limit_in_bytes"):
        try:
            text = p.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            ram = int(text)
            break
    if ram is None:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) * 1024
    cpus: float | None = None
    try:
        quota, period = (base / "cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = int(quota) / int(period)
    except (OSError, ValueError):
        try:
            q = int((base / "cpu" / "cpu.cfs_quota_us").read_text())
            per = int((base / "cpu" / "cpu.cfs_period_us").read_text())
            cpus = q / per if q > 0 else None
        except (OSError, ValueError):
            cpus = None
    n = math.ceil(cpus) if cpus else (os.cpu_count() or 1)
    return Hardware(ram or 1024**3, n, "cgroup")


def render_text(a: Advice) -> str:
    out = [
        f"Hardware: {format_bytes(a.hardware.ram_bytes)} RAM, {a.hardware.cpus} CPUs "
        f"({a.hardware.source})",
        "",
    ]
    out.append("Demand and supply, step by step")
    out += [f"  {s}" for s in a.check.supply.steps]
    out += [f"  {s}" for s in a.steps]
    out.append("")
    out.append("As given (what pgfunnel check says of these files)")
    if a.as_given is None:
        out.append("  max_connections unknown: no verdict")
    elif a.as_given.passed:
        out.append(f"  PASS: {a.as_given.server_demand} <= {a.as_given.budget}")
    else:
        out += [f"  FAIL {v.rule}: {v.message}" for v in a.as_given.violations]
    out.append("")
    out.append("With this advice")
    out.append(ck.render_text(a.check))
    out.append("Memory budget")
    out.append(f"  {a.memory['formula']}")
    out.append(f"  out-of-memory risk: {'YES' if a.memory['oom_risk'] else 'no'}")
    out.append("")
    out.append("PGTune (le0pard/pgtune formulas, unchanged)")
    out += [f"  {k} = {v}" for k, v in a.pgtune_rows]
    out.append("")
    out.append("postgresql.conf: current -> recommended (reason) [restart]")
    for r in a.conf_rows:
        flag = " [restart]" if r.restart else ""
        out.append(f"  {r.name}: {r.current or '(default)'} -> {r.recommended}  ({r.reason}){flag}")
    out.append("")
    out.append("Cross-parameter validation")
    out += [f"  {v}" for v in a.validation]
    out.append("")
    out.append("pgbouncer.ini")
    if a.pooled:
        out += [f"  {line}" if line else "" for line in a.pgbouncer_ini().splitlines()]
    else:
        out.append(
            "  not needed: nothing goes through the pooler (every service and job has "
            "via_pooler: false); set via_pooler: true on a service to route it"
        )
    out.append("")
    out += _render_clients(a)
    out.append("ALTER SYSTEM")
    out += [f"  {line}" for line in a.alter_system().splitlines()]
    if a.caveats:
        out.append("")
        out.append("Transaction pooling caveats")
        out += [f"  - {c}" for c in a.caveats]
    if a.warnings:
        out.append("")
        out += [f"WARNING: {w}" for w in a.warnings]
    return "\n".join(out) + "\n"


def _render_clients(a: Advice) -> list[str]:
    """Each service's pool and timeouts, then the snippet for its library (all five libraries
    once for services that name none)."""
    if not a.clients:
        return []
    out = ["Client settings (per process)"]
    out += [f"  {c.summary()}" for c in a.clients]
    every_library_shown = False
    for c in a.clients:
        if c.library:
            out += ["", f"  {c.name}:"] + [f"    {line}" for line in c.snippet()]
        elif not every_library_shown:
            # Names no library we know: its settings once in each, the others say the same.
            every_library_shown = True
            for lib in cl.SNIPPET_LIBRARIES:
                out += ["", f"  {c.name} ({lib}):"] + [f"    {line}" for line in c.snippet(lib)]
    out.append("")
    return out
