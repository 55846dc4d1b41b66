"""The `key=value key='quoted value'` strings of [databases], [users] and [peers] entries."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

__all__ = ["format_connstr", "parse_connstr"]

_SPACE: Final = " \t\n\v\f\r"


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _SPACE:
        pos += 1
    return pos


def parse_connstr(text: str) -> dict[str, str]:
    """Split a PgBouncer connection string into its parameters (a later duplicate wins).

    As PgBouncer reads it (this is not libpq): `key=value` pairs separated by white space,
    blanks allowed around `=`; a value runs to the next white space unless it starts with a
    single quote, in which case it runs to the closing quote and `''` stands for one quote
    (a backslash is an ordinary character). Empty values, even `''`, are refused.  Raises
    ValueError on malformed text.
    """
    params: dict[str, str] = {}
    pos = _skip(text, 0)
    while pos < len(text):
        start = pos
        while pos < len(text) and text[pos] != "=" and text[pos] not in _SPACE:
            pos += 1
        key = text[start:pos]
        pos = _skip(text, pos)
        if pos >= len(text) or text[pos] != "=":
            raise ValueError(f"syntax error in connection string: expected '=' after {key!r}")
        if not key:
            raise ValueError("syntax error in connection string: missing parameter name before '='")
        pos = _skip(text, pos + 1)
        if pos < len(text) and text[pos] == "'":
            chars: list[str] = []
            pos += 1
            while True:
                if pos >= len(text):
                    raise ValueError(
                        f"syntax error in connection string: unterminated quoted value for {key!r}"
                    )
                if text[pos] == "'":
                    if text[pos + 1 : pos + 2] != "'":
                        pos += 1
                        break
                    pos += 1
                chars.append(text[pos])
                pos += 1
            value = "".join(chars)
            # PgBouncer would silently eat the character after the closing quote; refusing it
            # catches typos such as host='a'port=1.
            if pos < len(text) and text[pos] not in _SPACE:
                raise ValueError(
                    f"syntax error in connection string: white space expected after the quoted "
                    f"value of {key!r}"
                )
        else:
            start = pos
            while pos < len(text) and text[pos] not in _SPACE:
                pos += 1
            value = text[start:pos]
        if not value:
            raise ValueError(f"syntax error in connection string: empty value for {key!r}")
        params[key] = value
        pos = _skip(text, pos)
    return params


def format_connstr(params: Mapping[str, str]) -> str:
    """The inverse of parse_connstr: quote a value when it holds white space or a quote."""
    parts = []
    for key, value in params.items():
        if not key or "=" in key or any(c in _SPACE for c in key):
            raise ValueError(f"cannot write parameter name {key!r} in a connection string")
        if not value:
            raise ValueError(f"cannot write an empty value for {key!r} in a connection string")
        if "'" in value or any(c in _SPACE for c in value):
            value = "'" + value.replace("'", "''") + "'"
        parts.append(f"{key}={value}")
    return " ".join(parts)
