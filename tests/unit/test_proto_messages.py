"""Message builders and decoders, byte for byte against the PostgreSQL v3 protocol documentation."""

from __future__ import annotations

import re
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgfunnel.proto import messages as m
from pgfunnel.proto.messages import ServerError, parse_error_fields


def i32(n: int) -> bytes:
    return struct.pack("!i", n)


def i16(n: int) -> bytes:
    return struct.pack("!h", n)


# --- request codes --------------------------------------------------------------------------
def test_request_codes_are_the_documented_magic_numbers() -> None:
    assert m.PROTOCOL_V3 == 196608 == 3 << 16
    assert m.CANCEL_REQUEST_CODE == 80877102 == (1234 << 16) | 5678
    assert m.SSL_REQUEST_CODE == 80877103 == (1234 << 16) | 5679
    assert m.GSSENC_REQUEST_CODE == 80877104 == (1234 << 16) | 5680


# --- backend messages -----------------------------------------------------------------------
def test_ready_for_query() -> None:
    assert m.ready_for_query() == b"Z\x00\x00\x00\x05I"
    assert m.ready_for_query(b"T") == b"Z\x00\x00\x00\x05T"
    assert m.ready_for_query(b"E") == b"Z\x00\x00\x00\x05E"


def test_authentication_requests() -> None:
    assert m.auth_ok() == b"R\x00\x00\x00\x08\x00\x00\x00\x00"
    assert m.auth_request(m.AUTH_CLEARTEXT) == b"R\x00\x00\x00\x08\x00\x00\x00\x03"
    assert m.auth_request(m.AUTH_MD5, b"\x01\x02\x03\x04") == (
        b"R\x00\x00\x00\x0c\x00\x00\x00\x05\x01\x02\x03\x04"
    )
    sasl = m.auth_request(m.AUTH_SASL, b"SCRAM-SHA-256\0\0")
    assert sasl == b"R" + i32(4 + 4 + 15) + i32(10) + b"SCRAM-SHA-256\0\0"
    assert m.auth_request(m.AUTH_SASL_CONTINUE, b"r=x")[5:9] == i32(11)
    assert m.auth_request(m.AUTH_SASL_FINAL, b"v=x")[5:9] == i32(12)


def test_parameter_status() -> None:
    assert m.parameter_status("client_encoding", "UTF8") == (
        b"S\x00\x00\x00\x19client_encoding\x00UTF8\x00"
    )


def test_backend_key_data() -> None:
    assert m.backend_key_data(1234, 5678) == b"K\x00\x00\x00\x0c" + i32(1234) + i32(5678)
    assert m.backend_key_data(1, -1)[-4:] == b"\xff\xff\xff\xff"


def test_error_response_fields_in_order_with_final_nul() -> None:
    raw = m.error_response("53300", "sorry, too many clients already", severity="FATAL")
    body = b"SFATAL\0VFATAL\0C53300\0Msorry, too many clients already\0\0"
    assert raw == b"E" + i32(4 + len(body)) + body


def test_error_response_with_detail_and_hint() -> None:
    raw = m.error_response("08P01", "query_wait_timeout", detail="d", hint="h")
    body = b"SERROR\0VERROR\0C08P01\0Mquery_wait_timeout\0Dd\0Hh\0\0"
    assert raw == b"E" + i32(4 + len(body)) + body


def test_error_response_hint_without_detail() -> None:
    raw = m.error_response("XX000", "boom", hint="try again")
    assert raw.endswith(b"Mboom\0Htry again\0\0")
    assert b"\0D" not in raw


def test_notice_response() -> None:
    raw = m.notice_response("hello")
    body = b"SNOTICE\0VNOTICE\0C00000\0Mhello\0\0"
    assert raw == b"N" + i32(4 + len(body)) + body


def test_row_description_layout() -> None:
    raw = m.row_description([("id", 23), ("big", 20), ("name", 25)])
    fields = b"".join(
        name + b"\0" + i32(0) + i16(0) + i32(oid) + i16(size) + i32(-1) + i16(0)
        for name, oid, size in [(b"id", 23, 4), (b"big", 20, 8), (b"name", 25, -1)]
    )
    body = i16(3) + fields
    assert raw == b"T" + i32(4 + len(body)) + body


def test_data_row_with_null_and_empty_values() -> None:
    raw = m.data_row(["42", None, "", "ü"])
    body = i16(4) + i32(2) + b"42" + i32(-1) + i32(0) + i32(2) + "ü".encode()
    assert raw == b"D" + i32(4 + len(body)) + body


def test_command_complete_and_empty_query() -> None:
    assert m.command_complete("SELECT 1") == b"C\x00\x00\x00\x0dSELECT 1\x00"
    assert m.empty_query_response() == b"I\x00\x00\x00\x04"


# --- frontend messages ----------------------------------------------------------------------
def test_startup_message_layout() -> None:
    raw = m.startup_message({"user": "bob", "database": "shop"})
    body = i32(196608) + b"user\0bob\0database\0shop\0\0"
    assert raw == i32(4 + len(body)) + body
    assert struct.unpack_from("!i", raw)[0] == len(raw)


def test_cancel_request_is_16_bytes() -> None:
    raw = m.cancel_request(4242, -99)
    assert len(raw) == 16
    assert raw == b"\x00\x00\x00\x10\x04\xd2\x16\x2e" + i32(4242) + i32(-99)
    assert struct.unpack("!iiii", raw) == (16, 80877102, 4242, -99)


def test_query_terminate_password() -> None:
    assert m.query("SELECT 1") == b"Q\x00\x00\x00\x0dSELECT 1\x00"
    assert m.terminate() == b"X\x00\x00\x00\x04"
    assert m.password_message(b"secret\0") == b"p\x00\x00\x00\x0bsecret\x00"


