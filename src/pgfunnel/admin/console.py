"""The admin console: PgBouncer 1.25's SHOW commands and process controls, simple protocol only.

Parsing and result sets live here; every command that changes something is one call on the
host (`admin.host.Host`, the App), which raises `AdminError` when it cannot comply. Column
names, order and types are PgBouncer's: exporters and dashboards read them by name.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, Protocol

from pgfunnel import __version__
from pgfunnel.admin.host import AdminError, Host
from pgfunnel.config.pools import resolve_pool_settings
from pgfunnel.config.settings import SETTINGS, format_value
from pgfunnel.pool.objects import Client, ClientState, Server, ServerState
from pgfunnel.pool.scheduler import Holder, Pool, PoolStats
from pgfunnel.proto import messages as m
from pgfunnel.proto import sqlstate as ss
from pgfunnel.proto.strings import Msg

# Type oids as PgBouncer's pktbuf writes them: 's' text, 'i' int4, 'q' int8, 'N' numeric.
TEXT, INT4, INT8, NUMERIC = 25, 23, 20, 1700

Columns = Sequence[tuple[str, int]]
Table = tuple[Columns, list[list[Any]]]

ADMIN_DATABASES = ("pgbouncer", "pgfunnel")
ADMIN_DB = "pgbouncer"  # the name PgBouncer lists its admin database and pool under
ADMIN_POOL_SIZE = 2  # PgBouncer's admin database: pool_size 2, statement mode

VERSION_STRING = f"PgBouncer 1.25.1 (pgfunnel {__version__})"

# --- column tables (PgBouncer 1.25) ----------------------------------------------------------
POOLS_COLUMNS: Columns = (
    ("database", TEXT),
    ("user", TEXT),
    ("cl_active", INT4),
    ("cl_waiting", INT4),
    ("cl_active_cancel_req", INT4),
    ("cl_waiting_cancel_req", INT4),
    ("sv_active", INT4),
    ("sv_active_cancel", INT4),
    ("sv_being_canceled", INT4),
    ("sv_idle", INT4),
    ("sv_used", INT4),
    ("sv_tested", INT4),
    ("sv_login", INT4),
    ("maxwait", INT4),
    ("maxwait_us", INT4),
    ("pool_mode", TEXT),
    ("load_balance_hosts", TEXT),
)
SOCKET_COLUMNS: Columns = (
    ("type", TEXT),
    ("user", TEXT),
    ("database", TEXT),
    ("replication", TEXT),
    ("state", TEXT),
    ("addr", TEXT),
    ("port", INT4),
    ("local_addr", TEXT),
    ("local_port", INT4),
    ("connect_time", TEXT),
    ("request_time", TEXT),
    ("wait", INT4),
    ("wait_us", INT4),
    ("close_needed", INT4),
    ("ptr", TEXT),
    ("link", TEXT),
    ("remote_pid", INT4),
    ("tls", TEXT),
    ("application_name", TEXT),
    ("prepared_statements", INT4),
    ("id", INT4),
)
# SHOW CLIENTS: PgBouncer's columns, then how the client authenticated and what session state
# follows it (pgfunnel's own, last so that tools reading PgBouncer's columns by position still
# find theirs).
CLIENT_COLUMNS: Columns = (
    *SOCKET_COLUMNS,
    ("auth_method", TEXT),
    ("hba_line", TEXT),
    ("carries", TEXT),  # the session settings and SQL statements that follow it (issue 14)
)
DATABASES_COLUMNS: Columns = (
    ("name", TEXT),
    ("host", TEXT),
    ("port", INT4),
    ("database", TEXT),
    ("force_user", TEXT),
    ("pool_size", INT4),
    ("min_pool_size", INT4),
    ("reserve_pool_size", INT4),
    ("server_lifetime", INT4),
    ("pool_mode", TEXT),
    ("load_balance_hosts", TEXT),
    ("max_connections", INT4),
    ("current_connections", INT4),
    ("max_client_connections", INT4),
    ("current_client_connections", INT4),
    ("paused", INT4),
    ("disabled", INT4),
)
USERS_COLUMNS: Columns = (
    ("name", TEXT),
    ("pool_size", TEXT),
    ("reserve_pool_size", TEXT),
    ("pool_mode", TEXT),
    ("max_user_connections", INT4),
    ("current_connections", INT4),
    ("max_user_client_connections", INT4),
    ("current_client_connections", INT4),
    # pgfunnel's own: where the user's secret comes from, and how its clients logged in.
    ("auth_source", TEXT),
    ("auth_methods", TEXT),
)
# The stats counters in PgBouncer's order: (name in SHOW STATS, in STATS_TOTALS, in
# STATS_AVERAGES, in SHOW TOTALS). PgBouncer's own names differ between the four views.
_STAT_NAMES: tuple[tuple[str, str, str, str], ...] = (
    (
        "server_assignment_count",
        "server_assignment_count",
        "server_assignment_count",
        "server_assignment_count",
    ),
    ("xact_count", "xact_count", "xact_count", "xact_count"),
    ("query_count", "query_count", "query_count", "query_count"),
    ("received", "bytes_received", "bytes_received", "client_bytes"),
    ("sent", "bytes_sent", "bytes_sent", "server_bytes"),
    ("xact_time", "xact_time", "xact_time", "xact_time"),
    ("query_time", "query_time", "query_time", "query_time"),
    ("wait_time", "wait_time", "wait_time", "wait_time"),
    ("client_parse_count", "client_parse_count", "avg_client_parse_count", "ps_client_parse_count"),
    ("server_parse_count", "server_parse_count", "avg_server_parse_count", "ps_server_parse_count"),
    ("bind_count", "bind_count", "avg_bind_count", "ps_bind_count"),
)
_AVG_NAMES = {"received": "recv", "sent": "sent"}
STATS_COLUMNS: Columns = (
    ("database", TEXT),
    *((f"total_{n[0]}", NUMERIC) for n in _STAT_NAMES),
    *((f"avg_{_AVG_NAMES.get(n[0], n[0])}", NUMERIC) for n in _STAT_NAMES),
)
STATS_TOTALS_COLUMNS: Columns = (("database", TEXT), *((n[1], NUMERIC) for n in _STAT_NAMES))
STATS_AVERAGES_COLUMNS: Columns = (("database", TEXT), *((n[2], NUMERIC) for n in _STAT_NAMES))
TOTALS_COLUMNS: Columns = (("name", TEXT), ("value", NUMERIC))
LISTS_COLUMNS: Columns = (("list", TEXT), ("items", INT4))
CONFIG_COLUMNS: Columns = (
    ("key", TEXT),
    ("value", TEXT),
    ("default", TEXT),
    ("changeable", TEXT),
)
MEM_COLUMNS: Columns = (
    ("name", TEXT),
    ("size", INT4),
    ("used", INT4),
    ("free", INT4),
    ("memtotal", INT4),
)
STATE_COLUMNS: Columns = (("key", TEXT), ("value", TEXT))
VERSION_COLUMNS: Columns = (("version", TEXT),)
PEERS_COLUMNS: Columns = (("peer_id", INT4), ("host", TEXT), ("port", INT4), ("pool_size", INT4))
PEER_POOLS_COLUMNS: Columns = (
    ("peer_id", INT4),
    ("cl_active_cancel_req", INT4),
    ("cl_waiting_cancel_req", INT4),
    ("sv_active_cancel", INT4),
    ("sv_login", INT4),
)
DNS_HOSTS_COLUMNS: Columns = (("hostname", TEXT), ("ttl", INT8), ("addrs", TEXT))
DNS_ZONES_COLUMNS: Columns = (("zonename", TEXT), ("serial", INT8), ("count", INT4))
# pgfunnel's own: what transaction pooling cannot keep, per application (pooling_hazards).
HAZARDS_COLUMNS: Columns = (
    ("database", TEXT),
    ("user", TEXT),
    ("application_name", TEXT),
    ("hazard", TEXT),
    ("count", INT8),
    ("action", TEXT),
    ("last", TEXT),
)
# pgfunnel's own: who holds the servers, longest first (what to look at when cl_waiting grows).
HOLDERS_COLUMNS: Columns = (
    ("database", TEXT),
    ("user", TEXT),
    ("application_name", TEXT),
    ("addr", TEXT),
    ("port", INT4),
    ("state", TEXT),
    ("held", INT4),
    ("held_us", INT4),
    ("xact", INT4),
    ("xact_us", INT4),
    ("remote_pid", INT4),
    ("id", INT4),
    ("ptr", TEXT),
    ("link", TEXT),
)

HELP_TEXT = (
    "\n\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION"
    "\n\tSHOW PEERS|PEER_POOLS"
    "\n\tSHOW LISTS|MEM|STATE"
    "\n\tSHOW DNS_HOSTS|DNS_ZONES"
    "\n\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS"
    "\n\tSHOW HOLDERS [<db>]"
    "\n\tSHOW HAZARDS"
    "\n\tSET key = arg"
    "\n\tRELOAD"
    "\n\tPAUSE [<db>]"
    "\n\tRESUME [<db>]"
    "\n\tDISABLE <db>"
    "\n\tENABLE <db>"
    "\n\tRECONNECT [<db>]"
    "\n\tKILL [<db>]"
    "\n\tKILL_CLIENT <client_id>"
    "\n\tSUSPEND"
    "\n\tSHUTDOWN"
    "\n\tSHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS"
    "\n\tWAIT_CLOSE [<db>]"
)

# Parameters some drivers SHOW or SET on connect: answered with a fixed value / "SET ignored".
FAKE_PARAMS = {
    "client_encoding": "UTF-8",
    "default_transaction_isolation": "read committed",
    "standard_conforming_strings": "on",
    "datestyle": "ISO",
    "timezone": "GMT",
    "extra_float_digits": "2",
}

ADMIN_NEEDED = "admin access needed"
DB_REQUIRED = "a database is required"
SHUTDOWN_MODES = ("WAIT_FOR_SERVERS", "WAIT_FOR_CLIENTS")

# --- parsing (pure) --------------------------------------------------------------------------
# PgBouncer's grammar: `CMD [arg]` or `SET key = value` / `SET key TO value`; a word is an
# identifier or a "double-quoted" name, a value may also be a 'single-quoted' string.
_WORD = r'"(?:[^"]|"")+"|[0-9A-Za-z_]+'
_STRING = r"'(?:[^']|'')*'"
_BARE = r"[^\s'\"]+"  # unquoted values PgBouncer's WORD refuses, such as 0.5
# `SHOW what [db]` takes a second argument (pgfunnel's SHOW HOLDERS [db]).
_CMD_RE = re.compile(rf"\s*({_WORD})(?:\s+({_WORD})(?:\s+({_WORD}))?)?\s*")
_SET_RE = re.compile(
    rf"\s*set\s+({_WORD})(?:\s*=\s*|\s+to\s+)({_STRING}|{_WORD}|{_BARE})\s*", re.IGNORECASE
)


@dataclass(frozen=True)
class Statement:
    """One console statement: `verb` upper-cased, `arg` unquoted (None when absent), `extra`
    a second argument (only SHOW takes one); SET carries its key in `arg` and its value in
    `value`. `verb` is "" for a syntax error."""

    text: str
    verb: str
    arg: str | None = None
    value: str | None = None
    extra: str | None = None


def split_statements(sql: str) -> list[str]:
    """Split a query string on `;` outside quotes; empty statements are dropped."""
    out: list[str] = []
    start = 0
    quote = ""
    for i, ch in enumerate(sql):
        if quote:
            if ch == quote:
                quote = ""  # a doubled quote closes and reopens: same result
        elif ch in "'\"":
            quote = ch
        elif ch == ";":
            out.append(sql[start:i])
            start = i + 1
    out.append(sql[start:])
    return [s.strip() for s in out if s.strip()]


def _unquote(token: str) -> str:
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"":
        q = token[0]
        return token[1:-1].replace(q + q, q)
    return token


def parse_statement(text: str) -> Statement:
    match = _CMD_RE.fullmatch(text)
    if match is not None:
        verb = _unquote(match[1]).upper()
        arg = _unquote(match[2]) if match[2] is not None else None
        extra = _unquote(match[3]) if match[3] is not None else None
        return Statement(text, verb, arg, extra=extra)
    match = _SET_RE.fullmatch(text)
    if match is not None:
        key = _unquote(match[1])
        if key:
            return Statement(text, "SET", key, _unquote(match[2]))
    return Statement(text, "")


# --- result building (pure) ------------------------------------------------------------------
def result_set(columns: Columns, rows: Iterable[Sequence[Any]], tag: str = "SHOW") -> bytes:
    out = [m.row_description(columns)]
    for row in rows:
        out.append(m.data_row(None if v is None else str(v) for v in row))
    out.append(m.command_complete(tag))
    return b"".join(out)


def split_us(seconds: float) -> tuple[int, int]:
    """Seconds as PgBouncer's (whole seconds, microsecond part) column pairs."""
    us = max(0, int(seconds * 1_000_000))
    return us // 1_000_000, us % 1_000_000


