"""Turn a pgbouncer.ini (and its auth_file) into one immutable Config, or a file:line error."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from pgfunnel.config.connstr import parse_connstr
from pgfunnel.config.hba import HbaRules, IdentMap, load_hba, load_ident
from pgfunnel.config.ini import ConfigError, IniEntry, IniSection, parse_ini
from pgfunnel.config.settings import SETTINGS, Settings, parse_seconds, parse_value
from pgfunnel.config.tls import problems as tls_problems
from pgfunnel.config.userlist import load_userlist

__all__ = [
    "ADMIN_DATABASE",
    "AUTODB",
    "Config",
    "DatabaseConfig",
    "PeerConfig",
    "UserConfig",
    "load_config",
]

# The admin console's database name; PgBouncer refuses it as a [databases] key.
ADMIN_DATABASE: Final = "pgbouncer"
AUTODB: Final = "*"

_SECTIONS: Final = ("pgbouncer", "databases", "users", "peers")
_POOL_MODES: Final = ("session", "transaction", "statement")
_LOAD_BALANCE: Final = ("disable", "round-robin")
_INT_RE = re.compile(r"[+-]?[0-9]+")

# Values PgBouncer accepts but pgfunnel cannot honour without silently weakening security:
# these stop the load instead of being listed as ignored.
_FAIL_CLOSED: Final[dict[str, tuple[str, ...]]] = {
    "auth_type": ("pam", "ldap"),
}
# Per-database and per-user keys that are parsed but have no effect in pgfunnel yet.
# load_balance_hosts only chooses among the hosts of a host list, which is not supported yet.
_DB_UNSUPPORTED: Final = (
    "max_db_client_connections",
    "load_balance_hosts",
)
_USER_UNSUPPORTED: Final = ("transaction_timeout", "max_user_client_connections")


@dataclass(frozen=True)
class DatabaseConfig:
    """One [databases] entry (or the `*` fallback made concrete for one name).

    `None` means "not set here: use the user's or the global setting". `host` None means a Unix
    socket in `unix_socket_dir`; a host starting with `/` is a socket directory and one starting
    with `@` an abstract socket; a comma-separated list names several hosts.
    """

    name: str
    host: str | None = None
    port: int = 5432
    dbname: str = ""
    user: str | None = None
    password: str | None = None
    pool_size: int | None = None
    min_pool_size: int | None = None
    reserve_pool: int | None = None
    pool_mode: str | None = None
    max_db_connections: int | None = None
    client_encoding: str | None = None
    datestyle: str | None = None
    timezone: str | None = None
    application_name: str | None = None
    connect_query: str | None = None
    auth_user: str | None = None
    auth_dbname: str | None = None
    auth_query: str | None = None
    max_db_client_connections: int | None = None
    server_lifetime: float | None = None
    load_balance_hosts: str = "round-robin"
    # Where the entry was written, for messages; not part of equality, so RELOAD can compare.
    source: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.dbname:
            object.__setattr__(self, "dbname", self.name)

    @property
    def hosts(self) -> tuple[str, ...]:
        """The host list (empty for the default Unix socket)."""
        if self.host is None:
            return ()
        return tuple(h.strip() for h in self.host.split(",") if h.strip())


@dataclass(frozen=True)
class UserConfig:
    """One [users] entry; `None` means "not set here"."""

    name: str
    pool_mode: str | None = None
    pool_size: int | None = None
    max_user_connections: int | None = None
    reserve_pool_size: int | None = None
    max_user_client_connections: int | None = None
    query_timeout: float | None = None
    idle_transaction_timeout: float | None = None
    transaction_timeout: float | None = None
    client_idle_timeout: float | None = None
    source: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True)
class PeerConfig:
    """One [peers] entry (peering is parsed for compatibility, not implemented)."""

    peer_id: int
    host: str
    port: int = 6432
    pool_size: int | None = None
    source: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True)
class Config:
    """Everything one load of a configuration file produced."""

    path: str
    settings: Settings
    databases: dict[str, DatabaseConfig]
    users: dict[str, UserConfig]
    userlist: dict[str, str]
    unsupported: list[str]
    peers: dict[int, PeerConfig] = field(default_factory=dict)
    # The `*` entry's connection string, kept raw so database() can apply it to any name.
    autodb_connstr: str | None = None
    # "file:line" of the assignment each [pgbouncer] setting got its value from.
    setting_sources: dict[str, str] = field(default_factory=dict)
    # auth_hba_file (read when auth_type is hba) and auth_ident_file, parsed.
    hba: HbaRules | None = None
    ident: IdentMap | None = None

    def database(self, name: str) -> DatabaseConfig | None:
        """The entry for a client-side database name: the exact one, else the `*` fallback
        with dbname defaulting to `name`, else None. The admin database is never returned."""
        if name == ADMIN_DATABASE:
            return None
        found = self.databases.get(name)
        if found is not None:
            return found
        if self.autodb_connstr is None:
            return None
        auto = self.databases[AUTODB]
        return _database(name, parse_connstr(self.autodb_connstr), auto.source)


def _int(value: str, what: str) -> int:
    if _INT_RE.fullmatch(value) is None:
        raise ValueError(f"invalid {what}: {value!r} is not an integer")
    number = int(value)
    # PgBouncer keeps these in a C int; a larger one would reach metrics and SHOW as a number
    # no client or float can hold.
    if not -(2**31) <= number < 2**31:
        raise ValueError(f"invalid {what}: {value!r} is out of range")
    return number


def _opt_int(value: str, what: str) -> int | None:
    # PgBouncer uses -1 for "not set", and every negative value falls back the same way.
    number = _int(value, what)
    return None if number < 0 else number


def _opt_seconds(value: str, what: str) -> float | None:
    # A zero per-database or per-user time means "not set" in PgBouncer 1.25: it falls back.
    try:
        seconds = parse_seconds(value)
    except ValueError as exc:
        raise ValueError(f"invalid {what}: {value!r}: {exc}") from None
    return seconds or None


def _port(value: str) -> int:
    port = _int(value, "port")
    if not 0 < port < 65536:
        raise ValueError(f"invalid port: {value!r}")
    return port


def _choice(value: str, what: str, choices: tuple[str, ...]) -> str:
    for choice in choices:
        if choice.lower() == value.lower():
            return choice
    raise ValueError(f"invalid {what}: {value!r} (expected one of {', '.join(choices)})")


_DB_KEYS: Final[dict[str, Callable[[str], object]]] = {
    "dbname": str,
    "host": str,
    "port": _port,
    "user": str,
    "password": str,
    "auth_user": str,
    "auth_dbname": str,
    "auth_query": str,
    "client_encoding": str,
    "datestyle": str,
    "timezone": str,
    "application_name": str,
    "connect_query": str,
    "pool_size": lambda v: _opt_int(v, "pool_size"),
    "min_pool_size": lambda v: _opt_int(v, "min_pool_size"),
    "reserve_pool": lambda v: _opt_int(v, "reserve_pool"),
    "reserve_pool_size": lambda v: _opt_int(v, "reserve_pool_size"),
    "max_db_connections": lambda v: _opt_int(v, "max_db_connections"),
    "max_db_client_connections": lambda v: _opt_int(v, "max_db_client_connections"),
    "server_lifetime": lambda v: _opt_seconds(v, "server_lifetime"),
    "pool_mode": lambda v: _choice(v, "pool mode", _POOL_MODES),
    "load_balance_hosts": lambda v: _choice(v, "load_balance_hosts", _LOAD_BALANCE),
}

_USER_KEYS: Final[dict[str, Callable[[str], object]]] = {
    "pool_mode": lambda v: _choice(v, "pool mode", _POOL_MODES),
    "pool_size": lambda v: _opt_int(v, "pool_size"),
    "reserve_pool_size": lambda v: _opt_int(v, "reserve_pool_size"),
    "max_user_connections": lambda v: _opt_int(v, "max_user_connections"),
    "max_user_client_connections": lambda v: _opt_int(v, "max_user_client_connections"),
    "query_timeout": lambda v: _opt_seconds(v, "query_timeout"),
    "idle_transaction_timeout": lambda v: _opt_seconds(v, "idle_transaction_timeout"),
    "transaction_timeout": lambda v: _opt_seconds(v, "transaction_timeout"),
    "client_idle_timeout": lambda v: _opt_seconds(v, "client_idle_timeout"),
}

_PEER_KEYS: Final[dict[str, Callable[[str], object]]] = {
    "host": str,
    "port": _port,
    "pool_size": lambda v: _opt_int(v, "pool_size"),
}


def _convert(
    params: Mapping[str, str],
    keys: Mapping[str, Callable[[str], object]],
    kind: str,
    aliases: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, raw in params.items():
        convert = keys.get(key)
        if convert is None:
            raise ValueError(f"unknown {kind} parameter {key!r} (known: {', '.join(sorted(keys))})")
        # Parameter names are case sensitive in PgBouncer; a later duplicate or alias wins.
        out[(aliases or {}).get(key, key)] = convert(raw)
    return out


def _database(name: str, params: Mapping[str, str], source: str) -> DatabaseConfig:
    # The field keeps the old name reserve_pool; reserve_pool_size is its newer spelling.
    values = _convert(params, _DB_KEYS, "connection", {"reserve_pool_size": "reserve_pool"})
    return DatabaseConfig(name=name, source=source, **values)


def _where(entry: IniEntry | IniSection) -> str:
    return f"{entry.file}:{entry.line}"


class _Loader:
    def __init__(self, path: str) -> None:
        self.path = path
        self.raw: dict[str, object] = {}
        self.sources: dict[str, IniEntry] = {}
        self.seen_main = False
        self.databases: dict[str, DatabaseConfig] = {}
        self.users: dict[str, UserConfig] = {}
        self.peers: dict[int, PeerConfig] = {}
        self.autodb: str | None = None
        self.notes: list[str] = []

    def section(self, item: IniSection) -> None:
        if item.name not in _SECTIONS:
            raise ConfigError(
                item.file,
                item.line,
                f"unknown section [{item.name}] (expected one of "
                f"{', '.join(f'[{s}]' for s in _SECTIONS)}; names are case sensitive)",
            )
        if item.name == "pgbouncer":
            # PgBouncer re-applies every default each time a [pgbouncer] header appears, so a
            # second header forgets what the first section set. Mirrored for identical results.
            self.seen_main = True
            self.raw.clear()
            self.sources.clear()

    def entry(self, item: IniEntry) -> None:
        if item.section == "":
            raise ConfigError(item.file, item.line, f"{item.key!r} appears before any [section]")
        handler = {
            "pgbouncer": self.setting,
            "databases": self.database,
            "users": self.user,
            "peers": self.peer,
        }[item.section]
        handler(item)

    def setting(self, item: IniEntry) -> None:
        if item.key not in SETTINGS:
            raise ConfigError(
                item.file,
                item.line,
                f"unknown setting {item.key!r} in [pgbouncer] (setting names are case sensitive)",
            )
        try:
            value = parse_value(item.key, item.value)
        except ValueError as exc:
            raise ConfigError(item.file, item.line, str(exc)) from None
        self.raw[item.key] = value
        self.sources[item.key] = item

    def _params(self, item: IniEntry, kind: str) -> dict[str, str]:
        try:
            return parse_connstr(item.value)
        except ValueError as exc:
            raise ConfigError(item.file, item.line, f"[{kind}] {item.key}: {exc}") from None

    def database(self, item: IniEntry) -> None:
        name = item.key
        if name == ADMIN_DATABASE:
            raise ConfigError(
                item.file,
                item.line,
                f"database name {name!r} is reserved for the admin console",
            )
        params = self._params(item, "databases")
        try:
            db = _database(name, params, _where(item))
        except ValueError as exc:
            raise ConfigError(item.file, item.line, f"[databases] {name}: {exc}") from None
        self.databases[name] = db
        if name == AUTODB:
            self.autodb = item.value
        for key in _DB_UNSUPPORTED:
            if key in params:
                self.notes.append(
                    f"{_where(item)}: [databases] {name}: {key} is not supported by pgfunnel "
                    "yet; ignored"
                )
        if len(db.hosts) > 1:
            # PgBouncer connects to the hosts round-robin; pgfunnel would take the whole list
            # for one host name, and every server login would fail.
            self.notes.append(
                f"{_where(item)}: [databases] {name}: a host list (host={db.host}) is not "
                "supported by pgfunnel yet; server logins to it will fail, give one host"
            )

    def user(self, item: IniEntry) -> None:
        params = self._params(item, "users")
        try:
            values = _convert(params, _USER_KEYS, "user")
        except ValueError as exc:
            raise ConfigError(item.file, item.line, f"[users] {item.key}: {exc}") from None
        self.users[item.key] = UserConfig(name=item.key, source=_where(item), **values)
        for key in _USER_UNSUPPORTED:
            if key in params:
                self.notes.append(
                    f"{_where(item)}: [users] {item.key}: {key} is not supported by pgfunnel "
                    "yet; ignored"
                )

    def peer(self, item: IniEntry) -> None:
        if _INT_RE.fullmatch(item.key) is None or not 0 < int(item.key) < 65536:
            raise ConfigError(
                item.file,
                item.line,
                f"[peers] {item.key}: a peer id must be a number from 1 to 65535",
            )
        params = self._params(item, "peers")
        try:
            values = _convert(params, _PEER_KEYS, "peer")
        except ValueError as exc:
            raise ConfigError(item.file, item.line, f"[peers] {item.key}: {exc}") from None
        if "host" not in values:
            raise ConfigError(item.file, item.line, f"[peers] {item.key}: host is required")
        peer_id = int(item.key)
        self.peers[peer_id] = PeerConfig(peer_id=peer_id, source=_where(item), **values)
        self.notes.append(
            f"{_where(item)}: [peers] {item.key}: peering is not supported by pgfunnel yet; ignored"
        )

    def finish(self) -> Config:
        if not self.seen_main:
            raise ConfigError(self.path, 0, "no [pgbouncer] section")
        values = dict(self.raw)
        # Like PgBouncer, conffile names the file given on the command line unless overridden.
        values.setdefault("conffile", self.path)
        settings = Settings().with_values(values)
        for name, entry in self.sources.items():
            refused = _FAIL_CLOSED.get(name, ())
            if values[name] in refused:
                raise ConfigError(
                    entry.file,
                    entry.line,
                    f"{name} = {values[name]} is not supported by pgfunnel yet, and ignoring it "
                    "would weaken security; change it or keep PgBouncer for this setup",
                )
        for name, why in tls_problems(settings):
            # TLS that cannot run as configured stops the load, rather than serve in clear
            where = self.sources.get(name)
            raise ConfigError(where.file if where else self.path, where.line if where else 0, why)
        unsupported = [
            f"{_where(entry)}: setting {name} is not supported by pgfunnel yet; ignored"
            for name, entry in self.sources.items()
            if not SETTINGS[name].supported and values[name] != SETTINGS[name].default
        ]
        userlist: dict[str, str] = {}
        if settings.auth_file:
            source = self.sources.get("auth_file")
            try:
                userlist = load_userlist(settings.auth_file)
            except ConfigError as exc:
                if exc.line or source is None:
                    raise
                # The file itself is unreadable: point at the line that named it.
                raise ConfigError(source.file, source.line, exc.message) from None
        hba, ident = self._hba_files(settings)
        return Config(
            hba=hba,
            ident=ident,
            path=self.path,
            settings=settings,
            databases=self.databases,
            users=self.users,
            userlist=userlist,
            unsupported=unsupported + self.notes,
            peers=self.peers,
            autodb_connstr=self.autodb,
            setting_sources={name: _where(entry) for name, entry in self.sources.items()},
        )

    def _hba_files(self, settings: Settings) -> tuple[HbaRules | None, IdentMap | None]:
        """Read auth_hba_file (needed when auth_type is hba) and auth_ident_file; a file that
        cannot be read points at the setting that named it."""

        def located(name: str, load: Callable[[str], Any]) -> Any:
            source = self.sources.get(name)
            try:
                return load(str(settings.get(name)))
            except ConfigError as exc:
                if exc.line or source is None:
                    raise
                raise ConfigError(source.file, source.line, exc.message) from None

        hba: HbaRules | None = None
        if settings.auth_type == "hba":
            if not settings.auth_hba_file:
                entry = self.sources["auth_type"]
                raise ConfigError(entry.file, entry.line, "auth_type = hba needs auth_hba_file")
            hba = located("auth_hba_file", load_hba)
        ident = located("auth_ident_file", load_ident) if settings.auth_ident_file else None
        if hba is not None:
            for rule in hba.rules:
                name = rule.map_name
                if name is not None and (ident is None or name not in ident.maps):
                    raise ConfigError(
                        hba.path,
                        rule.line,
                        f"map={name}: no such map in auth_ident_file "
                        f"({settings.auth_ident_file or 'not set'})",
                    )
        return hba, ident


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read a pgbouncer.ini the way PgBouncer 1.25 does, plus its auth_file.

    Raises ConfigError ("file:line: message") on the first problem: a dialect error, a missing
    %include, an unknown section or key, a bad value, or an unreadable or malformed auth_file.
    Relative paths (%include, auth_file) are taken from the working directory, as PgBouncer
    takes them.
    """
    name = os.fspath(path)
    loader = _Loader(name)
    for item in parse_ini(name):
        if isinstance(item, IniSection):
            loader.section(item)
        else:
            loader.entry(item)
    return loader.finish()
