"""scan.c byte for byte (through the module's test entry `scan`): which messages owe a
ReadyForQuery or open a batch, what is refused, and that every split of a stream across reads
gives the same answer as the stream in one piece."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgfunnel._switch import _switch as native
from pgfunnel.proto import messages as m

FRESH = (0, b"I", 0, False)
MAX = 1 << 20

PARSE = m.message(b"P", b"\0select 1\0\0\0")
BIND = m.message(b"B", b"\0\0\0\0\0\0\0\0")
DESCRIBE = m.message(b"D", b"P\0")
EXECUTE = m.message(b"E", b"\0\0\0\0\0")
CLOSE = m.message(b"C", b"S\0")
FLUSH = m.message(b"H")
SYNC = m.message(b"S")
FUNCTION_CALL = m.message(b"F", b"\0\0\0\x01\0\0\0\0\0\0")
COPY_DATA = m.message(b"d", b"1\n")
COPY_DONE = m.message(b"c")
COPY_FAIL = m.message(b"f", b"no\0")


def client(data: bytes, state: tuple[int, bytes, int, bool] = FRESH, max_len: int = MAX):
    return native.scan(False, state, data, max_len)


def server(data: bytes, state: tuple[int, bytes, int, bool] = FRESH, max_len: int = MAX):
    return native.scan(True, state, data, max_len)


@pytest.mark.parametrize(
    ("msg", "owed", "batch"),
    [
        (m.query("select 1"), 1, False),
        (SYNC, 1, False),
        (FUNCTION_CALL, 1, False),
        (PARSE, 0, True),
        (BIND, 0, True),
        (DESCRIBE, 0, True),
        (EXECUTE, 0, True),
        (CLOSE, 0, True),
        (FLUSH, 0, False),  # asks for what is owed, starts nothing
        (COPY_DATA, 0, False),
        (COPY_DONE, 0, False),
        (COPY_FAIL, 0, False),
    ],
)
def test_what_each_frontend_message_owes(msg: bytes, owed: int, batch: bool) -> None:
    consumed, stop, (skip, _, got_owed, got_batch), _ = client(msg)
    assert (consumed, stop, skip) == (len(msg), native.SCAN_MORE, 0)
    assert (got_owed, got_batch) == (owed, batch)


def test_sync_and_query_close_a_batch() -> None:
    for closer in (SYNC, m.query("select 1")):
        _, _, (_, _, owed, batch), _ = client(PARSE + BIND + EXECUTE + closer)
        assert (owed, batch) == (1, False)
    _, _, (_, _, owed, batch), _ = client(PARSE + BIND + EXECUTE + SYNC + PARSE)
    assert (owed, batch) == (1, True)


@pytest.mark.parametrize(
    ("data", "stop"),
    [
        (m.message(b"\0", b"x"), native.SCAN_UNKNOWN_TYPE),
        (m.message(b"?"), native.SCAN_UNKNOWN_TYPE),
        (m.message(b"p", b"secret\0"), native.SCAN_UNKNOWN_TYPE),
        (b"Q\0\0\0\x03", native.SCAN_BAD_LENGTH),
        (b"Q\x7f\xff\xff\xff", native.SCAN_TOO_BIG),
        (b"X\0\0\0\x05\0", native.SCAN_BAD_LENGTH),
        (m.terminate(), native.SCAN_TERMINATE),
    ],
)
def test_refusals_stop_at_the_offending_message(data: bytes, stop: int) -> None:
    before = m.query("select 1")
    consumed, got, (_, _, owed, _), _ = client(before + data)
    assert (consumed, got, owed) == (len(before), stop, 1)


def test_a_partial_header_is_never_consumed_a_body_is() -> None:
    query = m.query("select 1")
    for cut in range(1, 5):
        consumed, stop, _, _ = client(query[:cut])
        assert (consumed, stop) == (0, native.SCAN_MORE)
    consumed, _, (skip, _, owed, _), _ = client(query[:7])
    assert (consumed, skip, owed) == (7, len(query) - 7, 1)
    consumed, _, (skip, _, _, _), _ = client(query[7:], (skip, b"I", 1, False))
    assert (consumed, skip) == (len(query) - 7, 0)


def test_ready_for_query_is_held_until_whole_and_pays_what_is_owed() -> None:
    z = m.ready_for_query(b"T")
    consumed, _, (_, status, owed, _), seen = server(m.command_complete("BEGIN") + z[:5])
    assert (consumed, status, owed, seen) == (len(m.command_complete("BEGIN")), b"I", 0, b"")
    consumed, _, (_, status, owed, _), seen = server(z, (0, b"I", 1, False))
    assert (consumed, status, owed, seen) == (6, b"T", 0, b"T")


@pytest.mark.parametrize("bad", [b"Z\0\0\0\x06I\0", b"Z\0\0\0\x05X", b"D\0\0\0\x02"])
def test_a_malformed_server_message_is_an_error(bad: bytes) -> None:
    _, stop, _, _ = server(bad)
    assert stop == native.SCAN_BAD_LENGTH


def test_a_server_message_over_max_len_is_an_error() -> None:
    _, stop, _, _ = server(b"D\0\0\x10\0", max_len=1000)
    assert stop == native.SCAN_TOO_BIG


def in_pieces(is_server: bool, data: bytes, cuts: list[int]):
    """Feeds data cut at `cuts`, keeping what a call did not consume, as conn.c does."""
    state = FRESH
    held = b""
    consumed_total = 0
    statuses = b""
    bounds = [0, *sorted(set(cuts)), len(data)]
    for lo, hi in itertools.pairwise(bounds):
        buf = held + data[lo:hi]
        consumed, stop, state, seen = native.scan(is_server, state, buf, MAX)
        statuses += seen
        consumed_total += consumed
        if stop != native.SCAN_MORE:
            return consumed_total, stop, state, statuses
        held = buf[consumed:]
        assert len(held) < 6  # never more than a header (a ReadyForQuery without its status)
    return consumed_total, native.SCAN_MORE, state, statuses


CLIENT_STREAMS = [
    m.query("select 1") + PARSE + BIND + EXECUTE + FLUSH + SYNC + m.terminate(),
    PARSE
    + BIND
    + DESCRIBE
    + EXECUTE
    + CLOSE
    + SYNC
    + m.query("copy t from stdin")
    + COPY_DATA * 3
    + COPY_DONE
    + m.message(b"?"),
]
SERVER_STREAMS = [
    m.row_description([("a", 23)])
    + m.data_row(["1"]) * 4
    + m.command_complete("SELECT 4")
    + m.ready_for_query()
    + m.command_complete("BEGIN")
    + m.ready_for_query(b"T")
    + m.error_response("42601", "syntax error")
    + m.ready_for_query(b"E"),
]


@settings(max_examples=300, deadline=None)
@given(
    which=st.integers(0, len(CLIENT_STREAMS) + len(SERVER_STREAMS) - 1),
    cuts=st.lists(st.integers(0, 400), max_size=30),
)
def test_every_split_scans_like_the_whole(which: int, cuts: list[int]) -> None:
    is_server = which >= len(CLIENT_STREAMS)
    data = SERVER_STREAMS[which - len(CLIENT_STREAMS)] if is_server else CLIENT_STREAMS[which]
    cuts = [c for c in cuts if c < len(data)]
    whole = in_pieces(is_server, data, [])
    assert in_pieces(is_server, data, cuts) == whole
    assert in_pieces(is_server, data, list(range(1, len(data)))) == whole
