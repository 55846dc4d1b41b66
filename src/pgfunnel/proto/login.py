"""The server login state machine: startup, authentication, parameters, key data, ready."""

from __future__ import annotations

from dataclasses import dataclass, field

from pgfunnel.proto import messages as m
from pgfunnel.proto.auth import ServerAuth, ServerAuthError


@dataclass
class LoginResult:
    """What a finished login learned: the server's parameters and its cancel key."""

    params: dict[str, str] = field(default_factory=dict)
    pid: int = 0
    key: int = 0


class LoginFailed(Exception):
    """The server refused the login; `error` carries its SQLSTATE and text."""

    def __init__(self, error: m.ServerError) -> None:
        super().__init__(f"{error.sqlstate}: {error.message}")
        self.error = error


class ServerLogin:
    """Drives one login: start() gives the StartupMessage, receive() each server message.

    receive() returns bytes to send (possibly empty); `done` turns true at ReadyForQuery.
    Raises LoginFailed on an ErrorResponse and ServerAuthError when we cannot authenticate.
    """

    def __init__(
        self,
        user: str,
        database: str,
        password: str | None,
        params: dict[str, str],
        client_key: bytes | None = None,
    ) -> None:
        self.startup_params = {"user": user, "database": database, **params}
        self.auth = ServerAuth(user, password, client_key)
        self.result = LoginResult()
        self.done = False
        self.notices: list[m.ServerError] = []

    def start(self) -> bytes:
        return m.startup_message(self.startup_params)

    def receive(self, kind: int, payload: bytes) -> bytes:
        if kind == m.AUTHENTICATION:
            code = m.read_i32(payload)
            reply = self.auth.respond(code, payload[4:])
            return reply or b""
        if kind == m.PARAMETER_STATUS:
            name, value = m.parse_parameter_status(payload)
            self.result.params[name] = value
            return b""
        if kind == m.BACKEND_KEY_DATA:
            self.result.pid = m.read_i32(payload)
            self.result.key = m.read_i32(payload, 4)
            return b""
        if kind == m.READY_FOR_QUERY:
            self.done = True
            return b""
        if kind == m.ERROR_RESPONSE:
            raise LoginFailed(m.parse_error_fields(payload))
        if kind == m.NOTICE_RESPONSE:
            self.notices.append(m.parse_error_fields(payload))
            return b""
        if kind == ord("v"):  # NegotiateProtocolVersion: we asked for plain 3.0; carry on
            return b""
        raise ServerAuthError(f"unexpected message {chr(kind)!r} during login")
