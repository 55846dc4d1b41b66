"""The pgbouncer.ini dialect (libusual's cfparser, not configparser), with file:line errors."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "MAX_INCLUDE_DEPTH",
    "ConfigError",
    "IniEntry",
    "IniSection",
    "parse_ini",
    "read_ini",
]

# PgBouncer refuses a tenth level of nested %include; a loop is caught by the same limit there.
MAX_INCLUDE_DEPTH: Final = 10

# C isspace() and isblank() in the "C" locale; str.isspace() would also accept Unicode spaces.
_SPACE: Final = " \t\n\v\f\r"
_BLANK: Final = " \t"
# An unquoted key is C isalnum() plus these; anything else needs the key in single quotes.
_KEY_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-*")
_INCLUDE: Final = "%include"


class ConfigError(Exception):
    """A configuration problem, located: str() is "FILE:LINE: message" ("FILE: message" when
    the problem concerns the whole file, line 0)."""

    def __init__(self, file: str, line: int, message: str) -> None:
        super().__init__(file, line, message)
        self.file = file
        self.line = line
        self.message = message

    def __str__(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}: {self.message}"
        return f"{self.file}: {self.message}"


@dataclass(frozen=True)
class IniSection:
    """A `[name]` header, kept so the loader can see sections that hold no keys."""

    name: str
    file: str
    line: int


@dataclass(frozen=True)
class IniEntry:
    """One `key = value` line; `section` is "" for a key before any section header."""

    section: str
    key: str
    value: str
    file: str
    line: int


def _skip(text: str, pos: int, chars: str) -> int:
    while pos < len(text) and text[pos] in chars:
        pos += 1
    return pos


def _read_text(path: str, *, by: tuple[str, int] | None) -> str:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if by is None:
            raise ConfigError(path, 0, f"could not read configuration file: {reason}") from None
        raise ConfigError(by[0], by[1], f"could not read include file {path!r}: {reason}") from None
    # Bytes that are not UTF-8 are kept (as surrogates) rather than refused: PgBouncer is
    # byte-oriented and a latin-1 comment must not stop the pooler from starting.
    return data.decode("utf-8", errors="surrogateescape")


class _Reader:
    def __init__(self) -> None:
        self.items: list[IniSection | IniEntry] = []
        # The current section survives %include in both directions, as in PgBouncer.
        self.section = ""
        self.stack: list[str] = []

    def read(self, path: str, depth: int, by: tuple[str, int] | None) -> None:
        text = _read_text(path, by=by)
        real = os.path.realpath(path)
        if real in self.stack:
            assert by is not None
            raise ConfigError(by[0], by[1], f"%include loop: {path!r} is already being read")
        self.stack.append(real)
        for number, line in enumerate(text.split("\n"), start=1):
            self._line(path, number, line, depth)
        self.stack.pop()

    def _line(self, file: str, number: int, text: str, depth: int) -> None:
        pos = _skip(text, 0, _SPACE)
        while pos < len(text):
            rest = text[pos:]
            n = len(_INCLUDE)
            if rest.startswith(_INCLUDE) and len(rest) > n and rest[n] in _BLANK:
                if depth >= MAX_INCLUDE_DEPTH:
                    raise ConfigError(
                        file, number, f"%include nested more than {MAX_INCLUDE_DEPTH} levels deep"
                    )
                target = rest[n:].strip(_BLANK).rstrip(_SPACE)
                # Relative to the working directory, not to this file: that is what PgBouncer does.
                self.read(target, depth + 1, (file, number))
                return
            if rest[0] in "#;":
                return
            if rest[0] == "[":
                close = rest.find("]")
                if close < 0:
                    raise ConfigError(file, number, "syntax error: section header without ']'")
                self.section = rest[1:close]
                self.items.append(IniSection(self.section, file, number))
                # PgBouncer reads on after ']' as if a new line began there.
                pos = _skip(text, pos + close + 1, _SPACE)
                continue
            self._entry(file, number, rest)
            return

    def _entry(self, file: str, number: int, rest: str) -> None:
        if rest[0] == "'":
            close = rest.find("'", 1)
            if close < 0:
                raise ConfigError(file, number, "syntax error: unterminated quoted key")
            key = rest[1:close]
            if not key:
                raise ConfigError(file, number, "syntax error: empty quoted key")
            pos = close + 1
        else:
            pos = 0
            while pos < len(rest) and rest[pos] in _KEY_CHARS:
                pos += 1
            key = rest[:pos]
        pos = _skip(rest, pos, _BLANK)
        if pos >= len(rest) or rest[pos] != "=":
            shown = rest.rstrip(_SPACE)
            if key:
                message = f"syntax error: expected '=' after {key!r} in {shown!r}"
            else:
                message = f"syntax error: expected 'key = value', found {shown!r}"
            raise ConfigError(file, number, message)
        if not key:
            raise ConfigError(file, number, "syntax error: missing key before '='")
        value = rest[_skip(rest, pos + 1, _BLANK) :].rstrip(_SPACE)
        self.items.append(IniEntry(self.section, key, value, file, number))


def parse_ini(path: str | os.PathLike[str]) -> list[IniSection | IniEntry]:
    """Section headers and entries of a pgbouncer.ini, in file order, includes expanded.

    The dialect: leading white space is skipped; `;` or `#` starts a comment only at the start
    of a line; `[name]` opens a section (names are case sensitive); `key = value` with blanks
    around `=` and trailing white space dropped; keys are letters, digits and `_.-*`, or any text
    in single quotes; values are taken verbatim (no quotes, no escapes, no interpolation);
    `%include FILE` reads FILE (relative to the working directory) at that point.
    """
    reader = _Reader()
    reader.read(os.fspath(path), 0, None)
    return reader.items


def read_ini(path: str | os.PathLike[str]) -> list[IniEntry]:
    """The `key = value` entries of a pgbouncer.ini, in file order, includes expanded."""
    return [item for item in parse_ini(path) if isinstance(item, IniEntry)]
