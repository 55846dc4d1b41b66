"""Settings given to a PostgreSQL server on its command line (`postgres -c name=value`,
`--name=value`), as docker-compose `command:` entries pass them."""

from __future__ import annotations

import shlex
from typing import Any

# The settings check reads from a command line: the ones that size the connection slots.
SLOT_SETTINGS = ("max_connections", "superuser_reserved_connections", "reserved_connections")


def command_settings(command: Any) -> dict[str, str]:
    """name -> value of every `-c name=value`, `-cname=value` and `--name=value` in a command,
    given as compose does: one string (split as a shell would) or a list of arguments. Dashes
    in names are underscores, as postgres reads them; the last one given wins."""
    if isinstance(command, str):
        try:
            args = shlex.split(command)
        except ValueError:
            args = command.split()
    elif isinstance(command, list):
        args = [str(a) for a in command]
    else:
        return {}
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        item = None
        if arg == "-c" and i + 1 < len(args):
            item = args[i + 1]
            i += 1
        elif arg.startswith(("-c", "--")):
            # -cname=value, or --name=value (both drop the two-character prefix)
            item = arg[2:]
        if item and "=" in item:
            name, _, value = item.partition("=")
            out[name.strip().replace("-", "_").lower()] = value.strip().strip("'\"")
        i += 1
    return out


def runs_postgres(command: Any) -> bool:
    """Whether a compose command starts the server (`postgres ...`, or only options after the
    image's own entrypoint: `-c max_connections=...`)."""
    if isinstance(command, str):
        first = command.strip().split(" ", 1)[0] if command.strip() else ""
    elif isinstance(command, list) and command:
        first = str(command[0])
    else:
        return False
    return first.rsplit("/", 1)[-1] in ("postgres", "postmaster") or first.startswith("-")
