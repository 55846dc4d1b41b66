"""Times and numbers no pooler can hold (1e308 s, inf, nan, negative, past a C int) are the
same `file:line` / SET error as any other bad value, never an OverflowError."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgfunnel.admin.host import AdminError
from pgfunnel.config.ini import ConfigError
from pgfunnel.config.loader import load_config
from pgfunnel.config.settings import parse_seconds, parse_value
from pgfunnel.net.app import App

HUGE = ["1e308", "1.7976931348623157e308", "1e400", "9.3e12", "9223372036855"]
NOT_A_TIME = ["inf", "nan", "-inf", "-1", "-0.5", "Infinity", "1e", "5s"]


@pytest.mark.parametrize("raw", HUGE)
def test_huge_times_are_too_large(raw: str) -> None:
    with pytest.raises(ValueError, match="too large"):
        parse_seconds(raw)
    with pytest.raises(ValueError, match=rf"invalid value '{raw}' for client_login_timeout"):
        parse_value("client_login_timeout", raw)


@pytest.mark.parametrize("raw", NOT_A_TIME)
def test_inf_nan_and_negative_times_are_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="expected a number of seconds"):
        parse_seconds(raw)


def test_the_largest_time_still_fits() -> None:
    # 9223372036854 s is the last whole second below 2**63 microseconds (PgBouncer's usec_t).
    assert parse_seconds("9223372036854") == 9223372036854.0
    assert parse_seconds("1e-300") == 0.0


def _write(tmp_path: Path, body: str) -> Path:
    (tmp_path / "users.txt").write_text('"app" "pw"\n')
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text(f"{body}[pgbouncer]\nauth_file = {tmp_path / 'users.txt'}\n")
    return ini


@pytest.mark.parametrize(
    ("body", "line", "text"),
    [
        (
            "[databases]\n[pgbouncer]\nclient_login_timeout = 1e308\n",
            3,
            "invalid value '1e308' for client_login_timeout: too large",
        ),
        (
            "[databases]\nshop = host=x server_lifetime=1e308\n",
            2,
            "invalid server_lifetime: '1e308': too large",
        ),
        (
            "[users]\napp = query_timeout=1e999\n",
            2,
            "invalid query_timeout: '1e999': too large",
        ),
        (
            "[databases]\nshop = host=x pool_size=99999999999999999999\n",
            2,
            "invalid pool_size: '99999999999999999999' is out of range",
        ),
        (
            "[users]\napp = max_user_connections=2147483648\n",
            2,
            "invalid max_user_connections: '2147483648' is out of range",
        ),
    ],
)
def test_the_ini_names_file_and_line(tmp_path: Path, body: str, line: int, text: str) -> None:
    ini = _write(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_config(ini)
    assert (info.value.file, info.value.line) == (str(ini), line)
    assert text in info.value.message


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    ini = _write(tmp_path, "[databases]\nshop = host=127.0.0.1\n")
    loop = asyncio.new_event_loop()
    try:
        yield App(load_config(ini), loop)
    finally:
        loop.close()


@pytest.mark.parametrize("raw", [*HUGE, *NOT_A_TIME])
def test_console_set_is_a_set_error(app: App, raw: str) -> None:
    before = app.settings.client_login_timeout
    with pytest.raises(AdminError) as info:
        app.set_setting("client_login_timeout", raw)
    assert info.value.message.startswith(f"SET failed: invalid value '{raw}'")
    assert app.settings.client_login_timeout == before


def test_reload_with_a_huge_time_keeps_the_old_config(app: App, tmp_path: Path) -> None:
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text(ini.read_text() + "server_lifetime = 1e308\n")
    with pytest.raises(AdminError) as info:
        app.reload()
    assert f"{ini}:5" in str(info.value.detail)
    assert "too large" in str(info.value.detail)
    assert app.settings.server_lifetime == 3600.0
