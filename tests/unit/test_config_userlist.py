"""userlist.txt as PgBouncer reads it: quoted fields, doubled quotes, ';' comments."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgfunnel.config.ini import ConfigError
from pgfunnel.config.userlist import (
    MAX_PASSWORD,
    MAX_USERNAME,
    load_userlist,
    parse_userlist,
    secret_kind,
)

MD5 = "md545f2603610af569b6155c45067268c6b"  # user admin, password 1234
SCRAM = (
    "SCRAM-SHA-256$4096:3ttAUPyF1UePY0f8f6eXcQ==$"
    "ZqQlpAtjfRuUjJHFgOYA1tBTTsLgWCfbPAJ9y5j97Ks=:"
    "dA4o/ZaEXYpvyC9/Ay4Oeo8wgTHahQuKWUNfQF0NtAw="
)


def test_plain_md5_and_scram(tmp_path: Path) -> None:
    path = tmp_path / "userlist.txt"
    path.write_text(f'"alice" "secret"\n"admin" "{MD5}"\n"bob" "{SCRAM}"\n')
    assert load_userlist(path) == {"alice": "secret", "admin": MD5, "bob": SCRAM}


def test_doubled_quotes_stand_for_one() -> None:
    text = '"say ""hi""" "pa""ss"\n"""" ""\n'
    assert parse_userlist(text) == {'say "hi"': 'pa"ss', '"': ""}


def test_comments_blank_lines_and_extra_fields() -> None:
    text = (
        "; a comment\n"
        "\n"
        '   ; indented comment\n\t"alice"   "pw"   "anything else" ignored\n'
        '"bob"\t"pw2"; trailing text is ignored too\n'
        "\r\n"
        '"carol" "pw3"'  # no final newline
    )
    assert parse_userlist(text) == {"alice": "pw", "bob": "pw2", "carol": "pw3"}


def test_later_line_for_the_same_user_wins() -> None:
    assert parse_userlist('"a" "1"\n"a" "2"\n') == {"a": "2"}


def test_special_characters_are_kept() -> None:
    assert parse_userlist('"u;#\\" "p w;#\\\'"\n') == {"u;#\\": "p w;#\\'"}


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ('"a" "1"\n# hash comment\n', 2, "only ';' starts a comment"),
        ('"a" "1"\n\nalice secret\n', 3, 'expected "user" "password", found \'alice secret\''),
        ('"a" "1"\n"bob"\n', 2, "missing quoted password for user 'bob'"),
        ('"bob" secret\n', 1, "missing quoted password for user 'bob'"),
        ('"bob\n', 1, "unterminated quoted user name"),
        ('"bob" "secret\n"x" "y"\n', 1, "unterminated quoted password"),
        ('"bob" "a""\n', 1, "unterminated quoted password"),
    ],
)
def test_bad_lines_name_file_and_line(text: str, line: int, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_userlist(text, "users.txt")
    assert (info.value.file, info.value.line) == ("users.txt", line)
    assert message in info.value.message
    assert str(info.value).startswith(f"users.txt:{line}: ")


def test_length_limits_match_pgbouncer() -> None:
    longest_user = "u" * (MAX_USERNAME - 1)
    longest_password = "p" * (MAX_PASSWORD - 1)
    assert parse_userlist(f'"{longest_user}" "{longest_password}"') == {
        longest_user: longest_password
    }
    with pytest.raises(ConfigError, match="user name too long"):
        parse_userlist(f'"{"u" * MAX_USERNAME}" "p"')
    with pytest.raises(ConfigError, match="password too long"):
        parse_userlist(f'"u" "{"p" * MAX_PASSWORD}"')
    # The limit counts the field as written, doubled quotes included.
    with pytest.raises(ConfigError, match="user name too long"):
        parse_userlist('"' + '""' * (MAX_USERNAME // 2) + '" "p"')


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_userlist(tmp_path / "none.txt")
    assert info.value.line == 0
    assert "could not read auth_file: No such file or directory" in str(info.value)


@pytest.mark.parametrize(
    ("secret", "kind"),
    [
        ("secret", "plain"),
        ("", "plain"),
        (MD5, "md5"),
        ("md5short", "plain"),  # PgBouncer's rule: the "md5" prefix and 35 characters
        (SCRAM, "scram-sha-256"),
        ("scram-sha-256$x", "plain"),
    ],
)
def test_secret_kind(secret: str, kind: str) -> None:
    assert secret_kind(secret) == kind
