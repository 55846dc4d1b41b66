"""Slot arithmetic and the classification of PostgreSQL's SQLSTATE 53300 messages."""

from __future__ import annotations

import re
from dataclasses import dataclass

TOO_MANY_CLIENTS = "sorry, too many clients already"
RESERVED_PRE16 = "remaining connection slots are reserved for non-replication superuser connections"
RESERVED_SUPERUSER_16 = (
    "remaining connection slots are reserved for roles with the SUPERUSER attribute"
)
RESERVED_ROLE_16 = (
    "remaining connection slots are reserved for roles with privileges of the "
    '"pg_use_reserved_connections" role'
)
_ROLE_LIMIT = re.compile(r'too many connections for role "((?:[^"]|"")*)"')
_DB_LIMIT = re.compile(r'too many connections for database "((?:[^"]|"")*)"')


@dataclass(frozen=True)
class LimitHit:
    """Which 53300 limit a refused connection ran into, and what to do next."""

    # max_connections | superuser_reserved | reserved_connections | role | database | unrecognised
    kind: str
    message: str
    name: str | None
    limit_setting: str
    explanation: str
    next_command: str

    def as_dict(self) -> dict[str, object]:
        return {
            "sqlstate": "53300",
            "kind": self.kind,
            "message": self.message,
            "name": self.name,
            "limit": self.limit_setting,
            "explanation": self.explanation,
            "next_command": self.next_command,
        }


UNRECOGNISED = "unrecognised"
_VERBOSE_53300 = re.compile(r":\s+53300:\s")


def classify_53300(message: str, sqlstate: str | None = None) -> LimitHit | None:
    """The limit behind a connection error text, or None when it is not a 53300 refusal.

    The wording identifies the limit (English lc_messages). A 53300 whose wording is not
    recognised (a translated message, known by its SQLSTATE) is still a refusal for lack of
    slots: kind "unrecognised", which names every limit it may be."""
    text = " ".join(message.split())
    hit = _classify_english(text)
    if hit is not None or not (sqlstate == "53300" or _VERBOSE_53300.search(text)):
        return hit
    return LimitHit(
        UNRECOGNISED,
        text,
        None,
        "a 53300 limit: max_connections, superuser_reserved_connections, reserved_connections, "
        "or a role's or database's CONNECTION LIMIT",
        "the server refused the connection with SQLSTATE 53300 (too many connections) in "
        "wording pgfunnel does not recognise (non-English lc_messages?), so which limit is not "
        "known",
        "pgfunnel diagnose --reserved-dsn SUPERUSER_DSN (a superuser gets in unless every slot "
        "is taken, and is exempt from role and database limits), then pgfunnel reap "
        "--idle-in-transaction 5m",
    )


def _classify_english(text: str) -> LimitHit | None:
    if TOO_MANY_CLIENTS in text:
        return LimitHit(
            "max_connections",
            TOO_MANY_CLIENTS,
            None,
            "max_connections",
            "every slot is taken, including the superuser-reserved ones",
            "connect from the server host as the OS postgres user is also refused: end "
            "sessions from a client-side pooler or application (stop a deployment, restart "
            "a leaking service), then run: pgfunnel diagnose --reserved-dsn SUPERUSER_DSN",
        )
    if RESERVED_PRE16 in text or RESERVED_SUPERUSER_16 in text:
        return LimitHit(
            "superuser_reserved",
            RESERVED_PRE16 if RESERVED_PRE16 in text else RESERVED_SUPERUSER_16,
            None,
            "superuser_reserved_connections",
            "the slots for ordinary roles are used up; only superusers can still connect",
            "pgfunnel diagnose --reserved-dsn 'postgresql://postgres@HOST/postgres' "
            "then pgfunnel reap --idle-in-transaction 5m",
        )
    if "remaining connection slots are reserved for roles with privileges of" in text:
        return LimitHit(
            "reserved_connections",
            RESERVED_ROLE_16,
            None,
            "reserved_connections",
            "the slots for ordinary roles are used up; members of pg_use_reserved_connections "
            "and superusers can still connect",
            "pgfunnel diagnose --reserved-dsn DSN_OF_A_pg_use_reserved_connections_MEMBER "
            "then pgfunnel reap --idle-in-transaction 5m",
        )
    m = _ROLE_LIMIT.search(text)
    if m:
        role = m.group(1).replace('""', '"')
        return LimitHit(
            "role",
            m.group(0),
            role,
            f"CONNECTION LIMIT of role {role}",
            f"role {role} reached its CONNECTION LIMIT (rolconnlimit); other roles can connect",
            f"pgfunnel diagnose --reserved-dsn OTHER_ROLE_DSN; pgfunnel reap --role {role} "
            "--idle-in-transaction 5m",
        )
    m = _DB_LIMIT.search(text)
    if m:
        db = m.group(1).replace('""', '"')
        return LimitHit(
            "database",
            m.group(0),
            db,
            f"CONNECTION LIMIT of database {db}",
            f"database {db} reached its CONNECTION LIMIT (datconnlimit); superusers and other "
            "databases can still connect",
            f"pgfunnel diagnose 'dbname=postgres ...'; pgfunnel reap --database {db} "
            "--idle-in-transaction 5m",
        )
    return None


@dataclass(frozen=True)
class Slots:
    """The three tiers of max_connections: ordinary roles, reserved-role members, superusers."""

    max_connections: int
    superuser_reserved: int
    reserved: int
    used: int

    @property
    def usable(self) -> int:
        return max(0, self.max_connections - self.superuser_reserved - self.reserved)

    @property
    def headroom_ordinary(self) -> int:
        return max(0, self.usable - self.used)

    @property
    def headroom_reserved_members(self) -> int:
        return max(0, self.max_connections - self.superuser_reserved - self.used)

    @property
    def headroom_superuser(self) -> int:
        return max(0, self.max_connections - self.used)

    @property
    def usage(self) -> float:
        return self.used / self.usable if self.usable else 1.0


def usable_slots(max_connections: int, superuser_reserved: int, reserved: int = 0) -> int:
    """Slots an ordinary role can use: max_connections minus both reservations."""
    return max(0, max_connections - superuser_reserved - reserved)
