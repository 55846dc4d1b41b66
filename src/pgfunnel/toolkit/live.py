"""The thin I/O layer: one named connection, snapshots, pooler SHOW commands, the reap statement."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import select
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from pgfunnel.toolkit import sqlfiles
from pgfunnel.toolkit.limits import classify_53300
from pgfunnel.toolkit.model import Backend, Database, Role, Server, Snapshot

STATEMENT_TIMEOUT_MS = 5000
CONNECT_TIMEOUT_S = 5


class ConnectError(Exception):
    """A connection attempt failed; `message` is the server's or libpq's text, `sqlstate` the
    server's code when it refused us (found by refusal_sqlstate), else None."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate


# libpq's verbose error text puts the SQLSTATE after the severity ("FATAL:  53300: ...").
_VERBOSE_SQLSTATE = re.compile(r":\s+(?=[0-9A-Z]*\d)([0-9A-Z]{5}):\s")


def refusal_sqlstate(dsn: str, application_name: str) -> str | None:
    """The SQLSTATE with which the server refuses a connection, or None (no answer, no server
    error, or no libpq to ask). libpq's default error text leaves the SQLSTATE out, psycopg has
    no way to set the verbosity before connecting, and a translated message (lc_messages) cannot
    be recognised by its wording: connect once more through libpq with verbose errors."""
    lib = _libpq()
    if lib is None:
        return None
    try:
        info = make_conninfo(
            dsn, application_name=application_name, connect_timeout=CONNECT_TIMEOUT_S
        )
    except (psycopg.Error, ValueError):
        return None
    conn = lib.PQconnectStart(info.encode())
    if not conn:
        return None
    try:
        lib.PQsetErrorVerbosity(conn, _PQERRORS_VERBOSE)
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        status = _PGRES_POLLING_WRITING
        while status not in (_PGRES_POLLING_OK, _PGRES_POLLING_FAILED):
            left = deadline - time.monotonic()
            fd = lib.PQsocket(conn)
            if lib.PQstatus(conn) == _CONNECTION_BAD or left <= 0 or fd < 0:
                break
            if status == _PGRES_POLLING_READING:
                select.select([fd], [], [], left)
            else:
                select.select([], [fd], [], left)
            status = lib.PQconnectPoll(conn)
        text = (lib.PQerrorMessage(conn) or b"").decode(errors="replace")
    except OSError:
        return None
    finally:
        lib.PQfinish(conn)
    m = _VERBOSE_SQLSTATE.search(text)
    return m.group(1) if m else None


# libpq's enum values (libpq-fe.h), stable across versions.
_CONNECTION_BAD = 1
_PGRES_POLLING_FAILED, _PGRES_POLLING_READING, _PGRES_POLLING_WRITING, _PGRES_POLLING_OK = (
    0,
    1,
    2,
    3,
)
_PQERRORS_VERBOSE = 2


def _libpq() -> Any:
    """A libpq of our own through ctypes (the system's, else the one psycopg-binary ships); the
    PGconn it makes never meets psycopg's."""
    import ctypes
    import ctypes.util
    import glob

    candidates = [ctypes.util.find_library("pq")]
    binary_libs = Path(psycopg.__file__).parent.parent / "psycopg_binary.libs"
    candidates += sorted(glob.glob(str(binary_libs / "libpq*.so*")))
    for name in candidates:
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        vp, c_int = ctypes.c_void_p, ctypes.c_int
        lib.PQconnectStart.argtypes, lib.PQconnectStart.restype = [ctypes.c_char_p], vp
        lib.PQsetErrorVerbosity.argtypes, lib.PQsetErrorVerbosity.restype = [vp, c_int], c_int
        lib.PQconnectPoll.argtypes, lib.PQconnectPoll.restype = [vp], c_int
        lib.PQsocket.argtypes, lib.PQsocket.restype = [vp], c_int
        lib.PQstatus.argtypes, lib.PQstatus.restype = [vp], c_int
        lib.PQerrorMessage.argtypes, lib.PQerrorMessage.restype = [vp], ctypes.c_char_p
        lib.PQfinish.argtypes, lib.PQfinish.restype = [vp], None
        return lib
    return None


