"""53300 classification, slot tiers, units, query redaction and secret redaction."""

from __future__ import annotations

import pytest

from pgfunnel.toolkit.limits import Slots, classify_53300, usable_slots
from pgfunnel.toolkit.redact import Redactor, redact_query
from pgfunnel.toolkit.units import format_age, format_kb, parse_duration, parse_size

PREFIX = 'connection to server at "db" (10.0.0.5), port 5432 failed: FATAL:  '


@pytest.mark.parametrize(
    ("message", "kind", "name"),
    [
        ("sorry, too many clients already", "max_connections", None),
        (
            "remaining connection slots are reserved for non-replication superuser connections",
            "superuser_reserved",
            None,
        ),
        (
            "remaining connection slots are reserved for roles with the SUPERUSER attribute",
            "superuser_reserved",
            None,
        ),
        (
            "remaining connection slots are reserved for roles with privileges of the "
            '"pg_use_reserved_connections" role',
            "reserved_connections",
            None,
        ),
        ('too many connections for role "app"', "role", "app"),
        ('too many connections for role "we""ird"', "role", 'we"ird'),
        ('too many connections for database "shop"', "database", "shop"),
    ],
)
def test_every_53300_message_is_classified(message: str, kind: str, name: str | None) -> None:
    hit = classify_53300(PREFIX + message)
    assert hit is not None
    assert (hit.kind, hit.name) == (kind, name)
    assert hit.next_command
    assert hit.as_dict()["sqlstate"] == "53300"


def test_other_errors_are_not_53300() -> None:
    assert classify_53300('password authentication failed for user "app"') is None


def test_three_headrooms() -> None:
    s = Slots(max_connections=100, superuser_reserved=3, reserved=5, used=90)
    assert s.usable == 92 == usable_slots(100, 3, 5)
    assert (s.headroom_ordinary, s.headroom_reserved_members, s.headroom_superuser) == (2, 7, 10)
    full = Slots(10, 3, 0, 7)
    assert (full.headroom_ordinary, full.headroom_superuser, full.usage) == (0, 3, 1.0)


def test_units() -> None:
    assert parse_duration("30s") == 30 and parse_duration("5m") == 300
    assert parse_duration("2h") == 7200 and parse_duration("250ms") == 0.25
    assert parse_size("16GB") == 16 * 1024**3 and parse_size("512MiB") == 512 * 1024**2
    assert format_kb(4 * 1024 * 1024) == "4GB" and format_kb(20164) == "20164kB"
    assert format_age(3725) == "1h02m" and format_age(None) == "-"
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_query_literals_are_redacted() -> None:
    q = (
        "SELECT * FROM t1 WHERE name = 'bob''s' AND id = 42 AND x = $1"
        " AND \"Col 9\" = E'\\n' AND d = $$x$$"
    )
    out = redact_query(q)
    assert out == (
        'SELECT * FROM t1 WHERE name = ? AND id = ? AND x = $1 AND "Col 9" = ? AND d = ?'
    )
    assert redact_query("x" * 500, 50) is not None and len(redact_query("x" * 500, 50) or "") == 50
    assert redact_query(None) is None


@pytest.mark.parametrize(
    ("text", "secret", "kind"),
    [
        ("postgresql://app:s3cret@db:5432/app", "s3cret", "uri"),
        ("host=db user=app password=s3cret dbname=x", "s3cret", "conninfo"),
        ("host=db password='s 3cret' dbname=x", "s 3cret", "conninfo"),
        ('"app" "plain-pw"', "plain-pw", "userlist"),
        (
            '"app" "md5a3556571e93b0d20722ba62be61e8c2d"',
            "md5a3556571e93b0d20722ba62be61e8c2d",
            "md5",
        ),
        (
            '"app" "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy"',
            "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy",
            "scram",
        ),
        ("PGPASSWORD=hunter2", "hunter2", "key-value"),
        ("AWS_SECRET_ACCESS_KEY: wJalrXUtnFEMI/K7MDENG", "wJalrXUtnFEMI/K7MDENG", "key-value"),
        ("key id AKIAIOSFODNN7EXAMPLE here", "AKIAIOSFODNN7EXAMPLE", "aws-access-key-id"),
        (
            "-----BEGIN PRIVATE KEY-----\nMIIEv\n-----END PRIVATE KEY-----",
            "MIIEv",
            "private-key",
        ),
    ],
)
def test_every_secret_form_is_redacted_and_counted(text: str, secret: str, kind: str) -> None:
    r = Redactor()
    out = r.scan(text)
    assert secret not in out
    assert "***" in out
    assert r.counts.get(kind) == 1, r.counts
    assert r.mask(out) == out  # idempotent, nothing counted twice
    assert r.total == 1


def test_references_to_secrets_are_not_secrets() -> None:
    r = Redactor()
    text = "DB_PASSWORD_FILE=/run/secrets/db PGPASSWORD=${PGPASSWORD}"
    assert r.scan(text) == text
    assert r.total == 0
    assert "no secrets" in r.summary()


def test_53300_in_unrecognised_wording_is_still_a_refusal() -> None:
    from pgfunnel.toolkit.limits import classify_53300

    german = (
        'connection to server at "db", port 5432 failed: FATAL:  Entschuldigung, schon zu '
        "viele Verbindungen"
    )
    assert classify_53300(german) is None  # no SQLSTATE: it could be anything
    hit = classify_53300(german, "53300")
    assert hit is not None and hit.kind == "unrecognised"
    assert "non-English lc_messages?" in hit.explanation
    assert "max_connections" in hit.limit_setting and "CONNECTION LIMIT" in hit.limit_setting
    assert hit.as_dict()["sqlstate"] == "53300"
    # libpq's verbose text carries the code itself.
    assert classify_53300("FATAL:  53300:  Entschuldigung").kind == "unrecognised"  # type: ignore[union-attr]
    # Another SQLSTATE is not a slot refusal; the English wording still wins over the code.
    assert classify_53300(german, "28P01") is None
    english = classify_53300("FATAL:  sorry, too many clients already", "53300")
    assert english is not None and english.kind == "max_connections"
