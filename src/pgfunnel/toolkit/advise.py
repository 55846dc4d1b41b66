"""Pure sizing for `pgfunnel advise`: demand vs supply, memory budget, pooler and Postgres "
"settings."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pgfunnel.toolkit import check as ck
from pgfunnel.toolkit import fleet as fl
from pgfunnel.toolkit import rds
from pgfunnel.toolkit.inputs import InputError, Inputs
from pgfunnel.toolkit.pgtune import PgTuneInput, pgtune
from pgfunnel.toolkit.units import format_bytes, format_kb, pg_memory_to_kb

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
    replicas = int(pooler_cfg.get("replicas", 1))
    pairs = fl.pooled_pairs(fleet, str(server.get("dbname", "app")), str(server.get("user", "app")))
    pool_mode = str(pooler_cfg.get("pool_mode", "transaction"))
    # 2. Supply as it stands.
    supply = inp.supply
    if supply.max_connections is None and inp.instance_class:
        try:
            supply.max_connections, rds_steps = rds.max_connections_step(
                rds.DEFAULT_MAX_CONNECTIONS_FORMULA,
                rds.instance_class(inp.instance_class),
                "the RDS default parameter group",
            )
        except rds.RdsError as exc:
            raise InputError(str(exc)) from exc
        supply.steps += rds_steps
    # 3. Demand: direct clients, then pooled clients.
    fleet.pooler = fl.PoolerSpec(replicas=replicas, pool_mode=pool_mode, pools=pairs)
    direct = sum(s.demand() for s in fleet.members() if not s.via_pooler)
    clients = sum(s.demand() for s in fleet.members() if s.via_pooler)
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
    # 4. Server connections the pooler needs: busy work beyond a few per core only queues.
    pooled = bool(pairs)
    if not pooled:
        # Nothing goes through a pooler: there is none to size, the demand is all direct.
        fleet.pooler = None
        server_target = per_pool = reserve = default_pool = max_db = pooler_server = 0
        max_client = 0
        steps.append(
            "no service or job goes through the pooler (via_pooler: false everywhere): no "
            "pooler to size, every connection is direct"
        )
    else:
        active_target = max(10, 4 * hw.cpus)
        if supply.usable is not None:
            room = math.floor(ratio * supply.usable) - direct
            if room < replicas * len(pairs):
                budget = math.floor(ratio * supply.usable)
                warnings.append(
                    f"direct clients ({direct}) leave {room} of {budget} slots for the pooler: "
                    "raise max_connections or route them through the pooler"
                )
            server_target = max(replicas * len(pairs), min(active_target, max(room, 0)))
        else:
            server_target = active_target
        per_pool = max(2, server_target // (replicas * max(1, len(pairs))))
        reserve = per_pool // 5 if per_pool >= 5 else 0
        default_pool = per_pool - reserve
        dbs = sorted({db for db, _ in pairs})
        max_db = max(per_pool * sum(1 for d, _ in pairs if d == db) for db in dbs)
        pooler_server = replicas * per_pool * len(pairs)
        max_client = max(100, math.ceil(clients / replicas * 1.1))
        steps.append(
            f"pooler server connections: target min(4 x {hw.cpus} CPUs = {4 * hw.cpus} "
            f"(at least 10), room) = {server_target}; {replicas} replica(s) x {len(pairs)} "
            f"pool(s) x {per_pool} "
            f"(default_pool_size {default_pool} + reserve_pool_size {reserve}) = {pooler_server}"
        )
        steps.append(
            f"max_client_conn = max(100, {clients} clients / {replicas} replica(s) x 1.1) = "
            f"{max_client}"
        )
    # 5. max_connections needed.
    needed = (
        math.ceil((pooler_server + direct) / ratio) + supply.superuser_reserved + supply.reserved
    )
    current_mc = supply.max_connections
    pinned = supply.pinned
    if "max_connections" in pinned:
        rec_mc = int(pinned["max_connections"])
        if rec_mc < needed:
            warnings.append(f"max_connections is pinned at {rec_mc}; the fleet needs {needed}")
    elif current_mc is not None and current_mc >= needed:
        rec_mc = current_mc
    else:
        rec_mc = needed
    steps.append(
        f"max_connections needed = ceil(({pooler_server} pooled + {direct} direct) / {ratio:g}) + "
        f"{supply.superuser_reserved} superuser_reserved + {supply.reserved} reserved = {needed}; "
        f"recommended {rec_mc}" + (f" (current {current_mc})" if current_mc is not None else "")
    )
    # 6. PGTune, then our adjustments.
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
    shared_kb = pg_memory_to_kb(tuned["shared_buffers"])
    workers = int(tuned.get("max_worker_processes", 8))
    active = pooler_server + direct
    hmm_factor = float(inp.conf.get("hash_mem_multiplier", "2.0"))
    av_kb = pg_memory_to_kb(
        tuned.get("autovacuum_work_mem") or tuned.get("maintenance_work_mem", "64MB")
    )
    av_n = int(tuned.get("autovacuum_max_workers", inp.conf.get("autovacuum_max_workers", "3")))
    # Only the pooled + direct server connections run queries; keep the whole budget <= 75% RAM.
    spare_kb = 0.75 * ram_kb - shared_kb - rec_mc * backend_mem_mb * 1024 - av_n * av_kb
    our_work_mem = max(
        4 * 1024,
        math.floor(
            min(
                (ram_kb - shared_kb) / ((active + workers) * 3),
                spare_kb / (max(1, active) * hmm_factor),
            )
        ),
    )
    recommended: list[tuple[str, str, str]] = []
    for name, value in tune:
        reason = "PGTune formula"
        if name == "max_connections":
            reason = "pooled + direct server connections / ratio + reserved slots"
        if name == "work_mem" and our_work_mem > pg_memory_to_kb(value):
            value = format_kb(our_work_mem)
            reason = (
                f"PGTune divides by max_connections; only {active} server connections "
                "can be active behind the pooler (memory budget kept under 75% of RAM)"
            )
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
    # 7. Memory budget with the recommended settings.
    settings = {r.name: r.recommended for r in rows}
    sb_kb = pg_memory_to_kb(settings.get("shared_buffers", "128MB"))
    wm_kb = pg_memory_to_kb(settings.get("work_mem", "4MB"))
    hmm = float(conf.get("hash_mem_multiplier", "2.0"))
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
        "oom_risk": total > 0.9 * hw.ram_bytes,
    }
    if memory["oom_risk"]:
        warnings.append(f"out-of-memory risk: the budget is {total / hw.ram_bytes:.0%} of RAM")
    # 8. Cross-parameter validation.
    validation = _validate(settings, supply, rec_mc, pooler_server, direct, hw)
    # 9. The pooler configuration (none when nothing is pooled).
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
            "listen_port": str(pooler_cfg.get("listen_port", 6432)),
            "auth_type": str(pooler_cfg.get("auth_type", "scram-sha-256")),
            "auth_file": str(pooler_cfg.get("auth_file", "userlist.txt")),
            "pool_mode": pool_mode,
            "default_pool_size": str(default_pool),
            "reserve_pool_size": str(reserve),
            "max_db_connections": str(max_db),
            "max_client_conn": str(max_client),
            "idle_transaction_timeout": str(pooler_cfg.get("idle_transaction_timeout", 60)),
        }
        fleet.pooler = fl.PoolerSpec(
            replicas=replicas,
            pool_mode=pool_mode,
            default_pool_size=default_pool,
            reserve_pool_size=reserve,
            max_db_connections=max_db,
            max_client_conn=max_client,
            pools=pairs,
            source="pgbouncer.ini (advised)",
        )
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
    )


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
