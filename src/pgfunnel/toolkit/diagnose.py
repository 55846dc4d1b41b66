"""Pure analysis for `pgfunnel diagnose`: a Snapshot in, a report (JSON-ready dict) out."""

from __future__ import annotations

import re
import shlex
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from pgfunnel.toolkit.limits import LimitHit, Slots
from pgfunnel.toolkit.model import (
    IDLE,
    IDLE_IN_TX,
    IDLE_IN_TX_ABORTED,
    Backend,
    Snapshot,
)
from pgfunnel.toolkit.redact import redact_query, truncate
from pgfunnel.toolkit.units import format_age

SCHEMA_ID = "pgfunnel.diagnose/1"
SEVERITY_ORDER = {"critical": 0, "warning": 1, "unknown": 2, "info": 3}
EXIT_CODES = {"ok": 0, "warning": 1, "critical": 2, "unknown": 3}
USAGE_WARNING = 0.75
USAGE_CRITICAL = 0.9
LIMIT_WARNING = 0.9
POOLER_APP = re.compile(
    r"pgbouncer|pgfunnel|odyssey|pgcat|pgpool|supavisor|pgdog|rds ?proxy|yandex|spqr", re.I
)
TIMEOUT_SETTINGS = (
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
    "statement_timeout",
    "transaction_timeout",
    "tcp_keepalives_idle",
    "tcp_keepalives_interval",
    "tcp_keepalives_count",
)
# Which setting caps each kind of non-client backend: they do not use max_connections slots.
OTHER_BACKEND_MAXIMA = {
    "autovacuum worker": "autovacuum_max_workers",
    "walsender": "max_wal_senders",
    "background worker": "max_worker_processes",
    "parallel worker": "max_worker_processes",
    "logical replication worker": "max_worker_processes",
    "logical replication launcher": "max_worker_processes",
}


@dataclass
class Options:
    top: int = 10
    show_queries: bool = False
    idle_in_transaction_warn_s: float = 60.0
    idle_warn_s: float = 3600.0
    query_chars: int = 200
    pooler_min_backends: int = 10
    dsn_hint: str = "DSN"


def _reap(opts: Options) -> str:
    """`pgfunnel reap DSN`, or without DSN when it comes from the PG* environment."""
    return f"pgfunnel reap {opts.dsn_hint}" if opts.dsn_hint else "pgfunnel reap"


@dataclass
class Finding:
    id: str
    severity: str
    title: str
    detail: str
    remedy: list[str] = field(default_factory=list)
    weight: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "severity": self.severity,
            "title": self.title,
            "detail": self.detail,
            "remedy": list(self.remedy),
        }


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _client_rows(snap: Snapshot) -> tuple[list[Backend], list[Backend]]:
    """Visible client backends, and hidden rows that may be client backends.

    A hidden row still shows its role and database: a client backend always has both, while
    background processes lack one (the logical replication launcher runs as the bootstrap
    superuser with no database; checkpointer, walwriter and autovacuum workers have no role)."""
    clients = [b for b in snap.backends if b.visible and b.is_client]
    unknown = [b for b in snap.backends if not b.visible and b.usename and b.datname]
    return clients, unknown


def has_reserved_tier(snap: Snapshot) -> bool:
    """Whether the server has the pg_use_reserved_connections tier: reserved_connections and
    that role exist from PostgreSQL 16 (a saved file without a version: when slots are set)."""
    srv = snap.server
    return srv.reserved_connections > 0 or srv.server_version_num >= 160000