def _us(seconds: float) -> int:
    return max(0, round(seconds * 1_000_000))


# The plain counters of PoolStats (its dicts and histogram are not SHOW STATS' business).
_NUMERIC_FIELDS = tuple(f.name for f in fields(PoolStats) if f.type in ("int", "float"))


def sum_stats(stats: Iterable[PoolStats]) -> PoolStats:
    total = PoolStats()
    for st in stats:
        for name in _NUMERIC_FIELDS:
            setattr(total, name, getattr(total, name) + getattr(st, name))
    return total


def stat_totals(st: PoolStats) -> list[int]:
    """The total_* values in _STAT_NAMES order (times in microseconds)."""
    return [
        st.server_assignment_count,
        st.xact_count,
        st.query_count,
        st.bytes_in,
        st.bytes_out,
        _us(st.xact_time),
        _us(st.query_time),
        _us(st.wait_time),
        st.client_parse_count,
        st.server_parse_count,
        st.bind_count,
    ]


def stat_averages(period: PoolStats, seconds: float) -> list[int]:
    """The avg_* values of the last complete stats_period: counts and bytes per second,
    times per transaction / query / server assignment, in microseconds (as PgBouncer)."""
    if seconds <= 0:
        return [0] * len(_STAT_NAMES)

    def per_second(n: float) -> int:
        return int(n / seconds)

    def per(total: float, count: int) -> int:
        return _us(total / count) if count > 0 else 0

    return [
        per_second(period.server_assignment_count),
        per_second(period.xact_count),
        per_second(period.query_count),
        per_second(period.bytes_in),
        per_second(period.bytes_out),
        per(period.xact_time, period.xact_count),
        per(period.query_time, period.query_count),
        per(period.wait_time, period.server_assignment_count),
        per_second(period.client_parse_count),
        per_second(period.server_parse_count),
        per_second(period.bind_count),
    ]


