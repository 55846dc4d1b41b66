"""Message framing: whole-message reading and startup packets at every split."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgfunnel.proto import messages as m
from pgfunnel.proto.framing import (
    MAX_STARTUP_PACKET,
    CancelRequest,
    GSSENCRequest,
    MessageReader,
    ProtocolViolation,
    SSLRequest,
    StartupMessage,
    UnsupportedProtocol,
    read_startup_packet,
)

# A server's answer to a login and two queries, as PostgreSQL sends it: every message kind the
# pooler acts on, an empty-bodied message, and one DataRow big enough to span many small reads.
STREAM_PARTS = [
    m.auth_ok(),
    m.parameter_status("client_encoding", "UTF8"),
    m.parameter_status("server_version", "16.3"),
    m.backend_key_data(4242, -1_234_567),
    m.ready_for_query(b"I"),
    m.row_description([("id", 23), ("name", 25)]),
    m.data_row(["1", "alice"]),
    m.data_row(["2", None]),
    m.data_row(["3", "x" * 300]),
    m.command_complete("SELECT 3"),
    m.notice_response("there is no transaction in progress", sqlstate="25P01"),
    m.ready_for_query(b"T"),
    m.empty_query_response(),
    m.error_response("42P01", 'relation "nope" does not exist', hint="Check the name."),
    m.ready_for_query(b"E"),
]
STREAM = b"".join(STREAM_PARTS)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


def _header(kind: bytes, length: int) -> bytes:
    return kind + struct.pack("!i", length)


# --- MessageReader ----------------------------------------------------------------------------
def read_all(chunks: list[bytes]) -> tuple[list[tuple[int, bytes]], bytes]:
    reader = MessageReader()
    out = []
    for chunk in chunks:
        reader.feed(chunk)
        while (msg := reader.next()) is not None:
            out.append(msg)
    return out, reader.take_rest()


EXPECTED_MESSAGES = [(p[0], p[5:]) for p in STREAM_PARTS]


def test_message_reader_every_two_way_split() -> None:
    for cut in range(len(STREAM) + 1):
        assert read_all([STREAM[:cut], STREAM[cut:]]) == (EXPECTED_MESSAGES, b""), cut


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=30))
def test_message_reader_random_splits(cuts: list[int]) -> None:
    assert read_all(split_at(STREAM, cuts)) == (EXPECTED_MESSAGES, b"")


def test_message_reader_take_rest_returns_unread_bytes_exactly() -> None:
    login = m.auth_ok() + m.backend_key_data(1, 2) + m.ready_for_query(b"I")
    after = m.data_row(["early"])[:7]
    reader = MessageReader()
    reader.feed(login + after)
    kinds = []
    while (msg := reader.next()) is not None:
        kinds.append(msg[0])
        if msg[0] == m.READY_FOR_QUERY:
            break
    assert kinds == [m.AUTHENTICATION, m.BACKEND_KEY_DATA, m.READY_FOR_QUERY]
    assert reader.take_rest() == after
    assert reader.take_rest() == b""
    assert reader.next() is None


def test_message_reader_waits_for_an_incomplete_message() -> None:
    msg = m.parameter_status("TimeZone", "UTC")
    for cut in range(len(msg)):
        reader = MessageReader()
        reader.feed(msg[:cut])
        assert reader.next() is None
        reader.feed(msg[cut:])
        assert reader.next() == (m.PARAMETER_STATUS, b"TimeZone\0UTC\0")


@pytest.mark.parametrize("length", [-5, 0, 3])
def test_message_reader_bad_length_raises(length: int) -> None:
    reader = MessageReader()
    reader.feed(_header(b"R", length) + b"\0\0\0\0")
    with pytest.raises(ProtocolViolation, match=f"length {length}"):
        reader.next()


def test_message_reader_oversized_raises() -> None:
    reader = MessageReader(max_packet_size=50)
    reader.feed(m.error_response("XX000", "e" * 100)[:5])  # the header alone is enough
    with pytest.raises(ProtocolViolation):
        reader.next()


# --- read_startup_packet ----------------------------------------------------------------------
STARTUP_PARAMS = {
    "user": "app",
    "database": "shop",
    "application_name": "psql",
    "options": "-c search_path=a,b",
    "client_encoding": "UTF8",
}


def test_startup_message_params() -> None:
    raw = m.startup_message(STARTUP_PARAMS)
    assert read_startup_packet(bytearray(raw)) == (StartupMessage(STARTUP_PARAMS), len(raw))


def test_startup_message_consumes_only_its_own_length() -> None:
    raw = m.startup_message({"user": "u"})
    buf = bytearray(raw + m.query("SELECT 1"))
    assert read_startup_packet(buf) == (StartupMessage({"user": "u"}), len(raw))


def test_startup_message_with_empty_value_and_utf8() -> None:
    params = {"user": "jürgen", "database": "", "application_name": "データ"}
    raw = m.startup_message(params)
    assert read_startup_packet(bytearray(raw)) == (StartupMessage(params), len(raw))


def test_startup_protocol_3_minor_versions_are_accepted() -> None:
    body = struct.pack("!i", (3 << 16) | 2) + b"user\0app\0\0"
    raw = struct.pack("!i", len(body) + 4) + body
    assert read_startup_packet(bytearray(raw)) == (StartupMessage({"user": "app"}), len(raw))


@pytest.mark.parametrize(
    ("code", "expected"),
    [(80877103, SSLRequest()), (80877104, GSSENCRequest())],
    ids=["ssl", "gssenc"],
)
def test_ssl_and_gssenc_requests(code: int, expected: object) -> None:
    raw = struct.pack("!ii", 8, code)
    assert read_startup_packet(bytearray(raw)) == (expected, 8)


@pytest.mark.parametrize(("pid", "key"), [(12345, 67890), (1, -2), (2**31 - 1, -(2**31))])
def test_cancel_request(pid: int, key: int) -> None:
    raw = m.cancel_request(pid, key)
    assert read_startup_packet(bytearray(raw)) == (CancelRequest(pid, key), 16)


def test_cancel_request_with_wrong_length_raises() -> None:
    raw = struct.pack("!iiiii", 20, m.CANCEL_REQUEST_CODE, 1, 2, 3)
    with pytest.raises(ProtocolViolation, match="cancel"):
        read_startup_packet(bytearray(raw))


@pytest.mark.parametrize("version", [2 << 16, (4 << 16) | 0, (1234 << 16) | 5681])
def test_unsupported_protocol_version(version: int) -> None:
    raw = struct.pack("!ii", 8, version)
    assert read_startup_packet(bytearray(raw)) == (UnsupportedProtocol(version), 8)


@pytest.mark.parametrize(
    "raw",
    [
        m.startup_message(STARTUP_PARAMS),
        struct.pack("!ii", 8, m.SSL_REQUEST_CODE),
        struct.pack("!ii", 8, m.GSSENC_REQUEST_CODE),
        m.cancel_request(7, 8),
    ],
    ids=["startup", "ssl", "gssenc", "cancel"],
)
def test_incomplete_packet_returns_none_at_every_split(raw: bytes) -> None:
    for cut in range(len(raw)):
        buf = bytearray(raw[:cut])
        assert read_startup_packet(buf) is None, f"{cut} bytes"
        assert buf == raw[:cut], "nothing is consumed from an incomplete packet"
    assert read_startup_packet(bytearray(raw)) is not None


@pytest.mark.parametrize("length", [-1, 0, 4, 7, MAX_STARTUP_PACKET + 1, 2**31 - 1])
def test_bad_startup_length_raises(length: int) -> None:
    raw = struct.pack("!ii", length, m.PROTOCOL_V3)
    with pytest.raises(ProtocolViolation, match=f"bad startup packet length {length}"):
        read_startup_packet(bytearray(raw))


def test_startup_packet_of_maximum_length_is_read() -> None:
    filler = "v" * (MAX_STARTUP_PACKET - 4 - 4 - len("options\0") - 2)
    raw = m.startup_message({"options": filler})
    assert len(raw) == MAX_STARTUP_PACKET
    packet, used = read_startup_packet(bytearray(raw)) or (None, 0)
    assert packet == StartupMessage({"options": filler})
    assert used == MAX_STARTUP_PACKET
