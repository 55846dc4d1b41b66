"""The auth_query exchange byte for byte, the method choice, the failure log limit."""

from __future__ import annotations

import struct

import pytest

from pgfunnel.config.hba import parse_hba, parse_ident
from pgfunnel.proto import messages as m
from pgfunnel.proto.auth import FailureLimiter, cert_refusal, choose_method, peer_allowed
from pgfunnel.proto.auth_query import AuthQueryAnswer, AuthQueryFailed, Found, request
from pgfunnel.proto.framing import MessageReader


def messages(raw: bytes) -> list[tuple[int, bytes]]:
    reader = MessageReader()
    reader.feed(raw)
    out = []
    while (msg := reader.next()) is not None:
        out.append(msg)
    assert reader.take_rest() == b""
    return out


def data_row(*values: bytes | None) -> bytes:
    body = struct.pack("!h", len(values))
    for value in values:
        body += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value
    return body


def test_request_binds_the_user_as_a_parameter() -> None:
    sql = "SELECT * FROM f($1)"
    user = "o'brien\"; DROP TABLE x; --"
    parse, bind, execute, sync = messages(request(sql, user))
    assert parse == (ord("P"), b"\0" + sql.encode() + b"\0" + b"\0\0")
    encoded = user.encode()
    assert bind == (
        ord("B"),
        b"\0\0" + b"\0\0" + b"\0\1" + struct.pack("!i", len(encoded)) + encoded + b"\0\0",
    )
    assert execute == (ord("E"), b"\0" + b"\0\0\0\0")
    assert sync == (ord("S"), b"")
    assert sql.encode() not in bind[1] and encoded not in parse[1]


def answer(*msgs: tuple[int, bytes]) -> AuthQueryAnswer:
    result = AuthQueryAnswer()
    for kind, payload in msgs:
        assert not result.done
        result.receive(kind, payload)
    assert result.done
    return result


OK_PREFIX = ((ord("1"), b""), (ord("2"), b""))
DONE = ((m.COMMAND_COMPLETE, b"SELECT 1\0"), (m.READY_FOR_QUERY, b"I"))


def test_one_row_is_the_user_and_its_secret() -> None:
    got = answer(*OK_PREFIX, (m.DATA_ROW, data_row(b"alice", b"md5abc")), *DONE).result()
    assert got == Found("alice", "md5abc")


def test_no_row_is_no_such_user_and_null_secret_is_kept_as_none() -> None:
    assert answer(*OK_PREFIX, *DONE).result() is None
    got = answer(*OK_PREFIX, (m.DATA_ROW, data_row(b"bob", None)), *DONE).result()
    assert got == Found("bob", None)


@pytest.mark.parametrize(
    ("row", "text"),
    [
        (data_row(b"a"), "expected 2 columns from auth_query, not 1"),
        (data_row(None, b"x"), "null user name"),
        (b"\0\2\0\0\0\x09ab", "bad DataRow"),
        (b"\0", "bad DataRow"),
    ],
)
def test_malformed_rows_fail(row: bytes, text: str) -> None:
    with pytest.raises(AuthQueryFailed, match=text):
        answer(*OK_PREFIX, (m.DATA_ROW, row), *DONE).result()


def test_server_error_is_kept_for_the_log() -> None:
    error = m.error_response("42501", "permission denied for table pg_authid")[5:]
    result = answer((m.ERROR_RESPONSE, error), (m.READY_FOR_QUERY, b"I"))
    with pytest.raises(AuthQueryFailed) as info:
        result.result()
    assert info.value.error is not None and info.value.error.sqlstate == "42501"


def test_two_rows_are_refused() -> None:
    rows = [(m.DATA_ROW, data_row(b"a", b"x")), (m.DATA_ROW, data_row(b"a", b"y"))]
    with pytest.raises(AuthQueryFailed, match="2 rows"):
        answer(*OK_PREFIX, *rows, *DONE).result()


# --- choose_method --------------------------------------------------------------------------
HBA = parse_hba(
    "local all all peer map=m\n"
    "host all blocked 0.0.0.0/0 reject\n"
    "host all certu 0.0.0.0/0 cert\n"
    "host app all 10.0.0.0/8 md5\n",
    "hba.conf",
)


def test_without_hba_the_auth_type_is_the_method() -> None:
    assert choose_method("scram-sha-256", None, "1.2.3.4", "db", "u").method == "scram-sha-256"


def test_hba_rules_and_refusals() -> None:
    local = choose_method("hba", HBA, None, "db", "u")
    assert (local.method, local.hba_line, local.map_name) == ("peer", "hba.conf:1", "m")
    assert choose_method("hba", HBA, "10.1.1.1", "app", "u").method == "md5"
    rejected = choose_method("hba", HBA, "10.1.1.1", "app", "blocked")
    assert rejected.refusal == (
        'pg_hba.conf rejects connection for host "10.1.1.1", user "blocked", '
        'database "app", no encryption'
    )
    none = choose_method("hba", HBA, "192.168.0.1", "app", "u")
    assert none.refusal == (
        'no pg_hba.conf entry for host "192.168.0.1", user "u", database "app", no encryption'
    )
    # a cert rule chooses the method; the certificate decides (cert_refusal)
    cert = choose_method("hba", HBA, "1.1.1.1", "x", "certu")
    assert (cert.method, cert.refusal) == ("cert", None)
    assert cert_refusal(None, False, "certu") == "TLS connection required"
    assert cert_refusal(None, True, "certu") == "TLS client certificate required"
    assert cert_refusal(("certu", False), True, "certu") == "TLS client certificate required"
    assert cert_refusal(("other", True), True, "certu") == "TLS certificate name mismatch"
    assert cert_refusal(("certu", True), True, "certu") is None
    ident = parse_ident("m other certu\n", "ident.conf")
    assert cert_refusal(("other", True), True, "certu", "m", ident) is None
    assert cert_refusal(("certu", True), True, "certu", "m", ident) == (
        "TLS certificate name mismatch"
    )
    # with TLS, PostgreSQL's texts say so
    none = choose_method("hba", HBA, "192.168.0.1", "app", "u", tls=True)
    assert none.refusal is not None and none.refusal.endswith(", SSL encryption")


def test_peer_allowed_by_name_or_map() -> None:
    ident = parse_ident("m root postgres\n", "ident.conf")
    assert peer_allowed("alice", "alice", None, None)
    assert not peer_allowed("alice", "bob", None, None)
    assert not peer_allowed(None, "alice", None, None)
    assert peer_allowed("root", "postgres", "m", ident)
    assert not peer_allowed("root", "alice", "m", ident)
    assert not peer_allowed("root", "postgres", "m", None)


# --- the failure log limit ------------------------------------------------------------------
def test_failures_logged_as_a_burst_then_counted() -> None:
    limiter = FailureLimiter(period=60.0, burst=3)
    logged = [limiter.note("10.0.0.1", t)[0] for t in range(10)]
    assert logged == [True, True, True] + [False] * 7
    # Another address has its own budget.
    assert limiter.note("10.0.0.2", 5.0) == (True, 0, 0.0)
    # The next period: logged again, with the count the last one left out.
    assert limiter.note("10.0.0.1", 61.0) == (True, 7, 61.0)
    assert limiter.note("10.0.0.1", 62.0) == (True, 0, 0.0)


def test_failure_map_stays_bounded() -> None:
    limiter = FailureLimiter(period=10.0, burst=1, max_addresses=100)
    for i in range(1000):
        limiter.note(f"addr{i}", float(i))
    assert len(limiter._seen) <= 100
