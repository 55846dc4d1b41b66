"""load_config: sections, settings, [databases]/[users]/[peers], auth_file, error locations."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgfunnel.config.ini import ConfigError
from pgfunnel.config.loader import Config, DatabaseConfig, UserConfig, load_config
from pgfunnel.config.settings import Settings


def config(tmp_path: Path, text: str, name: str = "pgbouncer.ini") -> Config:
    path = tmp_path / name
    path.write_text(text)
    return load_config(path)


def failure(tmp_path: Path, text: str) -> ConfigError:
    path = tmp_path / "pgbouncer.ini"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.file == str(path)
    return info.value


# --- [pgbouncer] -------------------------------------------------------------------------------


def test_minimal_config_has_every_default(tmp_path: Path) -> None:
    cfg = config(tmp_path, "[pgbouncer]\n")
    assert cfg.settings == Settings(conffile=str(tmp_path / "pgbouncer.ini"))
    assert (cfg.databases, cfg.users, cfg.userlist, cfg.unsupported) == ({}, {}, {}, [])
    assert cfg.path == str(tmp_path / "pgbouncer.ini")


def test_settings_are_parsed_and_their_sources_kept(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1, ::1\n"
        "listen_port = 6000\n"
        "pool_mode = transaction\n"
        "server_reset_query = DISCARD ALL; -- kept\n"
        "query_wait_timeout = 2.5\n"
        "admin_users = alice bob\n"
        "log_connections = 0\n"
        "conffile = /etc/other.ini\n",
    )
    s = cfg.settings
    assert s.listen_addr == ("127.0.0.1", "::1")
    assert (s.listen_port, s.pool_mode, s.query_wait_timeout) == (6000, "transaction", 2.5)
    assert s.server_reset_query == "DISCARD ALL; -- kept"
    assert (s.admin_users, s.log_connections, s.conffile) == (
        ("alice", "bob"),
        False,
        "/etc/other.ini",
    )
    assert cfg.setting_sources["listen_port"] == f"{tmp_path / 'pgbouncer.ini'}:3"


def test_later_assignment_wins(tmp_path: Path) -> None:
    assert config(tmp_path, "[pgbouncer]\nlisten_port=1\nlisten_port=2\n").settings.listen_port == 2


def test_a_second_pgbouncer_header_resets_to_defaults_like_pgbouncer(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        "[pgbouncer]\nlisten_port = 7000\npool_mode = statement\n"
        "[databases]\n"
        "[pgbouncer]\npool_mode = transaction\n",
    )
    assert (cfg.settings.listen_port, cfg.settings.pool_mode) == (6432, "transaction")


def test_unknown_setting_names_file_line_and_key(tmp_path: Path) -> None:
    err = failure(tmp_path, "[pgbouncer]\nlisten_port = 1\nlisten_prot = 2\n")
    assert err.line == 3
    assert "unknown setting 'listen_prot' in [pgbouncer]" in str(err)


def test_setting_names_are_case_sensitive(tmp_path: Path) -> None:
    err = failure(tmp_path, "[pgbouncer]\nListen_Port = 1\n")
    assert (err.line, "unknown setting 'Listen_Port'" in err.message) == (2, True)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("listen_port = 64x", "invalid value '64x' for listen_port: expected an integer"),
        ("server_lifetime = 1h", "invalid value '1h' for server_lifetime: expected a number of"),
        ("log_connections = yes", "invalid value 'yes' for log_connections: expected an integer"),
        ("pool_mode = sessions", "invalid value 'sessions' for pool_mode: expected one of"),
    ],
)
def test_bad_value_names_file_line_key_value_and_expectation(
    tmp_path: Path, line: str, expected: str
) -> None:
    err = failure(tmp_path, f"[pgbouncer]\n\n{line}\n")
    assert str(err).startswith(f"{tmp_path / 'pgbouncer.ini'}:3: {expected}")


def test_unknown_section(tmp_path: Path) -> None:
    err = failure(tmp_path, "[pgbouncer]\n[database]\nfoo = host=x\n")
    assert err.line == 2
    assert "unknown section [database]" in err.message


def test_section_names_are_case_sensitive(tmp_path: Path) -> None:
    assert "unknown section [PgBouncer]" in failure(tmp_path, "[PgBouncer]\n").message


def test_pgbouncer_section_is_required(tmp_path: Path) -> None:
    err = failure(tmp_path, "[databases]\nfoo = host=x\n")
    assert (err.line, err.message) == (0, "no [pgbouncer] section")


def test_key_before_any_section(tmp_path: Path) -> None:
    err = failure(tmp_path, "listen_port = 1\n[pgbouncer]\n")
    assert (err.line, err.message) == (1, "'listen_port' appears before any [section]")


def test_dialect_errors_surface_unchanged(tmp_path: Path) -> None:
    err = failure(tmp_path, "[pgbouncer]\nthis line has no equals\n")
    assert err.line == 2


def test_include_relative_to_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "dbs.ini").write_text("[databases]\nfoo = host=db1\n")
    monkeypatch.chdir(tmp_path)
    cfg = config(tmp_path, "[pgbouncer]\n%include dbs.ini\n")
    assert cfg.databases["foo"].host == "db1"


# --- unsupported settings ----------------------------------------------------------------------


def test_unsupported_settings_are_listed_only_when_changed(tmp_path: Path) -> None:
    path = tmp_path / "pgbouncer.ini"
    cfg = config(
        tmp_path,
        "[pgbouncer]\n"
        "so_reuseport = 0\n"  # the default: nothing to report
        "so_reuseport = 1\n"
        "max_prepared_statements = 200\n"
        "tcp_keepidle = 30\n"
        "listen_port = 7000\n",  # supported
    )
    assert cfg.unsupported == [
        f"{path}:3: setting so_reuseport is not supported by pgfunnel yet; ignored",
        f"{path}:5: setting tcp_keepidle is not supported by pgfunnel yet; ignored",
    ]
    assert cfg.settings.so_reuseport is True  # parsed and kept, only not acted upon


def test_unsupported_database_user_and_peer_keys_are_listed(tmp_path: Path) -> None:
    path = tmp_path / "pgbouncer.ini"
    cfg = config(
        tmp_path,
        "[pgbouncer]\n"
        "[databases]\nfoo = host=x auth_user=au max_db_client_connections=3\n"
        "[users]\nbob = transaction_timeout=5\n"
        "[peers]\n1 = host=/tmp/p1\n",
    )
    assert cfg.unsupported == [
        f"{path}:3: [databases] foo: max_db_client_connections is not supported by pgfunnel "
        "yet; ignored",
        f"{path}:5: [users] bob: transaction_timeout is not supported by pgfunnel yet; ignored",
        f"{path}:7: [peers] 1: peering is not supported by pgfunnel yet; ignored",
    ]
    assert cfg.peers[1].host == "/tmp/p1" and cfg.peers[1].port == 6432


def test_host_lists_and_load_balance_hosts_are_listed_as_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "pgbouncer.ini"
    cfg = config(
        tmp_path,
        "[pgbouncer]\n[databases]\n"
        "multi = host=h1,h2 port=5433\n"
        "lb = host=h1 load_balance_hosts=disable\n"
        "one = host=h1 connect_query='SET search_path = app' application_name=app\n",
    )
    assert cfg.unsupported == [
        f"{path}:3: [databases] multi: a host list (host=h1,h2) is not supported by pgfunnel "
        "yet; server logins to it will fail, give one host",
        f"{path}:4: [databases] lb: load_balance_hosts is not supported by pgfunnel yet; ignored",
    ]  # connect_query and application_name are PgBouncer keys pgfunnel acts on


@pytest.mark.parametrize("line", ["auth_type = pam", "auth_type = ldap"])
def test_security_settings_that_cannot_be_honoured_stop_the_load(tmp_path: Path, line: str) -> None:
    err = failure(tmp_path, f"[pgbouncer]\n{line}\n")
    assert err.line == 2
    assert "would weaken security" in err.message


@pytest.mark.parametrize(
    ("lines", "line", "why"),
    [
        ("client_tls_sslmode = require", 2, "needs client_tls_key_file and client_tls_cert_file"),
        ("client_tls_sslmode = prefer", 2, "needs client_tls_key_file"),
        (
            "client_tls_sslmode = verify-full\nclient_tls_key_file = k\nclient_tls_cert_file = c",
            2,
            "client_tls_sslmode = verify-full needs client_tls_ca_file",
        ),
        ("auth_type = cert", 2, "auth_type = cert needs client TLS"),
        ("client_tls_protocols = tlsv1.4", 2, "unknown TLS protocol 'tlsv1.4'"),
        ("server_tls_protocols = ,", 2, "no TLS protocol given"),
        ("server_tls_key_file = k", 2, "server_tls_key_file and server_tls_cert_file go together"),
    ],
)
def test_tls_that_cannot_run_stops_the_load(
    tmp_path: Path, lines: str, line: int, why: str
) -> None:
    """Rather than serve in clear what was meant to be encrypted."""
    err = failure(tmp_path, f"[pgbouncer]\n{lines}\n")
    assert err.line == line
    assert why in err.message


@pytest.mark.parametrize(
    "line",
    [
        "auth_type = trust",
        "auth_type = any",
        "server_tls_sslmode = verify-full",
        "client_tls_protocols = tlsv1.1 TLSv1.3",
        "client_tls_sslmode = require\nclient_tls_key_file = k\nclient_tls_cert_file = c",
        "auth_type = cert\nclient_tls_sslmode = verify-ca\nclient_tls_key_file = k\n"
        "client_tls_cert_file = c\nclient_tls_ca_file = ca",
    ],
)
def test_security_settings_that_are_safe_load(tmp_path: Path, line: str) -> None:
    config(tmp_path, f"[pgbouncer]\n{line}\n")


# --- [databases] -------------------------------------------------------------------------------


def test_database_entries(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        "[databases]\n"
        "foodb =\n"
        "bardb = host=localhost dbname=bazdb\n"
        "forcedb = host=127.0.0.1 port=300 user=baz password='p w' client_encoding=UNICODE "
        "datestyle=ISO timezone=UTC application_name=app connect_query='SELECT 1' "
        "pool_size=5 min_pool_size=1 reserve_pool=2 max_db_connections=9 pool_mode=Transaction "
        "server_lifetime=30 load_balance_hosts=disable max_db_client_connections=50\n"
        "sock = host=/var/run/postgresql\n"
        "multi = host='h1, h2,h3'\n"
        "Case = host=x\n"
        "[pgbouncer]\n",
    )
    foodb = cfg.databases["foodb"]
    assert (foodb.host, foodb.port, foodb.dbname, foodb.user, foodb.password) == (
        None,
        5432,
        "foodb",
        None,
        None,
    )
    assert foodb.hosts == ()
    assert cfg.databases["bardb"].dbname == "bazdb"
    assert cfg.databases["forcedb"] == DatabaseConfig(
        name="forcedb",
        host="127.0.0.1",
        port=300,
        dbname="forcedb",
        user="baz",
        password="p w",
        pool_size=5,
        min_pool_size=1,
        reserve_pool=2,
        pool_mode="transaction",
        max_db_connections=9,
        client_encoding="UNICODE",
        datestyle="ISO",
        timezone="UTC",
        application_name="app",
        connect_query="SELECT 1",
        max_db_client_connections=50,
        server_lifetime=30.0,
        load_balance_hosts="disable",
    )
    assert cfg.databases["sock"].host == "/var/run/postgresql"
    assert cfg.databases["multi"].hosts == ("h1", "h2", "h3")
    # Database names are case sensitive.
    assert "Case" in cfg.databases and cfg.database("case") is None


def test_reserve_pool_size_is_the_new_spelling_of_reserve_pool(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        "[pgbouncer]\n[databases]\n"
        "a = reserve_pool_size=3\n"
        "b = reserve_pool=1 reserve_pool_size=4\n"
        "c = reserve_pool_size=4 reserve_pool=1\n",
    )
    assert [cfg.databases[n].reserve_pool for n in "abc"] == [3, 4, 1]


def test_negative_numbers_mean_not_set_like_pgbouncer(tmp_path: Path) -> None:
    cfg = config(tmp_path, "[pgbouncer]\n[databases]\na = pool_size=-1 server_lifetime=0\n")
    assert (cfg.databases["a"].pool_size, cfg.databases["a"].server_lifetime) == (None, None)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("host=x hots=y", "[databases] foo: unknown connection parameter 'hots'"),
        ("Host=x", "[databases] foo: unknown connection parameter 'Host'"),
        ("port=0", "[databases] foo: invalid port: '0'"),
        ("port=70000", "[databases] foo: invalid port: '70000'"),
        ("port=abc", "[databases] foo: invalid port: 'abc' is not an integer"),
        ("pool_size=many", "[databases] foo: invalid pool_size: 'many' is not an integer"),
        ("pool_mode=sometimes", "[databases] foo: invalid pool mode: 'sometimes'"),
        ("load_balance_hosts=random", "[databases] foo: invalid load_balance_hosts: 'random'"),
        ("server_lifetime=1h", "[databases] foo: invalid server_lifetime: '1h'"),
        ("host='unterminated", "[databases] foo: syntax error in connection string"),
        ("host=", "[databases] foo: syntax error in connection string: empty value"),
    ],
)
def test_bad_database_entries(tmp_path: Path, value: str, message: str) -> None:
    err = failure(tmp_path, f"[pgbouncer]\n[databases]\nfoo = {value}\n")
    assert err.line == 3
    assert err.message.startswith(message)


def test_admin_database_name_is_reserved(tmp_path: Path) -> None:
    err = failure(tmp_path, "[pgbouncer]\n[databases]\npgbouncer = host=x\n")
    assert (err.line, err.message) == (
        3,
        "database name 'pgbouncer' is reserved for the admin console",
    )


def test_quoted_database_name(tmp_path: Path) -> None:
    cfg = config(tmp_path, "[pgbouncer]\n[databases]\n'my db' = dbname=real\n")
    assert cfg.databases["my db"].dbname == "real"


def test_star_fallback(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        "[pgbouncer]\n[databases]\nexact = host=e\n* = host=fallback port=5433 pool_size=3\n",
    )
    assert cfg.database("exact") == cfg.databases["exact"]
    bar = cfg.database("bar")
    assert bar == DatabaseConfig(name="bar", host="fallback", port=5433, dbname="bar", pool_size=3)
    assert cfg.database("pgbouncer") is None  # the admin console is never routed to a server
    assert cfg.autodb_connstr == "host=fallback port=5433 pool_size=3"


def test_star_fallback_with_fixed_dbname(tmp_path: Path) -> None:
    cfg = config(tmp_path, "[pgbouncer]\n[databases]\n* = host=h dbname=shared\n")
    got = cfg.database("anything")
    assert got is not None and (got.name, got.dbname) == ("anything", "shared")


def test_no_fallback_without_star(tmp_path: Path) -> None:
    assert config(tmp_path, "[pgbouncer]\n[databases]\na = host=h\n").database("b") is None


def test_equality_ignores_where_an_entry_was_written(tmp_path: Path) -> None:
    a = config(tmp_path, "[pgbouncer]\n[databases]\nfoo = host=h\n", "a.ini")
    b = config(tmp_path, "[pgbouncer]\n\n\n[databases]\nfoo = host=h\n", "b.ini")
    assert a.databases["foo"] == b.databases["foo"]
    assert a.databases["foo"].source != b.databases["foo"].source


# --- [users] and [peers] -----------------------------------------------------------------------


def test_user_entries(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        "[pgbouncer]\n[users]\n"
        "alice = pool_mode=transaction pool_size=3 reserve_pool_size=1 max_user_connections=7 "
        "max_user_client_connections=9 query_timeout=1.5 idle_transaction_timeout=10 "
        "client_idle_timeout=60 transaction_timeout=30\n"
        "bob =\n",
    )
    assert cfg.users["alice"] == UserConfig(
        name="alice",
        pool_mode="transaction",
        pool_size=3,
        max_user_connections=7,
        reserve_pool_size=1,
        max_user_client_connections=9,
        query_timeout=1.5,
        idle_transaction_timeout=10.0,
        transaction_timeout=30.0,
        client_idle_timeout=60.0,
    )
    assert cfg.users["bob"] == UserConfig(name="bob")


def test_bad_user_entry(tmp_path: Path) -> None:
    err = failure(tmp_path, "[pgbouncer]\n[users]\nbob = dbname=x\n")
    assert (err.line, err.message.startswith("[users] bob: unknown user parameter 'dbname'")) == (
        3,
        True,
    )


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("0 = host=h", "[peers] 0: a peer id must be a number from 1 to 65535"),
        ("abc = host=h", "[peers] abc: a peer id must be a number from 1 to 65535"),
        ("1 = port=1", "[peers] 1: host is required"),
        ("1 = host=h dbname=x", "[peers] 1: unknown peer parameter 'dbname'"),
    ],
)
def test_bad_peer_entries(tmp_path: Path, entry: str, message: str) -> None:
    err = failure(tmp_path, f"[pgbouncer]\n[peers]\n{entry}\n")
    assert err.line == 3 and err.message.startswith(message)


# --- auth_file ---------------------------------------------------------------------------------


def test_auth_file_is_read_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "users.txt").write_text('"alice" "secret"\n')
    monkeypatch.chdir(tmp_path)
    cfg = config(tmp_path / "conf", "[pgbouncer]\nauth_file = users.txt\n")
    assert cfg.userlist == {"alice": "secret"}


def test_missing_auth_file_points_at_the_setting(tmp_path: Path) -> None:
    err = failure(tmp_path, f"[pgbouncer]\n\nauth_file = {tmp_path / 'none.txt'}\n")
    assert err.line == 3
    assert err.message == "could not read auth_file: No such file or directory"


def test_broken_auth_file_points_at_its_own_line(tmp_path: Path) -> None:
    users = tmp_path / "users.txt"
    users.write_text('"alice" "secret"\n# not a comment for PgBouncer\n')
    path = tmp_path / "pgbouncer.ini"
    path.write_text(f"[pgbouncer]\nauth_file = {users}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.file, info.value.line) == (str(users), 2)


def test_auth_type_hba_reads_the_hba_and_ident_files(tmp_path: Path) -> None:
    (tmp_path / "hba.conf").write_text("local all all peer map=m\nhost all all 0.0.0.0/0 md5\n")
    (tmp_path / "ident.conf").write_text("m root postgres\n")
    cfg = config(
        tmp_path,
        f"[pgbouncer]\nauth_type = hba\nauth_hba_file = {tmp_path / 'hba.conf'}\n"
        f"auth_ident_file = {tmp_path / 'ident.conf'}\n",
    )
    assert cfg.hba is not None and [r.method for r in cfg.hba.rules] == ["peer", "md5"]
    assert cfg.ident is not None and cfg.ident.allows("m", "root", "postgres")


def test_auth_type_hba_without_a_file_names_the_auth_type_line(tmp_path: Path) -> None:
    err = failure(tmp_path, "[pgbouncer]\nlisten_port = 1\nauth_type = hba\n")
    assert err.line == 3 and "auth_hba_file" in err.message


def test_hba_errors_and_unreadable_files_say_where(tmp_path: Path) -> None:
    (tmp_path / "hba.conf").write_text("local all all peer\nhost all all 1.2.3.4/40 md5\n")
    with pytest.raises(ConfigError) as info:
        config(tmp_path, f"[pgbouncer]\nauth_type = hba\nauth_hba_file = {tmp_path}/hba.conf\n")
    assert (info.value.file, info.value.line) == (str(tmp_path / "hba.conf"), 2)
    err = failure(tmp_path, "[pgbouncer]\nauth_type = hba\nauth_hba_file = /nonexistent/hba\n")
    assert err.line == 3 and "could not read auth_hba_file" in err.message


def test_hba_map_must_exist_in_the_ident_file(tmp_path: Path) -> None:
    (tmp_path / "hba.conf").write_text("\nlocal all all peer map=missing\n")
    with pytest.raises(ConfigError) as info:
        config(tmp_path, f"[pgbouncer]\nauth_type = hba\nauth_hba_file = {tmp_path}/hba.conf\n")
    assert (info.value.file, info.value.line) == (str(tmp_path / "hba.conf"), 2)
    assert "map=missing" in info.value.message
