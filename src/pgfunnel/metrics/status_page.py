"""The live status page at `/`: one server-rendered HTML document, no scripts or external assets.

One section per database: its pools' SHOW POOLS figures, each pool's saturation against the
size the server currently grants it, the clients waiting and the clients holding servers
longest. Every figure sits in a cell with a `data-col` and a `data-value` (the raw number, as
SHOW POOLS has it), and every row carries `data-database` / `data-user`, so scripts and tests
read the page without parsing its text. Everything shown is escaped.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from html import escape
from typing import TYPE_CHECKING, Any

from pgfunnel import __version__
from pgfunnel.config.loader import ADMIN_DATABASE
from pgfunnel.metrics.figures import (
    admin_pool_row,
    databases,
    maxwait_seconds,
    pool_row,
    saturation,
)
from pgfunnel.metrics.health import BACKPRESSURE, DEGRADED, OK, pool_status, target_of
from pgfunnel.pool.objects import ClientState

if TYPE_CHECKING:
    from pgfunnel.admin.host import Host
    from pgfunnel.pool.scheduler import Pool

REFRESH_SECONDS = 3
HOLDERS_SHOWN = 10  # per database
WAITERS_SHOWN = 20  # per database

# (SHOW POOLS column, heading): the columns the page shows, in SHOW POOLS' order.
POOL_COLUMNS = (
    ("cl_active", "cl_active"),
    ("cl_waiting", "cl_waiting"),
    ("sv_active", "sv_active"),
    ("sv_idle", "sv_idle"),
    ("sv_used", "sv_used"),
    ("sv_tested", "sv_tested"),
    ("sv_login", "sv_login"),
    ("maxwait", "maxwait"),
)

CSS = """
:root{color-scheme:light dark;--fg:#1d232a;--bg:#fff;--mute:#5f6b76;--line:#d8dee4;
--ok:#1a7f37;--warn:#9a6700;--bad:#cf222e;--bar:#0969da;--cell:#f6f8fa}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--bg:#0d1117;--mute:#8d96a0;
--line:#30363d;--cell:#161b22;--bar:#4493f8}}
*{box-sizing:border-box}
body{margin:0;padding:12px;font:15px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--fg);background:var(--bg)}
header,main{max-width:1100px;margin:0 auto}
header h1{font-size:1.3em;margin:0 0 4px}
.meta{color:var(--mute);font-size:.85em;margin:0 0 12px}
.meta span{white-space:nowrap;margin-right:10px}
section.database{border:1px solid var(--line);border-radius:8px;padding:10px;margin:0 0 14px}
section.database h2{font-size:1.1em;margin:0 0 2px;word-break:break-all}
h3{font-size:.95em;margin:12px 0 4px}
.server{color:var(--mute);font-size:.8em;margin:0 0 8px;word-break:break-all}
.badge{display:inline-block;font-size:.75em;padding:1px 6px;border-radius:9px;
border:1px solid currentColor;margin-left:6px;vertical-align:middle}
.status-ok{color:var(--ok)}.status-back-pressure{color:var(--warn)}.status-degraded{color:var(--bad)}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;width:100%;font-size:.85em}
th,td{padding:4px 6px;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap}
th{background:var(--cell);font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.sat{margin:6px 0}
.sat .label{font-size:.85em}
.bar{height:10px;background:var(--cell);border:1px solid var(--line);border-radius:5px;
overflow:hidden;margin-top:2px}
.bar span{display:block;height:100%;background:var(--bar)}
.sat.hot .bar span{background:var(--warn)}.sat.full .bar span{background:var(--bad)}
.reason{font-size:.8em;color:var(--mute);white-space:normal}
.empty{color:var(--mute);font-size:.85em;margin:4px 0}
@media (max-width:600px){body{padding:8px;font-size:14px}
table.cards,table.cards tbody{display:block}table.cards thead{display:none}
table.cards tr{display:grid;grid-template-columns:repeat(auto-fill,minmax(84px,1fr));
gap:2px 10px;padding:6px 2px;border-bottom:1px solid var(--line)}
table.cards td{border:0;padding:1px 0;text-align:left;white-space:normal;overflow-wrap:anywhere}
table.cards td::before{content:attr(data-col);display:block;font-size:.75em;color:var(--mute)}
table.cards td.wide{grid-column:1/-1}table.cards td.wide::before{display:none}
table.cards td.wide.labelled::before{display:block}table.cards td.span2{grid-column:span 2}}
"""


def esc(value: object) -> str:
    return escape(str(value), quote=True)


def slug(*parts: str) -> str:
    """An id fragment from names: whitespace (not allowed in ids) made `_`, rest escaped."""
    return "-".join("_".join(p.split()) for p in parts)


def _seconds(value: float) -> str:
    if value < 10:
        return f"{value:.2f}s"
    if value < 600:
        return f"{value:.1f}s"
    return f"{int(value // 60)}m{int(value % 60):02d}s"


def render(host: Host) -> str:
    """The whole page, from the host's state now."""
    host.refresh()
    now = host.now()
    pools_by_db: dict[str, list[Pool]] = {}
    for pool in sorted(host.pooler.pools.values(), key=lambda p: p.user.name):
        pools_by_db.setdefault(pool.db.name, []).append(pool)
    servers = sum(pool.server_count for pool in host.pooler.pools.values())
    waiting = sum(
        len(pool.clients[ClientState.WAITING]) + len(pool.clients[ClientState.WAITING_LOGIN])
        for pool in host.pooler.pools.values()
    )
    stamp = datetime.fromtimestamp(time.time(), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        "<title>pgfunnel status</title>",
        f"<style>{CSS}</style></head><body>",
        "<header><h1>pgfunnel</h1>",
        '<p class="meta" id="summary"'
        f' data-clients="{host.client_count}" data-servers="{servers}"'
        f' data-waiting="{waiting}" data-pools="{len(host.pooler.pools)}">',
        f"<span>v{esc(__version__)}</span>",
        f'<span>up <b id="uptime">{esc(_seconds(now - host.started_at))}</b></span>',
        f"<span><b>{host.client_count}</b> clients</span>",
        f"<span><b>{waiting}</b> waiting</span>",
        f"<span><b>{servers}</b> servers</span>",
        f'<span id="generated">{esc(stamp)}</span>',
        f"<span>refreshes every {REFRESH_SECONDS}s</span>",
        "</p></header><main>",
    ]
    shown: set[str] = set()
    for name, dbc, db in databases(host):
        shown.add(name)
        out.append(_database(host, name, dbc, db, pools_by_db.get(name, []), now))
    for name, pools in pools_by_db.items():  # a pool whose database a reload removed
        if name not in shown:
            out.append(_database(host, name, pools[0].db.config, pools[0].db, pools, now))
    if not shown and not pools_by_db:
        out.append('<p class="empty">No databases configured.</p>')
    out.append(_admin(host))
    out.append("</main></body></html>")
    return "\n".join(out)


def _database(host: Host, name: str, dbc: Any, db: Any, pools: list[Pool], now: float) -> str:
    sid = slug(name)
    flags = ""
    if db is not None and db.paused:
        flags += '<span class="badge status-back-pressure">paused</span>'
    if db is not None and db.disabled:
        flags += '<span class="badge status-degraded">disabled</span>'
    target = target_of(host, dbc)
    parts = [
        f'<section class="database" id="db-{esc(sid)}" data-database="{esc(name)}">',
        f"<h2>{esc(name)}{flags}</h2>",
        f'<p class="server">server {esc(target.label)} · dbname {esc(dbc.dbname or name)}</p>',
    ]
    if not pools:
        parts.append('<p class="empty">No pools yet: no client has connected.</p></section>')
        return "\n".join(parts)
    entries = [(pool_row(pool, now), *pool_status(pool, now)) for pool in pools]
    parts.append(_pools_table(name, entries))
    parts.append(f'<h3>Saturation</h3><div class="saturations" id="saturation-{esc(sid)}">')
    for pool in pools:
        parts.append(_saturation(pool))
    parts.append("</div>")
    parts.append(_waiters(name, pools, now))
    parts.append(_holders(host, name))
    parts.append("</section>")
    return "\n".join(parts)


def _pools_table(name: str, entries: list[tuple[dict[str, Any], str, str]]) -> str:
    """The SHOW POOLS figures of one database's pools: (row, status, reason) each."""
    sid = slug(name)
    head = "".join(f'<th class="num" scope="col">{esc(h)}</th>' for _, h in POOL_COLUMNS)
    rows = []
    for row, status, reason in entries:
        user = str(row["user"])
        cells = [
            f'<td class="user wide" data-col="user" data-value="{esc(user)}">{esc(user)}'
            f'<span class="badge status-{esc(status)}" data-col="status" '
            f'data-value="{esc(status)}">{esc(status)}</span></td>'
        ]
        for col, _ in POOL_COLUMNS:
            if col == "maxwait":
                wait = maxwait_seconds(row)
                cells.append(
                    f'<td class="num {col}" data-col="{col}" data-value="{row[col]}" '
                    f'data-maxwait-us="{row["maxwait_us"]}" data-seconds="{wait:.6f}">'
                    f"{esc(_seconds(wait))}</td>"
                )
            else:
                cells.append(
                    f'<td class="num {col}" data-col="{col}" data-value="{row[col]}">'
                    f"{row[col]}</td>"
                )
        cells.append(
            f'<td class="mode" data-col="pool_mode" data-value="{esc(row["pool_mode"])}">'
            f"{esc(row['pool_mode'])}</td>"
        )
        note = ""
        if status in (DEGRADED, BACKPRESSURE) and reason:
            note = (
                f'<tr class="pool-reason" data-database="{esc(name)}" '
                f'data-user="{esc(user)}"><td colspan="{len(POOL_COLUMNS) + 2}" '
                f'class="reason wide">{esc(reason)}</td></tr>'
            )
        rows.append(
            f'<tr class="pool" id="pool-{esc(slug(name, user))}" '
            f'data-database="{esc(name)}" data-user="{esc(user)}">'
            + "".join(cells)
            + "</tr>"
            + note
        )
    return (
        f'<div class="scroll"><table class="pools cards" id="pools-{esc(sid)}" '
        f'data-database="{esc(name)}"><thead><tr><th scope="col">user</th>{head}'
        f'<th scope="col">mode</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table></div>"
    )


def _admin(host: Host) -> str:
    """The admin console, which SHOW POOLS lists as pool pgbouncer/pgbouncer."""
    return "\n".join(
        [
            f'<section class="database admin" id="db-{ADMIN_DATABASE}" '
            f'data-database="{ADMIN_DATABASE}">',
            f'<h2>{ADMIN_DATABASE}<span class="badge">admin console</span></h2>',
            _pools_table(ADMIN_DATABASE, [(admin_pool_row(host), OK, "")]),
            "</section>",
        ]
    )


def _saturation(pool: Pool) -> str:
    sat = saturation(pool)
    pct = round(sat.ratio * 100)
    shown = min(pct, 100)
    level = "full" if pct >= 100 else "hot" if pct >= 75 else ""
    text = f"{esc(pool.user.name)}: {sat.in_use} of {sat.granted} servers in use ({pct}%)"
    if sat.backpressure or sat.granted != sat.pool_size:
        error = pool.backoff.error
        why = f" ({esc(error.sqlstate)})" if error is not None else ""
        text += (
            f' — <b class="status-back-pressure">back-pressure{why}</b>: the server grants '
            f"{sat.granted} of pool_size {sat.pool_size}"
        )
    return (
        f'<div class="sat {level}" data-database="{esc(pool.db.name)}" '
        f'data-user="{esc(pool.user.name)}" data-in-use="{sat.in_use}" '
        f'data-granted="{sat.granted}" data-pool-size="{sat.pool_size}" data-percent="{pct}" '
        f'data-backpressure="{1 if sat.backpressure else 0}">'
        f'<div class="label">{text}</div>'
        f'<div class="bar" role="progressbar" aria-valuemin="0" aria-valuemax="100" '
        f'aria-valuenow="{shown}"><span style="width:{shown}%"></span></div></div>'
    )


def _waiters(name: str, pools: list[Pool], now: float) -> str:
    sid = slug(name)
    waiters = []
    for pool in pools:
        waiters += list(pool.waiting_clients())
        waiters += list(pool.clients[ClientState.WAITING_LOGIN])
    waiters.sort(key=lambda c: c.wait_start)
    out = [f"<h3>Waiting clients ({len(waiters)})</h3>"]
    if not waiters:
        out.append(f'<p class="empty" id="waiting-{esc(sid)}-none">No client is waiting.</p>')
        return "".join(out)
    rows = []
    for client in waiters[:WAITERS_SHOWN]:
        app = client.params.get("application_name", client.app_name)
        wait = now - client.wait_start
        rows.append(
            f'<tr class="waiter" data-database="{esc(name)}" data-user="{esc(client.username)}" '
            f'data-client="C-{client.id:#x}" data-application-name="{esc(app)}">'
            f'<td class="wide labelled" data-col="application_name">{esc(app)}</td>'
            f'<td class="span2" data-col="addr">{esc(client.addr)}:{client.port}</td>'
            f'<td data-col="user">{esc(client.username)}</td>'
            f'<td class="num" data-col="wait" data-value="{wait:.6f}">{esc(_seconds(wait))}</td>'
            "</tr>"
        )
    more = ""
    if len(waiters) > WAITERS_SHOWN:
        more = f'<p class="empty">and {len(waiters) - WAITERS_SHOWN} more</p>'
    out.append(
        f'<div class="scroll"><table class="waiting cards" id="waiting-{esc(sid)}" '
        f'data-database="{esc(name)}"><thead><tr><th>application_name</th><th>addr</th>'
        f'<th>user</th><th class="num">wait</th></tr></thead><tbody>'
        + "".join(rows)
        + "</tbody></table></div>"
        + more
    )
    return "".join(out)


def _holders(host: Host, name: str) -> str:
    sid = slug(name)
    holders = host.holders(HOLDERS_SHOWN, name)
    out = [f"<h3>Top holders ({len(holders)})</h3>"]
    if not holders:
        out.append(f'<p class="empty" id="holders-{esc(sid)}-none">No client holds a server.</p>')
        return "".join(out)
    rows = []
    for h in holders:
        c = h.client
        rows.append(
            f'<tr class="holder" data-database="{esc(name)}" data-user="{esc(c.username)}" '
            f'data-client="C-{c.id:#x}" data-application-name="{esc(h.application_name)}" '
            f'data-server-pid="{h.server.pid}">'
            f'<td class="wide labelled" data-col="application_name">'
            f"{esc(h.application_name)}</td>"
            f'<td class="span2" data-col="addr">{esc(c.addr)}:{c.port}</td>'
            f'<td data-col="user">{esc(c.username)}</td>'
            f'<td class="span2" data-col="state">{esc(h.state)}</td>'
            f'<td class="num" data-col="held" data-value="{h.held:.6f}">{esc(_seconds(h.held))}'
            "</td>"
            f'<td class="num" data-col="xact" data-value="{h.xact:.6f}">'
            f"{esc(_seconds(h.xact)) if h.xact else '–'}</td>"
            f'<td class="num" data-col="server_pid" data-value="{h.server.pid}">{h.server.pid}'
            "</td></tr>"
        )
    out.append(
        f'<div class="scroll"><table class="holders cards" id="holders-{esc(sid)}" '
        f'data-database="{esc(name)}"><thead><tr><th>application_name</th><th>addr</th>'
        '<th>user</th><th>state</th><th class="num">held</th><th class="num">xact</th>'
        '<th class="num">server pid</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table>"
        "</div>"
    )
    return "".join(out)
