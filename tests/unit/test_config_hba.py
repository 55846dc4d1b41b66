"""The hba and ident file dialect: every rule kind, first match, @file includes, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgfunnel.config.hba import load_hba, load_ident, parse_hba, parse_ident
from pgfunnel.config.ini import ConfigError

RULES = """\
# type  database      user          address              method
local   all           peeruser                           peer map=local
local   admin,"Mixed Db" all                              trust
host    all           blocked       0.0.0.0/0            reject
hostssl all           all           10.0.0.0/8           cert
hostnossl sameuser    all           10.1.0.0/16          password
host    app           alice,bob     192.168.1.0 255.255.255.0 md5
host    all           all           ::1/128              scram-sha-256
host    replication   all           all                  trust
host    all           all           all                  scram-sha-256  # the rest
"""


def rules():  # type: ignore[no-untyped-def]
    return parse_hba(RULES, "/etc/pgfunnel/hba.conf")


def method_of(addr: str | None, db: str, user: str, tls: bool = False) -> str | None:
    rule = rules().match(addr, tls, db, user)
    return None if rule is None else f"{rule.method}@{rule.line}"


def test_every_rule_kind_and_first_match_wins() -> None:
    assert method_of(None, "x", "peeruser") == "peer@2"
    assert method_of(None, "admin", "anyone") == "trust@3"
    assert method_of(None, "Mixed Db", "anyone") == "trust@3"
    assert method_of(None, "other", "anyone") is None  # no local rule for it
    assert method_of("127.0.0.1", "x", "blocked") == "reject@4"
    assert method_of("10.2.3.4", "x", "u", tls=True) == "cert@5"
    assert method_of("10.1.2.3", "u", "u") == "password@6"  # sameuser
    assert method_of("10.1.2.3", "other", "u") == "scram-sha-256@10"
    # hostnossl is skipped over TLS: the earlier hostssl rule for 10/8 takes it.
    assert method_of("10.1.2.3", "u", "u", tls=True) == "cert@5"
    assert method_of("192.168.1.77", "app", "bob") == "md5@7"
    assert method_of("192.168.2.77", "app", "bob") == "scram-sha-256@10"
    assert method_of("::1", "x", "u") == "scram-sha-256@8"
    assert method_of("127.0.0.1", "app", "carol") == "scram-sha-256@10"


def test_where_names_file_and_line_and_map_option() -> None:
    rule = rules().match(None, False, "x", "peeruser")
    assert rule is not None
    assert rule.where == "/etc/pgfunnel/hba.conf:2"
    assert rule.map_name == "local"


def test_replication_keyword_matches_only_replication_connections() -> None:
    r = rules()
    rule = r.match("127.0.0.1", False, "replication", "u", replication=True)
    assert rule is not None and rule.line == 9
    # A database literally named "replication" is matched by the names, not by the keyword.
    plain = r.match("127.0.0.1", False, "replication", "u")
    assert plain is not None and plain.line == 10


def test_ipv4_client_on_a_dual_stack_socket_matches_v4_rules() -> None:
    assert method_of("::ffff:192.168.1.5", "app", "alice") == "md5@7"


def test_at_file_includes_relative_to_the_hba_file(tmp_path: Path) -> None:
    (tmp_path / "users.txt").write_text("alice, bob\n# comment\ncarol\n")
    (tmp_path / "dbs.txt").write_text("@more.txt\n")
    (tmp_path / "more.txt").write_text("sales\n")
    hba = tmp_path / "hba.conf"
    hba.write_text("host @dbs.txt @users.txt 127.0.0.1/32 md5\n")
    loaded = load_hba(hba)
    assert loaded.match("127.0.0.1", False, "sales", "carol") is not None
    assert loaded.match("127.0.0.1", False, "sales", "dave") is None
    assert loaded.match("127.0.0.1", False, "other", "alice") is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("hots all all 127.0.0.1/32 md5", "unknown connection type 'hots'"),
        ("host all all 127.0.0.1/32 ident", "unsupported authentication method 'ident'"),
        ("host all all 127.0.0.1/33 md5", "invalid address '127.0.0.1/33'"),
        ("host all all 127.0.0.1/8 md5", "invalid address"),  # host bits set
        ("host all all 127.0.0.1 md5", "invalid mask 'md5'"),
        ("host all all 127.0.0.1", "needs a /prefix or a mask"),
        ("host all all db.example.com md5", "host names are not supported"),
        ("host all all 10.0.0.0 255.0.0.0", "missing authentication method"),
        ("host all +admins 127.0.0.1/32 md5", "role membership (+name) is not supported"),
        ("host samerole all 127.0.0.1/32 md5", "samerole is not supported"),
        ("host all all 127.0.0.1/32 peer", "only supported on local sockets"),
        ("local all all md5 map=x", "map= applies only to peer and cert"),
        ("local all all peer clientcert=1", "unsupported option 'clientcert'"),
        ('local "all all peer', "unterminated quoted string"),
        ("local all,,x all peer", "unexpected ',' (an empty list item)"),
        ("local x, all", "too few fields"),  # a space after a comma continues the list
        ("local all", "too few fields"),
        ("host @missing.txt all 127.0.0.1/32 md5", "could not read @missing.txt"),
    ],
)
def test_errors_name_file_and_line(line: str, message: str, tmp_path: Path) -> None:
    hba = tmp_path / "hba.conf"
    hba.write_text(f"# first line\n\n{line}\n")
    with pytest.raises(ConfigError) as err:
        load_hba(hba)
    assert err.value.line == 3 and err.value.file == str(hba)
    assert message in err.value.message


def test_quoted_keywords_are_plain_names() -> None:
    # As in PostgreSQL, "all" in quotes is a database called all.
    r = parse_hba('local "all" all trust\n', "hba.conf")
    assert r.match(None, False, "all", "u") is not None
    assert r.match(None, False, "other", "u") is None


def test_ident_maps(tmp_path: Path) -> None:
    path = tmp_path / "ident.conf"
    path.write_text(
        "# map   system        postgres\n"
        "local   root          postgres\n"
        "local   /^(.*)@corp$  \\1\n"
        "any     alice         all\n"
    )
    ident = load_ident(path)
    assert ident.allows("local", "root", "postgres")
    assert not ident.allows("local", "root", "alice")
    assert ident.allows("local", "bob@corp", "bob")
    assert not ident.allows("local", "bob@corp", "alice")
    assert ident.allows("any", "alice", "whoever")
    assert not ident.allows("nomap", "root", "postgres")


@pytest.mark.parametrize(
    ("text", "message"),
    [("local root\n", "expected three fields"), ("m /(unclosed u\n", "invalid regular expression")],
)
def test_ident_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_ident("\n" + text, "ident.conf")
    assert err.value.line == 2 and message in err.value.message
