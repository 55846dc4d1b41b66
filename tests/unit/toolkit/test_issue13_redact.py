"""Redaction never leaks: every secret form issue 13 names, and a fuzz of the real CLI in which a
secret planted in any input format never reaches stdout, stderr, JSON, SARIF, written files or
an exception."""

from __future__ import annotations

import contextlib
import io
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgfunnel.cli import main
from pgfunnel.toolkit.redact import INPUT_MASK, MASK, Redactor


def _cli(*argv: str) -> tuple[int | None, str]:
    """Runs `pgfunnel ARGV` in-process; the exit code and everything it showed: stdout,
    stderr and the text and traceback of any exception that escaped."""
    out, err = io.StringIO(), io.StringIO()
    code: int | None = None
    shown = ""
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
        except Exception as exc:  # what escapes is what a user would see
            shown = f"{exc}\n{traceback.format_exc()}"
    return code, out.getvalue() + err.getvalue() + shown


# --- each case the issue names -------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "secret", "kind"),
    [
        ("DB_PASS=passw0rdOne", "passw0rdOne", "key-value"),
        ("PGPASS=passw0rdTwo", "passw0rdTwo", "key-value"),
        ("export MYSQL_PWD='pw d3'", "pw d3", "key-value"),
        ("db.example.com:5432:app:app:PgPassLine9", "PgPassLine9", "pgpass"),
        ("*:*:*:replicator:Rep\\:lic9", "Rep\\:lic9", "pgpass"),
        ("ssl_passphrase_command = 'echo PassPhraseXyz'", "PassPhraseXyz", "key-value"),
        ("- name: DB_PASSWORD\n  value: hunter2k8s", "hunter2k8s", "k8s-env"),
        ('- value: "hunter2k8s"\n  name: PGPASSWORD', "hunter2k8s", "k8s-env"),
        ('"DB_PASSWORD": "quoted key"', "quoted key", "key-value"),
        (
            "DB_PASSWORD: |\n  block line one\n  block line two\nother: 1",
            "block line",
            "yaml-block",
        ),
        ("postgresql://app:p@ss@db:5432/app", "p@ss", "uri"),
    ],
)
def test_forms_that_leaked_are_masked(text: str, secret: str, kind: str) -> None:
    r = Redactor()
    out = r.scan(text)
    assert secret not in out and MASK in out
    assert r.counts == {kind: 1}


def test_password_with_a_space_is_masked_whole() -> None:
    r = Redactor()
    assert r.scan("password = hunter 2") == "password = ***"
    # In a conninfo string the next keyword ends the value.
    assert r.scan("host=db password=hunter2 dbname=app") == "host=db password=*** dbname=app"
    assert r.scan("DB_PASSWORD: hunter 2 # rotated") == "DB_PASSWORD: *** # rotated"
    assert r.total == 3


def test_a_secret_reference_is_not_a_secret() -> None:
    text = (
        "env:\n"
        "  - name: DB_PASSWORD\n"
        "    valueFrom:\n"
        "      secretKeyRef:\n"
        "        name: db\n"
        "        key: password\n"
        "existingSecret: pg-credentials\n"
        "secretName: pg-credentials\n"
        "PGPASSFILE=/home/app/.pgpass\n"
        "password = var.db_password\n"
        "DB_PASSWORD=${DB_PASSWORD}\n"
    )
    r = Redactor()
    assert r.scan(text) == text
    assert r.total == 0


def test_input_masking_keeps_the_file_parseable_and_its_lines() -> None:
    text = (
        "replicaCount: 2\n"
        "env:\n"
        "  DB_PASSWORD: hunter2x\n"
        "  DATABASE_URL: postgresql://app:s3cretUri@db:6432/app?connection_limit=7\n"
        "  key: |\n"
        "    -----BEGIN PRIVATE KEY-----\n"
        "    MIIEv\n"
        "    -----END PRIVATE KEY-----\n"
        "after: 1\n"
    )
    r = Redactor()
    masked = r.redact_input(text)
    assert masked.count("\n") == text.count("\n")
    data = yaml.safe_load(masked)
    assert data["env"]["DB_PASSWORD"] == INPUT_MASK
    assert data["env"]["DATABASE_URL"] == (
        f"postgresql://app:{INPUT_MASK}@db:6432/app?connection_limit=7"
    )
    assert data["after"] == 1
    assert r.counts == {"key-value": 1, "uri": 1, "private-key": 1}
    # A secret seen once is masked wherever it shows up again, pattern or not.
    assert r.mask("error near 'hunter2x' and s3cretUri") == "error near '***' and ***"