def analyse(
    snap: Snapshot,
    opts: Options | None = None,
    *,
    connect_error: LimitHit | None = None,
    pooler: dict[str, list[dict[str, str | None]]] | None = None,
    via: str = "dsn",
) -> dict[str, Any]:
    """The whole diagnose report for one snapshot."""
    opts = opts or Options()
    findings: list[Finding] = []
    clients, unknown = _client_rows(snap)
    slots_part, slots = _slots(snap, clients, unknown, findings, opts)
    holders = _holders(snap, clients, unknown, slots, opts)
    poolers = _poolers(clients, opts)
    if poolers:
        names = ", ".join(
            f"{p['client_addr']} ({p['application_name'] or 'no name'})" for p in poolers
        )
        findings.append(
            Finding(
                "pooler-in-front",
                "info",
                "A pooler (or one pooled host) sits in front",
                f"Backends from {names} are pooled: attribution to applications stops there. "
                "Look at the pooler's own clients (SHOW CLIENTS) to see who holds them.",
                ["pgfunnel diagnose --pooler 'host=POOLER port=6432 dbname=pgbouncer user=ADMIN'"],
                weight=1,
            )
        )
    idle = _idle(snap, clients, findings, opts)
    limits = _limits(snap, clients, unknown, slots, findings, opts)
    timeouts = _timeouts(snap, clients, findings, opts)
    stats = _session_stats(snap, findings)
    pooler_part = _pooler(pooler, findings) if pooler is not None else None
    privileges = _privileges(snap, unknown, findings)
    error_part = connect_error.as_dict() if connect_error else None
    if connect_error is not None:
        members = _reserved_members(snap) if connect_error.kind == "reserved_connections" else None
        # We are in through --reserved-dsn: the next step runs there, not on the refused DSN.
        next_step = (
            after_fallback(connect_error, opts)
            if via == "reserved-dsn"
            else connect_error.next_command
        )
        assert error_part is not None
        error_part["next_command"] = next_step
        findings.append(
            Finding(
                refusal_id(connect_error),
                "critical",
                f"Connection refused (53300): {connect_error.message}",
                f"Limit hit: {connect_error.limit_setting}. {connect_error.explanation}."
                + (
                    f" Roles that can still connect (pg_use_reserved_connections): "
                    f"{', '.join(members)}."
                    if members
                    else ""
                ),
                [next_step],
                weight=1000,
            )
        )
    findings.sort(key=lambda f: (SEVERITY_ORDER[f.severity], -f.weight, f.id))
    status = _status(findings, slots is not None)
    return {
        "schema": SCHEMA_ID,
        "status": status,
        "exit_code": EXIT_CODES[status],
        "source": {"kind": snap.source, "via": via},
        "generated_at": _iso(snap.server.now),
        "server": {
            "version": snap.server.server_version,
            "version_num": snap.server.server_version_num,
            "in_recovery": snap.server.in_recovery,
            "current_user": snap.server.current_user,
            "own_pid": snap.server.own_pid,
        },
        "slots": slots_part,
        "holders": holders,
        "poolers": poolers,
        "idle": idle,
        "limits": limits,
        "timeouts": timeouts,
        "session_stats": stats,
        "pooler": pooler_part,
        "privileges": privileges,
        "connect_error": error_part,
        "findings": [f.as_dict() for f in findings],
    }


def refusal_id(hit: LimitHit) -> str:
    """The finding id of a 53300 refusal: the server is full, or one role's or database's
    CONNECTION LIMIT is reached (the server may have plenty of slots)."""
    if hit.kind in ("role", "database"):
        return f"{hit.kind}-limit-refused:{hit.name}"
    return "server-full"


def after_fallback(hit: LimitHit, opts: Options) -> str:
    """The next command once diagnose got in through --reserved-dsn: reap on that DSN."""
    scope = ""
    if hit.kind == "role" and hit.name:
        scope = f" --role {shlex.quote(hit.name)}"
    elif hit.kind == "database" and hit.name:
        scope = f" --database {shlex.quote(hit.name)}"
    return f"{_reap(opts)}{scope} --idle-in-transaction 5m   (dry run; add --execute)"


def unreachable_report(
    hit: LimitHit | None, message: str, via: str, title: str = "Could not connect"
) -> dict[str, Any]:
    """The report when no connection could be made at all, or nothing could be read."""
    findings: list[Finding] = []
    if hit is not None:
        findings.append(
            Finding(
                refusal_id(hit),
                "critical",
                f"Connection refused (53300): {hit.message}",
                f"Limit hit: {hit.limit_setting}. {hit.explanation}.",
                [hit.next_command],
            )
        )
        status = "critical"
    else:
        findings.append(Finding("unreachable", "unknown", title, truncate(message, 400), []))
        status = "unknown"
    return {
        "schema": SCHEMA_ID,
        "status": status,
        "exit_code": EXIT_CODES[status],
        "source": {"kind": "unreachable", "via": via},
        "generated_at": None,
        "server": None,
        "slots": None,
        "holders": None,
        "poolers": [],
        "idle": None,
        "limits": None,
        "timeouts": None,
        "session_stats": None,
        "pooler": None,
        "privileges": None,
        "connect_error": hit.as_dict()
        if hit
        else {"sqlstate": None, "message": truncate(message, 400)},
        "findings": [f.as_dict() for f in findings],
    }


def _status(findings: list[Finding], have_slots: bool) -> str:
    severities = {f.severity for f in findings}
    if "critical" in severities:
        return "critical"
    if "warning" in severities:
        return "warning"
    if "unknown" in severities or not have_slots:
        return "unknown"
    return "ok"


