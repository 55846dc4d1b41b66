"""The toolkit's SQL, kept in versioned .sql files: name.sql, or name.pgNN.sql from version NN."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_VERSIONED = re.compile(r"^(?P<name>[a-z_]+)(?:\.pg(?P<major>\d+))?\.sql$")


@cache
def _index() -> dict[str, list[tuple[int, str]]]:
    found: dict[str, list[tuple[int, str]]] = {}
    for entry in resources.files("pgfunnel.toolkit").joinpath("sql").iterdir():
        m = _VERSIONED.match(entry.name)
        if m:
            major = int(m.group("major") or 0)
            found.setdefault(m.group("name"), []).append((major, entry.read_text("utf-8")))
    for versions in found.values():
        versions.sort()
    return found


def load(name: str, server_version_num: int = 999999) -> str:
    """The text of query `name` for a server (e.g. 150004): the newest file not newer than it."""
    major = server_version_num // 10000
    candidates = [text for v, text in _index()[name] if v <= major]
    if not candidates:
        raise KeyError(f"no {name}.sql for PostgreSQL {major}")
    return candidates[-1]
