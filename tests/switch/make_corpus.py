"""Writes the fuzz harness's seed corpus (tests/switch/corpus/): recorded-style client and
server streams, each prefixed by the harness's two control bytes (split seed, max length)."""

from __future__ import annotations

import hashlib
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


def main() -> None:
    out = Path(__file__).parent / "corpus"
    out.mkdir(exist_ok=True)
    for i, stream in enumerate(STREAMS):
        for control in (bytes([i * 37 % 256, 1]), bytes([i * 11 % 256, 40])):
            data = control + stream
            name = hashlib.sha1(data).hexdigest()[:16]
            (out / name).write_bytes(data)


if __name__ == "__main__":
    main()
