"""Writes the fuzz harnesses' seed corpora: tests/switch/corpus/ for fuzz_scan.c (client and
server streams, each prefixed by the harness's two control bytes: split seed, max length) and
tests/switch/corpus_switch/ for fuzz_switch.c (a pool mode byte, then operations; the mode
byte plus WANTS_SET: the client wants an application_name its server does not have; op 7: a
deadline sweep) and tests/switch/corpus_login/ for fuzz_login.c (client or server, then
operations) and tests/switch/corpus_tls/ for fuzz_tls.c (a side byte, then pieces of the
peer's bytes: a real ClientHello among them)."""

from __future__ import annotations

import contextlib
import hashlib
import struct
from pathlib import Path

from pgfunnel.proto import messages as m

PARSE = m.message(b"P", b"\0insert into t values (99)\0\0\0")
BIND = m.message(b"B", b"\0\0\0\0\0\0\0\0")
EXECUTE = m.message(b"E", b"\0\0\0\0\0")

STREAMS = [
    m.query("select 1") + m.query("begin") + m.query("commit") + m.terminate(),
    PARSE + BIND + EXECUTE + m.message(b"S") + m.query("select 2"),
    PARSE + BIND + EXECUTE + m.message(b"H"),
    m.query("copy t from stdin") + m.message(b"d", b"1\n" * 40) + m.message(b"c"),
    b"X\0\0\0\x04",
    m.message(b"?", b"x"),
    b"Q\0\0\0\x02",
    m.row_description([("a", 23)])
    + m.data_row(["1"]) * 3
    + m.command_complete("SELECT 3")
    + m.ready_for_query(),
    m.command_complete("BEGIN")
    + m.ready_for_query(b"T")
    + m.error_response("42601", "syntax error")
    + m.ready_for_query(b"E"),
    m.parameter_status("TimeZone", "UTC") + m.notice_response("hello") + m.ready_for_query(),
    b"Z\0\0\0\x05X",
    b"D\x7f\xff\xff\xff",
]


# fuzz_switch.c's operations: (length << 3) | kind, then `length` bytes for kinds 0-3.
CLIENT, SERVER, CLIENT_READS, SERVER_READS, CLIENT_LEAVES = 0, 2, 4, 5, 6
# A deadline sweep; and Python acting on what it reported, for clients, servers or both.
TICK, ACT_CLIENTS, ACT_SERVERS, TICK_ACT = 7, (1 << 3) | 7, (2 << 3) | 7, (3 << 3) | 7
SESSION, TRANSACTION, STATEMENT = 0, 1, 2
WANTS_SET = 3
PREPARED = 6  # the pool tracks named prepared statements (ps.c), two per server at most
REFUSE, PIN = 12, 24  # pooling_hazards (warn is 0)


def named_parse(name: str, sql: str) -> bytes:
    return m.message(b"P", name.encode() + b"\0" + sql.encode() + b"\0\0\0")


def named_bind(name: str) -> bytes:
    return m.message(b"B", b"\0" + name.encode() + b"\0\0\0\0\0\0\0")


def close_statement(name: str) -> bytes:
    return m.message(b"C", b"S" + name.encode() + b"\0")


PARSED = m.message(b"1")
CLOSED = m.message(b"3")


def ops(mode: int, *steps: tuple[int, bytes]) -> bytes:
    out = bytearray([mode])
    for kind, data in steps:
        if kind in (CLIENT, SERVER):
            for i in range(0, len(data), 31):
                piece = data[i : i + 31]
                out += bytes([(len(piece) << 3) | kind]) + piece
        else:
            out.append(kind)
    return bytes(out)


