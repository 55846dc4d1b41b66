"""pg_hba.conf and pg_ident.conf as PgBouncer reads them: rules, first match, file:line errors."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from pgfunnel.config.ini import ConfigError

__all__ = [
    "METHODS",
    "HbaRule",
    "HbaRules",
    "IdentMap",
    "load_hba",
    "load_ident",
    "parse_hba",
    "parse_ident",
]

ConnType = Literal["local", "host", "hostssl", "hostnossl"]
_CONN_TYPES: Final = ("local", "host", "hostssl", "hostnossl")
# The methods PgBouncer's hba reader knows; `password` is the clear-text exchange (PgBouncer's
# auth_type plain).
METHODS: Final = ("trust", "reject", "md5", "password", "scram-sha-256", "cert", "peer")
_MAP_METHODS: Final = ("peer", "cert")
_MAX_INCLUDE_DEPTH: Final = 10

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Names:
    """A database or user column: `all`, `sameuser` (databases), `replication`, or names."""

    all: bool = False
    sameuser: bool = False
    replication: bool = False
    names: frozenset[str] = frozenset()

    def matches(self, name: str, pair: str, replication: bool) -> bool:
        if replication:
            # As PostgreSQL: only the `replication` keyword matches a replication connection.
            return self.replication
        return self.all or (self.sameuser and name == pair) or name in self.names


@dataclass(frozen=True)
class HbaRule:
    """One rule; `where` is "file:line" for logs, SHOW CLIENTS and error messages."""

    conn_type: ConnType
    databases: Names
    users: Names
    network: Network | None  # None: local, or `all` addresses
    method: str
    options: tuple[tuple[str, str], ...] = ()
    where: str = ""
    line: int = 0

    @property
    def map_name(self) -> str | None:
        return dict(self.options).get("map")

    def matches(
        self, addr: str | None, tls: bool, database: str, user: str, replication: bool
    ) -> bool:
        """`addr` is None for a unix-socket client, else its IP address as text."""
        if addr is None:
            if self.conn_type != "local":
                return False
        else:
            if self.conn_type == "local":
                return False
            if self.conn_type == "hostssl" and not tls:
                return False
            if self.conn_type == "hostnossl" and tls:
                return False
            if self.network is not None and not _in_network(addr, self.network):
                return False
        return self.databases.matches(database, user, replication) and self.users.matches(
            user, user, False
        )


def _in_network(addr: str, network: Network) -> bool:
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return False
    if (
        isinstance(ip, ipaddress.IPv6Address)
        and ip.ipv4_mapped is not None
        and network.version == 4
    ):
        ip = ip.ipv4_mapped  # a v4 client on a dual-stack listener
    return ip.version == network.version and ip in network


@dataclass(frozen=True)
class HbaRules:
    """A loaded hba file: rules in file order."""

    path: str
    rules: tuple[HbaRule, ...]

    def match(
        self, addr: str | None, tls: bool, database: str, user: str, replication: bool = False
    ) -> HbaRule | None:
        """The first rule that applies, or None (the connection is refused)."""
        for rule in self.rules:
            if rule.matches(addr, tls, database, user, replication):
                return rule
        return None


# --- tokens ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Token:
    text: str
    quoted: bool


_Field = list[_Token]  # one column: a comma-separated list


def _fields(text: str, file: str, line: int) -> list[_Field]:
    """Split one line into columns, each a list of comma-separated tokens. `#` starts a
    comment outside quotes; `""` inside quotes is one double quote."""
    fields: list[_Field] = []
    pos, end = 0, len(text)
    current: _Field | None = None
    expect_more = False
    while pos < end:
        ch = text[pos]
        if ch in " \t\r\n":
            if expect_more:
                pos += 1
                continue
            current = None
            pos += 1
            continue
        if ch == "#":
            break
        if ch == ",":
            if current is None or expect_more:
                raise ConfigError(file, line, "unexpected ',' (an empty list item)")
            expect_more = True
            pos += 1
            continue
        if current is None:
            current = []
            fields.append(current)
        elif not expect_more:
            # Two tokens glued without a space or comma, e.g. `a"b"`.
            raise ConfigError(file, line, f"unexpected character {ch!r}")
        expect_more = False
        if ch == '"':
            chars: list[str] = []
            pos += 1
            while True:
                if pos >= end or text[pos] == "\n":
                    raise ConfigError(file, line, "unterminated quoted string")
                if text[pos] == '"':
                    if text[pos + 1 : pos + 2] == '"':
                        chars.append('"')
                        pos += 2
                        continue
                    pos += 1
                    break
                chars.append(text[pos])
                pos += 1
            current.append(_Token("".join(chars), True))
            if pos < end and text[pos] not in " \t\r\n,#":
                raise ConfigError(file, line, f"unexpected character {text[pos]!r} after a quote")
        else:
            start = pos
            while pos < end and text[pos] not in ' \t\r\n,#"':
                pos += 1
            current.append(_Token(text[start:pos], False))
    if expect_more:
        raise ConfigError(file, line, "a list ends with ','")
    return fields


def _read(path: str, what: str) -> str:
    try:
        return Path(path).read_bytes().decode("utf-8", errors="surrogateescape")
    except OSError as exc:
        raise ConfigError(path, 0, f"could not read {what}: {exc.strerror or exc}") from None


def _names(tokens: _Field, file: str, line: int, is_db: bool, base: str, depth: int = 0) -> Names:
    all_, same, repl = False, False, False
    names: set[str] = set()
    for token in tokens:
        text = token.text
        if not token.quoted:
            if text == "all":
                all_ = True
                continue
            if is_db and text == "sameuser":
                same = True
                continue
            if is_db and text == "replication":
                repl = True
                continue
            if is_db and text in ("samerole", "samegroup"):
                raise ConfigError(
                    file, line, f"{text} is not supported (PgBouncer knows no role membership)"
                )
            if text.startswith("+"):
                raise ConfigError(
                    file,
                    line,
                    f"group {text!r}: role membership (+name) is not supported, as in PgBouncer; "
                    "list the users, or put them in an @file",
                )
            if text.startswith("@"):
                included = _include(text[1:], file, line, is_db, base, depth)
                all_ |= included.all
                same |= included.sameuser
                repl |= included.replication
                names |= included.names
                continue
        if not text:
            raise ConfigError(file, line, "empty name")
        names.add(text)
    return Names(all_, same, repl, frozenset(names))


def _include(name: str, file: str, line: int, is_db: bool, base: str, depth: int) -> Names:
    """`@file`: names separated by commas or whitespace, relative to the including file."""
    if not name:
        raise ConfigError(file, line, "'@' without a file name")
    if depth >= _MAX_INCLUDE_DEPTH:
        raise ConfigError(file, line, f"@{name}: includes nested too deeply")
    path = name if os.path.isabs(name) else os.path.join(base, name)
    try:
        text = Path(path).read_bytes().decode("utf-8", errors="surrogateescape")
    except OSError as exc:
        raise ConfigError(file, line, f"could not read @{name}: {exc.strerror or exc}") from None
    tokens: _Field = []
    for number, raw in enumerate(text.splitlines(), 1):
        for column in _fields(raw, path, number):
            tokens.extend(column)
    return _names(tokens, path, 0, is_db, os.path.dirname(path), depth + 1)


def _single(column: _Field, file: str, line: int, what: str) -> str:
    if len(column) != 1:
        raise ConfigError(file, line, f"{what} must be a single value, not a list")
    return column[0].text


def _network(fields: list[_Field], file: str, line: int) -> tuple[Network | None, int]:
    """The address column(s) of a host rule: CIDR, `all`, or an address and a mask."""
    text = _single(fields[0], file, line, "the address")
    if text == "all":
        return None, 1
    if text in ("samehost", "samenet"):
        raise ConfigError(file, line, f"address {text} is not supported; give the network")
    if "/" in text:
        try:
            return ipaddress.ip_network(text, strict=True), 1
        except ValueError as exc:
            raise ConfigError(file, line, f"invalid address {text!r}: {exc}") from None
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(
            file, line, f"invalid address {text!r} (host names are not supported)"
        ) from None
    if len(fields) < 2:
        raise ConfigError(file, line, f"address {text} needs a /prefix or a mask")
    mask_text = _single(fields[1], file, line, "the mask")
    try:
        mask = ipaddress.ip_address(mask_text)
        if mask.version != addr.version:
            raise ValueError("mask and address are of different IP versions")
        return ipaddress.ip_network(f"{addr}/{mask}", strict=True), 2
    except ValueError as exc:
        raise ConfigError(file, line, f"invalid mask {mask_text!r}: {exc}") from None


def _rule(fields: list[_Field], file: str, line: int, base: str) -> HbaRule:
    conn_type = _single(fields[0], file, line, "the connection type")
    if conn_type not in _CONN_TYPES:
        raise ConfigError(
            file,
            line,
            f"unknown connection type {conn_type!r} (expected one of {', '.join(_CONN_TYPES)})",
        )
    if len(fields) < 4:
        raise ConfigError(file, line, "too few fields: type, database, user, [address,] method")
    databases = _names(fields[1], file, line, True, base)
    users = _names(fields[2], file, line, False, base)
    rest = fields[3:]
    network: Network | None = None
    if conn_type != "local":
        network, used = _network(rest, file, line)
        rest = rest[used:]
    if not rest:
        raise ConfigError(file, line, "missing authentication method")
    method = _single(rest[0], file, line, "the method")
    if method not in METHODS:
        raise ConfigError(
            file,
            line,
            f"unsupported authentication method {method!r} (expected one of {', '.join(METHODS)})",
        )
    if method == "peer" and conn_type != "local":
        raise ConfigError(file, line, "peer authentication is only supported on local sockets")
    options: list[tuple[str, str]] = []
    for column in rest[1:]:
        option = _single(column, file, line, "an option")
        key, eq, value = option.partition("=")
        if not eq or not value:
            raise ConfigError(file, line, f"option {option!r} is not name=value")
        if key != "map":
            raise ConfigError(file, line, f"unsupported option {key!r} (only map= is supported)")
        if method not in _MAP_METHODS:
            raise ConfigError(file, line, f"map= applies only to {' and '.join(_MAP_METHODS)}")
        options.append((key, value))
    return HbaRule(
        conn_type,  # type: ignore[arg-type]  # checked against _CONN_TYPES above
        databases,
        users,
        network,
        method,
        tuple(options),
        f"{file}:{line}",
        line,
    )


def parse_hba(text: str, file: str = "<hba>", base: str | None = None) -> HbaRules:
    """Parse the text of an hba file. `@file` names are taken relative to `base` (default:
    the directory of `file`). The first problem raises ConfigError with its file:line; a
    line cannot be skipped, since skipping a `reject` rule would open the door."""
    base = os.path.dirname(file) if base is None else base
    rules: list[HbaRule] = []
    for number, raw in enumerate(text.splitlines(), 1):
        fields = _fields(raw, file, number)
        if fields:
            rules.append(_rule(fields, file, number, base))
    return HbaRules(file, tuple(rules))


def load_hba(path: str | os.PathLike[str]) -> HbaRules:
    name = os.fspath(path)
    return parse_hba(_read(name, "auth_hba_file"), name)


# --- ident maps ------------------------------------------------------------------------------
@dataclass(frozen=True)
class IdentEntry:
    system: str | re.Pattern[str]  # a name, or a regular expression (`/...`)
    pg_user: str  # a name, `all`, or with `\1` for the regex's first group
    where: str


@dataclass(frozen=True)
class IdentMap:
    """Every map of an ident file: `map name -> entries` in file order."""

    path: str
    maps: dict[str, tuple[IdentEntry, ...]] = field(default_factory=dict)

    def allows(self, map_name: str, system_user: str, pg_user: str) -> bool:
        """Whether `map_name` lets the OS (or certificate) name `system_user` log in as
        `pg_user`."""
        for entry in self.maps.get(map_name, ()):
            for wanted in self._targets(entry, system_user):
                if wanted == "all" or wanted == pg_user:
                    return True
        return False

    @staticmethod
    def _targets(entry: IdentEntry, system_user: str) -> Iterator[str]:
        if isinstance(entry.system, str):
            if entry.system == system_user:
                yield entry.pg_user
            return
        found = entry.system.search(system_user)
        if found is None:
            return
        if "\\1" in entry.pg_user:
            group = found.group(1) if found.re.groups else None
            if group is not None:
                yield entry.pg_user.replace("\\1", group)
            return
        yield entry.pg_user


def parse_ident(text: str, file: str = "<ident>") -> IdentMap:
    """`MAPNAME SYSTEM-USERNAME PG-USERNAME` per line; a system name starting with `/` is a
    regular expression (its first group may be used as `\\1` in the PostgreSQL name)."""
    maps: dict[str, list[IdentEntry]] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        fields = _fields(raw, file, number)
        if not fields:
            continue
        if len(fields) != 3:
            raise ConfigError(
                file, number, "expected three fields: map name, system user name, user name"
            )
        map_name, system, pg_user = (
            _single(f, file, number, what)
            for f, what in zip(fields, ("the map name", "the system user", "the user"), strict=True)
        )
        pattern: str | re.Pattern[str] = system
        if system.startswith("/") and not fields[1][0].quoted:
            try:
                pattern = re.compile(system[1:])
            except re.error as exc:
                raise ConfigError(file, number, f"invalid regular expression: {exc}") from None
        maps.setdefault(map_name, []).append(IdentEntry(pattern, pg_user, f"{file}:{number}"))
    return IdentMap(file, {k: tuple(v) for k, v in maps.items()})


def load_ident(path: str | os.PathLike[str]) -> IdentMap:
    name = os.fspath(path)
    return parse_ident(_read(name, "auth_ident_file"), name)