def _slots(
    snap: Snapshot,
    clients: list[Backend],
    unknown: list[Backend],
    findings: list[Finding],
    opts: Options,
) -> tuple[dict[str, Any] | None, Slots | None]:
    srv = snap.server
    others = Counter(b.backend_type for b in snap.backends if b.visible and not b.is_client)
    settings_by_name = {
        "autovacuum_max_workers": srv.autovacuum_max_workers,
        "max_wal_senders": srv.max_wal_senders,
        "max_worker_processes": srv.max_worker_processes,
    }
    other_rows = [
        {
            "backend_type": bt,
            "count": n,
            "max_setting": OTHER_BACKEND_MAXIMA.get(bt or ""),
            "max": settings_by_name.get(OTHER_BACKEND_MAXIMA.get(bt or "", "")),
        }
        for bt, n in sorted(others.items(), key=lambda kv: (-kv[1], kv[0] or ""))
    ]
    if srv.max_connections is None:
        findings.append(
            Finding(
                "slots-unknown",
                "unknown",
                "max_connections is not known for this snapshot",
                "A saved pg_stat_activity has no server settings: pass --max-connections "
                "(and --superuser-reserved-connections) to judge the slots.",
                [],
            )
        )
        return {
            "max_connections": None,
            "superuser_reserved_connections": srv.superuser_reserved_connections,
            "reserved_connections": srv.reserved_connections,
            "reserved_connections_roles": _reserved_members(snap),
            "usable": None,
            "used_by_client_backends": len(clients),
            "unknown_backends": len(unknown),
            "own_connection": 0,
            "usage": None,
            "usage_upper_bound": None,
            "headroom": None,
            "headroom_lower_bound": None,
            "other_backends": other_rows,
        }, None
    slots = Slots(
        srv.max_connections,
        srv.superuser_reserved_connections,
        srv.reserved_connections,
        len(clients),
    )
    upper = Slots(
        srv.max_connections,
        srv.superuser_reserved_connections,
        srv.reserved_connections,
        len(clients) + len(unknown),
    )
    own = 1 if srv.own_pid is not None and snap.source == "live" else 0
    members = _reserved_members(snap)
    tier = has_reserved_tier(snap)
    part = {
        "max_connections": srv.max_connections,
        "superuser_reserved_connections": srv.superuser_reserved_connections,
        "reserved_connections": srv.reserved_connections,
        "reserved_connections_roles": members,
        "usable": slots.usable,
        "used_by_client_backends": slots.used,
        "unknown_backends": len(unknown),
        "own_connection": own,
        "usage": round(slots.usage, 4),
        "usage_upper_bound": round(upper.usage, 4),
        "headroom": _headroom(slots, tier),
        # With hidden rows the headroom is a range: down to this if every one is a client.
        "headroom_lower_bound": _headroom(upper, tier) if unknown else None,
        "other_backends": other_rows,
    }
    if members == [] and snap.roles:
        findings.append(
            Finding(
                "reserved-connections-no-members",
                "warning",
                f"reserved_connections = {srv.reserved_connections}, but no login role is a "
                "member of pg_use_reserved_connections",
                f"The {srv.reserved_connections} slots kept for members of "
                "pg_use_reserved_connections serve superusers only: no ordinary role can use "
                "them when the server is full.",
                [
                    "GRANT pg_use_reserved_connections TO <ops_role>;  -- the role on-call tools "
                    "and pgfunnel diagnose --reserved-dsn connect as",
                    "or ALTER SYSTEM SET reserved_connections = 0;  -- then restart",
                ],
                weight=srv.reserved_connections,
            )
        )
    top = _top_apps(clients)
    top_text = ", ".join(f"{name} {n}" for name, n in top[:3])
    remedy = [
        f"{_reap(opts)} --idle-in-transaction 5m   (dry run; add --execute)",
        "put a pooler in front: pgfunnel advise --fleet fleet.yaml writes a pgbouncer.ini",
        _cap_biggest_role(clients, slots),
    ]
    held = f"{slots.used} of {slots.usable} usable slots are held by client backends" + (
        f" (and up to {len(unknown)} more by hidden sessions)" if unknown else ""
    )
    minus = (
        f"max_connections {srv.max_connections} - superuser_reserved_connections "
        f"{srv.superuser_reserved_connections}"
        + (f" - reserved_connections {srv.reserved_connections}" if tier else "")
    )
    detail = (
        f"{held} ({minus}); headroom: ordinary roles "
        f"{_range(upper.headroom_ordinary, slots.headroom_ordinary)}"
        + (
            ", reserved-role members "
            f"{_range(upper.headroom_reserved_members, slots.headroom_reserved_members)}"
            if tier
            else ""
        )
        + f", superusers {_range(upper.headroom_superuser, slots.headroom_superuser)}. "
        f"Biggest holders: {top_text or 'none'}."
    )
    if slots.usage >= USAGE_CRITICAL:
        findings.append(
            Finding(
                "slots-critical",
                "critical",
                f"Connection slots at {slots.usage:.0%} of usable (limit: max_connections)",
                detail,
                remedy,
                weight=100 * slots.usage,
            )
        )
    elif slots.usage >= USAGE_WARNING:
        findings.append(
            Finding(
                "slots-warning",
                "warning",
                f"Connection slots at {slots.usage:.0%} of usable",
                detail,
                remedy,
                weight=100 * slots.usage,
            )
        )
    elif unknown and upper.usage >= USAGE_WARNING:
        findings.append(
            Finding(
                "slots-maybe",
                "warning",
                f"Slots could be at up to {upper.usage:.0%} of usable",
                f"{held}: {len(unknown)} hidden session(s) have a role and a database, so they "
                f"may be client backends. Headroom for ordinary roles: "
                f"{_range(upper.headroom_ordinary, slots.headroom_ordinary)}.",
                [
                    f"GRANT pg_monitor TO {srv.current_user or '<this_role>'};  "
                    "-- then run diagnose again"
                ],
            )
        )
    return part, slots