ANSWER = m.command_complete("SELECT 1") + m.ready_for_query()
SCENARIOS = [
    ops(
        TRANSACTION,
        (CLIENT, m.query("select 1")),
        (SERVER_READS, b""),
        (SERVER, m.data_row(["1"]) + ANSWER),
        (CLIENT_READS, b""),
        (CLIENT, m.terminate()),
    ),
    ops(TRANSACTION, (CLIENT, PARSE + BIND + EXECUTE + m.message(b"H")), (CLIENT_LEAVES, b"")),
    ops(TRANSACTION, (CLIENT, b"X\0\0"), (CLIENT, b"\0\x04")),
    ops(
        STATEMENT,
        (CLIENT, m.query("begin")),
        (SERVER, m.command_complete("BEGIN") + m.ready_for_query(b"T")),
        (CLIENT_READS, b""),
    ),
    ops(SESSION, (CLIENT, m.query("select 1")), (SERVER, ANSWER), (CLIENT_LEAVES, b"")),
    ops(TRANSACTION, (CLIENT, m.message(b"?", b"x"))),
    ops(
        TRANSACTION,
        (CLIENT, m.query("select '" + "x" * 200 + "'")),
        (SERVER_READS, b""),
        (SERVER, m.data_row(["y" * 200]) + ANSWER),
        (CLIENT_READS, b""),
    ),
    ops(
        TRANSACTION + WANTS_SET,
        (CLIENT, m.query("select 1")),
        (SERVER_READS, b""),
        (
            SERVER,
            m.command_complete("SET")
            + m.parameter_status("application_name", "b")
            + m.notice_response("n")
            + m.ready_for_query(),
        ),
        (SERVER, ANSWER),
        (CLIENT_READS, b""),
        (CLIENT, m.query("select 2")),
        (SERVER, m.parameter_status("application_name", "c") + ANSWER),
        (CLIENT, m.terminate()),
    ),
    ops(
        STATEMENT + WANTS_SET,
        (CLIENT, m.query("select 1")),
        (SERVER, m.error_response("22023", "bad value") + m.ready_for_query()),
        (SERVER, ANSWER),
        (CLIENT_LEAVES, b""),
    ),
    ops(
        SESSION + WANTS_SET,
        (CLIENT, m.message(b"d", b"x")),
        (SERVER_READS, b""),
        (CLIENT_LEAVES, b""),
    ),
    ops(
        TRANSACTION,
        (SERVER, m.parameter_status("TimeZone", "Europe/Oslo")),
        (CLIENT, m.query("select 1")),
        (SERVER, ANSWER),
        (CLIENT_READS, b""),
    ),
    # Deadlines: an idle client and server, a query that runs on, an open transaction, a
    # session whose server outlives its lifetime.
    ops(TRANSACTION, (TICK_ACT, b""), (CLIENT, m.query("select 1"))),
    ops(TRANSACTION, (CLIENT, m.query("select 1")), (SERVER_READS, b""), (TICK_ACT, b"")),
    ops(
        TRANSACTION,
        (CLIENT, m.query("begin")),
        (SERVER, m.command_complete("BEGIN") + m.ready_for_query(b"T")),
        (CLIENT_READS, b""),
        (TICK_ACT, b""),
    ),
    # The idle server closed: the client's query waits, and waits too long.
    ops(TRANSACTION, (ACT_SERVERS, b""), (CLIENT, m.query("select 1")), (ACT_CLIENTS, b"")),
    ops(
        SESSION,
        (CLIENT, m.query("select 1")),
        (SERVER, ANSWER),
        (TICK_ACT, b""),
        (CLIENT, m.query("select 2")),
        (CLIENT_LEAVES, b""),
    ),
    # Named prepared statements: Parse, Bind, Close rewritten; answers swallowed, passed, or
    # passed as a ParseComplete; a third statement closes the least recently used.
    ops(
        TRANSACTION + PREPARED,
        (CLIENT, named_parse("a", "select 1") + named_bind("a") + EXECUTE + m.message(b"S")),
        (SERVER_READS, b""),
        (SERVER, PARSED + m.message(b"2") + m.data_row(["1"]) + ANSWER),
        (CLIENT_READS, b""),
        (CLIENT, named_parse("b", "select 2") + named_parse("c", "select 3") + m.message(b"S")),
        (SERVER_READS, b""),
        (SERVER, PARSED + CLOSED + PARSED + m.ready_for_query()),
        (CLIENT, close_statement("a") + named_bind("b") + EXECUTE + m.message(b"S")),
        (SERVER, CLOSED + m.error_response("26000", "gone") + m.ready_for_query()),
        (CLIENT_READS, b""),
    ),
    # Session settings (sets.c): a SET that succeeds, one that fails, RESET ALL.
    ops(
        TRANSACTION,
        (CLIENT, m.query("SET search_path TO a")),
        (SERVER_READS, b""),
        (SERVER, m.command_complete("SET") + m.ready_for_query()),
        (CLIENT, m.query(" set work_mem = '1MB';") + m.query("RESET ALL")),
        (SERVER, m.error_response("22023", "bad") + m.ready_for_query()),
        (SERVER, m.command_complete("RESET") + m.ready_for_query()),
        (CLIENT_READS, b""),
        (CLIENT, named_parse("", "SET x.y TO 1") + named_bind("") + EXECUTE + m.message(b"S")),
        (SERVER, PARSED + m.message(b"2") + m.command_complete("SET") + m.ready_for_query()),
    ),
    # Hazards: refused (the statement replaced, answered in its place), pinned (kept).
    ops(
        TRANSACTION + PREPARED + REFUSE,
        (CLIENT, m.query("LISTEN x") + named_parse("l", "select pg_advisory_lock(1)")),
        (SERVER_READS, b""),
        (SERVER, m.error_response("0A000", "refused") + m.ready_for_query()),
        (CLIENT, named_bind("l") + EXECUTE + m.message(b"S")),
        (SERVER, PARSED + m.error_response("0A000", "refused") + m.ready_for_query()),
        (CLIENT_READS, b""),
    ),
    ops(
        TRANSACTION + PIN,
        (CLIENT, m.query("create temp table t (a int)")),
        (SERVER, m.command_complete("CREATE TABLE") + m.ready_for_query()),
        (CLIENT, m.query("select 1")),
        (SERVER, ANSWER),
        (CLIENT_LEAVES, b""),
        (ACT_SERVERS, b""),
    ),
    ops(
        TRANSACTION + PREPARED,
        (CLIENT, named_parse("x", "select 1") + m.message(b"H")),
        (SERVER, m.error_response("42601", "syntax") + m.ready_for_query()),
        (CLIENT_LEAVES, b""),
        (ACT_SERVERS, b""),
    ),
]


