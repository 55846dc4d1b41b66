"""The server login state machine driven by scripted PostgreSQL conversations, split every way."""

from __future__ import annotations

import hashlib

import pytest

from pgfunnel.proto import messages as m
from pgfunnel.proto.auth import ClientAuth, ServerAuthError
from pgfunnel.proto.framing import MessageReader, StartupMessage, read_startup_packet
from pgfunnel.proto.login import LoginFailed, ServerLogin

SALT = b"\x01\x02\x03\x04"
PARAMS = {
    "application_name": "pgfunnel",
    "client_encoding": "UTF8",
    "DateStyle": "ISO, MDY",
    "integer_datetimes": "on",
    "server_version": "16.3",
    "standard_conforming_strings": "on",
    "TimeZone": "UTC",
}
AFTER_AUTH = (
    b"".join(m.parameter_status(k, v) for k, v in PARAMS.items())
    + m.backend_key_data(31337, -424242)
    + m.ready_for_query(b"I")
)


def md5_answer(user: str, password: str, salt: bytes) -> bytes:
    inner = hashlib.md5((password + user).encode()).hexdigest()
    return m.password_message(
        ("md5" + hashlib.md5(inner.encode() + salt).hexdigest()).encode() + b"\0"
    )


def run(login: ServerLogin, chunks: list[bytes]) -> list[bytes]:
    """Feed server bytes in chunks through a MessageReader; collect non-empty replies."""
    reader = MessageReader()
    sent = []
    for chunk in chunks:
        reader.feed(chunk)
        while (msg := reader.next()) is not None:
            reply = login.receive(*msg)
            if reply:
                sent.append(reply)
    return sent


def test_startup_message_carries_user_database_and_params() -> None:
    login = ServerLogin("app", "shop", "pw", {"application_name": "x", "TimeZone": "UTC"})
    raw = login.start()
    assert read_startup_packet(bytearray(raw)) == (
        StartupMessage(
            {"user": "app", "database": "shop", "application_name": "x", "TimeZone": "UTC"}
        ),
        len(raw),
    )


def test_trust_login_at_every_split() -> None:
    stream = m.auth_ok() + AFTER_AUTH
    for cut in range(len(stream) + 1):
        login = ServerLogin("app", "shop", None, {})
        assert run(login, [stream[:cut], stream[cut:]]) == []
        assert login.done
        assert login.result.params == PARAMS
        assert (login.result.pid, login.result.key) == (31337, -424242)


def test_not_done_until_ready_for_query() -> None:
    login = ServerLogin("app", "shop", None, {})
    run(login, [m.auth_ok() + AFTER_AUTH[:-6]])
    assert not login.done
    assert login.result.pid == 31337
    run(login, [AFTER_AUTH[-6:]])
    assert login.done


def test_md5_challenge_is_answered_then_login_completes() -> None:
    login = ServerLogin("app", "shop", "pw", {})
    stream = m.auth_request(m.AUTH_MD5, SALT)
    assert run(login, [stream]) == [md5_answer("app", "pw", SALT)]
    assert not login.done
    assert run(login, [m.auth_ok() + AFTER_AUTH]) == []
    assert login.done
    assert login.result.params["server_version"] == "16.3"


def test_cleartext_challenge() -> None:
    login = ServerLogin("app", "shop", "pw", {})
    assert run(login, [m.auth_request(m.AUTH_CLEARTEXT)]) == [m.password_message(b"pw\0")]


def test_scram_login_against_a_scram_server() -> None:
    """ClientAuth plays PostgreSQL: ServerLogin's replies are fed to it as the server would."""
    backend = ClientAuth("scram-sha-256", "app", "pw")
    login = ServerLogin("app", "shop", "pw", {})
    outgoing = [backend.start()]
    while outgoing:
        reader = MessageReader()
        reader.feed(outgoing.pop())
        while (msg := reader.next()) is not None:
            reply = login.receive(*msg)
            if reply:
                outgoing.append(backend.receive(reply[5:]))
    assert backend.done
    run(login, [AFTER_AUTH])
    assert login.done


def test_notices_are_kept_and_do_not_stop_the_login() -> None:
    login = ServerLogin("app", "shop", None, {})
    notice = m.notice_response("collation version mismatch", sqlstate="01000")
    run(login, [m.auth_ok() + notice + AFTER_AUTH])
    assert login.done
    assert [n.message for n in login.notices] == ["collation version mismatch"]


def test_negotiate_protocol_version_is_tolerated() -> None:
    login = ServerLogin("app", "shop", None, {})
    nego = m.message(b"v", b"\x00\x00\x00\x00\x00\x00\x00\x01_pq_.x\0")
    run(login, [nego + m.auth_ok() + AFTER_AUTH])
    assert login.done


@pytest.mark.parametrize(
    ("sqlstate", "text"),
    [
        ("53300", 'too many connections for role "app"'),
        ("53300", "sorry, too many clients already"),
        ("28P01", 'password authentication failed for user "app"'),
        ("3D000", 'database "shop" does not exist'),
        ("57P03", "the database system is starting up"),
    ],
)
def test_error_response_raises_login_failed(sqlstate: str, text: str) -> None:
    stream = m.error_response(sqlstate, text, severity="FATAL")
    for cut in range(len(stream) + 1):
        login = ServerLogin("app", "shop", "pw", {})
        with pytest.raises(LoginFailed) as info:
            run(login, [stream[:cut], stream[cut:]])
        err = info.value.error
        assert (err.severity, err.sqlstate, err.message) == ("FATAL", sqlstate, text)
        assert str(info.value) == f"{sqlstate}: {text}"
        assert not login.done


def test_error_after_md5_answer() -> None:
    login = ServerLogin("app", "shop", "wrong", {})
    run(login, [m.auth_request(m.AUTH_MD5, SALT)])
    with pytest.raises(LoginFailed) as info:
        run(login, [m.error_response("28P01", "password authentication failed", severity="FATAL")])
    assert info.value.error.sqlstate == "28P01"


def test_unexpected_message_during_login() -> None:
    login = ServerLogin("app", "shop", None, {})
    with pytest.raises(ServerAuthError, match="unexpected message 'D'"):
        run(login, [m.auth_ok() + m.data_row(["1"])])


def test_password_requested_but_none_configured() -> None:
    login = ServerLogin("app", "shop", None, {})
    with pytest.raises(ServerAuthError):
        run(login, [m.auth_request(m.AUTH_MD5, SALT)])
