"""The auth_query exchange, sans-IO: the extended-protocol request with $1 bound, and its answer."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pgfunnel.proto import messages as m

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_PARSE_COMPLETE = ord("1")
_BIND_COMPLETE = ord("2")
_NO_DATA = ord("n")
_EMPTY_QUERY = ord("I")


class AuthQueryFailed(Exception):
    """The query failed or answered in a shape we cannot use; `error` is the server's error
    when there was one. The text is for the log, never for the client."""

    def __init__(self, text: str, error: m.ServerError | None = None) -> None:
        super().__init__(text)
        self.error = error


def request(sql: str, user: str) -> bytes:
    """Parse, Bind (the user name as a text parameter: never spliced into the SQL), Execute,
    Sync on the unnamed statement and portal, as PgBouncer sends its auth_query."""
    name = m.cstr(user)
    parse = m.message(b"P", m.cstr("") + m.cstr(sql) + _I16.pack(0))
    bind = m.message(
        b"B",
        m.cstr("")  # portal
        + m.cstr("")  # statement
        + _I16.pack(0)  # parameter formats: all text
        + _I16.pack(1)
        + _I32.pack(len(name) - 1)
        + name[:-1]
        + _I16.pack(0),  # result formats: all text
    )
    execute = m.message(b"E", m.cstr("") + _I32.pack(0))
    return parse + bind + execute + m.message(b"S")


@dataclass(frozen=True)
class Found:
    """One row: the user name as the query returned it, and its secret (None: NULL, which
    PgBouncer treats as a password nothing matches, e.g. an expired VALID UNTIL)."""

    name: str
    secret: str | None


class AuthQueryAnswer:
    """Collects the answer to request(): feed each server message to receive(); `done` turns
    true at ReadyForQuery, then result() gives the row (None: no such user) or raises."""

    def __init__(self) -> None:
        self.done = False
        self._rows: list[Found] = []
        self._error: AuthQueryFailed | None = None

    def receive(self, kind: int, payload: bytes) -> None:
        if kind == m.DATA_ROW:
            if self._error is None:
                self._row(payload)
        elif kind == m.ERROR_RESPONSE:
            error = m.parse_error_fields(payload)
            if self._error is None:
                self._error = AuthQueryFailed(
                    f"auth_query failed: {error.sqlstate} {error.message}", error
                )
        elif kind == m.READY_FOR_QUERY:
            self.done = True
        elif kind in (
            _PARSE_COMPLETE,
            _BIND_COMPLETE,
            _NO_DATA,
            _EMPTY_QUERY,
            m.COMMAND_COMPLETE,
            m.NOTICE_RESPONSE,
            m.PARAMETER_STATUS,
            m.ROW_DESCRIPTION,
        ):
            return
        elif self._error is None:
            self._error = AuthQueryFailed(f"unexpected message {chr(kind)!r} from auth_query")

    def _row(self, payload: bytes) -> None:
        try:
            (count,) = _I16.unpack_from(payload, 0)
            if count != 2:
                raise AuthQueryFailed(f"expected 2 columns from auth_query, not {count}")
            values: list[str | None] = []
            pos = 2
            for _ in range(2):
                (length,) = _I32.unpack_from(payload, pos)
                pos += 4
                if length < 0:
                    values.append(None)
                    continue
                if pos + length > len(payload):
                    raise AuthQueryFailed("bad DataRow from auth_query")
                values.append(payload[pos : pos + length].decode("utf-8", "surrogateescape"))
                pos += length
        except struct.error:
            self._error = AuthQueryFailed("bad DataRow from auth_query")
            return
        except AuthQueryFailed as exc:
            self._error = exc
            return
        name, secret = values
        if name is None:
            self._error = AuthQueryFailed("auth_query response contained null user name")
            return
        self._rows.append(Found(name, secret))

    def result(self) -> Found | None:
        assert self.done
        if self._error is not None:
            raise self._error
        if len(self._rows) > 1:
            raise AuthQueryFailed(f"auth_query returned {len(self._rows)} rows, expected one")
        return self._rows[0] if self._rows else None
