"""Builders and decoders for the v3 protocol messages the pooler makes or must read; bytes only."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

PROTOCOL_V3 = 196608  # 3.0
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

# Backend (server -> client) message types, as ints because the hot path indexes bytes.
AUTHENTICATION = ord("R")
BACKEND_KEY_DATA = ord("K")
PARAMETER_STATUS = ord("S")
READY_FOR_QUERY = ord("Z")
ERROR_RESPONSE = ord("E")
NOTICE_RESPONSE = ord("N")
COMMAND_COMPLETE = ord("C")
ROW_DESCRIPTION = ord("T")
DATA_ROW = ord("D")
COPY_IN_RESPONSE = ord("G")
COPY_OUT_RESPONSE = ord("H")
COPY_BOTH_RESPONSE = ord("W")
NOTIFICATION = ord("A")

# Frontend (client -> server) message types.
QUERY = ord("Q")
PARSE = ord("P")
BIND = ord("B")
DESCRIBE = ord("D")
EXECUTE = ord("E")
SYNC = ord("S")
FLUSH = ord("H")
CLOSE = ord("C")
FUNCTION_CALL = ord("F")
TERMINATE = ord("X")
PASSWORD = ord("p")
COPY_DATA = ord("d")
COPY_DONE = ord("c")
COPY_FAIL = ord("f")

# Startup parameters that belong to the client and follow it from server to server; the server
# reports each with ParameterStatus when it changes (GUC_REPORT). PgBouncer's five, then
# track_extra_parameters (default IntervalStyle): a list that `track_parameters` fills in place
# once, when the pooler starts (every module reads this same list).
BASE_TRACKED_PARAMS = (
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "standard_conforming_strings",
    "application_name",
)
TRACKED_PARAMS: list[str] = [*BASE_TRACKED_PARAMS, "IntervalStyle"]
# Their names in lower case -> as tracked (startup parameters match in any case).
TRACKED_CANON: dict[str, str] = {p.lower(): p for p in TRACKED_PARAMS}
TRACKED_MAX = 32  # the switch's PARAM_MAX_TRACKED


def track_parameters(extra: Sequence[str]) -> list[str]:
    """Set the tracked parameters: the base five, then `extra` (track_extra_parameters) as
    given, without duplicates, up to TRACKED_MAX in all. Returns the names left out."""
    names = list(BASE_TRACKED_PARAMS)
    seen = {n.lower() for n in names}
    left_out = []
    for name in extra:
        if name.lower() in seen:
            continue
        if len(names) >= TRACKED_MAX:
            left_out.append(name)
            continue
        seen.add(name.lower())
        names.append(name)
    TRACKED_PARAMS[:] = names
    TRACKED_CANON.clear()
    TRACKED_CANON.update({p.lower(): p for p in names})
    return left_out


AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

_I32 = struct.Struct("!i")
_HDR = struct.Struct("!ci")


def message(kind: bytes, payload: bytes = b"") -> bytes:
    """A typed message: one type byte, an int32 length that counts itself, the payload."""
    return _HDR.pack(kind, len(payload) + 4) + payload


def cstr(text: str) -> bytes:
    # surrogateescape: a name read from a non-UTF-8 config goes out as the bytes it was.
    return text.encode("utf-8", "surrogateescape") + b"\0"


# --- backend messages the pooler sends to clients -------------------------------------------
def auth_request(code: int, extra: bytes = b"") -> bytes:
    return message(b"R", _I32.pack(code) + extra)


def auth_ok() -> bytes:
    return auth_request(AUTH_OK)


def parameter_status(name: str, value: str) -> bytes:
    return message(b"S", cstr(name) + cstr(value))


class Welcome:
    """The parameters a pool shows its new clients, each ParameterStatus encoded once: every
    login of the pool sends the same messages but for the few its startup packet sets.
    `source` is a copy of what it was built from, for the owner to compare with the pool's
    current parameters and build a new one when they differ."""

    __slots__ = ("encoded", "source")

    def __init__(self, params: Mapping[str, str]) -> None:
        self.source = dict(params)
        self.encoded = {name: parameter_status(name, value) for name, value in params.items()}

    def messages(self, own: Mapping[str, str]) -> list[bytes]:
        """The ParameterStatus messages of a client shown `own` in place of the pool's values:
        the pool's order, then `own`'s names the pool does not report, in `own`'s order."""
        source = self.source
        out = [
            enc
            if (value := own.get(name)) is None or value == source[name]
            else parameter_status(name, value)
            for name, enc in self.encoded.items()
        ]
        out += [parameter_status(k, v) for k, v in own.items() if k not in source]
        return out


def backend_key_data(pid: int, key: int) -> bytes:
    return message(b"K", struct.pack("!ii", pid, key))


def ready_for_query(status: bytes = b"I") -> bytes:
    return message(b"Z", status)