# fuzz_login.c's operations: (length << 3) | kind; kind 0 then `length` stream bytes, kind 2
# then one byte repeated (length + 1) * 128 times, 3 read_next, 4 the peer leaves.
LOGIN_CLIENT, LOGIN_SERVER = 0, 1
SEND, FILL, READ_NEXT, LEAVES = 0, 2, 3, 4


def login_ops(side: int, *steps: tuple[int, bytes]) -> bytes:
    out = bytearray([side])
    for kind, data in steps:
        if kind == SEND:
            for i in range(0, len(data), 31):
                piece = data[i : i + 31]
                out += bytes([(len(piece) << 3) | SEND]) + piece
        elif kind == FILL:
            out += bytes([(data[0] << 3) | FILL, data[1]])
        else:
            out.append(kind)
    return bytes(out)


SSL = struct.pack("!ii", 8, m.SSL_REQUEST_CODE)
STARTUP = m.startup_message({"user": "u", "database": "d"})
LOGIN_SCENARIOS = [
    login_ops(LOGIN_CLIENT, (SEND, STARTUP), (READ_NEXT, b""), (SEND, m.password_message(b"pw"))),
    login_ops(LOGIN_CLIENT, (SEND, SSL + STARTUP), (READ_NEXT, b""), (READ_NEXT, b"")),
    login_ops(LOGIN_CLIENT, (SEND, m.cancel_request(1, 2)), (LEAVES, b"")),
    login_ops(LOGIN_CLIENT, (SEND, struct.pack("!ii", 7, 0))),
    login_ops(
        LOGIN_CLIENT,
        (SEND, STARTUP + b"p" + struct.pack("!i", 9000)),
        (FILL, bytes([31, 0x61])),
        (FILL, bytes([31, 0x61])),
        (READ_NEXT, b""),
    ),
    login_ops(
        LOGIN_SERVER,
        (SEND, m.auth_request(m.AUTH_MD5, b"salt")),
        (READ_NEXT, b""),
        (SEND, m.auth_ok() + m.parameter_status("a", "b") + m.backend_key_data(1, 2)),
        (SEND, m.ready_for_query() + m.notice_response("late")),
    ),
    login_ops(
        LOGIN_SERVER, (SEND, m.error_response("28P01", "no", severity="FATAL")), (LEAVES, b"")
    ),
]


def client_hello(alpn: list[str] | None = None) -> bytes:
    """A real ClientHello, as a client's first TLS bytes (Python's ssl, in memory)."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()  # the ClientHello is written, the answer is awaited
    return outgoing.read()


def pieces(data: bytes, size: int = 200) -> bytes:
    """fuzz_tls.c's input after its side byte: length-prefixed pieces (0: the peer closes)."""
    out = b""
    for i in range(0, len(data), size):
        chunk = data[i : i + size]
        out += bytes([len(chunk)]) + chunk
    return out


def tls_scenarios() -> list[bytes]:
    hello = client_hello(["postgresql"])
    return [
        b"\0" + pieces(hello),
        b"\0" + pieces(client_hello(), 37) + b"\0",
        b"\0" + pieces(b"\x16\x03\x01\x00\x05hello" + bytes(range(64))),
        b"\1" + pieces(b"N" + m.auth_ok() + m.ready_for_query()),
        b"\1" + pieces(b"E" + m.error_response("0A000", "no ssl", severity="FATAL")),
        b"\2" + pieces(b"N"),
        b"\2" + pieces(b"S\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03" + bytes(118)),
        b"\3\x02h2\x0apostgresql",
        b"\3\x0apostgresql",
        b"\3\x08http/1.1\x00",
    ]


def write(out: Path, items: list[bytes]) -> None:
    out.mkdir(exist_ok=True)
    for data in items:
        (out / hashlib.sha1(data).hexdigest()[:16]).write_bytes(data)


def main() -> None:
    here = Path(__file__).parent
    write(
        here / "corpus",
        [
            control + stream
            for i, stream in enumerate(STREAMS)
            for control in (bytes([i * 37 % 256, 1]), bytes([i * 11 % 256, 40]))
        ],
    )
    write(here / "corpus_switch", SCENARIOS)
    write(here / "corpus_login", LOGIN_SCENARIOS)
    write(here / "corpus_tls", tls_scenarios())


if __name__ == "__main__":
    main()
