"""PGTune's formulas (le0pard/pgtune, current release), reproduced exactly for comparison.

Checked against le0pard/pgtune's src/features/configuration/configurationSlice.js in its
current form (with NVMe storage, the database-size input, io_method and io_workers). Note
random_page_cost: older releases gave 1.1 for every SSD/SAN database; the current one keeps
PostgreSQL's 4 for a data warehouse that does not fit in RAM, on any storage but HDD (where it
is 4 anyway), and gives 1.1 to any database that fits in RAM."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pgfunnel.toolkit.units import format_kb

KB = 1024
MB_KB = 1024
GB_KB = 1024 * 1024
DB_TYPES = ("web", "oltp", "dw", "desktop", "mixed")
DEFAULT_CONNECTIONS = {"web": 200, "oltp": 300, "dw": 40, "desktop": 20, "mixed": 100}
STORAGE_TYPES = ("ssd", "hdd", "san", "nvme")
OS_TYPES = ("linux", "windows", "mac")
DB_SIZES = ("less", "mid", "greater")  # the data fits in RAM / about RAM / larger than RAM
DEFAULT_VERSION = 18  # PGTune's default PostgreSQL version


@dataclass(frozen=True)
class PgTuneInput:
    ram_bytes: int
    cpus: int | None = None
    connections: int | None = None
    db_type: str = "web"
    version: int = 18
    os_type: str = "linux"
    storage: str = "ssd"  # ssd | hdd | san | nvme
    db_size: str = "mid"  # less (fits in RAM) | mid | greater


def pgtune(inp: PgTuneInput) -> list[tuple[str, str]]:
    """The settings PGTune prints, in its order, as postgresql.conf values."""
    _check(inp)
    total_kb = inp.ram_bytes // KB
    t = inp.db_type
    windows = inp.os_type == "windows"
    max_conn = inp.connections or DEFAULT_CONNECTIONS[t]
    shared = total_kb // 16 if t == "desktop" else total_kb // 4
    if inp.version < 10 and windows:
        shared = min(shared, 512 * MB_KB)
    huge = "off" if inp.os_type == "mac" else ("try" if shared >= 2 * GB_KB else "off")
    ecs = total_kb // 4 if t == "desktop" else (total_kb * 3) // 4
    mwm = total_kb // 8 if t == "dw" else total_kb // 16
    limit = 2 * GB_KB if windows and inp.version <= 17 else 8 * GB_KB
    if mwm >= limit:
        mwm = limit - MB_KB if windows and inp.version <= 17 else limit
    wal = (3 * shared) // 100
    wal = min(wal, 16 * MB_KB)
    if 14 * MB_KB < wal < 16 * MB_KB:
        wal = 16 * MB_KB
    wal = max(wal, 32)
    stats_target = 500 if t == "dw" else 100
    if inp.db_size == "less":
        rpc: float = 1.1
    elif inp.storage == "hdd" or t == "dw":
        rpc = 4
    else:
        rpc = 1.1
    eio = (
        None
        if inp.os_type != "linux"
        else {"hdd": 2, "ssd": 200, "san": 300, "nvme": 1000}[inp.storage]
    )
    parallel: list[tuple[str, int]] = []
    cpus = inp.cpus
    if cpus and cpus >= 4:
        per_gather = math.ceil(cpus / 2)
        if t != "dw":
            per_gather = min(per_gather, 4)
        parallel = [("max_worker_processes", cpus), ("max_parallel_workers_per_gather", per_gather)]
        if inp.version >= 10:
            parallel.append(("max_parallel_workers", cpus))
        if inp.version >= 11:
            parallel.append(("max_parallel_maintenance_workers", min(math.ceil(cpus / 2), 4)))
    workers = parallel[0][1] if parallel else 8
    wm_raw = (total_kb - shared) / ((max_conn + workers) * 3)
    wm = math.floor({"dw": wm_raw / 2, "desktop": wm_raw / 6, "mixed": wm_raw / 2}.get(t, wm_raw))
    if inp.db_size == "less":
        wm = math.floor(wm * 1.3)
    elif inp.db_size == "greater":
        wm = math.floor(wm * 0.9)
    wm = max(wm, 4 * MB_KB)
    if windows and inp.version <= 17:
        wm = min(wm, 2 * GB_KB - MB_KB)
    jit = "off" if inp.version >= 12 and t in ("web", "oltp", "mixed") else None
    walc = "lz4" if inp.version >= 15 else ("on" if inp.version >= 10 else None)
    avw = None if not cpus else (5 if cpus >= 32 else 4 if cpus >= 16 else None)
    avwm = 2 * GB_KB if mwm >= 2 * GB_KB else None
    if avwm is not None and windows and inp.version <= 17:
        avwm = min(avwm, 2 * GB_KB - MB_KB)
    io_method = None if inp.version < 18 else ("io_uring" if inp.os_type == "linux" else "worker")
    io_workers = None
    if inp.version >= 18 and cpus:
        n = min(32, max(3, cpus // 4))
        io_workers = n if n > 3 else None
    min_wal = {"web": 1024, "oltp": 2048, "dw": 4096, "desktop": 100, "mixed": 1024}[t] * MB_KB
    max_wal = {"web": 4096, "oltp": 8192, "dw": 16384, "desktop": 2048, "mixed": 4096}[t] * MB_KB
    rows: list[tuple[str, object]] = [
        ("max_connections", max_conn),
        ("shared_buffers", format_kb(shared)),
        ("effective_cache_size", format_kb(ecs)),
        ("maintenance_work_mem", format_kb(mwm)),
        ("checkpoint_completion_target", 0.9),
        ("wal_buffers", format_kb(wal)),
        ("default_statistics_target", stats_target),
        ("random_page_cost", rpc),
        ("effective_io_concurrency", eio),
        ("work_mem", format_kb(wm)),
        ("huge_pages", huge),
        ("jit", jit),
        ("wal_compression", walc),
        ("autovacuum_max_workers", avw),
        ("autovacuum_work_mem", format_kb(avwm) if avwm else None),
        ("io_method", io_method),
        ("io_workers", io_workers),
        ("min_wal_size", format_kb(min_wal)),
        ("max_wal_size", format_kb(max_wal)),
        *parallel,
    ]
    if t == "desktop":
        rows += [("wal_level", "minimal"), ("max_wal_senders", "0")]
    return [(k, _fmt(v)) for k, v in rows if v is not None]


def _check(inp: PgTuneInput) -> None:
    for value, allowed, what in (
        (inp.db_type, DB_TYPES, "db type"),
        (inp.storage, STORAGE_TYPES, "storage"),
        (inp.os_type, OS_TYPES, "OS type"),
        (inp.db_size, DB_SIZES, "db size"),
    ):
        if value not in allowed:
            raise ValueError(f"{what} must be one of {', '.join(allowed)}, not {value!r}")
    if inp.ram_bytes <= 0:
        raise ValueError("RAM must be > 0")
    if inp.connections is not None and inp.connections <= 0:
        raise ValueError("max connections must be > 0")


def pgtune_warnings(inp: PgTuneInput) -> list[str]:
    """The caveats PGTune prints above its settings (in our words), one per line."""
    out = []
    if inp.ram_bytes < 256 * 1024**2:
        out.append("PGTune's formulas are not meant for so little memory")
    elif inp.ram_bytes > 100 * 1024**3:
        out.append("PGTune's formulas are not meant for this much memory")
    if inp.version >= 15:
        out.append("wal_compression = lz4 needs a PostgreSQL built with lz4 (--with-lz4)")
    if inp.version >= 18 and inp.os_type == "linux":
        out.append("io_method = io_uring needs a PostgreSQL built with liburing (--with-liburing)")
    if inp.db_type == "dw" and inp.storage != "hdd" and inp.db_size != "less":
        out.append(
            f"random_page_cost stays at PostgreSQL's 4 for a data warehouse larger than RAM on "
            f"{inp.storage}: a low value makes the planner pick index scans over big sequential "
            "reads; watch the plans before lowering it"
        )
    return out


def render_pgtune(inp: PgTuneInput, comment: str = "#") -> str:
    """PGTune's postgresql.conf output: its caveats, the inputs it was given, the settings."""
    lines = []
    warnings = pgtune_warnings(inp)
    if warnings:
        lines += [f"{comment} WARNING"] + [f"{comment} {w}" for w in warnings] + [""]
    ram = inp.ram_bytes
    ram_text = (
        f"{ram // 1024**3} GB"
        if ram % 1024**3 == 0
        else f"{ram // 1024**2} MB"
        if ram % 1024**2 == 0
        else f"{ram // 1024} kB"
    )
    facts: list[tuple[str, object]] = [
        ("DB Version", inp.version),
        ("OS Type", inp.os_type),
        ("DB Type", inp.db_type),
        ("Total Memory (RAM)", ram_text),
        ("CPUs num", inp.cpus),
        ("Connections num", inp.connections),
        ("Data Storage", inp.storage),
    ]
    if inp.db_size != "mid":
        facts.append(("DB Size", inp.db_size))
    lines += [f"{comment} {k}: {v}" for k, v in facts if v]
    lines.append("")
    lines += [f"{k} = {v}" for k, v in pgtune(inp)]
    return "\n".join(lines) + "\n"


def _fmt(v: object) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)