def test_sasl_initial_response() -> None:
    data = b"n,,n=,r=abc"
    raw = m.sasl_initial_response("SCRAM-SHA-256", data)
    body = b"SCRAM-SHA-256\0" + i32(len(data)) + data
    assert raw == b"p" + i32(4 + len(body)) + body


def test_message_length_counts_itself_not_the_type_byte() -> None:
    assert m.message(b"x", b"abc") == b"x\x00\x00\x00\x07abc"


# --- decoders -------------------------------------------------------------------------------
def test_parse_error_fields_of_a_real_postgres_error() -> None:
    # As PostgreSQL 16 sends it with lc_messages=fr_FR: S localized, V not; extra fields.
    payload = (
        b'SFATAL\0VFATAL\0C53300\0Mtoo many connections for role "app"\0'
        b"Fpostinit.c\0L350\0RInitPostgres\0\0"
    )
    err = parse_error_fields(payload)
    assert err == ServerError("FATAL", "53300", 'too many connections for role "app"')
    localized = parse_error_fields(b"SERREUR\0VERROR\0C42601\0Merreur de syntaxe\0\0")
    assert localized.severity == "ERROR"


def test_parse_error_fields_defaults() -> None:
    assert parse_error_fields(b"Mjust a message\0\0") == ServerError(
        "ERROR", "XX000", "just a message"
    )
    assert parse_error_fields(b"SWARNING\0\0").severity == "WARNING"


_field_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=30
)


@settings(max_examples=60, deadline=None)
@given(
    severity=st.sampled_from(["ERROR", "FATAL", "PANIC", "WARNING", "NOTICE"]),
    sqlstate=st.from_regex(re.compile(r"[0-9A-Z]{5}", re.ASCII), fullmatch=True),
    text=_field_text,
    detail=st.none() | _field_text.filter(bool),
    hint=st.none() | _field_text.filter(bool),
)
def test_error_fields_round_trip(
    severity: str, sqlstate: str, text: str, detail: str | None, hint: str | None
) -> None:
    err = ServerError(severity, sqlstate, text, detail, hint)
    raw = err.encode()
    assert raw[:1] == b"E"
    assert struct.unpack_from("!i", raw, 1)[0] == len(raw) - 1
    assert raw.endswith(b"\0\0")
    assert parse_error_fields(raw[5:]) == err


def test_server_error_encode_can_raise_severity() -> None:
    err = ServerError("ERROR", "57P01", "terminating connection due to administrator command")
    raw = err.encode(severity="FATAL")
    assert raw.startswith(b"E") and b"SFATAL\0VFATAL\0C57P01\0" in raw
    assert parse_error_fields(raw[5:]).severity == "FATAL"


def test_parse_parameter_status_and_cstrings_and_i32() -> None:
    assert m.parse_parameter_status(b"TimeZone\0Europe/Paris\0") == ("TimeZone", "Europe/Paris")
    assert m.parse_cstrings(b"SCRAM-SHA-256\0SCRAM-SHA-256-PLUS\0\0") == [
        "SCRAM-SHA-256",
        "SCRAM-SHA-256-PLUS",
        "",
    ]
    assert m.read_i32(b"\x00\x00\x00\x05\xff\xff\xff\xfe") == 5
    assert m.read_i32(b"\x00\x00\x00\x05\xff\xff\xff\xfe", 4) == -2


# --- quoting --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("UTF8", "'UTF8'"),
        ("", "''"),
        ("it's", "'it''s'"),
        ("''", "''''''"),
        ("C:\\path", "E'C:\\\\path'"),
        ("a\\'b", "E'a\\\\''b'"),
        ("\\", "E'\\\\'"),
        ("é", "E'\\u00e9'"),
        (
            "Õ\\'; insert into t values (31337); --",
            "E'\\u00d5\\\\''; insert into t values (31337); --'",
        ),
        ("tab\there", "E'tab\\u0009here'"),
        ("\U0001f600", "E'\\U0001f600'"),
    ],
)
def test_quote_literal(value: str, quoted: str) -> None:
    assert m.quote_literal(value) == quoted


def _unquote(literal: str, standard_conforming_strings: bool) -> str:
    """How PostgreSQL's lexer reads a literal made only of '', \\\\ escapes and plain text."""
    escape = literal.startswith("E'")
    body = literal[2:-1] if escape else literal[1:-1]
    assert literal.endswith("'")
    out = []
    i = 0
    backslash_escapes = escape or not standard_conforming_strings
    while i < len(body):
        ch = body[i]
        if ch == "'":
            assert body[i + 1] == "'", f"unescaped quote in {literal!r}"
            out.append("'")
            i += 2
        elif ch == "\\" and escape and body[i + 1] in "uU":
            width = 4 if body[i + 1] == "u" else 8
            out.append(chr(int(body[i + 2 : i + 2 + width], 16)))
            i += 2 + width
        elif ch == "\\" and backslash_escapes:
            out.append(body[i + 1])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab'\\\" ,;é\t\u8868\U0001f600"), max_size=20))
def test_quote_literal_reads_back_under_either_string_setting(value: str) -> None:
    literal = m.quote_literal(value)
    assert literal.isascii() and literal.isprintable()
    assert _unquote(literal, standard_conforming_strings=True) == value
    assert _unquote(literal, standard_conforming_strings=False) == value


def test_quote_ident() -> None:
    assert m.quote_ident("app") == '"app"'
    assert m.quote_ident('we"ird') == '"we""ird"'
