"""Pure planning for `pgfunnel reap`: which sessions to end, in which order, with one statement."""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pgfunnel.toolkit import sqlfiles
from pgfunnel.toolkit.model import IDLE, IDLE_IN_TX, IDLE_IN_TX_ABORTED, Backend, Snapshot
from pgfunnel.toolkit.units import format_seconds_setting

TOOL_APPS = re.compile(r"^(pg_dump|pg_dumpall|pg_basebackup|pg_restore|pg_upgrade|pg_rewind)\b")
REPLICATION_APPS = re.compile(r"walreceiver|pg_receivewal|pg_recvlogical", re.I)
STATE_NAMES = {
    "idle": IDLE,
    "idle-in-transaction": IDLE_IN_TX,
    "idle in transaction": IDLE_IN_TX,
    "aborted": IDLE_IN_TX_ABORTED,
    "idle-in-transaction-aborted": IDLE_IN_TX_ABORTED,
    "idle in transaction (aborted)": IDLE_IN_TX_ABORTED,
}
# The share cap protects an application from losing most of its idle pool at once (a
# reconnect storm). Sessions idle in transaction past the age are leaks holding locks and the
# xmin horizon: by default they are not capped. An explicit --max-share caps every target.
DEFAULT_IDLE_SHARE = 0.5


@dataclass
class Filters:
    """What to reap; every field narrows the selection. Ages are seconds."""

    idle_in_transaction_s: float | None = None
    idle_s: float | None = None
    states: set[str] = field(default_factory=set)
    min_idle_age_s: float | None = None
    min_xact_age_s: float | None = None
    roles: list[str] = field(default_factory=list)
    application: str | None = None
    databases: list[str] = field(default_factory=list)
    client_cidrs: list[str] = field(default_factory=list)
    include_superusers: bool = False
    include_replication: bool = False
    include_tools: bool = False
    max_targets: int = 100
    max_share: float | None = None  # None: DEFAULT_IDLE_SHARE for idle targets only

    def validate(self) -> None:
        if self.idle_in_transaction_s is None and self.idle_s is None and not self.states:
            raise ValueError(
                "say what to reap: --idle-in-transaction AGE, --idle AGE, or --state STATE "
                "with --min-idle-age AGE"
            )
        if self.states and self.min_idle_age_s is None:
            raise ValueError("--state needs --min-idle-age (reap never ends fresh sessions)")
        if "active" in self.states:
            raise ValueError("reap never ends active sessions")
        for cidr in self.client_cidrs:
            ipaddress.ip_network(cidr, strict=False)
        if self.application:
            re.compile(self.application)
        if self.max_share is not None and not 0 < self.max_share <= 1:
            raise ValueError("--max-share must be in (0, 1]")

    def share_for(self, state: str | None) -> float | None:
        """The share cap that applies to a target in `state`, or None when it is not capped."""
        if self.max_share is not None:
            return self.max_share
        return DEFAULT_IDLE_SHARE if state == IDLE else None


@dataclass
class Target:
    backend: Backend
    reason: str
    min_state_age_s: float
    min_xact_age_s: float | None


@dataclass
class Skip:
    backend: Backend
    reason: str


@dataclass
class Plan:
    targets: list[Target]
    skipped: list[Skip]
    no_privilege: list[Skip]
    statement: str | None
    durable_fix: list[str]
    now: dt.datetime | None
    # Sessions matching the filters whose state and ages are hidden from us, and the
    # privileges that would let reap see or end what it cannot (one line each, with the GRANT).
    not_visible: list[Skip] = field(default_factory=list)
    missing_privileges: list[str] = field(default_factory=list)

    @property
    def incomplete(self) -> bool:
        """Some sessions that may be targets are not ours to see or to end."""
        return bool(self.no_privilege or self.not_visible)

    def as_dict(self) -> dict[str, Any]:
        return {
            "targets": [
                {
                    **_brief(t.backend),
                    "reason": t.reason,
                    "min_state_age_s": t.min_state_age_s,
                    "min_xact_age_s": t.min_xact_age_s,
                }
                for t in self.targets
            ],
            "skipped": [{**_brief(s.backend), "reason": s.reason} for s in self.skipped],
            "no_privilege": [{**_brief(s.backend), "reason": s.reason} for s in self.no_privilege],
            "not_visible": [{**_brief(s.backend), "reason": s.reason} for s in self.not_visible],
            "missing_privileges": self.missing_privileges,
            "statement": self.statement,
            "durable_fix": self.durable_fix,
        }


