"""The admin console: SHOW commands answered from the scheduler's state, simple protocol only."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from pgfunnel import __version__
from pgfunnel.pool.objects import Client, ClientState, Server, ServerState
from pgfunnel.pool.scheduler import Pool, Pooler
from pgfunnel.proto import messages as m
from pgfunnel.proto import sqlstate as ss
from pgfunnel.proto.strings import Msg

TEXT, INT8, INT4 = 25, 20, 23

# PgBouncer 1.25's column names and order: exporters and dashboards read them by name.
POOLS_COLUMNS = (
    ("database", TEXT),
    ("user", TEXT),
    ("cl_active", INT8),
    ("cl_waiting", INT8),
    ("cl_active_cancel_req", INT8),
    ("cl_waiting_cancel_req", INT8),
    ("sv_active", INT8),
    ("sv_active_cancel", INT8),
    ("sv_being_canceled", INT8),
    ("sv_idle", INT8),
    ("sv_used", INT8),
    ("sv_tested", INT8),
    ("sv_login", INT8),
    ("maxwait", INT8),
    ("maxwait_us", INT8),
    ("pool_mode", TEXT),
    ("load_balance_hosts", TEXT),
)
SOCKET_COLUMNS = (
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
    ("id", INT8),
)
VERSION_COLUMNS = (("version", TEXT),)

VERSION_STRING = f"PgBouncer 1.25.1 (pgfunnel {__version__})"


class ConsoleHost(Protocol):
    """What the console needs from the application object."""

    pooler: Pooler
    admin_clients: dict[Client, None]

    def now(self) -> float: ...

    def wall(self, t: float) -> float: ...

    def is_admin_user(self, user: str) -> bool: ...


class _Conn(Protocol):
    client: Client


def _rows(columns: Sequence[tuple[str, int]], rows: Iterable[Sequence[Any]], tag: str) -> bytes:
    out = [m.row_description(columns)]
    count = 0
    for row in rows:
        count += 1
        out.append(m.data_row(None if v is None else str(v) for v in row))
    out.append(m.command_complete(tag))
    return b"".join(out)


class Console:
    """Table-driven: each SHOW name maps to a method producing (columns, rows)."""

    def __init__(self, host: ConsoleHost) -> None:
        self.host = host
        self.shows: dict[str, Callable[[], tuple[Sequence[tuple[str, int]], list[list[Any]]]]] = {
            "VERSION": self.show_version,
            "POOLS": self.show_pools,
            "CLIENTS": self.show_clients,
            "SERVERS": self.show_servers,
        }
        self._extended_error = False

    def handle(self, conn: _Conn, kind: int, payload: bytes) -> bytes:
        if kind == m.QUERY:
            sql = payload.rstrip(b"\0").decode(errors="replace")
            return self.query(sql) + m.ready_for_query()
        if kind == m.SYNC:
            self._extended_error = False
            return m.ready_for_query()
        if kind in (m.FLUSH,):
            return b""
        if self._extended_error:
            return b""
        self._extended_error = True
        return m.error_response(ss.FEATURE_NOT_SUPPORTED, Msg.ADMIN_EXTENDED)

    def query(self, sql: str) -> bytes:
        statements = [s.strip() for s in sql.split(";") if s.strip()]
        if not statements:
            return m.empty_query_response()
        out = []
        for stmt in statements:
            words = re.split(r"\s+", stmt)
            verb = words[0].upper()
            if verb == "SHOW" and len(words) == 2 and words[1].upper() in self.shows:
                columns, rows = self.shows[words[1].upper()]()
                out.append(_rows(columns, rows, "SHOW"))
            else:
                out.append(
                    m.error_response(
                        ss.PROTOCOL_VIOLATION,
                        f"invalid command '{stmt}', use SHOW HELP;",
                    )
                )
                break
        return b"".join(out)

    # --- SHOW commands -----------------------------------------------------------------------
    def show_version(self) -> tuple[Sequence[tuple[str, int]], list[list[Any]]]:
        return VERSION_COLUMNS, [[VERSION_STRING]]

    def show_pools(self) -> tuple[Sequence[tuple[str, int]], list[list[Any]]]:
        now = self.host.now()
        rows = []
        for pool in self.host.pooler.pools.values():
            rows.append(self.pool_row(pool, now))
        return POOLS_COLUMNS, rows

    @staticmethod
    def pool_row(pool: Pool, now: float) -> list[Any]:
        c, s = pool.clients, pool.servers
        maxwait = pool.oldest_wait(now)
        idle = s[ServerState.IDLE]
        st = pool.settings
        used = 0
        if st.server_check_query is not None:
            used = sum(1 for srv in idle if now - srv.idle_since >= st.server_check_delay)
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
            int(maxwait),
            int((maxwait % 1) * 1_000_000),
            st.pool_mode,
            None,
        ]

    def _ts(self, t: float) -> str:
        wall = self.host.wall(t)
        return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    def show_clients(self) -> tuple[Sequence[tuple[str, int]], list[list[Any]]]:
        now = self.host.now()
        rows = []
        for client in self.host.pooler.all_clients():
            rows.append(self.client_row(client, now))
        for client in self.host.admin_clients:
            rows.append(self.client_row(client, now))
        return SOCKET_COLUMNS, rows

    def client_row(self, client: Client, now: float) -> list[Any]:
        waiting = client.state in (ClientState.WAITING, ClientState.WAITING_LOGIN)
        wait = now - client.wait_start if waiting else 0.0
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
            int(wait),
            int((wait % 1) * 1_000_000),
            0,
            f"{client.id:#x}",
            f"{link.id:#x}" if link is not None else "",
            0,
            "",
            client.params.get("application_name", client.app_name),
            0,
            client.id,
        ]

    def show_servers(self) -> tuple[Sequence[tuple[str, int]], list[list[Any]]]:
        rows = []
        for server in self.host.pooler.all_servers():
            rows.append(self.server_row(server))
        return SOCKET_COLUMNS, rows

    def server_row(self, server: Server) -> list[Any]:
        link = server.link
        addr, port, local = ("", 0, ("", 0))
        if server.conn is not None:
            addr, port, local = server.conn.addresses()
        state = "new" if server.state is ServerState.LOGIN else server.state.label
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
            0,
            f"{server.id:#x}",
            f"{link.id:#x}" if link is not None else "",
            server.pid,
            "",
            link.app_name if link is not None else "",
            0,
            server.id,
        ]


def wall_offset() -> float:
    return time.time() - time.monotonic()
