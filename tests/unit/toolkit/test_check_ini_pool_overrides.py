"""`check` reading a pgbouncer.ini counts each pool as the pooler would run it: [users] and
[databases] pool_size / reserve_pool_size and the per-entry max_db_connections /
max_user_connections (config.pools.resolve_pool_settings), not only the [pgbouncer] defaults.
A [users] pool_size of 100 used to pass a deploy that opens 105 server connections."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgfunnel.cli import main

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: api}
spec:
  replicas: 2
  template:
    spec:
      containers:
        - name: api
          env:
            - {name: DATABASE_URL, value: "postgresql://app@pgbouncer:6432/app"}
            - {name: DB_POOL_SIZE, value: "10"}
"""


def check(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, ini: str, users: str = '"app" "x"\n'
) -> tuple[int, str]:
    (tmp_path / "userlist.txt").write_text(users)
    (tmp_path / "pgbouncer.ini").write_text(
        ini
        + "\n[pgbouncer]\nauth_type = scram-sha-256\nauth_file = "
        + str(tmp_path / "userlist.txt")
        + "\ndefault_pool_size = 20\nreserve_pool_size = 5\n"
    )
    (tmp_path / "dep.yaml").write_text(DEPLOYMENT)
    code = main(
        [
            "check",
            str(tmp_path / "pgbouncer.ini"),
            str(tmp_path / "dep.yaml"),
            "--max-connections",
            "100",
        ]
    )
    return code, capsys.readouterr().out


def test_defaults_alone_pass(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out = check(capsys, tmp_path, "[databases]\napp = host=db dbname=app\n")
    assert code == 0
    assert "PASS: 25 <= 77" in out


def test_a_users_pool_size_counts(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out = check(
        capsys, tmp_path, "[databases]\napp = host=db dbname=app\n[users]\napp = pool_size=100\n"
    )
    assert code == 1
    assert "worst-case server connections 105 > 0.8 x 97 usable = 77" in out


def test_a_users_reserve_pool_size_counts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out = check(
        capsys,
        tmp_path,
        "[databases]\napp = host=db dbname=app\n[users]\napp = reserve_pool_size=60\n",
    )
    assert code == 1
    assert "server connections (worst case)                  80" in out


def test_a_database_pool_size_and_reserve_pool_count(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out = check(
        capsys,
        tmp_path,
        "[databases]\napp = host=db dbname=app pool_size=50 reserve_pool=30\n",
    )
    assert code == 1
    assert "server connections (worst case)                  80" in out


def test_a_users_entry_wins_over_the_database_entry(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out = check(
        capsys,
        tmp_path,
        "[databases]\napp = host=db dbname=app pool_size=90\n[users]\napp = pool_size=10\n",
    )
    assert code == 0
    assert "PASS: 15 <= 77" in out


def test_a_database_max_db_connections_caps_its_pools(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Two users, each 100 + 5, on a database capped at 40: the pooler opens at most 40.
    code, out = check(
        capsys,
        tmp_path,
        "[databases]\napp = host=db dbname=app max_db_connections=40\n"
        "[users]\napp = pool_size=100\nreport = pool_size=100\n",
        users='"app" "x"\n"report" "y"\n',
    )
    assert code == 0
    assert "PASS: 40 <= 77" in out


def test_a_users_max_user_connections_caps_its_pools(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # One user on two databases, 2 x (100 + 5), capped at 50 for that user.
    code, out = check(
        capsys,
        tmp_path,
        "[databases]\napp = host=db dbname=app\nother = host=db dbname=other\n"
        "[users]\napp = pool_size=100 max_user_connections=50\n",
    )
    assert code == 0
    assert "PASS: 50 <= 77" in out


def test_a_users_entry_names_a_user_the_auth_file_lacks(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # auth_query users are in no auth_file; a [users] entry says they log in.
    code, out = check(
        capsys,
        tmp_path,
        "[databases]\napp = host=db dbname=app\n[users]\nbatch = pool_size=70\n",
    )
    assert code == 1
    assert "server connections (worst case)                 100" in out
