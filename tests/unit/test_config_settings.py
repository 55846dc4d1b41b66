"""The settings table: PgBouncer 1.25's names, defaults and reload rules; parsing and SHOW text."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgfunnel.config.settings import (
    SETTINGS,
    Settings,
    format_value,
    parse_seconds,
    parse_value,
    settings_markdown,
)

# Every key of PgBouncer 1.25's bouncer_params table (src/main.c), service_name included.
PGBOUNCER_125_SETTINGS = {
    "admin_users", "application_name_add_host", "auth_dbname", "auth_file", "auth_hba_file",
    "auth_ident_file", "auth_ldap_options", "auth_query", "auth_type", "auth_user",
    "autodb_idle_timeout", "cancel_wait_timeout", "client_idle_timeout", "client_login_timeout",
    "client_tls13_ciphers", "client_tls_ca_file", "client_tls_cert_file", "client_tls_ciphers",
    "client_tls_dheparams", "client_tls_ecdhcurve", "client_tls_key_file",
    "client_tls_protocols", "client_tls_sslmode", "conffile", "default_pool_size",
    "disable_pqexec", "dns_max_ttl", "dns_nxdomain_ttl", "dns_zone_check_period",
    "idle_transaction_timeout", "ignore_startup_parameters", "job_name", "listen_addr",
    "listen_backlog", "listen_port", "log_connections", "log_disconnections",
    "log_pooler_errors", "log_stats", "logfile", "max_client_conn", "max_db_client_connections",
    "max_db_connections", "max_packet_size", "max_prepared_statements",
    "max_user_client_connections", "max_user_connections", "min_pool_size", "peer_id",
    "pidfile", "pkt_buf", "pool_mode", "query_timeout", "query_wait_notify",
    "query_wait_timeout", "reserve_pool_size", "reserve_pool_timeout", "resolv_conf",
    "sbuf_loopcnt", "scram_iterations", "server_check_delay", "server_check_query",
    "server_connect_timeout", "server_fast_close", "server_idle_timeout", "server_lifetime",
    "server_login_retry", "server_reset_query", "server_reset_query_always",
    "server_round_robin", "server_tls13_ciphers", "server_tls_ca_file", "server_tls_cert_file",
    "server_tls_ciphers", "server_tls_key_file", "server_tls_protocols", "server_tls_sslmode",
    "service_name", "so_reuseport", "stats_period", "stats_users", "suspend_timeout", "syslog",
    "syslog_facility", "syslog_ident", "tcp_defer_accept", "tcp_keepalive", "tcp_keepcnt",
    "tcp_keepidle", "tcp_keepintvl", "tcp_socket_buffer", "tcp_user_timeout",
    "track_extra_parameters", "transaction_timeout", "unix_socket_dir", "unix_socket_group",
    "unix_socket_mode", "user", "verbose",
}  # fmt: skip

PGFUNNEL_SETTINGS = {"metrics_addr", "metrics_port", "pooling_hazards"}

# The settings pgfunnel implements: (name, typed default, SHOW CONFIG default text), the
# defaults as PgBouncer 1.25 documents them (doc/config.md) and spells them (src/main.c).
IMPLEMENTED_DEFAULTS: list[tuple[str, object, str]] = [
    ("listen_addr", (), ""),
    ("listen_port", 6432, "6432"),
    ("listen_backlog", 128, "128"),
    ("unix_socket_dir", "/tmp", "/tmp"),
    ("unix_socket_mode", 0o777, "0777"),
    ("auth_type", "md5", "md5"),
    ("auth_file", "", ""),
    ("auth_hba_file", "", ""),
    ("auth_ident_file", "", ""),
    ("auth_user", "", ""),
    ("auth_dbname", "", ""),
    (
        "auth_query",
        "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END "
        "FROM pg_authid WHERE rolname=$1 AND rolcanlogin",
        "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END "
        "FROM pg_authid WHERE rolname=$1 AND rolcanlogin",
    ),
    ("admin_users", (), ""),
    ("stats_users", (), ""),
    ("pool_mode", "session", "session"),
    ("max_client_conn", 100, "100"),
    ("default_pool_size", 20, "20"),
    ("min_pool_size", 0, "0"),
    ("reserve_pool_size", 0, "0"),
    ("reserve_pool_timeout", 5.0, "5"),
    ("max_db_connections", 0, "0"),
    ("max_user_connections", 0, "0"),
    ("server_lifetime", 3600.0, "3600"),
    ("server_idle_timeout", 600.0, "600"),
    ("server_connect_timeout", 15.0, "15"),
    ("server_login_retry", 15.0, "15"),
    ("server_reset_query", "DISCARD ALL", "DISCARD ALL"),
    ("server_reset_query_always", False, "0"),
    ("server_check_query", "<empty>", "<empty>"),
    ("server_check_delay", 30.0, "30"),
    ("query_timeout", 0.0, "0"),
    ("query_wait_timeout", 120.0, "120"),
    ("client_idle_timeout", 0.0, "0"),
    ("client_login_timeout", 60.0, "60"),
    ("idle_transaction_timeout", 0.0, "0"),
    ("ignore_startup_parameters", (), ""),
    ("max_packet_size", 2147483647, "2147483647"),
    ("max_prepared_statements", 200, "200"),
    ("logfile", "", ""),
    ("pidfile", "", ""),
    ("log_connections", True, "1"),
    ("log_disconnections", True, "1"),
    ("log_pooler_errors", True, "1"),
    ("verbose", 0, "0"),
    ("application_name_add_host", False, "0"),
    ("stats_period", 60, "60"),
    ("user", "", ""),
    ("conffile", "", ""),
    ("query_wait_notify", 5, "5"),
    ("suspend_timeout", 10.0, "10"),
    ("metrics_addr", "", ""),
    ("metrics_port", 9127, "9127"),
    ("track_extra_parameters", ("IntervalStyle",), "IntervalStyle"),
    ("pooling_hazards", "warn", "warn"),
    # issue 15: TLS in the switch, with PgBouncer's defaults
    ("client_tls_sslmode", "disable", "disable"),
    ("client_tls_key_file", "", ""),
    ("client_tls_cert_file", "", ""),
    ("client_tls_ca_file", "", ""),
    ("client_tls_protocols", "secure", "secure"),
    ("client_tls_ciphers", "default", "default"),
    ("client_tls13_ciphers", "", ""),
    ("client_tls_ecdhcurve", "auto", "auto"),
    ("client_tls_dheparams", "auto", "auto"),
    ("server_tls_sslmode", "prefer", "prefer"),
    ("server_tls_ca_file", "", ""),
    ("server_tls_key_file", "", ""),
    ("server_tls_cert_file", "", ""),
    ("server_tls_protocols", "secure", "secure"),
    ("server_tls_ciphers", "default", "default"),
    ("server_tls13_ciphers", "", ""),
]
IMPLEMENTED = {name for name, _, _ in IMPLEMENTED_DEFAULTS}

# PgBouncer's CF_NO_RELOAD settings: a RELOAD does not change them.
NOT_RELOADABLE = {
    "disable_pqexec", "job_name", "listen_addr", "listen_backlog", "listen_port", "pidfile",
    "pkt_buf", "resolv_conf", "service_name", "so_reuseport", "track_extra_parameters",
    "unix_socket_dir", "unix_socket_group", "unix_socket_mode", "user",
}  # fmt: skip


def test_every_pgbouncer_125_setting_is_in_the_table() -> None:
    assert set(SETTINGS) == PGBOUNCER_125_SETTINGS | PGFUNNEL_SETTINGS


def test_table_is_sorted_like_show_config() -> None:
    assert list(SETTINGS) == sorted(SETTINGS)


@pytest.mark.parametrize(("name", "default", "text"), IMPLEMENTED_DEFAULTS)
def test_implemented_defaults_match_pgbouncer(name: str, default: object, text: str) -> None:
    spec = SETTINGS[name]
    assert spec.default == default
    assert type(spec.default) is type(default)
    assert getattr(Settings(), name) == default
    assert spec.default_text == text
    assert spec.supported


def test_only_implemented_settings_are_marked_supported() -> None:
    assert {name for name, spec in SETTINGS.items() if spec.supported} == IMPLEMENTED


def test_reloadable_flags_match_pgbouncer() -> None:
    not_reloadable = {name for name, spec in SETTINGS.items() if not spec.reloadable}
    assert not_reloadable == NOT_RELOADABLE | {"metrics_addr", "metrics_port"}


@pytest.mark.parametrize(
    ("name", "default"),
    [
        ("query_wait_notify", 5),
        ("server_tls_sslmode", "prefer"),
        ("client_tls_sslmode", "disable"),
        ("tcp_keepalive", True),
        ("cancel_wait_timeout", 10.0),
        ("suspend_timeout", 10.0),
        ("autodb_idle_timeout", 3600.0),
        ("scram_iterations", 4096),
        ("pkt_buf", 4096),
        ("sbuf_loopcnt", 5),
        ("job_name", "pgbouncer"),
        ("syslog_facility", "daemon"),
        ("client_tls_protocols", "secure"),
        ("client_tls_ciphers", "default"),
    ],
)
def test_other_defaults_match_pgbouncer(name: str, default: object) -> None:
    assert SETTINGS[name].default == default


def test_metrics_defaults() -> None:
    assert (Settings().metrics_addr, Settings().metrics_port) == ("", 9127)


def test_kinds() -> None:
    kinds = {name: spec.kind for name, spec in SETTINGS.items()}
    assert kinds["listen_port"] == "int"
    assert kinds["server_lifetime"] == "time"
    assert kinds["log_connections"] == "bool"
    assert kinds["auth_type"] == "enum"
    assert kinds["admin_users"] == "list"
    assert kinds["listen_addr"] == "list"
    assert kinds["logfile"] == "str"
    assert SETTINGS["auth_type"].choices == (
        "cert", "md5", "scram-sha-256", "plain", "trust", "any", "hba", "pam", "ldap"
    )  # fmt: skip


def test_every_setting_is_documented_on_one_line() -> None:
    for spec in SETTINGS.values():
        assert spec.doc.strip() and "\n" not in spec.doc, spec.name


# --- parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "raw", "value"),
    [
        ("listen_port", "6000", 6000),
        ("listen_port", "+6000", 6000),
        ("listen_port", "0x1770", 6000),  # strtol base 0: hex ...
        ("unix_socket_mode", "0700", 0o700),  # ... and a leading 0 means octal
        ("unix_socket_mode", "0", 0),
        ("verbose", "-1", -1),
        ("max_packet_size", "4294967295", 4294967295),
        ("log_connections", "0", False),
        ("log_connections", "1", True),
        ("log_connections", "2", True),  # a C int: any non-zero value is on
        ("query_timeout", "0.5", 0.5),
        ("query_timeout", "30", 30.0),
        ("query_timeout", "1e3", 1000.0),
        ("query_timeout", ".25", 0.25),
        ("query_timeout", "1.001", 1.001),
        ("query_timeout", "0.0000004", 0.0),  # whole microseconds, like PgBouncer
        ("pool_mode", "Transaction", "transaction"),  # enum values ignore case
        ("auth_type", "SCRAM-SHA-256", "scram-sha-256"),
        ("admin_users", "alice, bob ,carol\tdave", ("alice", "bob", "carol", "dave")),
        ("admin_users", "", ()),
        ("listen_addr", "*", ("*",)),
        ("server_reset_query", "DISCARD ALL; -- x", "DISCARD ALL; -- x"),
    ],
)
def test_parse_value(name: str, raw: str, value: object) -> None:
    got = parse_value(name, raw)
    assert got == value
    assert type(got) is type(value)


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("listen_port", "", "expected an integer"),
        ("listen_port", "abc", "expected an integer"),
        ("listen_port", "12x", "expected an integer"),
        ("listen_port", "1.5", "expected an integer"),
        ("listen_port", "08", "expected an integer"),  # not octal, and strtol stops at 8
        ("listen_port", "0x", "expected an integer"),
        ("listen_port", "2147483648", "expected an integer from -2147483648 to 2147483647"),
        ("max_packet_size", "-1", "expected an integer from 0 to 4294967295"),
        ("max_packet_size", "4294967296", "expected an integer from 0 to 4294967295"),
        ("log_connections", "yes", "expected an integer (0 = off, 1 = on)"),
        ("log_connections", "on", "expected an integer (0 = off, 1 = on)"),
        ("log_connections", "true", "expected an integer (0 = off, 1 = on)"),
        ("log_connections", "99999999999", "out of range"),
        ("query_timeout", "5s", "no unit suffix"),
        ("query_timeout", "1min", "no unit suffix"),
        ("query_timeout", "-1", "expected a number of seconds"),
        ("query_timeout", "", "expected a number of seconds"),
        ("query_timeout", "inf", "expected a number of seconds"),
        ("query_timeout", "nan", "expected a number of seconds"),
        ("query_timeout", "1_000", "expected a number of seconds"),
        ("query_timeout", "1e300", "too large"),
        ("query_timeout", "\u0665", "expected a number of seconds"),  # only ASCII digits
        ("listen_port", "\u0665", "expected an integer"),
        ("pool_mode", "sessions", "expected one of session, transaction, statement"),
        ("auth_type", "password", "expected one of cert, md5, scram-sha-256"),
        ("client_tls_sslmode", "on", "expected one of disable, allow, prefer"),
    ],
)
def test_bad_values_are_refused_with_a_clear_message(name: str, raw: str, expected: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_value(name, raw)
    message = str(info.value)
    assert message.startswith(f"invalid value {raw!r} for {name}: ")
    assert expected in message


def test_unknown_setting_name() -> None:
    with pytest.raises(KeyError, match="unknown setting: nope"):
        parse_value("nope", "1")
    with pytest.raises(KeyError):
        format_value("Listen_Port", 1)


def test_parse_seconds_directly() -> None:
    assert parse_seconds("2.5") == 2.5
    with pytest.raises(ValueError):
        parse_seconds("2.5s")


# --- SHOW CONFIG text --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "text"),
    [
        ("listen_port", 6432, "6432"),
        ("unix_socket_mode", 0o777, "511"),  # PgBouncer prints the int with %d
        ("query_timeout", 0.0, "0"),
        ("query_timeout", 0.5, "0.5"),
        ("server_lifetime", 3600.0, "3600"),
        ("server_lifetime", 1e6, "1e+06"),  # %g, as in PgBouncer
        ("log_connections", True, "1"),
        ("log_connections", False, "0"),
        ("pool_mode", "transaction", "transaction"),
        ("admin_users", ("a", "b"), "a,b"),
        ("admin_users", (), ""),
        ("auth_query", "SELECT 1", "SELECT 1"),
    ],
)
def test_format_value(name: str, value: object, text: str) -> None:
    assert format_value(name, value) == text


@pytest.mark.parametrize(
    ("name", "value"),
    [("listen_port", "6432"), ("listen_port", True), ("query_timeout", "1"), ("logfile", 3)],
)
def test_format_value_refuses_the_wrong_type(name: str, value: object) -> None:
    with pytest.raises(TypeError):
        format_value(name, value)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_every_default_round_trips_through_its_text(name: str) -> None:
    spec = SETTINGS[name]
    assert parse_value(name, format_value(name, spec.default)) == spec.default


@given(st.integers(min_value=-(2**31), max_value=2**31 - 1))
def test_int_round_trip(value: int) -> None:
    assert parse_value("verbose", format_value("verbose", value)) == value


@given(st.integers(min_value=0, max_value=10**12))
def test_time_round_trip_in_microseconds(usec: int) -> None:
    seconds = usec / 1_000_000
    text = format_value("query_timeout", seconds)
    # %g keeps six significant digits, as PgBouncer's does; the text parses back to that value.
    assert parse_value("query_timeout", text) == pytest.approx(seconds, rel=1e-5)
    assert format_value("query_timeout", parse_value("query_timeout", text)) == text


@given(
    st.lists(
        st.text(alphabet=st.characters(blacklist_characters=", \t\n\r\v\f"), min_size=1),
        max_size=5,
    )
)
def test_list_round_trip(names: list[str]) -> None:
    value = tuple(names)
    assert parse_value("admin_users", format_value("admin_users", value)) == value


# --- the Settings object -----------------------------------------------------------------------


def test_with_values_replaces_and_keeps_the_rest() -> None:
    base = Settings()
    new = base.with_values({"listen_port": 7000, "pool_mode": "transaction"})
    assert (new.listen_port, new.pool_mode, new.max_client_conn) == (7000, "transaction", 100)
    assert base.listen_port == 6432
    assert new.get("listen_port") == 7000


def test_with_values_refuses_unknown_names() -> None:
    with pytest.raises(KeyError, match="nope"):
        Settings().with_values({"nope": 1})
    with pytest.raises(KeyError):
        Settings().get("nope")


def test_settings_are_frozen() -> None:
    settings: Any = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.listen_port = 1


def test_markdown_lists_every_setting_once() -> None:
    table = settings_markdown()
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == list(SETTINGS)
    assert "| `unix_socket_mode` | `0777` | no | yes |" in table
    assert "| `auth_file` | *(empty)* | yes | yes |" in table
