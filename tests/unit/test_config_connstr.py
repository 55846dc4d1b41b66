"""Connection strings as PgBouncer's [databases] reads them (not libpq's rules)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgfunnel.config.connstr import format_connstr, parse_connstr


@pytest.mark.parametrize(
    ("text", "params"),
    [
        ("", {}),
        ("   ", {}),
        ("host=localhost", {"host": "localhost"}),
        (
            "host=db1 port=5433 dbname=bar user=app",
            {"host": "db1", "port": "5433", "dbname": "bar", "user": "app"},
        ),
        ("  host = db1\tport =5433  ", {"host": "db1", "port": "5433"}),
        ("password='has space'", {"password": "has space"}),
        ("password='it''s'", {"password": "it's"}),
        ("password=''''", {"password": "'"}),
        # A backslash is an ordinary character; only a doubled quote escapes one.
        (r"password='back\slash'", {"password": "back\\slash"}),
        (r"password=a\b", {"password": "a\\b"}),
        ("connect_query='SELECT 1; SET x = 1'", {"connect_query": "SELECT 1; SET x = 1"}),
        ("options=-c=x", {"options": "-c=x"}),
        ("password=a'b", {"password": "a'b"}),
        ("host=a host=b", {"host": "b"}),  # a later duplicate wins
        ("Host=a", {"Host": "a"}),  # names keep their case; the loader refuses unknown ones
        ("password=é'ü", {"password": "é'ü"}),
        # Blanks may follow '=', so an empty value swallows the next pair, as in PgBouncer.
        ("host= port=1", {"host": "port=1"}),
    ],
)
def test_parse(text: str, params: dict[str, str]) -> None:
    assert parse_connstr(text) == params


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("host", "expected '=' after 'host'"),
        ("host localhost", "expected '=' after 'host'"),
        ("=x", "missing parameter name"),
        ("host=", "empty value for 'host'"),
        ("host=''", "empty value for 'host'"),
        ("password='open", "unterminated quoted value for 'password'"),
        ("password='it\\'s'", "white space expected after the quoted value of 'password'"),
        ("host='a'port=1", "white space expected after the quoted value of 'host'"),
    ],
)
def test_malformed(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_connstr(text)
    assert message in str(info.value)
    assert str(info.value).startswith("syntax error in connection string")


def test_format_quotes_only_when_needed() -> None:
    assert format_connstr({"host": "h", "password": "a b", "x": "it's"}) == (
        "host=h password='a b' x='it''s'"
    )


@pytest.mark.parametrize(("key", "value"), [("", "v"), ("a b", "v"), ("a=b", "v"), ("k", "")])
def test_format_refuses_what_cannot_be_written(key: str, value: str) -> None:
    with pytest.raises(ValueError):
        format_connstr({key: value})


_KEY = st.text(alphabet=st.characters(blacklist_characters="= \t\n\r\v\f"), min_size=1)
_VALUE = st.text(min_size=1)


@given(st.dictionaries(_KEY, _VALUE, max_size=6))
def test_round_trip(params: dict[str, str]) -> None:
    assert parse_connstr(format_connstr(params)) == params


@given(st.text())
def test_parse_never_fails_otherwise(text: str) -> None:
    # Whatever the input, the answer is a dict or a ValueError: never another exception.
    with contextlib.suppress(ValueError):
        parse_connstr(text)