def _cap_biggest_role(clients: list[Backend], slots: Slots) -> str:
    """A CONNECTION LIMIT for the role holding most slots that brings usage back under the
    warning line, were the others to stay as they are."""
    by_role = Counter(b.usename for b in clients if b.usename and not b.is_superuser)
    if not by_role:
        return "ALTER ROLE <app_role> CONNECTION LIMIT <n>;  -- cap the biggest holder"
    role, held = min(by_role.items(), key=lambda kv: (-kv[1], kv[0]))
    over = slots.used - int(USAGE_WARNING * slots.usable)
    cap = max(1, held - max(0, over))
    ident = '"' + role.replace('"', '""') + '"'
    return (
        f"ALTER ROLE {ident} CONNECTION LIMIT {cap};  -- the biggest holder ({held} now): "
        f"{cap} brings usage under {USAGE_WARNING:.0%} of usable; end the extra sessions "
        "first, the limit only refuses new ones"
    )


def _headroom(slots: Slots, tier: bool) -> dict[str, int | None]:
    return {
        "ordinary_roles": slots.headroom_ordinary,
        # No such tier before PostgreSQL 16: null rather than a copy of the ordinary headroom.
        "reserved_connections_members": slots.headroom_reserved_members if tier else None,
        "superusers": slots.headroom_superuser,
    }


def _range(low: int, high: int) -> str:
    return str(high) if low == high else f"{low}-{high}"


def _reserved_members(snap: Snapshot) -> list[str] | None:
    """Login roles (not superusers) that may use the reserved_connections slots (PostgreSQL 16+:
    privileges of pg_use_reserved_connections); None when no slots are reserved that way."""
    if snap.server.reserved_connections <= 0:
        return None
    return sorted(r.rolname for r in snap.roles if r.uses_reserved and not r.rolsuper)


def _top_apps(clients: list[Backend]) -> list[tuple[str, int]]:
    counts = Counter((b.application_name or "(no application_name)") for b in clients)
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def _holders(
    snap: Snapshot,
    clients: list[Backend],
    unknown: list[Backend],
    slots: Slots | None,
    opts: Options,
) -> dict[str, Any]:
    groups: dict[tuple[Any, ...], list[Backend]] = defaultdict(list)
    for b in clients:
        groups[(b.client_addr, b.usename, b.application_name, b.datname, b.state)].append(b)
    for b in unknown:
        groups[(None, b.usename, b.application_name, b.datname, "unknown")].append(b)
    rows = []
    for (addr, user, app, db, state), members in groups.items():
        starts = [m.backend_start for m in members if m.backend_start]
        changes = [m.state_change for m in members if m.state_change]
        rows.append(
            {
                "client_addr": addr
                if addr is not None
                else ("local" if state != "unknown" else None),
                "usename": user,
                "application_name": app,
                "datname": db,
                "state": state,
                "count": len(members),
                "share_of_usable": round(len(members) / slots.usable, 4)
                if slots and slots.usable
                else None,
                "oldest_backend_start": _iso(min(starts)) if starts else None,
                "oldest_state_change": _iso(min(changes)) if changes else None,
            }
        )
    rows.sort(key=lambda r: (-int(r["count"]), str(r["application_name"]), str(r["usename"])))
    top, rest = rows[: opts.top], rows[opts.top :]
    other = {"groups": len(rest), "count": sum(int(r["count"]) for r in rest)}
    apps = [{"application_name": name, "count": n} for name, n in _top_apps(clients)]
    return {"top": opts.top, "groups": top, "other": other, "applications": apps}


def _poolers(clients: list[Backend], opts: Options) -> list[dict[str, Any]]:
    by_addr: dict[tuple[str, str], int] = Counter(
        ((b.client_addr or "local"), (b.application_name or "")) for b in clients
    )
    total = len(clients)
    found = []
    for (addr, app), n in sorted(by_addr.items(), key=lambda kv: -kv[1]):
        if POOLER_APP.search(app):
            found.append(
                {
                    "client_addr": addr,
                    "application_name": app,
                    "backends": n,
                    "reason": "application_name names a pooler",
                }
            )
        elif addr != "local" and n >= opts.pooler_min_backends and n >= 0.25 * total:
            found.append(
                {
                    "client_addr": addr,
                    "application_name": app,
                    "backends": n,
                    "reason": f"{n} backends from one address",
                }
            )
    return found