class StatementError(Exception):
    """A statement failed on a connection that is still usable: SQLSTATE, message, detail."""

    def __init__(
        self, sqlstate: str | None, message: str, detail: str | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail
        self.hint = hint

    def __str__(self) -> str:
        text = f"SQLSTATE {self.sqlstate or '?'}: {self.message}"
        if self.detail:
            text += f" (DETAIL: {self.detail})"
        if self.hint:
            text += f" (HINT: {self.hint})"
        return text


class ConnectionLost(Exception):
    """The connection broke under a statement (server restart, our backend terminated...)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _failure(conn: psycopg.Connection[Any], exc: psycopg.Error) -> Exception:
    if conn.closed or conn.broken:
        return ConnectionLost(str(exc).strip() or type(exc).__name__)
    diag = exc.diag
    return StatementError(
        exc.sqlstate,
        diag.message_primary or str(exc).strip(),
        diag.message_detail,
        diag.message_hint,
    )


def connect(
    dsn: str,
    application_name: str,
    statement_timeout_ms: int = STATEMENT_TIMEOUT_MS,
) -> psycopg.Connection[dict[str, Any]]:
    """One autocommit connection named `application_name`, its statements bounded in time."""
    try:
        conn = psycopg.connect(
            dsn,
            application_name=application_name,
            connect_timeout=CONNECT_TIMEOUT_S,
            autocommit=True,
            row_factory=dict_row,
        )
    except psycopg.Error as exc:
        message = str(exc)
        sqlstate = "53300" if classify_53300(message) else refusal_sqlstate(dsn, application_name)
        raise ConnectError(message, sqlstate) from exc
    conn.execute(f"SET statement_timeout = {int(statement_timeout_ms)}".encode())
    conn.execute("SET lock_timeout = 1000")
    return conn


def take_snapshot(conn: psycopg.Connection[dict[str, Any]]) -> Snapshot:
    """Reads everything diagnose and reap need in one read-only transaction (one stats snapshot).

    Raises StatementError (e.g. statement_timeout) or ConnectionLost, never a bare psycopg error.
    """
    try:
        return _take_snapshot(conn)
    except psycopg.Error as exc:
        raise _failure(conn, exc) from exc


def _take_snapshot(conn: psycopg.Connection[dict[str, Any]]) -> Snapshot:
    with conn.transaction():
        conn.execute("SET TRANSACTION READ ONLY")
        srow = conn.execute(sqlfiles.load("server").encode()).fetchone()
        assert srow is not None
        server = Server(**srow)
        version = server.server_version_num
        backends = [Backend(**r) for r in conn.execute(sqlfiles.load("activity", version).encode())]
        roles = [Role(**r) for r in conn.execute(sqlfiles.load("roles", version).encode())]
        databases = [
            Database(**r) for r in conn.execute(sqlfiles.load("databases", version).encode())
        ]
        rows = list(conn.execute(sqlfiles.load("settings", version).encode()))
        files: dict[str, str] | None = None
        if server.can_read_file_settings:
            files = {
                r["name"]: r["setting"]
                for r in conn.execute(sqlfiles.load("file_settings", version).encode())
            }
        settings, sources = server_wide_settings(rows, files)
        db_role = [
            (r["rolname"], r["datname"], r["setting"])
            for r in conn.execute(sqlfiles.load("db_role_settings", version).encode())
        ]
        stats: list[dict[str, Any]] | None = None
        if version >= 140000:
            stats = [
                {k: (float(v) if isinstance(v, float) else v) for k, v in r.items()}
                for r in conn.execute(sqlfiles.load("session_stats", version).encode())
            ]
    return Snapshot(
        server, backends, roles, databases, settings, sources, db_role, stats, source="live"
    )


# Sources of a value this session got from its role or database, or set itself.
_SESSION_SOURCES = ("user", "database", "database user", "session", "client")


def server_wide_settings(
    rows: list[dict[str, Any]], files: dict[str, str] | None
) -> tuple[dict[str, str], dict[str, str]]:
    """The server-wide value of each setting and where it comes from, from settings.sql rows
    and, when readable, the configuration files' values (file_settings.sql).

    The session's own value may come from ALTER ROLE/DATABASE SET (or our own SET); the
    server-wide one is what a session without such overrides gets: ALTER ROLE ALL SET, else the
    configuration files or the command line, else the built-in default."""
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    for r in rows:
        name, unit = r["name"], r["unit"]
        if r["all_roles_value"] is not None:
            values[name] = str(r["all_roles_value"])
            sources[name] = "ALTER ROLE ALL SET"
        elif not r["applies_here"] and r["source"] not in _SESSION_SOURCES:
            values[name] = _setting_text(r["setting"], unit)
            sources[name] = str(r["source"])
        elif not r["applies_here"]:
            # We (or the client) SET it in this session: RESET would give the server-wide one.
            values[name] = _setting_text(r["reset_val"], unit)
            sources[name] = "default" if r["reset_val"] == r["boot_val"] else "configuration file"
        elif files is not None:
            if name in files:
                values[name] = _setting_text(files[name], unit)
                sources[name] = "configuration file"
            else:
                values[name] = _setting_text(r["boot_val"], unit)
                sources[name] = "default"
        else:
            sources[name] = (
                "unknown: this role's or database's own ALTER ROLE/DATABASE SET hides it, and "
                "pg_file_settings needs superuser"
            )
    return values, sources


_DURATION_UNITS = (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000), ("ms", 1))
_UNIT_MS = {"ms": 1, "s": 1000, "min": 60_000}


def _setting_text(value: str, unit: str | None) -> str:
    """A duration in SHOW's style (the largest unit that divides it: '10min', '45s'); other
    values as they are. A file value keeps the unit it was written with."""
    text = str(value).strip().strip("'")
    if unit not in _UNIT_MS or not text.lstrip("-").isdigit() or text in ("0", "-1"):
        return text
    ms = int(text) * _UNIT_MS[unit]
    for suffix, size in _DURATION_UNITS:
        if ms % size == 0:
            return f"{ms // size}{suffix}"
    return text  # pragma: no cover


def load_snapshot_file(path: str | Path, now: dt.datetime | None = None) -> Snapshot:
    """A saved snapshot: pgfunnel's own JSON, a JSON array of pg_stat_activity rows, or CSV."""
    text = Path(path).read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("{"):
        data = json.loads(text)
        if "backends" in data:
            snap = Snapshot.from_dict(data)
            snap.source = "file"
            return _fill_ages(snap, now)
        raise ValueError(f"{path}: JSON object without 'backends' (not a pgfunnel snapshot)")
    rows: list[dict[str, Any]]
    if stripped.startswith("["):
        rows = list(json.loads(text))
    else:
        rows = list(csv.DictReader(io.StringIO(text)))
        if not rows or "pid" not in rows[0]:
            raise ValueError(
                f"{path}: CSV without a header row naming pid (use \\copy ... CSV HEADER)"
            )
    backends = [Backend.from_row(r) for r in rows]
    snap = Snapshot(Server(), backends, source="file")
    return _fill_ages(snap, now)


def _fill_ages(snap: Snapshot, now: dt.datetime | None) -> Snapshot:
    """Ages relative to the snapshot's own clock, or the newest timestamp in it."""
    if now is None:
        now = snap.server.now
    if now is None:
        stamps = [
            t
            for b in snap.backends
            for t in (b.state_change, b.query_start, b.backend_start, b.xact_start)
            if t is not None
        ]
        now = max(stamps) if stamps else dt.datetime.now(dt.UTC)
    snap.server.now = now
    for b in snap.backends:
        if b.state_age_s is None and b.state_change is not None:
            b.state_age_s = (now - b.state_change).total_seconds()
        if b.xact_age_s is None and b.xact_start is not None:
            b.xact_age_s = (now - b.xact_start).total_seconds()
    return snap


def pooler_show(dsn: str, command: str) -> list[dict[str, str | None]]:
    """Runs SHOW ... on a PgBouncer-compatible admin console with the simple query protocol."""
    try:
        conn = psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True)
    except psycopg.Error as exc:
        raise ConnectError(str(exc)) from exc
    try:
        res = conn.pgconn.exec_(command.encode())
        if res.status != psycopg.pq.ExecStatus.TUPLES_OK:
            msg = (res.error_message or b"").decode(errors="replace").strip()
            raise ConnectError(f"{command}: {msg}")
        names = [(res.fname(i) or b"").decode() for i in range(res.nfields)]
        out: list[dict[str, str | None]] = []
        for row in range(res.ntuples):
            values: dict[str, str | None] = {}
            for col, name in enumerate(names):
                raw = res.get_value(row, col)
                values[name] = raw.decode() if raw is not None else None
            out.append(values)
        return out
    finally:
        conn.close()


def run_reap_statement(conn: psycopg.Connection[dict[str, Any]], statement: str) -> dict[int, bool]:
    """Executes the planned reap statement; pid -> terminated for the rows it still matched.

    Raises StatementError when PostgreSQL refuses it (a pg_terminate_backend that raises ends
    the whole statement) and ConnectionLost when the connection breaks under it.
    """
    try:
        return {int(r["pid"]): bool(r["terminated"]) for r in conn.execute(statement.encode())}
    except psycopg.Error as exc:
        raise _failure(conn, exc) from exc