def _brief(b: Backend) -> dict[str, Any]:
    return {
        "pid": b.pid,
        "usename": b.usename,
        "datname": b.datname,
        "application_name": b.application_name,
        "client_addr": b.client_addr,
        "state": b.state,
        "state_age_s": round(b.state_age_s, 3) if b.state_age_s is not None else None,
        "xact_age_s": round(b.xact_age_s, 3) if b.xact_age_s is not None else None,
        "backend_start": b.backend_start.isoformat() if b.backend_start else None,
    }


def _candidate(b: Backend, f: Filters) -> tuple[str, float] | None:
    """Why `b` qualifies by state and age, and the age the statement must re-check."""
    age = b.state_age_s
    if age is None or b.state_change is None or b.backend_start is None:
        return None
    if b.state in (IDLE_IN_TX, IDLE_IN_TX_ABORTED) and f.idle_in_transaction_s is not None:
        if age >= f.idle_in_transaction_s:
            return (
                f"{b.state} for over {format_seconds_setting(f.idle_in_transaction_s)}",
                f.idle_in_transaction_s,
            )
    if b.state == IDLE and f.idle_s is not None and age >= f.idle_s:
        return (f"idle for over {format_seconds_setting(f.idle_s)}", f.idle_s)
    if b.state in f.states and f.min_idle_age_s is not None and age >= f.min_idle_age_s:
        return (f"{b.state} for over {format_seconds_setting(f.min_idle_age_s)}", f.min_idle_age_s)
    return None


def _matches_visible_columns(b: Backend, f: Filters) -> bool:
    """The filters on what pg_stat_activity shows every role: usename, datname, application."""
    if f.roles and b.usename not in f.roles:
        return False
    if f.databases and b.datname not in f.databases:
        return False
    return not (f.application and not re.search(f.application, b.application_name or ""))


def _matches(b: Backend, f: Filters) -> bool:
    if not _matches_visible_columns(b, f):
        return False
    if f.client_cidrs:
        if not b.client_addr:
            return False
        addr = ipaddress.ip_address(b.client_addr)
        if not any(addr in ipaddress.ip_network(c, strict=False) for c in f.client_cidrs):
            return False
    return f.min_xact_age_s is None or (b.xact_age_s or 0) >= f.min_xact_age_s


def _order_key(t: Target) -> tuple[int, float]:
    b = t.backend
    rank = {IDLE_IN_TX_ABORTED: 0, IDLE_IN_TX: 1, IDLE: 2}.get(b.state or "", 3)
    return (rank, -(b.xact_age_s if b.xact_age_s is not None else (b.state_age_s or 0)))


def plan(snap: Snapshot, f: Filters) -> Plan:
    """Chooses the sessions to end; never our own pid, never a non-client backend."""
    f.validate()
    own = snap.server.own_pid
    clients = [b for b in snap.backends if b.visible and b.is_client and b.pid != own]
    # An application's hidden sessions are still its sessions: they count in its total. A
    # hidden client backend still shows its role and database; a background process lacks one
    # (the logical replication launcher runs as the bootstrap superuser with no database).
    hidden = [
        b for b in snap.backends if not b.visible and b.usename and b.datname and b.pid != own
    ]
    app_totals = Counter(b.application_name or "" for b in clients + hidden)
    me = snap.server.current_user or "<this_role>"
    chosen: list[Target] = []
    skipped: list[Skip] = []
    no_priv: list[Skip] = []
    # Hidden rows show usename, datname and application_name only: those matching the filters
    # may be targets, and we say so rather than pretend they are not there.
    not_visible = [
        Skip(
            b,
            "state and ages hidden (<insufficient privilege>): needs pg_read_all_stats, or "
            f"the privileges of role {b.usename}",
        )
        for b in hidden
        if _matches_visible_columns(b, f)
    ]
    for b in clients:
        cand = _candidate(b, f)
        if cand is None or not _matches(b, f):
            continue
        reason, min_age = cand
        if b.is_superuser and not f.include_superusers:
            skipped.append(Skip(b, "superuser session (use --include-superusers)"))
            continue
        if (b.is_replication_role or REPLICATION_APPS.search(b.application_name or "")) and not (
            f.include_replication
        ):
            skipped.append(Skip(b, "replication session (use --include-replication)"))
            continue
        if TOOL_APPS.search(b.application_name or "") and not f.include_tools:
            skipped.append(Skip(b, f"{b.application_name} session (use --include-tools)"))
            continue
        if b.can_signal is False:
            no_priv.append(
                Skip(
                    b,
                    "only a superuser may end a superuser's session"
                    if b.is_superuser
                    else f"needs pg_signal_backend, or the privileges of role {b.usename} "
                    f"(GRANT pg_signal_backend TO {me};)",
                )
            )
            continue
        chosen.append(Target(b, reason, min_age, f.min_xact_age_s))
    chosen.sort(key=_order_key)
    per_app: Counter[str] = Counter()
    targets: list[Target] = []
    for t in chosen:
        app = t.backend.application_name or ""
        share = f.share_for(t.backend.state)
        # Idle targets come last, so the ended idle-in-transaction sessions of the same
        # application count against its cap too: a round never ends more than the share.
        if share is not None and per_app[app] >= max(1, math.floor(share * app_totals[app])):
            why = (
                f"--max-share {share:g}"
                if f.max_share is not None
                else f"idle sessions are capped at {share:g} of an application's sessions a "
                "round by default; --max-share 1 lifts it"
            )
            skipped.append(
                Skip(
                    t.backend,
                    f"share cap: already {per_app[app]} of {app_totals[app]} '{app}' sessions "
                    f"ended this round ({why})",
                )
            )
            continue
        if len(targets) >= f.max_targets:
            skipped.append(Skip(t.backend, f"--max {f.max_targets} reached"))
            continue
        per_app[app] += 1
        targets.append(t)
    return Plan(
        targets,
        skipped,
        no_priv,
        build_statement(targets),
        durable_fix(targets, f),
        snap.server.now,
        not_visible,
        missing_privileges(me, not_visible, no_priv),
    )


