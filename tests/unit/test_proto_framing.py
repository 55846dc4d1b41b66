"""Message framing: header scanning, whole-message reading and startup packets at every split."""

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
    Scanner,
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
BOUNDARIES = frozenset(sum(len(p) for p in STREAM_PARTS[:i]) for i in range(len(STREAM_PARTS) + 1))

# Report CommandComplete and RowDescription; capture ReadyForQuery, ErrorResponse,
# ParameterStatus and BackendKeyData; ignore the rest (DataRow above all).
WATCH = Scanner.table(report=b"CT", capture=b"ZESK")


def expected_events(stream: bytes, watch: bytes) -> list[tuple[int, bytes | None, int]]:
    """The events a header scanner must report, computed by walking the stream directly."""
    out = []
    pos = 0
    while pos < len(stream):
        kind = stream[pos]
        (length,) = struct.unpack_from("!i", stream, pos + 1)
        end = pos + 1 + length
        if watch[kind] == 2:
            out.append((kind, stream[pos + 5 : end], end))
        elif watch[kind] == 1:
            out.append((kind, None, end))
        pos = end
    return out


def scan(chunks: list[bytes], watch: bytes = WATCH) -> list[tuple[int, bytes | None, int]]:
    """Feed chunks to one Scanner; events with their end offsets made absolute."""
    scanner = Scanner(watch)
    out = []
    base = 0
    for chunk in chunks:
        events = scanner.feed(chunk)
        if events is not None:
            assert events, "feed returns None, not an empty list, when nothing ended"
            out += [(kind, payload, base + end) for kind, payload, end in events]
        base += len(chunk)
    assert scanner.at_boundary
    return out


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


# --- Scanner ----------------------------------------------------------------------------------
def test_whole_stream_events_match_a_direct_walk() -> None:
    events = scan([STREAM])
    assert events == expected_events(STREAM, WATCH)
    kinds = bytes(kind for kind, _, _ in events)
    assert kinds == b"SSKZTCZEZ"
    z_payloads = [payload for kind, payload, _ in events if kind == m.READY_FOR_QUERY]
    assert z_payloads == [b"I", b"T", b"E"]


@pytest.mark.parametrize(
    "watch",
    [
        WATCH,
        Scanner.table(capture=bytes(range(256))),
        Scanner.table(report=bytes(range(256))),
        Scanner.table(),
    ],
    ids=["mixed", "capture-all", "report-all", "none"],
)
def test_every_two_way_split_gives_the_same_events(watch: bytes) -> None:
    whole = scan([STREAM], watch)
    assert whole == expected_events(STREAM, watch)
    for cut in range(len(STREAM) + 1):
        assert scan([STREAM[:cut], STREAM[cut:]], watch) == whole, f"split at {cut}"


def test_one_byte_at_a_time_splits_every_header_and_payload() -> None:
    chunks = [STREAM[i : i + 1] for i in range(len(STREAM))]
    assert scan(chunks) == expected_events(STREAM, WATCH)


def test_header_split_at_each_of_its_five_bytes_then_payload_in_pieces() -> None:
    msg = m.error_response("53300", "sorry, too many clients already", severity="FATAL")
    for cut in range(1, 5):
        for cut2 in range(cut + 1, len(msg)):
            chunks = [msg[:cut], msg[cut:cut2], msg[cut2:]]
            assert scan(chunks) == [(m.ERROR_RESPONSE, msg[5:], len(msg))]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=40))
def test_random_multi_way_splits_give_the_same_events(cuts: list[int]) -> None:
    assert scan(split_at(STREAM, cuts)) == expected_events(STREAM, WATCH)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(b"DZCETSK"), st.binary(max_size=40)), min_size=1, max_size=12
    ),
    st.data(),
)
def test_random_streams_and_splits(messages: list[tuple[int, bytes]], data: st.DataObject) -> None:
    stream = b"".join(m.message(bytes([kind]), payload) for kind, payload in messages)
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=20))
    assert scan(split_at(stream, cuts)) == expected_events(stream, WATCH)


