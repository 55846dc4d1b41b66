"""diagnose --from-file: a missing or foreign file is an UNKNOWN report (exit 3), no traceback;
the PostgreSQL 16 reserved tier is shown only where it exists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pgfunnel.cli import main
from pgfunnel.toolkit import diagnose as dg
from pgfunnel.toolkit.model import Backend, Server, Snapshot
from tests.unit.toolkit.schema_check import validate_diagnose


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "No such file or directory"),
        ('{"a": 1}', "JSON object without 'backends'"),
        ("{not json", "not a snapshot"),
        ('{"backends": 7}', "not a snapshot"),
        ("[1, 2]", "not a snapshot"),
        ("", "CSV without a header row naming pid"),
    ],
)
def test_an_unreadable_snapshot_file_is_unknown_not_a_traceback(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str | None,
    expected: str,
) -> None:
    path = tmp_path / "snap.json"
    if content is not None:
        path.write_text(content)
    assert main(["diagnose", "--from-file", str(path)]) == 3
    out = capsys.readouterr()
    assert "UNKNOWN" in out.out and "Could not read the snapshot file" in out.out
    assert expected in out.out and str(path) in out.out
    assert "Traceback" not in out.out + out.err
    assert main(["diagnose", "--from-file", str(path), "--format", "json"]) == 3
    report = json.loads(capsys.readouterr().out)
    validate_diagnose(report)
    assert report["status"] == "unknown" and report["exit_code"] == 3
    assert expected in report["findings"][0]["detail"]


def _snap(version: int, reserved: int) -> Snapshot:
    clients = [
        Backend(pid=i, usename="app", datname="app", backend_type="client backend", state="active")
        for i in range(1, 17)
    ]
    server = Server(server_version_num=version, max_connections=20, reserved_connections=reserved)
    return Snapshot(server, clients)


def test_the_reserved_tier_is_shown_only_from_postgresql_16() -> None:
    pg15 = dg.analyse(_snap(150004, 0))
    validate_diagnose(pg15)
    assert pg15["slots"]["headroom"] == {
        "ordinary_roles": 1,
        "reserved_connections_members": None,
        "superusers": 4,
    }
    detail = next(f for f in pg15["findings"] if f["id"] == "slots-critical")["detail"]
    assert "(max_connections 20 - superuser_reserved_connections 3);" in detail
    assert "reserved-role" not in detail
    pg16 = dg.analyse(_snap(160002, 2))
    validate_diagnose(pg16)
    assert pg16["slots"]["headroom"]["reserved_connections_members"] == 1
    detail = next(f for f in pg16["findings"] if f["id"] == "slots-critical")["detail"]
    assert "- reserved_connections 2);" in detail and "reserved-role members 1" in detail


def test_the_connection_limit_remedy_is_a_number_that_fits_the_server() -> None:
    report = dg.analyse(_snap(150004, 0))  # app holds 16 of 17 usable slots
    finding = next(f for f in report["findings"] if f["id"] == "slots-critical")
    cap = next(r for r in finding["remedy"] if r.startswith("ALTER ROLE"))
    # 16 - (16 - floor(0.75 x 17)) = 12: 12 of 17 is under 75%.
    assert cap.startswith('ALTER ROLE "app" CONNECTION LIMIT 12;  -- the biggest holder (16 now)')


@pytest.mark.parametrize(
    ("hint", "command"), [("", "pgfunnel reap --"), ("host=db", "pgfunnel reap host=db --")]
)
def test_reap_remedies_name_the_dsn_or_none_without_a_gap(hint: str, command: str) -> None:
    """A DSN from the PG* environment is not repeated: `pgfunnel reap --...`, never
    `pgfunnel reap  --...`."""
    report = dg.analyse(_snap(150004, 0), dg.Options(dsn_hint=hint))
    remedies = [r for f in report["findings"] for r in f["remedy"] if "pgfunnel reap" in r]
    assert remedies
    assert all(command in r and "reap  " not in r for r in remedies), remedies