def missing_privileges(me: str, not_visible: list[Skip], no_priv: list[Skip]) -> list[str]:
    """One line per missing privilege: what it hides or blocks, and the GRANT that fixes it."""
    out = []
    if not_visible:
        roles = ", ".join(sorted({s.backend.usename or "?" for s in not_visible}))
        out.append(
            f"pg_read_all_stats: {len(not_visible)} session(s) of {roles} are hidden from {me} "
            f"(<insufficient privilege>); GRANT pg_read_all_stats TO {me}; (or pg_monitor)"
        )
    plain = [s for s in no_priv if not s.backend.is_superuser]
    if plain:
        roles = ", ".join(sorted({s.backend.usename or "?" for s in plain}))
        out.append(
            f"pg_signal_backend: {me} may not end {len(plain)} session(s) of {roles}; "
            f"GRANT pg_signal_backend TO {me}; (or GRANT <role> TO {me} WITH INHERIT for one "
            "role's sessions: PostgreSQL checks inherited privileges, not bare membership)"
        )
    supers = [s for s in no_priv if s.backend.is_superuser]
    if supers:
        out.append(
            f"superuser: {len(supers)} superuser session(s) can be ended by a superuser only"
        )
    return out


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def build_statement(targets: list[Target]) -> str | None:
    """The exact SQL that ends the targets, re-checking each one at the moment of termination."""
    if not targets:
        return None
    rows = []
    for t in targets:
        b = t.backend
        assert b.backend_start is not None and b.state_change is not None and b.state is not None
        xact = f"{t.min_xact_age_s!r}::float8" if t.min_xact_age_s is not None else "NULL::float8"
        rows.append(
            f"        ({int(b.pid)}, {_lit(b.backend_start.isoformat())}::timestamptz, "
            f"{_lit(b.state)}::text, {_lit(b.state_change.isoformat())}::timestamptz, "
            f"{float(t.min_state_age_s)!r}::float8, {xact})"
        )
    return sqlfiles.load("reap").replace("{planned}", ",\n".join(rows))


def durable_fix(targets: list[Target], f: Filters) -> list[str]:
    """What stops the leak coming back, whatever reap does now."""
    roles = sorted({t.backend.usename for t in targets if t.backend.usename}) or (
        f.roles or ["<app_role>"]
    )
    iit = format_seconds_setting(f.idle_in_transaction_s or 60)
    fix = [f"ALTER ROLE {r} SET idle_in_transaction_session_timeout = '{iit}';" for r in roles]
    if f.idle_s is not None:
        fix += [
            f"ALTER ROLE {r} SET idle_session_timeout = '{format_seconds_setting(f.idle_s)}';"
            for r in roles
        ]
    fix.append(
        f"pgbouncer.ini / pgfunnel: idle_transaction_timeout = {int(f.idle_in_transaction_s or 60)}"
    )
    return fix


def parse_state(name: str) -> str:
    key = name.strip().lower()
    if key not in STATE_NAMES:
        raise ValueError(f"unknown state {name!r}: idle, idle-in-transaction, aborted")
    return STATE_NAMES[key]