def test_memoryview_and_bytearray_chunks_give_bytes_payloads() -> None:
    scanner = Scanner(WATCH)
    rfq = m.ready_for_query(b"I")
    assert scanner.feed(memoryview(rfq)[:3]) is None
    events = scanner.feed(bytearray(rfq[3:]))
    assert events == [(m.READY_FOR_QUERY, b"I", 3)]
    assert type(events[0][1]) is bytes


def test_at_boundary_is_true_exactly_at_message_ends() -> None:
    for cut in range(len(STREAM) + 1):
        scanner = Scanner(WATCH)
        scanner.feed(STREAM[:cut])
        assert scanner.at_boundary is (cut in BOUNDARIES), f"after {cut} bytes"


def test_at_boundary_through_a_byte_by_byte_feed() -> None:
    scanner = Scanner(Scanner.table())
    assert scanner.at_boundary
    for i in range(len(STREAM)):
        scanner.feed(STREAM[i : i + 1])
        assert scanner.at_boundary is (i + 1 in BOUNDARIES)


def test_empty_chunks_change_nothing() -> None:
    scanner = Scanner(WATCH)
    rfq = m.ready_for_query(b"T")
    assert scanner.feed(b"") is None
    assert scanner.feed(rfq[:2]) is None
    assert scanner.feed(b"") is None
    assert scanner.feed(rfq[2:4]) is None
    assert scanner.feed(b"") is None
    assert scanner.feed(rfq[4:]) == [(m.READY_FOR_QUERY, b"T", 2)]


def test_message_ending_exactly_at_chunk_end_then_next_chunk_starts_fresh() -> None:
    scanner = Scanner(WATCH)
    row = m.data_row(["x" * 50])
    cc = m.command_complete("SELECT 1")
    assert scanner.feed(row[:10]) is None
    assert scanner.feed(row[10:]) is None  # ignored kind: no event, but the body is passed
    assert scanner.at_boundary
    assert scanner.feed(cc) == [(m.COMMAND_COMPLETE, None, len(cc))]


def test_watch_table_must_have_256_entries() -> None:
    with pytest.raises(ValueError, match="256"):
        Scanner(b"\0" * 255)


def test_table_capture_wins_over_report() -> None:
    t = Scanner.table(report=b"Z", capture=b"Z")
    assert t[ord("Z")] == 2
    assert sum(t) == 2


# --- Scanner: bad input -----------------------------------------------------------------------
def _header(kind: bytes, length: int) -> bytes:
    return kind + struct.pack("!i", length)


@pytest.mark.parametrize("cut", [0, 1, 3, 4, 5])
def test_oversized_packet_raises_naming_the_limit(cut: int) -> None:
    big = m.data_row(["y" * 200])
    length = len(big) - 1
    scanner = Scanner(WATCH, max_packet_size=100)
    with pytest.raises(ProtocolViolation) as info:
        scanner.feed(big[:cut])
        scanner.feed(big[cut:])
    text = str(info.value)
    assert "oversized packet" in text
    assert str(length) in text
    assert "max_packet_size=100" in text


def test_packet_of_exactly_max_packet_size_is_accepted() -> None:
    payload = b"z" * 96
    msg = m.message(b"d", payload)  # length field = 100
    assert Scanner(WATCH, max_packet_size=100).feed(msg) is None
    with pytest.raises(ProtocolViolation):
        Scanner(WATCH, max_packet_size=99).feed(msg)


@pytest.mark.parametrize("length", [-1, -(2**31), 0, 3])
@pytest.mark.parametrize("cut", [0, 2, 5])
def test_negative_or_too_small_length_raises(length: int, cut: int) -> None:
    stream = m.ready_for_query(b"I") + _header(b"Q", length) + b"abcd"
    split = len(m.ready_for_query()) + cut
    scanner = Scanner(WATCH)
    with pytest.raises(ProtocolViolation) as info:
        scanner.feed(stream[:split])
        scanner.feed(stream[split:])
    assert "bad packet header" in str(info.value)
    assert f"length {length}" in str(info.value)


def test_length_four_is_a_valid_empty_message() -> None:
    assert Scanner(Scanner.table(report=b"I")).feed(m.empty_query_response()) == [
        (ord("I"), None, 5)
    ]


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
