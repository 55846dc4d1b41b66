"""The bytes ServerConn still reads in Python, fed at every split: a server's login, and the
answers to the pooler's own queries (connect_query, ROLLBACK, the reset query). The switch
carries everything else, and its framing is tested in tests/switch/ (test_scan.py,
test_switch_sockets.py)."""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgfunnel.net.server_conn import ServerConn
from pgfunnel.pool.objects import Server
from pgfunnel.proto import messages as m
from pgfunnel.proto.login import ServerLogin
from pgfunnel.proto.messages import ServerError
from pgfunnel.proto.strings import Reason


class Transport:
    """Records what is written; what ServerConn asks of the bridge's SwitchTransport."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.final = b""

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self, final: bytes = b"") -> None:
        self.closed = True
        self.final = final


class App:
    """What ServerConn reports to the App, recorded in order."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def server_login_ok(self, server: Server, params: dict[str, str]) -> None:
        self.events.append(("login_ok", dict(params)))

    def server_login_failed(self, server: Server, error: ServerError | None, reason: str) -> None:
        self.events.append(("login_failed", error, reason))

    def internal_done(self, server: Server, ok: bool) -> None:
        self.events.append(("internal_done", ok, server.tx_status))

    def close_server(self, server: Server, reason: str) -> None:
        self.events.append(("close_server", reason))

    def server_gone(self, server: Server, reason: str) -> None:
        self.events.append(("gone", reason))


def server_conn(login: bool) -> tuple[App, ServerConn, Server, Transport]:
    app = App()
    server = Server(SimpleNamespace(), 0.0)  # type: ignore[arg-type]
    conn = ServerConn(
        app,  # type: ignore[arg-type]
        server,
        ServerLogin("app", "shop", None, {}),
        "127.0.0.1:5432",
        ("127.0.0.1", 40000),
    )
    transport = Transport()
    conn.connection_made(transport)
    if not login:
        conn.login = None
    return app, conn, server, transport


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


def every_two_way_split(data: bytes) -> list[list[bytes]]:
    return [[data[:cut], data[cut:]] for cut in range(len(data) + 1)]


# --- a server's login ---------------------------------------------------------------------------
LOGIN = b"".join(
    [
        m.auth_ok(),
        m.parameter_status("server_version", "16.4"),
        m.parameter_status("TimeZone", "UTC"),
        m.backend_key_data(4711, 99),
        m.ready_for_query(b"I"),
    ]
)


def test_login_sends_the_startup_message_first() -> None:
    _, _, _, transport = server_conn(login=True)
    assert bytes(transport.written) == m.startup_message({"user": "app", "database": "shop"})


def test_login_at_every_split_reports_once_with_pid_key_and_params() -> None:
    for chunks in every_two_way_split(LOGIN):
        app, conn, server, _ = server_conn(login=True)
        for chunk in chunks:
            conn.data_received(chunk)
        assert app.events == [("login_ok", {"server_version": "16.4", "TimeZone": "UTC"})]
        assert (server.pid, server.key) == (4711, 99)
        assert conn.login is None


def test_answers_after_the_login_in_the_same_read_are_not_lost() -> None:
    # connect_query's answer may arrive with the login's ReadyForQuery in one read.
    app, conn, server, _ = server_conn(login=True)
    server.internal = 1
    conn.data_received(LOGIN + m.command_complete("SET") + m.ready_for_query(b"I"))
    assert app.events[0][0] == "login_ok"
    assert app.events[1:] == [("internal_done", True, b"I")]


def test_an_error_during_login_is_a_failed_login_and_closes() -> None:
    app, conn, _, transport = server_conn(login=True)
    refusal = m.error_response("53300", "sorry, too many clients already", severity="FATAL")
    for chunk in split_at(refusal, [3, 9]):
        conn.data_received(chunk)
    [(what, error, _)] = app.events
    assert what == "login_failed"
    assert error.sqlstate == "53300" and error.message == "sorry, too many clients already"
    assert transport.closed


def test_a_connection_lost_during_login_is_a_network_failure() -> None:
    app, conn, _, _ = server_conn(login=True)
    conn.data_received(m.auth_ok())
    conn.connection_lost(ConnectionResetError("reset"))
    [(what, error, reason)] = app.events
    assert what == "login_failed" and error is None
    assert "connection lost during login" in reason


