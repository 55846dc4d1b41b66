"""Configuration: the pgbouncer.ini dialect, the settings table, userlist.txt."""

from pgfunnel.config.connstr import format_connstr, parse_connstr
from pgfunnel.config.ini import ConfigError, IniEntry, IniSection, parse_ini, read_ini
from pgfunnel.config.loader import (
    ADMIN_DATABASE,
    AUTODB,
    Config,
    DatabaseConfig,
    PeerConfig,
    UserConfig,
    load_config,
)
from pgfunnel.config.settings import (
    SETTINGS,
    Settings,
    SettingSpec,
    format_value,
    parse_value,
    settings_markdown,
)
from pgfunnel.config.userlist import load_userlist, parse_userlist, secret_kind

__all__ = [
    "ADMIN_DATABASE",
    "AUTODB",
    "SETTINGS",
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "IniEntry",
    "IniSection",
    "PeerConfig",
    "SettingSpec",
    "Settings",
    "UserConfig",
    "format_connstr",
    "format_value",
    "load_config",
    "load_userlist",
    "parse_connstr",
    "parse_ini",
    "parse_userlist",
    "parse_value",
    "read_ini",
    "secret_kind",
    "settings_markdown",
]