def _fields(
    severity: str,
    sqlstate: str,
    text: str,
    detail: str | None,
    hint: str | None,
) -> bytes:
    parts = [b"S", cstr(severity), b"V", cstr(severity), b"C", cstr(sqlstate), b"M", cstr(text)]
    if detail:
        parts += [b"D", cstr(detail)]
    if hint:
        parts += [b"H", cstr(hint)]
    parts.append(b"\0")
    return b"".join(parts)


def error_response(
    sqlstate: str,
    text: str,
    *,
    severity: str = "ERROR",
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    return message(b"E", _fields(severity, sqlstate, text, detail, hint))


def notice_response(
    text: str, *, sqlstate: str = "00000", detail: str | None = None, hint: str | None = None
) -> bytes:
    return message(b"N", _fields("NOTICE", sqlstate, text, detail, hint))


def row_description(columns: Sequence[tuple[str, int]]) -> bytes:
    """Columns as (name, type oid); text format, no table attribution."""
    out = [struct.pack("!h", len(columns))]
    for name, oid in columns:
        size = 8 if oid == 20 else 4 if oid == 23 else -1
        out.append(cstr(name) + struct.pack("!ihihih", 0, 0, oid, size, -1, 0))
    return message(b"T", b"".join(out))


def data_row(values: Iterable[str | None]) -> bytes:
    out = []
    count = 0
    for value in values:
        count += 1
        if value is None:
            out.append(_I32.pack(-1))
        else:
            raw = value.encode("utf-8", "surrogateescape")
            out.append(_I32.pack(len(raw)) + raw)
    return message(b"D", struct.pack("!h", count) + b"".join(out))


def command_complete(tag: str) -> bytes:
    return message(b"C", cstr(tag))


def empty_query_response() -> bytes:
    return message(b"I")


# --- frontend messages the pooler sends to servers ------------------------------------------
def startup_message(params: Mapping[str, str]) -> bytes:
    body = _I32.pack(PROTOCOL_V3) + b"".join(cstr(k) + cstr(v) for k, v in params.items()) + b"\0"
    return _I32.pack(len(body) + 4) + body


def cancel_request(pid: int, key: int) -> bytes:
    return struct.pack("!iiii", 16, CANCEL_REQUEST_CODE, pid, key)


def query(sql: str) -> bytes:
    return message(b"Q", cstr(sql))


def terminate() -> bytes:
    return message(b"X")


def password_message(data: bytes) -> bytes:
    return message(b"p", data)


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return message(b"p", cstr(mechanism) + _I32.pack(len(data)) + data)


# --- decoders -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServerError:
    """The fields of an ErrorResponse/NoticeResponse that the pooler acts on or passes on."""

    severity: str
    sqlstate: str
    message: str
    detail: str | None = None
    hint: str | None = None

    def encode(self, *, severity: str | None = None) -> bytes:
        return error_response(
            self.sqlstate,
            self.message,
            severity=severity or self.severity,
            detail=self.detail,
            hint=self.hint,
        )


def parse_error_fields(payload: bytes) -> ServerError:
    fields: dict[str, str] = {}
    for part in payload.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return ServerError(
        severity=fields.get("V") or fields.get("S") or "ERROR",
        sqlstate=fields.get("C", "XX000"),
        message=fields.get("M", ""),
        detail=fields.get("D"),
        hint=fields.get("H"),
    )


def parse_parameter_status(payload: bytes) -> tuple[str, str]:
    name, value, _ = payload.split(b"\0", 2)
    return name.decode(), value.decode()


def parse_cstrings(payload: bytes) -> list[str]:
    return [p.decode(errors="replace") for p in payload.split(b"\0")[:-1]]


def read_i32(payload: bytes, offset: int = 0) -> int:
    value: int = _I32.unpack_from(payload, offset)[0]
    return value


def quote_literal(value: str) -> str:
    """A SQL string literal made of printable ASCII only, read back the same with
    standard_conforming_strings on or off and in every client_encoding.

    The pooler SETs a client's values on a shared server whose client_encoding may be SJIS,
    BIG5, GBK or another encoding where the second byte of a character can be a backslash or a
    quote. A literal written as UTF-8 could then end early on the server and run what followed
    it as SQL. ASCII bytes mean the same in every encoding PostgreSQL accepts from a client,
    so anything else is written as an escape (E'\\u00e9'), which the server converts to
    its own encoding, or refuses if it cannot, failing that SET and nothing else.
    """
    if value.isascii() and value.isprintable() and "\\" not in value:
        return "'" + value.replace("'", "''") + "'"
    out = []
    for ch in value:
        code = ord(ch)
        if ch == "'":
            out.append("''")
        elif ch == "\\":
            out.append("\\\\")
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "E'" + "".join(out) + "'"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
