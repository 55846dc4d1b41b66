"""The snapshot of a server that diagnose and reap plan from: plain data, no I/O."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field, fields
from typing import Any

CLIENT_BACKEND = "client backend"
IDLE = "idle"
IDLE_IN_TX = "idle in transaction"
IDLE_IN_TX_ABORTED = "idle in transaction (aborted)"
ACTIVE = "active"
IDLE_STATES = (IDLE, IDLE_IN_TX, IDLE_IN_TX_ABORTED)
INSUFFICIENT_PRIVILEGE = "<insufficient privilege>"


def _ts(value: Any) -> dt.datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    text = str(value).strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # PostgreSQL's text form: '2024-05-01 10:00:00.123+00' needs a full offset for Python.
    if len(text) > 3 and text[-3] in "+-" and text[-2:].isdigit():
        text += ":00"
    parsed = dt.datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


@dataclass
class Backend:
    """One row of pg_stat_activity as the toolkit needs it."""

    pid: int
    datname: str | None = None
    usename: str | None = None
    application_name: str | None = None
    client_addr: str | None = None
    client_port: int | None = None
    backend_type: str | None = None
    state: str | None = None
    backend_start: dt.datetime | None = None
    xact_start: dt.datetime | None = None
    query_start: dt.datetime | None = None
    state_change: dt.datetime | None = None
    wait_event_type: str | None = None
    wait_event: str | None = None
    backend_xid: str | None = None
    backend_xmin: str | None = None
    xmin_age: int | None = None
    xid_age: int | None = None  # age(backend_xid): a writer holds the horizon at its xid
    query: str | None = None
    state_age_s: float | None = None
    xact_age_s: float | None = None
    is_superuser: bool | None = None
    is_replication_role: bool | None = None
    can_signal: bool | None = None

    @property
    def visible(self) -> bool:
        """False for rows hidden by missing pg_read_all_stats (no state, no backend_type)."""
        return not (self.backend_type is None and self.query == INSUFFICIENT_PRIVILEGE)

    @property
    def is_client(self) -> bool:
        return self.backend_type == CLIENT_BACKEND

    @property
    def horizon_age(self) -> int | None:
        """How far back this backend holds the xmin horizon: its snapshot's xmin or, for a
        writer, its own xid (vacuum cannot remove rows newer than either)."""
        ages = [a for a in (self.xmin_age, self.xid_age) if a is not None]
        return max(ages) if ages else None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("backend_start", "xact_start", "query_start", "state_change"):
            out[key] = _iso(getattr(self, key))
        return out

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Backend:
        names = {f.name for f in fields(cls)}
        data = {k: row[k] for k in row if k in names}
        for key in ("backend_start", "xact_start", "query_start", "state_change"):
            data[key] = _ts(data.get(key))
        for key in ("pid", "client_port", "xmin_age", "xid_age"):
            if data.get(key) not in (None, ""):
                data[key] = int(data[key])
            else:
                data[key] = None if key != "pid" else 0
        for key in ("state_age_s", "xact_age_s"):
            if data.get(key) not in (None, ""):
                data[key] = float(data[key])
            else:
                data[key] = None
        for key in ("is_superuser", "is_replication_role", "can_signal"):
            v = data.get(key)
            if isinstance(v, str):
                data[key] = v.lower() in ("t", "true", "1", "yes") if v else None
        for key in (
            "datname",
            "usename",
            "application_name",
            "client_addr",
            "backend_type",
            "state",
            "wait_event_type",
            "wait_event",
            "backend_xid",
            "backend_xmin",
            "query",
        ):
            if data.get(key) == "":
                data[key] = "" if key in ("application_name", "query") else None
        return cls(**data)


@dataclass
class Role:
    rolname: str
    rolconnlimit: int = -1
    rolsuper: bool = False
    rolcanlogin: bool = True
    rolreplication: bool = False
    uses_reserved: bool = False


@dataclass
class Database:
    datname: str
    datconnlimit: int = -1
    datallowconn: bool = True
    datistemplate: bool = False


@dataclass
class Server:
    """Server-wide facts and what the connected role may see and do."""

    server_version: str = "unknown"
    server_version_num: int = 0
    max_connections: int | None = None
    superuser_reserved_connections: int = 3
    reserved_connections: int = 0
    max_wal_senders: int | None = None
    autovacuum_max_workers: int | None = None
    max_worker_processes: int | None = None
    own_pid: int | None = None
    now: dt.datetime | None = None
    current_user: str | None = None
    is_superuser: bool = False
    can_read_all_stats: bool = True
    can_signal_backend: bool = False
    can_read_file_settings: bool = False
    in_recovery: bool = False


@dataclass
class Snapshot:
    """Everything one look at a server gathered, in one transaction where it was live."""

    server: Server
    backends: list[Backend]
    roles: list[Role] = field(default_factory=list)
    databases: list[Database] = field(default_factory=list)
    # Server-wide values (what a session without ALTER ROLE/DATABASE SET overrides gets) and
    # where each came from; a name missing from `settings` could not be determined.
    settings: dict[str, str] = field(default_factory=dict)
    settings_sources: dict[str, str] = field(default_factory=dict)
    db_role_settings: list[tuple[str, str, str]] = field(default_factory=list)
    session_stats: list[dict[str, Any]] | None = None
    source: str = "live"

    def to_dict(self) -> dict[str, Any]:
        server = asdict(self.server)
        server["now"] = _iso(self.server.now)
        return {
            "format": "pgfunnel.snapshot/1",
            "source": self.source,
            "server": server,
            "backends": [b.to_dict() for b in self.backends],
            "roles": [asdict(r) for r in self.roles],
            "databases": [asdict(d) for d in self.databases],
            "settings": dict(self.settings),
            "settings_sources": dict(self.settings_sources),
            "db_role_settings": [list(t) for t in self.db_role_settings],
            "session_stats": self.session_stats,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Snapshot:
        server_data = dict(data.get("server") or {})
        server_data["now"] = _ts(server_data.get("now"))
        known = {f.name for f in fields(Server)}
        server = Server(**{k: v for k, v in server_data.items() if k in known})
        return cls(
            server=server,
            backends=[Backend.from_row(b) for b in data.get("backends", [])],
            roles=[Role(**r) for r in data.get("roles", [])],
            databases=[Database(**d) for d in data.get("databases", [])],
            settings=dict(data.get("settings") or {}),
            settings_sources=dict(data.get("settings_sources") or {}),
            db_role_settings=[
                (str(a), str(b), str(c)) for a, b, c in data.get("db_role_settings", [])
            ],
            session_stats=data.get("session_stats"),
            source=str(data.get("source") or "file"),
        )
