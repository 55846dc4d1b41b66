"""Terminal rendering with rich: the diagnose report and the plain tables other commands print."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from pgfunnel.toolkit.units import format_age

STYLE = {
    "critical": "bold red",
    "warning": "yellow",
    "info": "cyan",
    "unknown": "magenta",
    "ok": "green",
}


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    t = Table(title=title, title_justify="left", show_lines=False)
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*["" if v is None else str(v) for v in r])
    return t


def _pct(v: Any) -> str:
    return "-" if v is None else f"{float(v):.0%}"


def diagnose(report: dict[str, Any], console: Console) -> None:
    """Prints the diagnose report for people."""
    status = report["status"]
    console.print(
        f"[{STYLE[status]}]pgfunnel diagnose: {status.upper()}[/] (exit {report['exit_code']})"
    )
    err = report.get("connect_error")
    if err and err.get("sqlstate") == "53300":
        console.print(f"[bold red]Refused with 53300:[/] {err['message']}")
        console.print(f"  limit hit: {err['limit']} — {err['explanation']}")
        console.print(f"  next: {err['next_command']}")
    slots = report.get("slots")
    if slots:
        head = slots.get("headroom") or {}
        low = slots.get("headroom_lower_bound") or {}
        # reserved_connections and pg_use_reserved_connections exist from PostgreSQL 16: no rows
        # for a tier the server does not have.
        tier = head.get("reserved_connections_members") is not None
        rows: list[list[Any]] = [
            ["max_connections", slots["max_connections"]],
            ["superuser_reserved_connections", slots["superuser_reserved_connections"]],
        ]
        if tier:
            rows.append(["reserved_connections", slots["reserved_connections"]])
        if slots.get("reserved_connections_roles") is not None:
            rows.append(
                [
                    "  their members (pg_use_reserved_connections)",
                    ", ".join(slots["reserved_connections_roles"]) or "none",
                ]
            )
        usage = _pct(slots["usage"])
        if slots["unknown_backends"] and slots.get("usage_upper_bound") is not None:
            usage += f" (up to {_pct(slots['usage_upper_bound'])} with the hidden sessions)"
        rows += [
            ["usable by ordinary roles", slots["usable"]],
            ["used by client backends", slots["used_by_client_backends"]],
            ["unknown (hidden by privileges)", slots["unknown_backends"]],
            ["usage of usable", usage],
        ]

        def span(key: str) -> Any:
            high = head.get(key)
            if key in low and low[key] is not None and low[key] != high:
                return f"{low[key]}-{high}"
            return high

        rows.append(["headroom: ordinary roles", span("ordinary_roles")])
        if tier:
            rows.append(
                ["headroom: pg_use_reserved_connections", span("reserved_connections_members")]
            )
        rows.append(["headroom: superusers", span("superusers")])
        if slots.get("own_connection"):
            rows.append(["this tool's own connection (excluded above)", 1])
        console.print(table("Slots", ["", "value"], rows))
        others = slots.get("other_backends") or []
        if others:
            console.print(
                table(
                    "Other backends (their own slots, not max_connections)",
                    ["backend_type", "count", "max", "setting"],
                    [[o["backend_type"], o["count"], o["max"], o["max_setting"]] for o in others],
                )
            )
    holders = report.get("holders")
    if holders:
        rows = [
            [
                g["application_name"] or "",
                g["usename"],
                g["datname"],
                g["client_addr"],
                g["state"],
                g["count"],
                _pct(g["share_of_usable"]),
                g["oldest_backend_start"],
                g["oldest_state_change"],
            ]
            for g in holders["groups"]
        ]
        if holders["other"]["count"]:
            rows.append(["other", "", "", "", "", holders["other"]["count"], "", "", ""])
        console.print(
            table(
                "Who holds the slots",
                [
                    "application",
                    "user",
                    "database",
                    "client",
                    "state",
                    "count",
                    "share",
                    "oldest backend_start",
                    "oldest state_change",
                ],
                rows,
            )
        )
    for p in report.get("poolers") or []:
        console.print(
            f"[cyan]Pooler in front:[/] {p['client_addr']} {p['application_name']!r} holds "
            f"{p['backends']} backends ({p['reason']}); attribution stops there."
        )
    idle = report.get("idle")
    if idle:
        summ = idle["summary"]
        console.print(
            table(
                "Idle sessions",
                ["state", "count", "oldest idle (state_change)", "oldest transaction (xact_start)"],
                [
                    [
                        k,
                        v["count"],
                        format_age(v["oldest_state_age_s"]),
                        format_age(v["oldest_xact_age_s"]),
                    ]
                    for k, v in summ.items()
                ],
            )
        )
        if idle["sessions"]:
            console.print(
                table(
                    "Oldest idle sessions",
                    [
                        "pid",
                        "user",
                        "database",
                        "application",
                        "state",
                        "idle",
                        "xact",
                        "xmin",
                        "query",
                    ],
                    [
                        [
                            s["pid"],
                            s["usename"],
                            s["datname"],
                            s["application_name"],
                            s["state"],
                            format_age(s["state_age_s"]),
                            format_age(s["xact_age_s"]),
                            ("HORIZON " if s["holds_horizon"] else "")
                            + (
                                str(max(a for a in (s["xmin_age"], s.get("xid_age")) if a))
                                if s["xmin_age"] or s.get("xid_age")
                                else ""
                            ),
                            s["query"],
                        ]
                        for s in idle["sessions"]
                    ],
                )
            )
    limits = report.get("limits")
    if limits and (limits["roles"] or limits["databases"]):
        rows = [
            [
                "role",
                r["name"],
                r["used"],
                r["limit"] if r["limit"] is not None else "none",
                _pct(r["ratio"]) + (" (superuser: exempt)" if r["exempt"] else ""),
            ]
            for r in limits["roles"]
        ]
        rows += [
            [
                "database",
                d["name"],
                d["used"],
                d["limit"] if d["limit"] is not None else "none",
                _pct(d["ratio"]),
            ]
            for d in limits["databases"]
        ]
        console.print(table("Limits", ["kind", "name", "used", "limit", "of limit"], rows))
    timeouts = report.get("timeouts")
    if timeouts:
        srcs = timeouts.get("global_sources") or {}
        names = sorted(set(timeouts["global"]) | set(srcs))
        rows = [
            ["(server-wide)", "", k, timeouts["global"].get(k, "?"), srcs.get(k, "")] for k in names
        ]
        rows += [
            [o["role"] or "*", o["database"] or "*", o["name"], o["value"], "ALTER ... SET"]
            for o in timeouts["overrides"]
        ]
        console.print(table("Timeouts", ["role", "database", "setting", "value", "source"], rows))
    stats = report.get("session_stats")
    if stats:
        console.print(
            table(
                "Session statistics (pg_stat_database)",
                ["database", "sessions", "abandoned", "fatal", "killed", "active", "idle in xact"],
                [
                    [
                        s["datname"],
                        s["sessions"],
                        s["sessions_abandoned"],
                        s["sessions_fatal"],
                        s["sessions_killed"],
                        format_age(s["active_time_ms"] / 1000),
                        format_age(s["idle_in_transaction_time_ms"] / 1000),
                    ]
                    for s in stats
                ],
            )
        )
    pooler = report.get("pooler")
    if pooler:
        console.print(
            table(
                "Pooler pools",
                [
                    "database",
                    "user",
                    "cl_active",
                    "cl_waiting",
                    "maxwait",
                    "servers",
                    "pool_size",
                    "max_db_conn",
                ],
                [
                    [
                        p["database"],
                        p["user"],
                        p["cl_active"],
                        p["cl_waiting"],
                        f"{p['maxwait_s']:.1f}s",
                        p["server_connections"],
                        p["pool_size"],
                        p["max_db_connections"],
                    ]
                    for p in pooler["pools"]
                ],
            )
        )
    findings = report.get("findings") or []
    if findings:
        console.print("[bold]Findings (most severe first)[/]")
        for i, f in enumerate(findings, 1):
            console.print(f"{i}. [{STYLE[f['severity']]}]{f['severity'].upper()}[/] {f['title']}")
            console.print(f"   {f['detail']}", markup=False)
            for r in f["remedy"]:
                console.print(f"   -> {r}", markup=False)
    else:
        console.print("[green]No findings.[/]")