def _session_row(b: Backend, horizon_pid: int | None, opts: Options) -> dict[str, Any]:
    query = b.query if opts.show_queries else redact_query(b.query, opts.query_chars)
    if opts.show_queries and query is not None:
        query = truncate(query, opts.query_chars)
    return {
        "pid": b.pid,
        "usename": b.usename,
        "datname": b.datname,
        "application_name": b.application_name,
        "client_addr": b.client_addr,
        "state": b.state,
        "state_age_s": round(b.state_age_s, 3) if b.state_age_s is not None else None,
        "xact_age_s": round(b.xact_age_s, 3) if b.xact_age_s is not None else None,
        "backend_xmin": b.backend_xmin,
        "xmin_age": b.xmin_age,
        "backend_xid": b.backend_xid,
        "xid_age": b.xid_age,
        "holds_xmin": bool(b.backend_xmin or b.backend_xid),
        "holds_horizon": b.pid == horizon_pid,
        "query": query,
    }


def _idle(
    snap: Snapshot, clients: list[Backend], findings: list[Finding], opts: Options
) -> dict[str, Any]:
    # backend_xid and backend_xmin are shown for every row, hidden ones too: whoever holds the
    # oldest of either holds back the horizon (an idle-in-transaction writer has only its xid).
    horizon = [b for b in snap.backends if b.horizon_age is not None]
    horizon_pid = max(horizon, key=lambda b: b.horizon_age or 0).pid if horizon else None
    summary: dict[str, Any] = {}
    for state in (IDLE, IDLE_IN_TX, IDLE_IN_TX_ABORTED):
        members = [b for b in clients if b.state == state]
        summary[state] = {
            "count": len(members),
            "oldest_state_age_s": _max(b.state_age_s for b in members),
            "oldest_xact_age_s": _max(b.xact_age_s for b in members),
        }
    in_tx = [b for b in clients if b.state in (IDLE_IN_TX, IDLE_IN_TX_ABORTED)]
    in_tx.sort(key=lambda b: -(b.xact_age_s or b.state_age_s or 0))
    old_idle = [b for b in clients if b.state == IDLE and (b.state_age_s or 0) >= opts.idle_warn_s]
    old_idle.sort(key=lambda b: -(b.state_age_s or 0))
    sessions = [_session_row(b, horizon_pid, opts) for b in in_tx[: opts.top * 2]]
    sessions += [_session_row(b, horizon_pid, opts) for b in old_idle[: opts.top]]
    leaked = [b for b in in_tx if (b.state_age_s or 0) >= opts.idle_in_transaction_warn_s]
    if leaked:
        aborted = sum(1 for b in leaked if b.state == IDLE_IN_TX_ABORTED)
        roles = sorted({b.usename or "?" for b in leaked})
        oldest = max(leaked, key=lambda b: b.xact_age_s or 0)
        holds = [b for b in leaked if b.pid == horizon_pid]
        age_arg = _age_arg(opts.idle_in_transaction_warn_s)
        remedy = [
            f"{_reap(opts)} --idle-in-transaction {age_arg}   (dry run; add --execute)",
        ]
        remedy += [
            f"ALTER ROLE {r} SET idle_in_transaction_session_timeout = '{age_arg}';" for r in roles
        ]
        remedy.append("pooler: idle_transaction_timeout = 60 in pgbouncer.ini")
        findings.append(
            Finding(
                "idle-in-transaction",
                "warning",
                f"{len(leaked)} session(s) idle in transaction for over "
                f"{format_age(opts.idle_in_transaction_warn_s)}"
                + (f" ({aborted} aborted)" if aborted else ""),
                f"Oldest: pid {oldest.pid} ({oldest.usename}@{oldest.datname}, "
                f"{oldest.application_name or 'no application_name'}) idle "
                f"{format_age(oldest.state_age_s)}, transaction open "
                f"{format_age(oldest.xact_age_s)}. Roles: {', '.join(roles)}."
                + (
                    f" pid {holds[0].pid} holds back the xmin horizon "
                    f"({holds[0].horizon_age} transactions"
                    + (", at its own xid: it wrote" if holds[0].xmin_age is None else "")
                    + "): vacuum cannot clean up behind it."
                    if holds
                    else ""
                ),
                remedy,
                weight=len(leaked) + (10 if holds else 0),
            )
        )
    if old_idle:
        findings.append(
            Finding(
                "idle-sessions",
                "info",
                f"{len(old_idle)} session(s) idle for over {format_age(opts.idle_warn_s)}",
                "Idle sessions hold slots and memory; an application pool that never shrinks "
                "or a leaked connection.",
                [
                    f"{_reap(opts)} --idle {_age_arg(opts.idle_warn_s)}   (dry run)",
                    "ALTER ROLE <app_role> SET idle_session_timeout = '1h';",
                ],
            )
        )
    return {"summary": summary, "sessions": sessions, "xmin_horizon_pid": horizon_pid}