@dataclass
class DbStats:
    """SHOW STATS' figures of one database: its pools summed."""

    name: str
    totals: PoolStats
    period: PoolStats
    seconds: float


def database_stats(pools: Iterable[Pool]) -> list[DbStats]:
    """Per-database sums of the pools' counters, sorted by name as PgBouncer lists them."""
    grouped: dict[str, list[Pool]] = {}
    for pool in pools:
        grouped.setdefault(pool.db.name, []).append(pool)
    return [
        DbStats(
            name,
            sum_stats(p.stats for p in members),
            sum_stats(p.last_period for p in members),
            max(p.period_seconds for p in members),
        )
        for name, members in sorted(grouped.items())
    ]


class _Conn(Protocol):
    client: Client


@dataclass
class _Session:
    """What the console remembers of one session between its messages."""

    extended_error: bool = False  # an extended-protocol batch got its error: skip to Sync


class _NoReply(Exception):
    """SHUTDOWN: PgBouncer leaves the console waiting until the process is gone."""


Handler = Callable[[Statement, bool], bytes | Awaitable[bytes]]


class Console:
    """Table-driven: each SHOW name maps to a method producing (columns, rows), each command
    verb to a handler that checks access and arguments and makes one call on the host."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.shows: dict[str, Callable[[Statement], Table]] = {
            "HELP": self.show_help_table,
            "VERSION": self.show_version,
            "CONFIG": self.show_config,
            "DATABASES": self.show_databases,
            "POOLS": self.show_pools,
            "CLIENTS": self.show_clients,
            "SERVERS": self.show_servers,
            "USERS": self.show_users,
            "STATS": self.show_stats,
            "STATS_TOTALS": self.show_stats_totals,
            "STATS_AVERAGES": self.show_stats_averages,
            "TOTALS": self.show_totals,
            "LISTS": self.show_lists,
            "MEM": self.show_mem,
            "STATE": self.show_state,
            "PEERS": self.show_peers,
            "PEER_POOLS": self.show_peer_pools,
            "DNS_HOSTS": self.show_dns_hosts,
            "DNS_ZONES": self.show_dns_zones,
            "HOLDERS": self.show_holders,
            "HAZARDS": self.show_hazards,
        }
        self.commands: dict[str, Handler] = {
            "SHOW": self.cmd_show,
            "SELECT": self.cmd_show,  # PgBouncer takes SELECT as a synonym
            "SET": self.cmd_set,
            "RELOAD": self.cmd_reload,
            "PAUSE": self.cmd_pause,
            "RESUME": self.cmd_resume,
            "SUSPEND": self.cmd_suspend,
            "DISABLE": self.cmd_disable,
            "ENABLE": self.cmd_enable,
            "RECONNECT": self.cmd_reconnect,
            "KILL": self.cmd_kill,
            "KILL_CLIENT": self.cmd_kill_client,
            "SHUTDOWN": self.cmd_shutdown,
            "WAIT_CLOSE": self.cmd_wait_close,
        }
        self.show_filters = frozenset({"HOLDERS"})  # SHOW commands that take a database
        # Commands that wait for the pooler (their handlers return a coroutine).
        self.waiting = frozenset({"PAUSE", "SUSPEND", "WAIT_CLOSE"})
        self.stats = PoolStats()  # the admin database's own row in SHOW STATS
        # Per console session, only while it has state to keep (an erroring batch).
        self._sessions: dict[Client, _Session] = {}

    # --- protocol ----------------------------------------------------------------------------
    def handle(self, conn: _Conn, kind: int, payload: bytes) -> bytes | Awaitable[bytes]:
        """Answer one message. A query with PAUSE, SUSPEND or WAIT_CLOSE answers with a
        coroutine: the connection reads nothing more until it completes."""
        if kind == m.QUERY:
            sql = payload.rstrip(b"\0").decode(errors="replace")
            self.stats.bytes_in += len(payload) + 5
            # The `pgbouncer` user on the unix socket as the pooler's own OS user has every right.
            own = getattr(getattr(conn.client.conn, "auth", None), "own_user", False)
            return self.query(sql, own or self.host.is_admin_user(conn.client.username))
        # Extended protocol: one error per batch, the rest of it skipped until its Sync, as
        # a server does. That is each session's own state: another session's batch must
        # neither silence this one's error nor repeat it.
        if kind == m.SYNC:
            self._sessions.pop(conn.client, None)
            return m.ready_for_query()
        if kind == m.FLUSH:
            return b""
        session = self._sessions.setdefault(conn.client, _Session())
        if session.extended_error:
            return b""
        session.extended_error = True
        return m.error_response(ss.FEATURE_NOT_SUPPORTED, Msg.ADMIN_EXTENDED)

    def session_closed(self, client: Client) -> None:
        """Forget what a console session left behind (its half-skipped batch)."""
        self._sessions.pop(client, None)

    def query(self, sql: str, admin: bool) -> bytes | Awaitable[bytes]:
        """Run every statement of a simple Query in order; the first error ends it."""
        statements = [parse_statement(s) for s in split_statements(sql)]
        if not statements:
            return m.empty_query_response() + m.ready_for_query()
        if any(s.verb in self.waiting for s in statements):
            return self._run_async(statements, admin)
        out: list[bytes] = []
        try:
            for stmt in statements:
                reply = self._execute(stmt, admin)
                assert isinstance(reply, bytes)
                out.append(reply)
        except AdminError as exc:
            out.append(_error(exc))
        except _NoReply:
            return self._count(b"".join(out))
        return self._count(b"".join(out) + m.ready_for_query())

    async def _run_async(self, statements: list[Statement], admin: bool) -> bytes:
        out: list[bytes] = []
        try:
            for stmt in statements:
                reply = self._execute(stmt, admin)
                out.append(reply if isinstance(reply, bytes) else await reply)
        except AdminError as exc:
            out.append(_error(exc))
        except _NoReply:
            return self._count(b"".join(out))
        return self._count(b"".join(out) + m.ready_for_query())

    def _count(self, out: bytes) -> bytes:
        self.stats.bytes_out += len(out)
        return out

    def _execute(self, stmt: Statement, admin: bool) -> bytes | Awaitable[bytes]:
        self.stats.query_count += 1
        self.stats.xact_count += 1
        handler = self.commands.get(stmt.verb)
        if handler is None or (stmt.verb == "SET") != (stmt.value is not None):
            raise _syntax_error(stmt)
        if stmt.extra is not None and not (stmt.verb in ("SHOW", "SELECT") and stmt.arg):
            raise _syntax_error(stmt)
        return handler(stmt, admin)

    # --- commands ----------------------------------------------------------------------------
    def cmd_show(self, stmt: Statement, admin: bool) -> bytes:
        what = (stmt.arg or "").upper()
        fake = FAKE_PARAMS.get((stmt.arg or "").lower())
        if fake is not None:
            assert stmt.arg is not None
            return result_set(((stmt.arg.lower(), TEXT),), [[fake]])
        show = self.shows.get(what)
        if show is None or (stmt.extra is not None and what not in self.show_filters):
            raise _syntax_error(stmt)
        if what == "HELP":
            return m.notice_response("Console usage", detail=HELP_TEXT) + m.command_complete("SHOW")
        self.host.refresh()  # the switch's states, links and counters, as of now
        columns, rows = show(stmt)
        return result_set(columns, rows)

    def cmd_set(self, stmt: Statement, admin: bool) -> bytes:
        assert stmt.arg is not None and stmt.value is not None
        if stmt.arg.lower() in FAKE_PARAMS:
            return m.notice_response("SET ignored") + m.command_complete("SET")
        _require_admin(admin)
        self.host.set_setting(stmt.arg, stmt.value)
        return m.command_complete(f"SET {stmt.arg}={stmt.value}")

    def cmd_reload(self, stmt: Statement, admin: bool) -> bytes:
        if stmt.arg:
            raise _syntax_error(stmt)
        _require_admin(admin)
        self.host.reload()
        return m.command_complete("RELOAD")

    def cmd_pause(self, stmt: Statement, admin: bool) -> Awaitable[bytes]:
        return self._waiting(
            admin, "PAUSE", lambda: self.host.pause(stmt.arg), Msg.PAUSE_WAIT_CANCELED_HINT
        )

    def cmd_suspend(self, stmt: Statement, admin: bool) -> Awaitable[bytes]:
        if stmt.arg:
            raise _syntax_error(stmt)
        return self._waiting(admin, "SUSPEND", self.host.suspend, Msg.SUSPEND_WAIT_CANCELED_HINT)

    def cmd_wait_close(self, stmt: Statement, admin: bool) -> Awaitable[bytes]:
        return self._waiting(
            admin,
            "WAIT_CLOSE",
            lambda: self.host.wait_close(stmt.arg),
            Msg.WAIT_CLOSE_CANCELED_HINT,
        )

    async def _waiting(
        self, admin: bool, tag: str, call: Callable[[], Awaitable[None]], canceled_hint: str
    ) -> bytes:
        """A command that waits; a CancelRequest for the session ends the wait (not what the
        command did) and the error's hint says what stays."""
        _require_admin(admin)
        try:
            await call()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # answered here: the session goes on
            raise AdminError(
                ss.QUERY_CANCELED, Msg.ADMIN_WAIT_CANCELED, hint=canceled_hint
            ) from None
        return m.command_complete(tag)

    def cmd_resume(self, stmt: Statement, admin: bool) -> bytes:
        _require_admin(admin)
        self.host.resume(stmt.arg)
        return m.command_complete("RESUME")

    def cmd_disable(self, stmt: Statement, admin: bool) -> bytes:
        _require_admin(admin)
        self.host.disable(_required_db(stmt))
        return m.command_complete("DISABLE")

    def cmd_enable(self, stmt: Statement, admin: bool) -> bytes:
        _require_admin(admin)
        self.host.enable(_required_db(stmt))
        return m.command_complete("ENABLE")

    def cmd_reconnect(self, stmt: Statement, admin: bool) -> bytes:
        _require_admin(admin)
        self.host.reconnect(stmt.arg)
        return m.command_complete("RECONNECT")

    def cmd_kill(self, stmt: Statement, admin: bool) -> bytes:
        """KILL db, or KILL alone: every database but the admin one (PgBouncer 1.25)."""
        _require_admin(admin)
        if stmt.arg:
            self.host.kill(stmt.arg)
        else:
            for name in sorted(self.host.pooler.databases):
                self.host.kill(name)
        return m.command_complete("KILL")

    def cmd_kill_client(self, stmt: Statement, admin: bool) -> bytes:
        _require_admin(admin)
        digits = re.match(r"\d+", stmt.arg or "")  # sscanf("%llu") as PgBouncer reads it
        if digits is None:
            raise AdminError(ss.PROTOCOL_VIOLATION, "invalid client pointer supplied")
        self.host.kill_client(int(digits[0]))
        return m.command_complete("KILL_CLIENT")

    def cmd_shutdown(self, stmt: Statement, admin: bool) -> bytes:
        mode = stmt.arg.upper() if stmt.arg else None
        if mode is not None and mode not in SHUTDOWN_MODES:
            raise _syntax_error(stmt)
        _require_admin(admin)
        self.host.shutdown(mode)
        if mode is None:
            raise _NoReply  # as PgBouncer: no answer, the connection ends with the process
        return m.command_complete("SHUTDOWN")

    # --- SHOW commands -----------------------------------------------------------------------
    def show_help_table(self, stmt: Statement) -> Table:
        return (), []  # SHOW HELP answers with a NOTICE; see cmd_show

    def show_version(self, stmt: Statement) -> Table:
        return VERSION_COLUMNS, [[VERSION_STRING]]

    def show_config(self, stmt: Statement) -> Table:
        settings = self.host.settings
        rows = [
            [name, format_value(name, settings.get(name)), spec.default_text, _yes(spec.reloadable)]
            for name, spec in SETTINGS.items()
        ]
        return CONFIG_COLUMNS, rows

    def show_databases(self, stmt: Statement) -> Table:
        host = self.host
        s = host.settings
        clients: dict[str, int] = {}
        for client in host.pooler.all_clients():
            if client.pool is not None:
                name = client.pool.db.name
                clients[name] = clients.get(name, 0) + 1
        rows: list[list[Any]] = []
        names = {n for n in host.config.databases if n != "*"} | set(host.pooler.databases)
        for name in names:
            db = host.pooler.databases.get(name)
            dbc = db.config if db is not None else host.config.databases[name]
            lb = dbc.load_balance_hosts if dbc.host and "," in dbc.host else None
            # The database's own figures, as PgBouncer shows them: a [users] entry may give
            # its pools another pool_size (SHOW POOLS and SHOW USERS show that one).
            own = resolve_pool_settings(s, dbc)
            rows.append(
                [
                    name,
                    dbc.host,
                    dbc.port,
                    dbc.dbname,
                    dbc.user,
                    own.pool_size,
                    own.min_pool_size,
                    own.reserve_pool_size,
                    int(own.server_lifetime),
                    dbc.pool_mode,
                    lb,
                    own.max_db_connections,
                    db.server_count if db is not None else 0,
                    _pick(dbc.max_db_client_connections, s.max_db_client_connections),
                    clients.get(name, 0),
                    int(db.paused) if db is not None else 0,
                    int(db.disabled) if db is not None else 0,
                ]
            )
        rows.append(
            [
                ADMIN_DB,
                None,
                int(s.listen_port),
                ADMIN_DB,
                ADMIN_DB,
                ADMIN_POOL_SIZE,
                0,
                0,
                int(s.server_lifetime),
                "statement",
                None,
                s.max_db_connections,
                0,
                s.max_db_client_connections,
                len(host.admin_clients),
                0,
                0,
            ]
        )
        rows.sort(key=lambda r: str(r[0]))
        return DATABASES_COLUMNS, rows

    def show_pools(self, stmt: Statement) -> Table:
        now = self.host.now()
        rows = [self.pool_row(pool, now) for pool in self.host.pooler.pools.values()]
        rows.append(self.admin_pool_row())
        rows.sort(key=lambda r: (str(r[0]), str(r[1])))
        return POOLS_COLUMNS, rows

    @staticmethod
    def pool_row(pool: Pool, now: float) -> list[Any]:
        c, s = pool.clients, pool.servers
        maxwait, maxwait_us = split_us(pool.oldest_wait(now))
        idle = s[ServerState.IDLE]
        st = pool.settings
        used = 0
        if st.server_check_query is not None:
            # Idle past server_check_delay: they need the check query first (PgBouncer's sv_used).
            used = sum(1 for srv in idle if now - srv.idle_since >= st.server_check_delay)
        dbc = pool.db.config
        host = getattr(dbc, "host", None)
        lb = getattr(dbc, "load_balance_hosts", None) if host and "," in host else None
        return [
            pool.db.name,
            pool.user.name,
            len(c[ClientState.ACTIVE]),
            len(c[ClientState.WAITING]) + len(c[ClientState.WAITING_LOGIN]),
            0,
            0,
            len(s[ServerState.ACTIVE]),
            0,
            0,
            len(idle) - used,
            len(s[ServerState.USED]) + used,
            len(s[ServerState.TESTED]),
            len(s[ServerState.LOGIN]),
            maxwait,
            maxwait_us,
            st.pool_mode,
            lb,
        ]

    def admin_pool_row(self) -> list[Any]:
        row: list[Any] = [ADMIN_DB, ADMIN_DB, len(self.host.admin_clients)]
        row += [0] * 12
        row += ["statement", None]
        return row

    def _ts(self, t: float) -> str:
        wall = self.host.wall(t)
        return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    def show_clients(self, stmt: Statement) -> Table:
        now = self.host.now()
        rows = [self.client_row(client, now) for client in self.host.pooler.all_clients()]
        rows += [self.client_row(client, now) for client in self.host.admin_clients]
        return CLIENT_COLUMNS, rows

    def client_row(self, client: Client, now: float) -> list[Any]:
        waiting = client.state in (ClientState.WAITING, ClientState.WAITING_LOGIN)
        wait, wait_us = split_us(now - client.wait_start if waiting else 0.0)
        if waiting:
            state = "waiting"
        elif client.link is not None:
            state = "active"
        elif client.state is ClientState.LOGIN:
            state = "login"
        else:
            state = "idle"
        link = client.link
        return [
            "C",
            client.username,
            client.dbname,
            "none",
            state,
            client.addr,
            client.port,
            client.local_addr[0],
            client.local_addr[1],
            self._ts(client.connect_time),
            self._ts(client.request_time),
            wait,
            wait_us,
            0,
            _ptr(client),
            _ptr(link) if link is not None else "",
            0,
            self.host.tls.get(client.sid, ""),
            client.params.get("application_name", client.app_name),
            self.host.prepared.get(client.sid, 0),
            client.id,
            *_auth_of(client),
            self.host.carries(client.sid),
        ]

    def show_servers(self, stmt: Statement) -> Table:
        return SOCKET_COLUMNS, [self.server_row(s) for s in self.host.pooler.all_servers()]

    def server_row(self, server: Server) -> list[Any]:
        link = server.link
        addr, port, local = ("", 0, ("", 0))
        if server.conn is not None:
            addr, port, local = server.conn.addresses()
        state = "new" if server.state is ServerState.LOGIN else server.state.label
        app_name = link.params.get("application_name", link.app_name) if link is not None else ""
        return [
            "S",
            server.pool.user.name,
            server.pool.db.name,
            "none",
            state,
            addr,
            port,
            local[0],
            local[1],
            self._ts(server.connect_time),
            self._ts(server.request_time),
            0,
            0,
            int(server.close_needed),
            _ptr(server),
            _ptr(link) if link is not None else "",
            server.pid,
            self.host.tls.get(server.sid, ""),
            app_name,
            self.host.prepared.get(server.sid, 0),
            server.id,
        ]

    def show_users(self, stmt: Statement) -> Table:
        host = self.host
        s = host.settings
        servers = {name: u.server_count for name, u in host.pooler.users.items()}
        clients: dict[str, int] = {}
        methods: dict[str, set[str]] = {}
        sources: dict[str, str] = {}
        for client in [*host.pooler.all_clients(), *host.admin_clients]:
            clients[client.username] = clients.get(client.username, 0) + 1
            method, line = _auth_of(client)
            if method:
                methods.setdefault(client.username, set()).add(f"{method} {line}".strip())
                source = _auth_source(client)
                if source:
                    sources[client.username] = source
        names = {ADMIN_DB} | set(host.config.userlist) | set(host.config.users)
        names |= set(host.pooler.users) | set(clients)
        rows: list[list[Any]] = []
        for name in sorted(names):
            uc = host.config.users.get(name)
            rows.append(
                [
                    name,
                    _opt_text(getattr(uc, "pool_size", None)),
                    _opt_text(getattr(uc, "reserve_pool_size", None)),
                    getattr(uc, "pool_mode", None),
                    resolve_pool_settings(s, user=uc).max_user_connections,
                    servers.get(name, 0),
                    _pick(
                        getattr(uc, "max_user_client_connections", None),
                        s.max_user_client_connections,
                    ),
                    clients.get(name, 0),
                    "auth_file" if name in host.config.userlist else sources.get(name, ""),
                    ", ".join(sorted(methods.get(name, ()))),
                ]
            )
        return USERS_COLUMNS, rows

    def _stats(self) -> list[DbStats]:
        found = database_stats(self.host.pooler.pools.values())
        found.append(DbStats(ADMIN_DB, self.stats, PoolStats(), 0.0))
        found.sort(key=lambda d: d.name)
        return found

    def show_stats(self, stmt: Statement) -> Table:
        rows = [
            [d.name, *stat_totals(d.totals), *stat_averages(d.period, d.seconds)]
            for d in self._stats()
        ]
        return STATS_COLUMNS, rows

    def show_stats_totals(self, stmt: Statement) -> Table:
        return STATS_TOTALS_COLUMNS, [[d.name, *stat_totals(d.totals)] for d in self._stats()]

    def show_stats_averages(self, stmt: Statement) -> Table:
        rows = [[d.name, *stat_averages(d.period, d.seconds)] for d in self._stats()]
        return STATS_AVERAGES_COLUMNS, rows

    def show_totals(self, stmt: Statement) -> Table:
        pools = list(self.host.pooler.pools.values())
        totals = sum_stats([*(p.stats for p in pools), self.stats])
        period = sum_stats(p.last_period for p in pools)
        seconds = max((p.period_seconds for p in pools), default=0.0)
        rows = [[f"total_{n[3]}", v] for n, v in zip(_STAT_NAMES, stat_totals(totals), strict=True)]
        averages = stat_averages(period, seconds)
        rows += [[f"avg_{n[3]}", v] for n, v in zip(_STAT_NAMES, averages, strict=True)]
        return TOTALS_COLUMNS, rows

    def show_lists(self, stmt: Statement) -> Table:
        host = self.host
        pooler = host.pooler
        databases = {n for n in host.config.databases if n != "*"} | set(pooler.databases)
        users = {ADMIN_DB} | set(host.config.userlist) | set(host.config.users) | set(pooler.users)
        clients = sum(1 for _ in pooler.all_clients()) + len(host.admin_clients)
        clients += len(host.logging_in)
        rows: list[list[Any]] = [
            ["databases", len(databases) + 1],  # + the admin database, as PgBouncer counts
            ["users", len(users)],
            ["peers", len(host.config.peers)],
            ["pools", len(pooler.pools) + 1],
            ["peer_pools", 0],
            ["free_clients", 0],  # no slab cache: a closed connection's memory is freed
            ["used_clients", clients],
            ["login_clients", len(host.logging_in)],
            ["free_servers", 0],
            ["used_servers", sum(1 for _ in pooler.all_servers())],
            ["dns_names", 0],  # the event loop resolves names; there is no cache of our own
            ["dns_zones", 0],
            ["dns_queries", 0],
            ["dns_pending", 0],
        ]
        return LISTS_COLUMNS, rows

    def show_mem(self, stmt: Statement) -> Table:
        """PgBouncer 1.25's slab caches, in its order, with what pgfunnel holds for each: the
        objects there are now (`used`), their mean and summed sizes in bytes. There are no
        free lists (a closed connection's memory goes back to Python), so `free` is 0; caches
        of things pgfunnel does not keep (peer pools, outstanding requests) are listed empty,
        so that scripts reading SHOW MEM find every row. server_prepared_statement_cache is
        the switch's distinct prepared statements (max_prepared_statements)."""
        host = self.host
        pooler = host.pooler
        clients = [*pooler.all_clients(), *host.admin_clients]
        clients += [conn.client for conn in host.logging_in]
        servers = list(pooler.all_servers())
        conns = [c.conn for c in clients if c.conn is not None]
        caches: list[tuple[str, list[int]]] = [
            ("user_cache", [_size(u) for u in pooler.users.values()]),
            (
                "credentials_cache",
                [sys.getsizeof(n) + sys.getsizeof(p) for n, p in host.config.userlist.items()],
            ),
            ("db_cache", [_size(d) for d in pooler.databases.values()]),
            ("peer_cache", [_size(p) for p in host.config.peers.values()]),
            ("peer_pool_cache", []),
            ("pool_cache", [_size(p) for p in pooler.pools.values()]),
            ("outstanding_request_cache", []),
            ("server_cache", [_size(sv) for sv in servers]),
            ("client_cache", [_size(c) for c in clients]),
            # A connection's own buffers: what it read and has not passed on yet.
            ("iobuf_cache", [_buffers(c) for c in conns]),
            # The tracked parameters of each client and server (PgBouncer's VarCache lists);
            # clients with the same values share one dict, counted once.
            (
                "var_list_cache",
                _shared_sizes([c.params for c in clients])
                + [sys.getsizeof(sv.tracked) for sv in servers],
            ),
        ]
        rows = [
            [name, sum(sizes) // len(sizes) if sizes else 0, len(sizes), 0, sum(sizes)]
            for name, sizes in caches
        ]
        # The switch's distinct statements (query text and parameter types, each held once
        # however many clients and servers have it), with their bytes.
        count, size, _, _ = host.prepared_mem()
        rows.append(
            ["server_prepared_statement_cache", size // count if count else 0, count, 0, size]
        )
        return MEM_COLUMNS, rows

    def show_state(self, stmt: Statement) -> Table:
        paused, suspended = self.host.paused_all, self.host.suspended
        rows = [
            ["active", _yes(not paused and not suspended)],
            ["paused", _yes(paused and not suspended)],
            ["suspended", _yes(suspended)],
        ]
        return STATE_COLUMNS, rows

    def show_peers(self, stmt: Statement) -> Table:
        default = self.host.settings.default_pool_size
        rows = [
            [p.peer_id, p.host, p.port, _pick(p.pool_size, default)]
            for p in sorted(self.host.config.peers.values(), key=lambda p: p.peer_id)
        ]
        return PEERS_COLUMNS, rows

    def show_peer_pools(self, stmt: Statement) -> Table:
        return PEER_POOLS_COLUMNS, []  # peering is not implemented: no peer pools

    def show_dns_hosts(self, stmt: Statement) -> Table:
        return DNS_HOSTS_COLUMNS, []

    def show_dns_zones(self, stmt: Statement) -> Table:
        return DNS_ZONES_COLUMNS, []

    def show_hazards(self, stmt: Statement) -> Table:
        """pgfunnel's own: per database, user and application, what it did that transaction
        pooling cannot keep (session advisory locks, LISTEN, temporary tables, cursors WITH
        HOLD), how often, and what pooling_hazards did the last time."""
        rows = [
            [
                db,
                user,
                app,
                hazard,
                seen.count,
                seen.action,
                datetime.fromtimestamp(seen.last, UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            ]
            for (db, user, app, hazard), seen in sorted(self.host.hazards.items())
        ]
        return HAZARDS_COLUMNS, rows

    def show_holders(self, stmt: Statement) -> Table:
        return HOLDERS_COLUMNS, [holder_row(h) for h in self.host.holders(None, stmt.extra)]


def holder_row(h: Holder) -> list[Any]:
    held, held_us = split_us(h.held)
    xact, xact_us = split_us(h.xact)
    client = h.client
    return [
        h.server.pool.db.name,
        client.username,
        h.application_name,
        client.addr,
        client.port,
        h.state,
        held,
        held_us,
        xact,
        xact_us,
        h.server.pid,
        client.id,
        _ptr(client),
        _ptr(h.server),
    ]


def _ptr(obj: Client | Server) -> str:
    # A client's ptr is its whole switch id (its id is the generation half of it).
    return f"{obj.sid:#x}" if isinstance(obj, Client) else f"{obj.id:#x}"


def _pick(value: int | None, default: int) -> int:
    return default if value is None else value


def _opt_text(value: int | None) -> str | None:
    return None if value is None else str(value)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _size(obj: object) -> int:
    if obj is None:
        return 0
    size = sys.getsizeof(obj)
    inner = getattr(obj, "__dict__", None)
    if inner is not None:
        size += sys.getsizeof(inner)
    return size


def _buffers(conn: object) -> int:
    return sys.getsizeof(getattr(conn, "buf", b"")) + sys.getsizeof(getattr(conn, "pending", b""))


def _error(exc: AdminError) -> bytes:
    return m.error_response(exc.sqlstate, exc.message, detail=exc.detail, hint=exc.hint)


def _syntax_error(stmt: Statement) -> AdminError:
    return AdminError(ss.PROTOCOL_VIOLATION, f"invalid command '{stmt.text}', use SHOW HELP;")


def _require_admin(admin: bool) -> None:
    if not admin:
        raise AdminError(ss.PROTOCOL_VIOLATION, ADMIN_NEEDED)


def _required_db(stmt: Statement) -> str:
    if not stmt.arg:
        raise AdminError(ss.PROTOCOL_VIOLATION, DB_REQUIRED)
    return stmt.arg


def _auth_of(client: Client) -> tuple[str, str]:
    """(method, "file:line" of the hba rule) a client logged in with; empty while it logs in."""
    if client.auth_info[0]:
        return client.auth_info[0], client.auth_info[1]
    auth = getattr(client.conn, "auth", None)
    if auth is None or not auth.done:
        return "", ""
    return str(auth.label), str(auth.hba_line)


def _auth_source(client: Client) -> str:
    if client.auth_info[0]:
        return client.auth_info[2]
    return str(getattr(getattr(client.conn, "auth", None), "source", "") or "")


def _shared_sizes(objects: list[Any]) -> list[int]:
    """Each object's size, an object shared by several counted once (0 for the others)."""
    seen: set[int] = set()
    sizes = []
    for obj in objects:
        sizes.append(0 if id(obj) in seen else sys.getsizeof(obj))
        seen.add(id(obj))
    return sizes
