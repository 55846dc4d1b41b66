"""Pure rule for `pgfunnel check`: worst-case fleet demand against usable slots, as arithmetic."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgfunnel import __version__
from pgfunnel.toolkit import fleet as fl
from pgfunnel.toolkit.inputs import Supply

RULES = {
    "PGF001": "Worst-case connections exceed the share of usable slots",
    "PGF002": "Pooled clients exceed the pooler's max_client_conn",
    "PGF003": "Pooler server connections exceed the usable slots",
    "PGF004": "Demand of one role exceeds its CONNECTION LIMIT",
    "PGF005": "Demand on one database exceeds its CONNECTION LIMIT",
    "PGF006": "A workload uses PostgreSQL without a pooler in front (--require-pooler)",
}
RULE_HELP = {
    "PGF006": "route the workload through PgBouncer or pgfunnel (port 6432): pgfunnel advise "
    "sizes the pooler and writes the client settings",
}


@dataclass
class Row:
    name: str
    kind: str
    arithmetic: str
    demand: int
    target: str  # "server" or "pooler"
    note: str = ""
    source: str = ""
    line: int = 0
    via_pooler: bool = False  # the workload connects to a pooler (even one not among the inputs)


@dataclass
class Violation:
    rule: str
    message: str
    offenders: list[str]
    source: str = ""
    line: int = 0


@dataclass
class Result:
    rows: list[Row]
    supply: Supply
    ratio: float
    budget: int | None
    server_demand: int
    pooler_clients: int
    pooler_server: int
    violations: list[Violation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.violations

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": "pgfunnel.check/1",
            "passed": self.passed,
            "ratio": self.ratio,
            "supply": {
                "max_connections": self.supply.max_connections,
                "superuser_reserved_connections": self.supply.superuser_reserved,
                "reserved_connections": self.supply.reserved,
                "usable": self.supply.usable,
                "budget": self.budget,
                "steps": self.supply.steps,
            },
            "rows": [r.__dict__ for r in self.rows],
            "server_demand": self.server_demand,
            "pooler_clients": self.pooler_clients,
            "pooler_server_connections": self.pooler_server,
            "violations": [v.__dict__ for v in self.violations],
            "notes": self.notes,
        }


def evaluate(
    fleet: fl.Fleet, supply: Supply, ratio: float = 0.8, *, require_pooler: bool = False
) -> Result:
    """Worst case (max replicas + surge) x processes x (pool + overflow) against ratio x usable;
    with `require_pooler`, every workload that reaches PostgreSQL directly is a finding too."""
    rows: list[Row] = []
    notes: list[str] = []
    for s in fleet.services:
        _, _, default_note = s.pool()
        note = "; ".join([*s.notes, *([default_note] if default_note else [])])
        rows.append(
            Row(
                s.name,
                "service",
                s.arithmetic(),
                s.demand(),
                "pooler" if s.via_pooler and fleet.pooler else "server",
                note,
                s.source,
                s.line,
                s.via_pooler,
            )
        )
    for j in fleet.jobs:
        rows.append(
            Row(
                j.name,
                j.kind,
                j.arithmetic(),
                j.demand(),
                "pooler" if j.via_pooler and fleet.pooler else "server",
                source=j.source,
                line=j.line,
                via_pooler=j.via_pooler,
            )
        )
    server_direct = sum(r.demand for r in rows if r.target == "server")
    pooler_clients = sum(r.demand for r in rows if r.target == "pooler")
    pooler_server = 0
    p = fleet.pooler
    if p is not None:
        pools = p.pools or fl.pooled_pairs(fleet)
        per_replica = p.server_connections_per_replica(pools)
        pooler_server = p.replicas * per_replica
        rows.append(
            Row(
                "pooler",
                "pooler",
                f"{p.replicas} replica(s) x {per_replica} server connections "
                f"({len(pools) or 1} pool(s) x (pool_size + reserve_pool_size)"
                + (
                    f", capped by max_db_connections {p.max_db_connections}"
                    if p.max_db_connections
                    else ""
                )
                + ")",
                pooler_server,
                "server",
                "; ".join(p.notes),
                p.source,
                p.line,
            )
        )
        notes += p.notes
    server_demand = server_direct + pooler_server
    usable = supply.usable
    budget = math.floor(ratio * usable) if usable is not None else None
    result = Result(
        rows, supply, ratio, budget, server_demand, pooler_clients, pooler_server, notes=notes
    )
    if require_pooler:
        result.violations += _direct_workloads(rows)
    if usable is None:
        return result
    assert budget is not None
    if server_demand > budget:
        direct = sorted((r for r in rows if r.target == "server"), key=lambda r: -r.demand)
        worst = direct[0] if direct else None
        result.violations.append(
            Violation(
                "PGF001",
                f"worst-case server connections {server_demand} > {ratio:g} x {usable} usable = "
                f"{budget}; biggest: {worst.name} with {worst.demand}"
                if worst
                else "",
                [r.name for r in direct if r.demand > 0],
                worst.source if worst else "",
                worst.line if worst else 0,
            )
        )
    if p is not None:
        capacity = p.replicas * p.max_client_conn
        if pooler_clients > capacity:
            worst_p = max((r for r in rows if r.target == "pooler"), key=lambda r: r.demand)
            result.violations.append(
                Violation(
                    "PGF002",
                    f"pooled clients {pooler_clients} > {p.replicas} x max_client_conn "
                    f"{p.max_client_conn} = {capacity}; biggest: {worst_p.name}",
                    [r.name for r in rows if r.target == "pooler"],
                    worst_p.source,
                    worst_p.line,
                )
            )
        if pooler_server > usable:
            result.violations.append(
                Violation(
                    "PGF003",
                    f"pooler server connections {pooler_server} > usable {usable}",
                    ["pooler"],
                    p.source,
                    p.line,
                )
            )
    for kind, limits, attr in (
        ("PGF004", fleet.role_limits, "role"),
        ("PGF005", fleet.database_limits, "database"),
    ):
        for name, limit in sorted(limits.items()):
            # Direct members log in as themselves; pooled ones reach the server only through
            # the pooler's server connections, which log in as the pool's user to its database.
            members = [
                m
                for m in fleet.members()
                if getattr(m, attr) == name and not (m.via_pooler and p is not None)
            ]
            direct_demand = sum(m.demand() for m in members)
            pooled = 0
            if p is not None:
                pools = p.pools or fl.pooled_pairs(fleet)
                per = p.server_connections_per_replica(pools, **{attr: name})
                pooled = p.replicas * per
            demand = direct_demand + pooled
            if demand > limit:
                at = max(members, key=lambda m: m.demand(), default=None)
                how = (
                    f" ({direct_demand} direct + pooler {p.replicas} replica(s) x "
                    f"{pooled // max(1, p.replicas)} server connections as {attr} {name})"
                    if pooled and p is not None
                    else ""
                )
                result.violations.append(
                    Violation(
                        kind,
                        f"{attr} {name}: worst-case demand {demand} > CONNECTION LIMIT {limit}"
                        + how,
                        [m.name for m in members] + (["pooler"] if pooled else []),
                        at.source if at else (p.source if p else ""),
                        at.line if at else (p.line if p else 0),
                    )
                )
    return result


def _direct_workloads(rows: list[Row]) -> list[Violation]:
    """PGF006, the runbooks' "require a pooler" gate: one finding per workload that opens
    PostgreSQL connections itself. Migrations are exempt: DDL often needs a session of its own
    (advisory locks, SET), which transaction pooling does not keep."""
    out = []
    for r in rows:
        if r.kind in ("pooler", "migration") or r.via_pooler or r.demand <= 0:
            continue
        out.append(
            Violation(
                "PGF006",
                f"{r.name} ({r.kind}) connects to PostgreSQL directly with up to {r.demand} "
                "connections: put a pooler in front (PgBouncer or pgfunnel, port 6432)",
                [r.name],
                r.source,
                r.line,
            )
        )
    return out


def _sarif_uri(source: str) -> dict[str, str]:
    """A SARIF artifactLocation: relative to the working directory (the repository root in CI)
    when the file is under it, so code scanning can place the annotation."""
    if not source:
        return {"uri": "."}
    path = Path(source)
    if path.is_absolute():
        try:
            path = path.resolve().relative_to(Path.cwd().resolve())
        except ValueError:
            return {"uri": path.as_uri()}
    return {"uri": path.as_posix(), "uriBaseId": "%SRCROOT%"}


def to_sarif(result: Result) -> dict[str, Any]:
    """SARIF 2.1.0 for CI annotations: one result per violation, at the offending service."""
    return {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "pgfunnel check",
                        "version": __version__,
                        "informationUri": "https://github.com/pgfunnel/pgfunnel",
                        "rules": [
                            {
                                "id": k,
                                "shortDescription": {"text": v},
                                "help": {
                                    "text": RULE_HELP.get(
                                        k, "pgfunnel advise sizes pools and a pooler to fit"
                                    )
                                },
                            }
                            for k, v in RULES.items()
                        ],
                    }
                },
                "results": [
                    {
                        "ruleId": v.rule,
                        "level": "error",
                        "message": {"text": v.message},
                        "locations": [
                            {
                                "physicalLocation": {
                                    "artifactLocation": _sarif_uri(v.source),
                                    "region": {"startLine": max(1, v.line)},
                                }
                            }
                        ],
                    }
                    for v in result.violations
                ],
            }
        ],
    }


def render_text(result: Result) -> str:
    """The arithmetic as a plain table, naming the offending services."""
    lines = []
    s = result.supply
    lines.append("Supply")
    for step in s.steps:
        lines.append(f"  {step}")
    if s.usable is None:
        lines.append(
            "  max_connections unknown: pass --max-connections, a postgresql.conf, or Terraform"
        )
    else:
        lines.append(
            f"  usable = max_connections {s.max_connections} - superuser_reserved_connections "
            f"{s.superuser_reserved} - reserved_connections {s.reserved} = {s.usable}"
        )
        lines.append(f"  budget = {result.ratio:g} x {s.usable} = {result.budget}")
    lines.append("")
    header = f"{'name':<24} {'kind':<10} {'to':<7} {'demand':>7}  arithmetic"
    lines.append(header)
    lines.append("-" * len(header))
    offenders = {o for v in result.violations for o in v.offenders}
    for r in result.rows:
        mark = " <-" if r.name in offenders and r.demand else ""
        lines.append(f"{r.name:<24} {r.kind:<10} {r.target:<7} {r.demand:>7}  {r.arithmetic}{mark}")
        if r.note:
            lines.append(f"{'':<44}{r.note}")
    lines.append("-" * len(header))
    lines.append(f"{'server connections (worst case)':<43} {result.server_demand:>7}")
    if result.pooler_clients:
        lines.append(f"{'pooled clients (worst case)':<43} {result.pooler_clients:>7}")
    lines.append("")
    if result.passed:
        lines.append(
            "PASS"
            + (f": {result.server_demand} <= {result.budget}" if result.budget is not None else "")
        )
    else:
        for v in result.violations:
            lines.append(f"FAIL {v.rule}: {v.message}")
        if any(r.kind == "pooler" for r in result.rows):
            lines.append(
                "Fix: lower pool sizes / replicas of the services marked <-, route direct ones "
                "through the pooler, or resize the pooler (max_client_conn, default_pool_size, "
                "max_db_connections): pgfunnel advise"
            )
        else:
            lines.append(
                "Fix: lower pool sizes / replicas of the services marked <-, or put a pooler in "
                "front (pgfunnel advise)"
            )
    for n in result.notes:
        lines.append(f"note: {n}")
    return "\n".join(lines) + "\n"