def _age_arg(seconds: float) -> str:
    s = int(seconds)
    if s % 3600 == 0 and s:
        return f"{s // 3600}h"
    if s % 60 == 0 and s:
        return f"{s // 60}m"
    return f"{s}s"


def _max(values: Any) -> float | None:
    vals = [v for v in values if v is not None]
    return round(max(vals), 3) if vals else None


def _limits(
    snap: Snapshot,
    clients: list[Backend],
    unknown: list[Backend],
    slots: Slots | None,
    findings: list[Finding],
    opts: Options,
) -> dict[str, Any]:
    by_role = Counter(b.usename for b in clients + unknown)
    by_db = Counter(b.datname for b in clients + unknown)
    # Raising a CONNECTION LIMIT only helps with free server slots behind it (worst case: every
    # hidden session is a client); None when max_connections is not known.
    spare = max(0, slots.headroom_ordinary - len(unknown)) if slots is not None else None
    roles = []
    for r in snap.roles:
        if r.rolconnlimit < 0 and not by_role.get(r.rolname):
            continue
        used = by_role.get(r.rolname, 0)
        entry: dict[str, Any] = {
            "name": r.rolname,
            "limit": r.rolconnlimit if r.rolconnlimit >= 0 else None,
            "used": used,
            "ratio": round(used / r.rolconnlimit, 4) if r.rolconnlimit > 0 else None,
            "superuser": r.rolsuper,
            "exempt": r.rolsuper,
        }
        roles.append(entry)
        _limit_finding(findings, "role", r.rolname, r.rolconnlimit, used, r.rolsuper, opts, spare)
    dbs = []
    for d in snap.databases:
        if d.datconnlimit < 0 and not by_db.get(d.datname):
            continue
        used = by_db.get(d.datname, 0)
        dbs.append(
            {
                "name": d.datname,
                "limit": d.datconnlimit if d.datconnlimit >= 0 else None,
                "used": used,
                "ratio": round(used / d.datconnlimit, 4) if d.datconnlimit > 0 else None,
            }
        )
        _limit_finding(findings, "database", d.datname, d.datconnlimit, used, False, opts, spare)
    limited = [r for r in snap.roles if r.rolconnlimit >= 0 and not r.rolsuper]
    total = sum(r.rolconnlimit for r in limited)
    if slots is not None and limited and total > slots.usable:
        findings.append(
            Finding(
                "role-limits-oversubscribed",
                "warning",
                f"Role connection limits add up to {total}, more than the {slots.usable} "
                f"usable slots",
                "The per-role limits cannot protect the server: together the roles may still "
                "exhaust max_connections.",
                [
                    "ALTER ROLE <role> CONNECTION LIMIT <n>;  -- so that the sum stays below "
                    f"{slots.usable}"
                ],
            )
        )
    return {"roles": roles, "databases": dbs, "sum_role_limits": total if limited else None}