# --- the pooler's own queries -------------------------------------------------------------------
# ROLLBACK then the reset query (DISCARD ALL), answered in one stream; a ParameterStatus in the
# middle (DISCARD ALL resets TimeZone) must reach the server's tracked parameters.
ANSWERS = b"".join(
    [
        m.command_complete("ROLLBACK"),
        m.ready_for_query(b"I"),
        m.parameter_status("TimeZone", "Europe/Paris"),
        m.command_complete("DISCARD ALL"),
        m.ready_for_query(b"I"),
    ]
)


def check_answers(chunks: list[bytes]) -> None:
    app, conn, server, _ = server_conn(login=False)
    server.tracked = {"TimeZone": "UTC"}
    server.internal = 2
    server.tx_status = b"T"
    reported_at: list[int] = []
    for i, chunk in enumerate(chunks):
        conn.data_received(chunk)
        if app.events and not reported_at:
            reported_at.append(i)
    assert app.events == [("internal_done", True, b"I")]  # once, after the last answer
    assert reported_at == [max(i for i, c in enumerate(chunks) if c)]
    assert server.internal == 0
    assert server.tracked == {"TimeZone": "Europe/Paris"}
    assert server.params["TimeZone"] == "Europe/Paris"


def test_internal_answers_at_every_two_way_split() -> None:
    for chunks in every_two_way_split(ANSWERS):
        check_answers(chunks)


def test_internal_answers_byte_by_byte() -> None:
    check_answers([ANSWERS[i : i + 1] for i in range(len(ANSWERS))])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(ANSWERS)), max_size=30))
def test_internal_answers_at_random_splits(cuts: list[int]) -> None:
    check_answers(split_at(ANSWERS, cuts))


def test_an_error_in_any_internal_query_fails_the_whole_and_keeps_the_first() -> None:
    app, conn, server, _ = server_conn(login=False)
    server.internal = 2
    first = m.error_response("25P02", "current transaction is aborted", severity="ERROR")
    second = m.error_response("42601", "syntax error", severity="ERROR")
    conn.data_received(first + m.ready_for_query(b"E") + second + m.ready_for_query(b"I"))
    assert app.events == [("internal_done", False, b"I")]
    assert server.internal_error is not None and server.internal_error.sqlstate == "25P02"
    # The next round starts clean.
    server.internal = 1
    conn.data_received(m.command_complete("ROLLBACK") + m.ready_for_query(b"I"))
    assert app.events[-1] == ("internal_done", True, b"I")


def test_a_transaction_left_open_is_reported_as_such() -> None:
    app, conn, server, _ = server_conn(login=False)
    server.internal = 1
    conn.data_received(m.command_complete("BEGIN") + m.ready_for_query(b"T"))
    assert app.events == [("internal_done", True, b"T")]  # the scheduler closes it


def test_a_malformed_answer_closes_the_server() -> None:
    app, conn, server, _ = server_conn(login=False)
    server.internal = 1
    conn.data_received(b"C\x00\x00\x00\x02")  # a length below 4
    [(what, reason)] = app.events
    assert what == "close_server" and reason.startswith(Reason.PROTOCOL)


def test_talk_starts_a_fresh_reader() -> None:
    # A server taken back from the switch: leftovers of an earlier talk must not prefix it.
    app, conn, server, _ = server_conn(login=False)
    server.internal = 1
    conn.data_received(m.command_complete("ROLLBACK")[:3])
    fresh = Transport()
    conn.talk(fresh)
    conn.data_received(m.command_complete("ROLLBACK") + m.ready_for_query(b"I"))
    assert app.events == [("internal_done", True, b"I")]
    conn.write(m.query("DISCARD ALL"))
    assert bytes(fresh.written) == m.query("DISCARD ALL")


@pytest.mark.parametrize("login", [False, True])
def test_a_logged_in_server_is_closed_with_its_terminate_as_the_final_bytes(login: bool) -> None:
    """The Terminate goes with the close (the switch writes it as it closes the socket): a
    write queued before a server's close would be dropped with it. In login, none."""
    _, conn, _, transport = server_conn(login)
    before = bytes(transport.written)
    conn.close()
    assert transport.closed
    assert transport.final == (b"" if login else m.terminate())
    assert bytes(transport.written) == before
