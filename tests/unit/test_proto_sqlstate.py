"""53300 classification: every message PostgreSQL sends for a full server, role or database."""

from __future__ import annotations

import pytest

from pgfunnel.proto import sqlstate as ss

SORRY = "sorry, too many clients already"
RESERVED_PRE16 = "remaining connection slots are reserved for non-replication superuser connections"
RESERVED_16_SUPERUSER = (
    "remaining connection slots are reserved for roles with the SUPERUSER attribute"
)
RESERVED_16_ROLE = (
    "remaining connection slots are reserved for roles with privileges of the "
    '"pg_use_reserved_connections" role'
)
ROLE = 'too many connections for role "app"'
DATABASE = 'too many connections for database "shop"'


@pytest.mark.parametrize(
    ("message", "limit"),
    [
        (SORRY, "server max_connections"),
        (RESERVED_PRE16, "server max_connections (the remaining slots are reserved)"),
        (RESERVED_16_SUPERUSER, "server max_connections (the remaining slots are reserved)"),
        (RESERVED_16_ROLE, "server max_connections (the remaining slots are reserved)"),
        (ROLE, 'role "app" CONNECTION LIMIT'),
        (DATABASE, 'database "shop" CONNECTION LIMIT'),
    ],
    ids=["sorry", "reserved-pre16", "reserved-16-superuser", "reserved-16-role", "role", "db"],
)
def test_describe_53300(message: str, limit: str) -> None:
    assert ss.describe_53300(message) == limit


def test_reserved_role_name_is_not_mistaken_for_a_role_limit() -> None:
    assert "pg_use_reserved_connections" not in ss.describe_53300(RESERVED_16_ROLE)
    assert "ALTER ROLE" not in ss.hint_53300(RESERVED_16_ROLE)


def test_hint_for_a_role_limit_names_the_role_and_the_pool_settings() -> None:
    hint = ss.hint_53300(ROLE)
    assert 'ALTER ROLE "app" CONNECTION LIMIT' in hint
    assert "pool_size" in hint
    assert "max_user_connections" in hint


def test_hint_for_a_database_limit_names_the_database() -> None:
    hint = ss.hint_53300(DATABASE)
    assert 'ALTER DATABASE "shop" CONNECTION LIMIT' in hint
    assert "max_db_connections" in hint


@pytest.mark.parametrize(
    "message", [SORRY, RESERVED_PRE16, RESERVED_16_SUPERUSER, RESERVED_16_ROLE]
)
def test_hint_for_a_full_server_names_max_connections_and_diagnose(message: str) -> None:
    hint = ss.hint_53300(message)
    assert "max_connections" in hint
    assert "pgfunnel diagnose" in hint


def test_role_with_spaces_in_its_name() -> None:
    message = 'too many connections for role "web app"'
    assert ss.describe_53300(message) == 'role "web app" CONNECTION LIMIT'


def test_transient_login_states() -> None:
    for code in ("53300", "57P03", "57P01", "57P02", "53200", "58000"):
        assert code in ss.TRANSIENT_LOGIN_STATES
    for code in ("28P01", "28000", "3D000", "08P01", "0A000"):
        assert code not in ss.TRANSIENT_LOGIN_STATES


def test_codes() -> None:
    assert ss.TOO_MANY_CONNECTIONS == "53300"
    assert ss.PROTOCOL_VIOLATION == "08P01"
    assert ss.INVALID_PASSWORD == "28P01"
    assert ss.INVALID_CATALOG_NAME == "3D000"
    assert ss.CONNECTION_FAILURE == "08006"
    assert ss.CANNOT_CONNECT_NOW == "57P03"