def test_yaml_error_in_advise_fleet_does_not_print_the_password(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "server: {ram: 8GB, cpus: 4, max_connections: 100}\n"
        "services:\n"
        "  - name: web\n"
        "    dsn: postgresql://app:Sup3rS3cret@db:5432/app\n"
        "    password: hunter2secret\n"
        "    broken: [unclosed, hunter2secret\n"
    )
    code, shown = _cli("advise", "--fleet", str(fleet))
    assert code == 2 and "while parsing a flow sequence" in shown
    assert "hunter2secret" not in shown and "Sup3rS3cret" not in shown
    code, shown = _cli("advise", "--pgtune", "--fleet", str(fleet))
    assert code == 2 and "hunter2secret" not in shown


def test_broken_helm_values_in_check_do_not_print_the_uri_password(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(
        'replicaCount: 3\nenv:\n  DB_POOL_SIZE: "10"\n'
        "  DATABASE_URL: postgresql://app:Sup3rS3cret@db:5432/app: x\n"
    )
    code, shown = _cli("check", str(values), "--max-connections", "100")
    assert code == 2 and "mapping values are not allowed here" in shown
    assert "Sup3rS3cret" not in shown and "://app:REDACTED@db" in shown


def test_a_secret_key_ref_is_not_counted_by_check(tmp_path: Path) -> None:
    manifest = tmp_path / "deploy.yaml"
    manifest.write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 2\n"
        "  template:\n    spec:\n      containers:\n        - name: web\n          env:\n"
        '            - {name: DB_POOL_SIZE, value: "5"}\n'
        "            - name: DB_PASSWORD\n              valueFrom:\n                secretKeyRef:\n"
        "                  name: db\n                  key: password\n"
    )
    code, shown = _cli("check", str(manifest), "--max-connections", "100")
    assert code == 0
    assert "no secrets found in the inputs" in shown


# --- the fuzz ----------------------------------------------------------------------------------
# A secret: distinctive enough never to occur in the output by chance.
SECRETS = st.from_regex(r"[A-Z][a-z][0-9][A-Za-z0-9_.~!%+-]{5,17}", fullmatch=True)
HELM_SLOTS = [
    "  DB_PASSWORD: {s}\n",
    '  PGPASSWORD: "{s}"\n',
    "  DATABASE_URL: postgresql://app:{s}@db:5432/app\n",
    "  API_TOKEN: '{s}'\n",
    "  DB_PASS: {s}\n",
    "  SSL_KEY_PASSPHRASE: |\n    {s}\n",
]


def _helm(slot: str) -> dict[str, str]:
    return {"values.yaml": f'replicaCount: 2\nenv:\n  DB_POOL_SIZE: "5"\n{slot}'}


K8S_SLOTS = [
    "            - name: DB_PASSWORD\n              value: {s}\n",
    '            - name: PGPASSWORD\n              value: "{s}"\n',
    "            - name: DATABASE_URL\n              value: postgres://app:{s}@db/app\n",
    "            - value: {s}\n              name: REDIS_PASSWORD\n",
]


def _k8s(slot: str) -> dict[str, str]:
    return {
        "deploy.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n"
        "spec:\n  replicas: 2\n  template:\n    spec:\n      containers:\n        - name: web\n"
        '          env:\n            - name: DB_POOL_SIZE\n              value: "5"\n' + slot
    }


COMPOSE_SLOTS = [
    "      - DB_PASS={s}\n",
    "      - PGPASSWORD={s}\n",
    '      - "POSTGRES_PASSWORD={s}"\n',
    "      - DATABASE_URL=postgresql://app:{s}@db/app\n",
]


def _compose(slot: str) -> dict[str, str]:
    return {
        "docker-compose.yml": "services:\n  db:\n    image: postgres:16\n  web:\n"
        "    image: web:1\n    environment:\n      - DB_POOL_SIZE=5\n" + slot
    }


ENV_SLOTS = [
    "DB_PASS={s}\n",
    'PGPASSWORD="{s}"\n',
    "export API_TOKEN={s}\n",
    "DATABASE_URL=postgres://u:{s}@h:5432/db\n",
    "DB_PASSWORD = {s} {s}\n",
]