def _limit_finding(
    findings: list[Finding],
    kind: str,
    name: str,
    limit: int,
    used: int,
    exempt: bool,
    opts: Options,
    spare: int | None = None,
) -> None:
    if limit < 0 or exempt:
        return
    stmt = "ROLE" if kind == "role" else "DATABASE"
    flag = "--role" if kind == "role" else "--database"
    ident = '"' + name.replace('"', '""') + '"'
    remedy = [
        f"{_reap(opts)} {flag} {shlex.quote(name)} --idle-in-transaction 5m   (dry run)",
    ]
    wanted = max(limit * 2, limit + 10)
    if spare is None:
        remedy.append(
            f"ALTER {stmt} {ident} CONNECTION LIMIT {wanted};  -- only if the server has "
            f"{wanted - limit} free slots (max_connections unknown here)"
        )
    elif spare <= 0:
        remedy.append(
            f"do not raise the CONNECTION LIMIT of {kind} {name}: the server has no free "
            "slots for ordinary roles; end leaked sessions or put a pooler in front"
        )
    else:
        # At most half the free slots: other roles and databases need room to grow too.
        raised = limit + min(wanted - limit, max(1, spare // 2))
        remedy.append(
            f"ALTER {stmt} {ident} CONNECTION LIMIT {raised};  -- {raised - limit} more: the "
            f"server has {spare} free slots for ordinary roles"
        )
    if limit == 0 or used >= limit:
        findings.append(
            Finding(
                f"{kind}-limit-reached:{name}",
                "critical",
                f"{kind.capitalize()} {name} is at its CONNECTION LIMIT ({used}/{limit})",
                f"New connections as {name} get 53300: too many connections for {kind} {ident}."
                if kind == "role"
                else f"New connections to {name} get 53300: too many connections for {kind} "
                f"{ident}.",
                remedy,
                weight=50,
            )
        )
    elif used >= LIMIT_WARNING * limit:
        findings.append(
            Finding(
                f"{kind}-limit-near:{name}",
                "warning",
                f"{kind.capitalize()} {name} is at {used / limit:.0%} of its CONNECTION LIMIT "
                f"({used}/{limit})",
                "Above 90% of the limit.",
                remedy,
                weight=used / limit,
            )
        )


def _timeouts(
    snap: Snapshot, clients: list[Backend], findings: list[Finding], opts: Options
) -> dict[str, Any] | None:
    if not snap.settings and not snap.db_role_settings:
        return None
    overrides = []
    for role, db, setting in snap.db_role_settings:
        name, _, value = setting.partition("=")
        if name in TIMEOUT_SETTINGS:
            overrides.append(
                {"role": role or None, "database": db or None, "name": name, "value": value}
            )
    glob = {k: v for k, v in snap.settings.items() if k in TIMEOUT_SETTINGS}
    sources = {k: v for k, v in snap.settings_sources.items() if k in TIMEOUT_SETTINGS}
    iit = glob.get("idle_in_transaction_session_timeout")
    covered = {o["role"] for o in overrides if o["name"] == "idle_in_transaction_session_timeout"}
    if iit == "0":
        app_roles = sorted(
            {
                b.usename
                for b in clients
                if b.usename and b.usename not in covered and not b.is_superuser
            }
        )
        findings.append(
            Finding(
                "no-idle-in-transaction-timeout",
                "info",
                "idle_in_transaction_session_timeout is off",
                "A client that leaks a transaction keeps its slot (and the xmin horizon) forever"
                + (f"; roles without an override: {', '.join(app_roles)}" if app_roles else "")
                + ".",
                [
                    f"ALTER ROLE {r} SET idle_in_transaction_session_timeout = '60s';"
                    for r in app_roles
                ]
                or [
                    "ALTER SYSTEM SET idle_in_transaction_session_timeout = '5min'; SELECT "
                    "pg_reload_conf();"
                ],
            )
        )
    if glob.get("tcp_keepalives_idle") == "0" and "tcp_keepalives_idle" in snap.settings:
        findings.append(
            Finding(
                "tcp-keepalives-default",
                "info",
                "tcp_keepalives_idle uses the OS default (often 2 hours)",
                "Dead clients behind NAT or load balancers can hold slots for hours.",
                ["ALTER SYSTEM SET tcp_keepalives_idle = 60; SELECT pg_reload_conf();"],
            )
        )
    return {"global": glob, "global_sources": sources, "overrides": overrides}


def _session_stats(snap: Snapshot, findings: list[Finding]) -> list[dict[str, Any]] | None:
    if snap.session_stats is None:
        return None
    rows = []
    for r in snap.session_stats:
        session_time = float(r.get("session_time") or 0)
        iit = float(r.get("idle_in_transaction_time") or 0)
        active = float(r.get("active_time") or 0)
        row = {
            "datname": r.get("datname"),
            "sessions": int(r.get("sessions") or 0),
            "sessions_abandoned": int(r.get("sessions_abandoned") or 0),
            "sessions_fatal": int(r.get("sessions_fatal") or 0),
            "sessions_killed": int(r.get("sessions_killed") or 0),
            "session_time_ms": round(session_time, 1),
            "active_time_ms": round(active, 1),
            "idle_in_transaction_time_ms": round(iit, 1),
            "idle_in_transaction_share": round(iit / session_time, 4) if session_time else None,
        }
        rows.append(row)
        if session_time > 60_000 and iit / session_time > 0.1 and iit > active:
            findings.append(
                Finding(
                    f"idle-in-transaction-time:{row['datname']}",
                    "info",
                    f"Sessions on {row['datname']} spent more time idle in transaction than active",
                    f"{iit / 1000:.0f}s idle in transaction vs {active / 1000:.0f}s active "
                    "(pg_stat_database): transactions are held open by the application.",
                    ["set idle_in_transaction_session_timeout per role (see timeouts)"],
                )
            )
        ended_badly = sum(
            int(r.get(k) or 0) for k in ("sessions_abandoned", "sessions_killed", "sessions_fatal")
        )
        if ended_badly > 0:
            findings.append(
                Finding(
                    f"session-churn:{row['datname']}",
                    "info",
                    f"Sessions on {row['datname']} ended badly: {row['sessions_abandoned']} "
                    f"abandoned, {row['sessions_fatal']} fatal, {row['sessions_killed']} killed",
                    "Abandoned sessions are clients that vanished without closing (leaks, "
                    "crashes, timeouts); fatal ones include 53300 refusals.",
                    [],
                )
            )
    return rows


ADMIN_DATABASES = ("pgbouncer", "pgfunnel")


def _pooler(
    pooler: dict[str, list[dict[str, str | None]]], findings: list[Finding]
) -> dict[str, Any]:
    """The admin console's pools against their limits: waiting clients, and server connections
    at pool_size or at the database's max_db_connections (the next client waits) even before
    anyone waits."""
    dbs = {r.get("name"): r for r in pooler.get("databases", [])}
    pools = []
    per_db: Counter[str] = Counter()
    for p in pooler.get("pools", []):
        db = p.get("database")
        user = p.get("user")
        meta = dbs.get(db, {})
        server = sum(
            _int(p.get(k)) for k in ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login")
        )
        idle = _int(p.get("sv_idle"))
        maxwait = _int(p.get("maxwait")) + _int(p.get("maxwait_us")) / 1_000_000
        pool_size = _int(meta.get("pool_size")) if meta else None
        reserve = _int(meta.get("reserve_pool_size", meta.get("reserve_pool"))) if meta else None
        row = {
            "database": db,
            "user": user,
            "cl_active": _int(p.get("cl_active")),
            "cl_waiting": _int(p.get("cl_waiting")),
            "maxwait_s": round(maxwait, 3),
            "server_connections": server,
            "sv_idle": idle,
            "pool_size": pool_size,
            "reserve_pool_size": reserve,
            "max_db_connections": _int(meta.get("max_connections")) if meta else None,
            "pool_mode": p.get("pool_mode"),
        }
        pools.append(row)
        if db in ADMIN_DATABASES:
            continue
        per_db[str(db)] += server
        remedy = [
            f"raise pool_size for {db} in pgbouncer.ini if the server has the slots "
            "(pgfunnel advise sizes it), or shorten transactions",
            "see who holds the server connections: SHOW HOLDERS (pgfunnel) / SHOW SERVERS; "
            "pgfunnel reap --idle-in-transaction 5m",
        ]
        size_text = str(pool_size) if pool_size is not None else "unknown"
        if row["cl_waiting"] or maxwait >= 1:
            sev = "critical" if maxwait >= 10 else "warning"
            findings.append(
                Finding(
                    f"pooler-waiting:{db}/{user}",
                    sev,
                    f"Pooler: {row['cl_waiting']} client(s) waiting on {db}/{user}, "
                    f"maxwait {maxwait:.1f}s",
                    f"{server} server connections against pool_size {size_text}.",
                    remedy,
                    weight=maxwait,
                )
            )
        elif pool_size and server >= pool_size:
            busy = server - idle
            findings.append(
                Finding(
                    f"pooler-pool-full:{db}/{user}",
                    "warning" if idle == 0 else "info",
                    f"Pooler: pool {db}/{user} is at pool_size ({server}/{pool_size})"
                    + (", every server connection busy" if idle == 0 else f", {idle} idle"),
                    f"No client waits yet, but {busy} of {server} server connections are in use: "
                    "the next client beyond them waits"
                    + (
                        f" (after reserve_pool_timeout, for one of reserve_pool_size {reserve})."
                        if reserve
                        else "."
                    ),
                    remedy,
                    weight=busy / pool_size,
                )
            )
    for name, meta in dbs.items():
        cap = _int(meta.get("max_connections"))
        if name in ADMIN_DATABASES or cap <= 0:
            continue  # 0: no max_db_connections
        current = max(_int(meta.get("current_connections")), per_db.get(str(name), 0))
        if current >= cap:
            findings.append(
                Finding(
                    f"pooler-db-cap:{name}",
                    "warning",
                    f"Pooler: database {name} is at max_db_connections ({current}/{cap})",
                    "Every pool of this database waits for a server connection once its own are "
                    "busy, whatever its pool_size.",
                    [
                        f"raise max_db_connections for {name} in pgbouncer.ini if the server has "
                        "the slots (pgfunnel advise sizes it)",
                        "pgfunnel reap --idle-in-transaction 5m  (free held server connections)",
                    ],
                    weight=current / cap,
                )
            )
    return {"pools": pools}


def _int(v: Any) -> int:
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return 0


def _privileges(snap: Snapshot, unknown: list[Backend], findings: list[Finding]) -> dict[str, Any]:
    missing = []
    if not snap.server.can_read_all_stats and snap.source == "live":
        missing.append("pg_read_all_stats")
    hidden = sum(1 for b in snap.backends if not b.visible)
    if missing and hidden:
        who = snap.server.current_user or "<this_role>"
        background = hidden - len(unknown)
        findings.append(
            Finding(
                "missing-privilege",
                "warning",
                f"{len(unknown)} session(s) that may be clients are hidden: {who} lacks "
                "pg_read_all_stats (pg_monitor)",
                f"{hidden} row(s) of pg_stat_activity read <insufficient privilege>: "
                f"{len(unknown)} have a role and a database (they may hold client slots and are "
                f"counted as unknown, never as idle), {background} are background processes. "
                "Their state, ages and client addresses are hidden.",
                [f"GRANT pg_monitor TO {who};"],
                weight=hidden,
            )
        )
    return {
        "current_user": snap.server.current_user,
        "superuser": snap.server.is_superuser,
        "can_read_all_stats": snap.server.can_read_all_stats,
        "can_signal_backend": snap.server.can_signal_backend,
        "missing": missing,
        "insufficient_privilege_rows": hidden,
        "unknown_client_backends": len(unknown),
    }
