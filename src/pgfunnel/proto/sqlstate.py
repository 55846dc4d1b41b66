"""SQLSTATE codes the pooler sends or acts on, and the classification of 53300 messages."""

from __future__ import annotations

import re

PROTOCOL_VIOLATION = "08P01"  # PgBouncer's code for nearly every pooler error
CONNECTION_FAILURE = "08006"
SQLCLIENT_UNABLE_TO_CONNECT = "08001"  # TLS to the server failed (a certificate, a refusal)
CANNOT_CONNECT_NOW = "57P03"
ADMIN_SHUTDOWN = "57P01"
CRASH_SHUTDOWN = "57P02"
TOO_MANY_CONNECTIONS = "53300"
INVALID_PASSWORD = "28P01"
INVALID_AUTHORIZATION = "28000"
INVALID_CATALOG_NAME = "3D000"
FEATURE_NOT_SUPPORTED = "0A000"
QUERY_CANCELED = "57014"
INVALID_PARAMETER_VALUE = "22023"
IDLE_IN_TRANSACTION_TIMEOUT = "25P03"

# Login failures that mean "not now" rather than "never": clients keep waiting for these.
TRANSIENT_LOGIN_STATES = frozenset(
    {TOO_MANY_CONNECTIONS, CANNOT_CONNECT_NOW, ADMIN_SHUTDOWN, CRASH_SHUTDOWN, "53200", "58000"}
)

_ROLE = re.compile(r'too many connections for role "(.*)"')
_DATABASE = re.compile(r'too many connections for database "(.*)"')


def describe_53300(message: str) -> str:
    """Name the limit a 53300 message reports, in the words an operator searches for."""
    if found := _ROLE.search(message):
        return f'role "{found.group(1)}" CONNECTION LIMIT'
    if found := _DATABASE.search(message):
        return f'database "{found.group(1)}" CONNECTION LIMIT'
    if "reserved" in message:
        return "server max_connections (the remaining slots are reserved)"
    return "server max_connections"


def hint_53300(message: str) -> str:
    if found := _ROLE.search(message):
        return (
            f'Raise the role\'s limit (ALTER ROLE "{found.group(1)}" CONNECTION LIMIT n), or lower '
            "this pool's pool_size/max_user_connections so the pooler stays under it."
        )
    if found := _DATABASE.search(message):
        return (
            f'Raise the database\'s limit (ALTER DATABASE "{found.group(1)}" CONNECTION LIMIT n), '
            "or lower max_db_connections for it in the pooler."
        )
    return (
        "The server has no free connection slots: run `pgfunnel diagnose` to see who holds them, "
        "lower default_pool_size/max_db_connections, or raise max_connections on the server."
    )
