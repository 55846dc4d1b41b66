"""The config as `pgfunnel serve` starts with it and RELOAD reads it: the ini reader's result,
with names that are not UTF-8 refused (file:line)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pgfunnel.config.ini import ConfigError
from pgfunnel.config.loader import Config, load_config
from pgfunnel.config.settings import SETTINGS

# Settings holding file system paths: any bytes the file system takes are fine there.
_PATH_SETTINGS = frozenset({"logfile", "pidfile", "resolv_conf"})


def load_checked(path: str) -> Config:
    """load_config, then check_utf8: what `serve` starts with and RELOAD reads."""
    config = load_config(path)
    check_utf8(config)
    return config


def check_utf8(config: Config) -> None:
    """Refuse names that are not UTF-8, with a ConfigError saying where.

    The ini reader keeps stray bytes as surrogate escapes; pgfunnel refuses them rather than
    half-support them: clients' startup parameters, log lines, metric labels, the status
    page and the console are UTF-8, so a latin-1 database name could never be asked for
    by a client, could not be told from another one in a metric label, and would be shown
    differently in each place. Checked: [databases] (names and every value), [users] names,
    the auth file (names and secrets), and every [pgbouncer] text setting but file paths."""

    def invalid(text: object) -> bool:
        return isinstance(text, str) and any("\udc80" <= ch <= "\udcff" for ch in text)

    def refuse(where: str, what: str, text: str) -> ConfigError:
        shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        file, _, line = where.rpartition(":")
        if not file or not line.isdigit():
            file, line = where or config.path, "0"
        return ConfigError(
            file,
            int(line),
            f"{what} '{shown}' is not valid UTF-8: pgfunnel reads names, connection strings "
            "and the auth file as UTF-8; write them in UTF-8",
        )

    for name, dbc in config.databases.items():
        if invalid(name):
            raise refuse(dbc.source, "database name", name)
        for f in dataclasses.fields(dbc):
            value = getattr(dbc, f.name)
            if f.name != "source" and invalid(value):
                raise refuse(dbc.source, f"database {name!r}: {f.name}", value)
    for name, uc in config.users.items():
        if invalid(name):
            raise refuse(uc.source, "user name", name)
    auth_file = str(config.settings.auth_file or config.path)
    for name, secret in config.userlist.items():
        for what, text in (("user name", name), (f"secret of user {name!r}", secret)):
            if invalid(text):
                raise refuse(_line_of(auth_file, text), f"auth file: {what}", text)
    for name in SETTINGS:
        value = config.settings.get(name)
        values = value if isinstance(value, tuple) else (value,)
        if name in _PATH_SETTINGS or name.endswith(("_file", "_dir")):
            continue
        for item in values:
            if invalid(item):
                raise refuse(config.setting_sources.get(name, ""), name, item)


def _line_of(path: str, text: str) -> str:
    """`path:line` of the first line holding `text` (for messages), or just `path`."""
    try:
        lines = Path(path).read_bytes().decode("utf-8", "surrogateescape").splitlines()
    except OSError:
        return path
    for number, line in enumerate(lines, 1):
        if text in line:
            return f"{path}:{number}"
    return path
