"""PgBouncer's auth_file (userlist.txt): quoted user names with passwords or secrets."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final, Literal

from pgfunnel.config.ini import ConfigError

__all__ = [
    "MAX_PASSWORD",
    "MAX_USERNAME",
    "load_userlist",
    "parse_userlist",
    "secret_kind",
]

# PgBouncer's buffer sizes; a field as long as the buffer (counted with its doubled quotes) is
# refused there, so it is refused here too.
MAX_USERNAME: Final = 128
MAX_PASSWORD: Final = 2048

_SPACE: Final = " \t\n\v\f\r"
_BLANK: Final = " \t"

SecretKind = Literal["plain", "md5", "scram-sha-256"]


def secret_kind(secret: str) -> SecretKind:
    """What a stored password is, decided by its prefix the way PgBouncer decides it."""
    if secret.startswith("md5") and len(secret) == 35:
        return "md5"
    if secret.startswith("SCRAM-SHA-256$"):
        return "scram-sha-256"
    return "plain"


def _field(text: str, pos: int, file: str, line: int, what: str, limit: int) -> tuple[str, int]:
    """Read a double-quoted field starting at the opening quote; returns (value, next pos)."""
    chars: list[str] = []
    raw_len = 0
    pos += 1
    while True:
        if pos >= len(text) or text[pos] == "\n":
            raise ConfigError(file, line, f"unterminated quoted {what}")
        if text[pos] == '"':
            if text[pos + 1 : pos + 2] != '"':
                break
            pos += 1
            raw_len += 1
        chars.append(text[pos])
        raw_len += 1
        pos += 1
    if raw_len >= limit:
        raise ConfigError(file, line, f"{what} too long (at most {limit - 1} bytes)")
    return "".join(chars), pos + 1


def parse_userlist(text: str, file: str = "<userlist>") -> dict[str, str]:
    """Parse the text of a userlist.txt; `file` only names the source in errors.

    Each line is `"user" "password"`, optionally followed by anything (ignored). A `""` inside
    a field is one double quote. Blank lines are skipped and a line starting with `;` is a
    comment. PgBouncer knows no other comment character: a `#` line stops its parsing with
    "broken auth file", so here it is an error naming the line.
    """
    users: dict[str, str] = {}
    line = 1
    pos = 0
    while pos < len(text):
        while pos < len(text) and text[pos] in _SPACE:
            if text[pos] == "\n":
                line += 1
            pos += 1
        if pos >= len(text):
            break
        end = text.find("\n", pos)
        end = len(text) if end < 0 else end
        if text[pos] == ";":
            pos = end
            continue
        if text[pos] != '"':
            hint = " (only ';' starts a comment in an auth_file)" if text[pos] == "#" else ""
            raise ConfigError(
                file, line, f'expected "user" "password", found {text[pos:end]!r}{hint}'
            )
        user, pos = _field(text, pos, file, line, "user name", MAX_USERNAME)
        while pos < len(text) and text[pos] in _BLANK:
            pos += 1
        if pos >= len(text) or text[pos] != '"':
            raise ConfigError(file, line, f"missing quoted password for user {user!r}")
        password, pos = _field(text, pos, file, line, "password", MAX_PASSWORD)
        # PgBouncer ignores whatever follows the password; a later line for the same user wins.
        users[user] = password
        pos = end
    return users


def load_userlist(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a userlist.txt into {user: password or secret}; problems raise ConfigError."""
    name = os.fspath(path)
    try:
        data = Path(name).read_bytes()
    except OSError as exc:
        raise ConfigError(name, 0, f"could not read auth_file: {exc.strerror or exc}") from None
    return parse_userlist(data.decode("utf-8", errors="surrogateescape"), name)
