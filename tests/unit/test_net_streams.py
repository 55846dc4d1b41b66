"""The bytes ClientConn and ServerConn carry, fed at every split: no partial header reaches a
server, batches and answers owed are counted as PostgreSQL counts them, release comes only at
the last ReadyForQuery."""

from __future__ import annotations

import itertools
import struct
from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pgfunnel.net.client_conn import ClientConn, Phase
from pgfunnel.net.server_conn import ServerConn
from pgfunnel.pool.objects import Client, ClientState, Server
from pgfunnel.proto import messages as m
from pgfunnel.proto.strings import Reason


class Transport:
    """Records what is written; enough of asyncio.Transport for the forwarding paths."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.writes: list[int] = []  # total written after each write
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data
        self.writes.append(len(self.written))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str) -> Any:
        return None


class App:
    """What the forwarding paths ask of the App, recorded."""

    def __init__(self) -> None:
        self.max_packet_size = 2**31 - 1
        self.suspended = False
        self.gone: list[str | None] = []
        self.boundaries = 0
        self.wanted = 0

    def now(self) -> float:
        return 0.0

    def wants_server(self, client: Client) -> None:
        self.wanted += 1

    def client_gone(self, client: Client, reason: str | None) -> None:
        self.gone.append(reason)

    def transaction_boundary(self, client: Client, server: Server) -> None:
        self.boundaries += 1


def linked() -> tuple[App, ClientConn, Server, Transport]:
    app = App()
    conn = ClientConn(app)  # type: ignore[arg-type]
    conn.transport = Transport()  # type: ignore[assignment]
    conn.phase = Phase.FORWARD
    client = conn.client
    client.state = ClientState.ACTIVE
    pool = SimpleNamespace(
        stats=SimpleNamespace(
            bytes_out=0, query_count=0, query_time=0.0, xact_count=0, xact_time=0.0
        ),
        settings=SimpleNamespace(pool_mode="transaction"),
    )
    server = Server(pool, 0.0)  # type: ignore[arg-type]
    to_server = Transport()
    server.conn = SimpleNamespace(transport=to_server)
    client.link = server
    server.link = client
    return app, conn, server, to_server


def p(sql: str) -> bytes:
    return m.message(b"P", m.cstr("") + m.cstr(sql) + struct.pack("!h", 0))


B = m.message(b"B", b"\0\0" + struct.pack("!hhh", 0, 0, 0))
D = m.message(b"D", b"P\0")
E = m.message(b"E", b"\0" + struct.pack("!i", 0))
S = m.message(b"S")
H = m.message(b"H")

# A client's stream as drivers send it: simple queries, an extended batch with its Sync, a
# batch flushed but not yet synced, COPY data, a FunctionCall, then the Sync, then Terminate.
CLIENT_PARTS = [
    m.query("SELECT 1"),
    p("SELECT $1") + B + D + E + S,
    p("INSERT INTO t VALUES (1)") + B + E + H,
    m.message(b"d", b"x" * 300) + m.message(b"c"),
    m.message(b"F", struct.pack("!i", 1234) + b"\0\0\0\0\0\0\0\0"),
    S,
    m.query("SELECT 'a long one " + "y" * 200 + "'"),
]
CLIENT = b"".join(CLIENT_PARTS)
OWED = 5  # two Query, two Sync, one FunctionCall


def message_spans(stream: bytes) -> list[tuple[int, int]]:
    """(start, end) of each message as a scanner walks the stream; the last may run past
    the end, and a header the scanner would refuse ends the walk."""
    out = []
    pos = 0
    while pos < len(stream):
        if pos + 5 > len(stream):
            out.append((pos, pos + 5))
            break
        (length,) = struct.unpack_from("!i", stream, pos + 1)
        if length < 4:
            break
        out.append((pos, pos + 1 + length))
        pos += 1 + length
    return out


SPANS = message_spans(CLIENT + m.terminate())


def inside_a_header(offset: int) -> bool:
    return any(start < offset < start + 5 for start, _ in SPANS)


def feed(conn: ClientConn, chunks: list[bytes]) -> None:
    for chunk in chunks:
        if conn.phase is not Phase.FORWARD:
            break
        conn.data_received(chunk)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


def check_client_stream(chunks: list[bytes]) -> None:
    app, conn, _, to_server = linked()
    feed(conn, chunks)
    assert bytes(to_server.written) == CLIENT  # everything but the Terminate, in order
    assert not any(inside_a_header(n) for n in to_server.writes), to_server.writes
    assert conn.client.expect_rfq == OWED
    assert not conn.scanner.batch  # the last Sync closed the flushed batch
    assert app.gone == [Reason.CLIENT_CLOSE]


def test_client_stream_at_every_two_way_split() -> None:
    stream = CLIENT + m.terminate()
    for cut in range(len(stream) + 1):
        check_client_stream([stream[:cut], stream[cut:]])


def test_client_stream_byte_by_byte() -> None:
    stream = CLIENT + m.terminate()
    check_client_stream([stream[i : i + 1] for i in range(len(stream))])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(CLIENT) + 5), max_size=30))
def test_client_stream_at_random_splits(cuts: list[int]) -> None:
    check_client_stream(split_at(CLIENT + m.terminate(), cuts))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(range(len(CLIENT_PARTS))), min_size=1, max_size=8),
    st.lists(st.integers(min_value=0, max_value=4000), max_size=10),
    st.booleans(),
)
def test_a_client_leaving_at_any_point_closes_a_server_it_left_unfinished(
    parts: list[int], cuts: list[int], terminate: bool
) -> None:
    """Whatever was sent and wherever the client stops, a server is kept only if it holds
    whole messages and no batch after the last Sync/Query/FunctionCall."""
    stream = b"".join(CLIENT_PARTS[i] for i in parts)
    cut = cuts[0] % (len(stream) + 1) if cuts else len(stream)
    sent = stream[:cut] + (m.terminate() if terminate else b"")
    _, conn, server, to_server = linked()
    feed(conn, split_at(sent, [c % (len(sent) + 1) for c in cuts[1:]]))
    if conn.phase is Phase.FORWARD:
        conn.connection_lost(None)
    written = bytes(to_server.written)
    spans = message_spans(sent)
    assert not any(start < len(written) < start + 5 for start, _ in spans)  # no half header
    partial = not any(end == len(written) for _, end in spans) and len(written) > 0
    batch = False
    for start, end in spans:
        if end > len(written):
            break
        kind = sent[start : start + 1]
        if kind in b"PBEDC":
            batch = True
        elif kind in b"QSF":
            batch = False
    assert server.ready is not (partial or batch), (written, partial, batch)


def test_unknown_message_type_passes_nothing_of_its_chunk_on() -> None:
    app, conn, server, to_server = linked()
    conn.data_received(p("INSERT INTO t VALUES (1)") + B + E + H)
    conn.data_received(S + b"?" + struct.pack("!i", 4))
    assert bytes(to_server.written) == p("INSERT INTO t VALUES (1)") + B + E + H
    assert conn.phase is Phase.CLOSED
    assert conn.scanner.batch  # the Sync in the refused chunk never reached the server
    assert server.ready is False  # so the server is not reused
    assert b"unknown pkt" in bytes(conn.transport.written)  # type: ignore[union-attr]
    assert app.gone == [Reason.UNKNOWN_PKT]


def test_unknown_message_at_a_clean_boundary_leaves_the_server_reusable() -> None:
    app, conn, server, to_server = linked()
    conn.data_received(m.query("SELECT 1"))
    conn.data_received(b"\x00\x00\x00\x00\x04")
    assert bytes(to_server.written) == m.query("SELECT 1")
    assert server.ready is True  # whole messages only: the scheduler decides (query owed)
    assert app.gone == [Reason.UNKNOWN_PKT]


# --- the server side ----------------------------------------------------------------------------
SERVER_PARTS = [
    m.row_description([("a", 23)]),
    m.data_row(["1"]),
    m.command_complete("SELECT 1"),
    m.ready_for_query(b"I"),
    m.parameter_status("application_name", "x" * 50),
    m.data_row(["y" * 400]),
    m.command_complete("SELECT 1"),
    m.ready_for_query(b"T"),
    m.command_complete("COMMIT"),
    m.ready_for_query(b"I"),
]
SERVER = b"".join(SERVER_PARTS)


def check_server_stream(chunks: list[bytes]) -> None:
    app, conn, server, _ = linked()
    to_client = conn.transport
    sconn = ServerConn(app, server, None, "test")  # type: ignore[arg-type]
    sconn.login = None
    sconn.transport = Transport()  # type: ignore[assignment]
    conn.client.expect_rfq = 3
    conn.client.params = {"application_name": ""}
    server.tracked = {"application_name": ""}
    released_at = []
    for i, chunk in enumerate(chunks):
        sconn.data_received(chunk)
        if app.boundaries and not released_at:
            released_at.append(i)
    assert bytes(to_client.written) == SERVER  # type: ignore[union-attr]
    assert app.boundaries == 1
    last = max(i for i, c in enumerate(chunks) if c)
    assert released_at == [last]  # only with the last ReadyForQuery
    assert server.tx_status == b"I"
    assert conn.client.params["application_name"] == "x" * 50


def test_server_stream_at_every_two_way_split() -> None:
    for cut in range(len(SERVER) + 1):
        check_server_stream([SERVER[:cut], SERVER[cut:]])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(SERVER)), max_size=30))
def test_server_stream_at_random_splits(cuts: list[int]) -> None:
    check_server_stream(split_at(SERVER, cuts))