def _env(slot: str) -> dict[str, str]:
    return {"app.env": "DB_POOL_SIZE=5\n" + slot}


TF_SLOTS = ['  password = "{s}"\n', '  master_password = "{s}"\n']


def _terraform(slot: str) -> dict[str, str]:
    return {
        "rds.tf": 'resource "aws_db_instance" "main" {\n  instance_class = "db.r6g.large"\n'
        + slot
        + '}\nresource "aws_db_parameter_group" "pg" {\n  parameter {\n'
        '    name  = "max_connections"\n    value = "200"\n  }\n}\n',
        "app.env": "DB_POOL_SIZE=5\n",
    }


CONF_SLOTS = [
    "ssl_passphrase_command = 'echo {s}'\n",
    "primary_conninfo = 'host=primary user=rep password={s}'\n",
]


def _conf(slot: str) -> dict[str, str]:
    return {"postgresql.conf": "max_connections = 100\n" + slot, "app.env": "DB_POOL_SIZE=5\n"}


INI_SLOTS = [
    "app = host=db dbname=app password={s}\n",
    "app = host=db dbname=app password='{s}'\n",
]


def _ini(slot: str) -> dict[str, str]:
    return {
        "pgbouncer.ini": "[databases]\n"
        + slot
        + "[pgbouncer]\nlisten_port = 6432\nauth_file = {root}/userlist.txt\n"
        "pool_mode = transaction\n",
        "userlist.txt": '"app" "{s}"\n',
        "app.env": "DB_POOL_SIZE=5\nDATABASE_URL=postgres://app@pgbouncer:6432/app\n",
    }


FLEET_SLOTS = [
    "    password: {s}\n",
    "    dsn: postgresql://app:{s}@db:5432/app\n",
    "    env: {DB_PASSWORD: {s}}\n",
]


def _fleet(slot: str) -> dict[str, str]:
    return {
        "fleet.yaml": "server:\n  ram: 8GB\n  cpus: 4\n  max_connections: 100\nservices:\n"
        "  - name: web\n    instances: 2\n    pool_size: 5\n" + slot
    }


FORMATS: dict[str, tuple[Callable[[str], dict[str, str]], list[str]]] = {
    "helm": (_helm, HELM_SLOTS),
    "k8s": (_k8s, K8S_SLOTS),
    "compose": (_compose, COMPOSE_SLOTS),
    "env": (_env, ENV_SLOTS),
    "terraform": (_terraform, TF_SLOTS),
    "postgresql.conf": (_conf, CONF_SLOTS),
    "pgbouncer.ini": (_ini, INI_SLOTS),
    "fleet": (_fleet, FLEET_SLOTS),
}
# Ways to break a file so that its parser complains, quoting the secret where it can.
BREAKS = [
    "",
    "broken: [unclosed, {s}\n",
    "  bad: : {s}\n",
    "{s} = = {s}\n",
    '"unterminated {s}\n',
    "\t{s}: [\n",
]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    secret=SECRETS,
    fmt=st.sampled_from(sorted(FORMATS)),
    pick=st.integers(min_value=0, max_value=100),
    broken=st.sampled_from(BREAKS),
    where=st.sampled_from(["before", "after"]),
    output=st.sampled_from(["text", "json", "sarif"]),
)
def test_a_planted_secret_never_reaches_any_output(
    secret: str, fmt: str, pick: int, broken: str, where: str, output: str
) -> None:
    build, slots = FORMATS[fmt]
    slot = slots[pick % len(slots)]
    files = build(slot)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        names = []
        for name, text in files.items():
            body = text
            if not names and broken:
                body = broken + text if where == "before" else text + broken
            (root / name).write_text(body.replace("{s}", secret).replace("{root}", tmp))
            if name != "userlist.txt":
                names.append(str(root / name))
        if fmt == "fleet":
            argv = ["advise", "--fleet", names[0], "--out-dir", str(root / "out")]
            argv += ["--format", "json" if output == "json" else "text"]
        else:
            argv = ["check", *names, "--max-connections", "100", "--format", output]
        code, shown = _cli(*argv)
        written = "".join(p.read_text() for p in (root / "out").glob("*")) if fmt == "fleet" else ""
    assert code in (0, 1, 2), shown
    assert secret not in shown, shown
    assert secret not in written
