"""Readers for what `check` and `advise` read: Helm values, manifests, compose, .env, Terraform,
pgbouncer.ini, postgresql.conf and the advise YAML, turned into a Fleet and a Supply."""

from __future__ import annotations

import contextlib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import yaml

from pgfunnel.toolkit import fleet as fl
from pgfunnel.toolkit import pgcommand, rds
from pgfunnel.toolkit.limits import usable_slots
from pgfunnel.toolkit.redact import Redactor


class InputError(Exception):
    """A file `check` or `advise` cannot read (exit 2)."""


@dataclass
class Supply:
    max_connections: int | None = None
    superuser_reserved: int = 3
    reserved: int = 0
    steps: list[str] = field(default_factory=list)
    pinned: dict[str, str] = field(default_factory=dict)

    @property
    def usable(self) -> int | None:
        if self.max_connections is None:
            return None
        return usable_slots(self.max_connections, self.superuser_reserved, self.reserved)


@dataclass
class Inputs:
    fleet: fl.Fleet = field(default_factory=fl.Fleet)
    supply: Supply = field(default_factory=Supply)
    conf: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    redactor: Redactor = field(default_factory=Redactor)
    raw_fleet: dict[str, Any] = field(default_factory=dict)
    instance_class: str | None = None
    # HorizontalPodAutoscalers of every input: target name -> (maxReplicas, where); applied once
    # all files are read, since the HPA and its Deployment are often in different files.
    hpas: dict[str, tuple[int, str]] = field(default_factory=dict)


# --- environment variables -------------------------------------------------------------------
POOL_VARS = (
    "DB_POOL_SIZE",
    "DATABASE_POOL_SIZE",
    "POOL_SIZE",
    "SQLALCHEMY_POOL_SIZE",
    "DB_POOL",
    "DB_POOL_MAX",
    "PG_POOL_MAX",
    "PGPOOL_MAX",
    "DATABASE_POOL_MAX",
    "HIKARI_MAXIMUM_POOL_SIZE",
    "SPRING_DATASOURCE_HIKARI_MAXIMUM_POOL_SIZE",
    "SPRING_DATASOURCE_HIKARI_MAXIMUMPOOLSIZE",
    "RAILS_MAX_THREADS",
    "PGFUNNEL_POOL_SIZE",
)
OVERFLOW_VARS = (
    "SQLALCHEMY_MAX_OVERFLOW",
    "DB_MAX_OVERFLOW",
    "DATABASE_MAX_OVERFLOW",
    "PGFUNNEL_MAX_OVERFLOW",
)
PROCESS_VARS = (
    "WEB_CONCURRENCY",
    "GUNICORN_WORKERS",
    "UVICORN_WORKERS",
    "PUMA_WORKERS",
    "WORKERS",
    "NUM_WORKERS",
    "CELERY_CONCURRENCY",
    "PGFUNNEL_PROCESSES",
)


def _guess_framework(env: dict[str, str]) -> str | None:
    names = " ".join(env)
    if env.get("PGFUNNEL_FRAMEWORK"):
        return env["PGFUNNEL_FRAMEWORK"]
    if "SQLALCHEMY" in names:
        return "sqlalchemy"
    if "HIKARI" in names or "SPRING_DATASOURCE" in names:
        return "hikaricp"
    if "RAILS" in names:
        return "activerecord"
    if "DJANGO" in names:
        return "django"
    if "PG_POOL" in names or "PGPOOL" in names:
        return "node-postgres"
    url = env.get("DATABASE_URL", "")
    if "connection_limit=" in url or "PRISMA" in names:
        return "prisma"
    return None


def apply_env(svc: fl.Service, env: dict[str, str]) -> None:
    """Pool size, overflow, processes and framework from a service's environment."""
    for var in POOL_VARS:
        if env.get(var, "").strip().isdigit():
            svc.pool_size = int(env[var])
            svc.notes.append(f"pool size from {var}")
            break
    for var in OVERFLOW_VARS:
        if env.get(var, "").strip().isdigit():
            svc.max_overflow = int(env[var])
            break
    for var in PROCESS_VARS:
        if env.get(var, "").strip().isdigit():
            svc.processes = int(env[var])
            svc.notes.append(f"processes from {var}")
            break
    svc.framework = svc.framework or _guess_framework(env)
    url = env.get("DATABASE_URL") or env.get("DB_URL") or ""
    if url:
        try:
            parsed = urlparse(url)
            query = parse_qs(parsed.query)
            if "connection_limit" in query and svc.pool_size is None:
                svc.pool_size = int(query["connection_limit"][0])
                svc.notes.append("pool size from DATABASE_URL connection_limit")
            host = (parsed.hostname or "").lower()
            if parsed.port == 6432 or "pgbouncer" in host or "pgfunnel" in host:
                svc.via_pooler = True
            if parsed.path.strip("/") and not svc.database:
                svc.database = parsed.path.strip("/")
            if parsed.username and not svc.role:
                svc.role = parsed.username
        except ValueError:
            pass


def _env_from_k8s(env: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(env, dict):
        return {str(k): str(v) for k, v in env.items() if not isinstance(v, dict | list)}
    for item in env or []:
        if isinstance(item, dict) and "name" in item and "value" in item:
            out[str(item["name"])] = str(item["value"])
    return out


def _hints(svc: fl.Service, hints: Any) -> None:
    if not isinstance(hints, dict):
        return
    for key in ("processes", "pool_size", "max_overflow"):
        if key in hints:
            setattr(svc, key, int(hints[key]))
    for key in ("framework", "role", "database"):
        if key in hints:
            setattr(svc, key, str(hints[key]))
    if "cpus" in hints:
        svc.cpus = float(hints["cpus"])
    if "via_pooler" in hints:
        svc.via_pooler = bool(hints["via_pooler"])


def _line_of(text: str, needle: str) -> int:
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    return 1


# --- Helm values -----------------------------------------------------------------------------
def _helm_service(name: str, block: dict[str, Any], path: str, text: str) -> fl.Service:
    svc = fl.Service(name=name, source=path)
    svc.instances = int(block.get("replicaCount", 1))
    auto = block.get("autoscaling") or {}
    if isinstance(auto, dict) and auto.get("enabled", True) and auto.get("maxReplicas"):
        svc.max_instances = int(auto["maxReplicas"])
    strategy = block.get("strategy") or block.get("updateStrategy") or {}
    rolling = (strategy.get("rollingUpdate") if isinstance(strategy, dict) else None) or block.get(
        "rollingUpdate"
    )
    svc.surge = rolling.get("maxSurge") if isinstance(rolling, dict) else None
    env = _env_from_k8s(block.get("env"))
    env.update(_env_from_k8s(block.get("extraEnv")))
    apply_env(svc, env)
    _hints(svc, block.get("pgfunnel"))
    svc.line = _line_of(text, f"{name}:") if name != Path(path).stem else 1
    return svc


def read_helm(path: str, data: dict[str, Any], text: str, out: Inputs) -> None:
    found = False
    if any(k in data for k in ("replicaCount", "autoscaling", "env")):
        name = str(data.get("fullnameOverride") or data.get("nameOverride") or Path(path).stem)
        out.fleet.services.append(_helm_service(name, data, path, text))
        found = True
    for key, block in data.items():
        if isinstance(block, dict) and any(k in block for k in ("replicaCount", "autoscaling")):
            out.fleet.services.append(_helm_service(str(key), block, path, text))
            found = True
    if not found:
        raise InputError(f"{path}: no replicaCount/autoscaling/env found: not Helm values?")


# --- Kubernetes manifests --------------------------------------------------------------------
def read_k8s(path: str, docs: list[dict[str, Any]], text: str, out: Inputs) -> None:
    # The k-th HPA document is at the k-th `kind: HorizontalPodAutoscaler` line.
    hpa_lines = [
        i
        for i, line in enumerate(text.splitlines(), 1)
        if re.match(r"^kind:\s*HorizontalPodAutoscaler\b", line)
    ]
    for d in docs:
        if d.get("kind") == "HorizontalPodAutoscaler":
            hpa_name = str((d.get("metadata") or {}).get("name", ""))
            line = hpa_lines.pop(0) if hpa_lines else 1
            where = f"HorizontalPodAutoscaler {hpa_name} ({path}:{line})"
            target = str(d["spec"]["scaleTargetRef"]["name"])
            out.hpas[target] = (int(d["spec"]["maxReplicas"]), where)
    for d in docs:
        if d.get("kind") not in ("Deployment", "StatefulSet", "ReplicaSet"):
            continue
        meta = d.get("metadata") or {}
        spec = d.get("spec") or {}
        name = str(meta.get("name", "unnamed"))
        svc = fl.Service(name=name, source=path, line=_line_of(text, f"name: {name}"))
        svc.instances = int(spec.get("replicas", 1))
        rolling = (spec.get("strategy") or {}).get("rollingUpdate") or {}
        svc.surge = rolling.get("maxSurge") if d.get("kind") == "Deployment" else 0
        containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
        env: dict[str, str] = {}
        for c in containers:
            env.update(_env_from_k8s(c.get("env")))
        apply_env(svc, env)
        ann = meta.get("annotations") or {}
        _hints(
            svc, {k.split("/", 1)[1]: v for k, v in ann.items() if k.startswith("pgfunnel.dev/")}
        )
        out.fleet.services.append(svc)


def apply_hpas(out: Inputs) -> None:
    """Each HPA's maxReplicas on the workload it scales, whichever input either came from."""
    names = {s.name for s in out.fleet.services}
    for target, (max_replicas, where) in sorted(out.hpas.items()):
        for svc in out.fleet.services:
            if svc.name == target:
                svc.max_instances = max(svc.max_instances or 0, max_replicas)
                svc.notes.append(f"maxReplicas {max_replicas} from {where}")
        if target not in names:
            out.notes.append(f"{where} scales {target}, which is not in the inputs")


# --- docker-compose --------------------------------------------------------------------------
def read_compose(path: str, data: dict[str, Any], text: str, out: Inputs) -> None:
    for name, block in (data.get("services") or {}).items():
        if not isinstance(block, dict):
            continue
        image = str(block.get("image", ""))
        if re.search(r"(^|/)(postgres|postgis|postgresql)(:|$)", image):
            _compose_postgres(path, str(name), block, text, out)
            continue
        if re.search(r"(^|/)(pgbouncer|pgfunnel|bitnami/pgbouncer)(:|$)", image):
            continue
        svc = fl.Service(name=str(name), source=path, line=_line_of(text, f"{name}:"))
        deploy = block.get("deploy") or {}
        svc.instances = int(deploy.get("replicas") or block.get("scale") or 1)
        svc.surge = 0
        env = block.get("environment")
        env_map = _env_from_k8s(env) if isinstance(env, dict) else {}
        if isinstance(env, list):
            for item in env:
                k, _, v = str(item).partition("=")
                env_map[k] = v
        apply_env(svc, env_map)
        _hints(svc, block.get("x-pgfunnel"))
        out.fleet.services.append(svc)


def _compose_postgres(path: str, name: str, block: dict[str, Any], text: str, out: Inputs) -> None:
    """The slot settings of a compose PostgreSQL service's `command: postgres -c ...`."""
    settings = pgcommand.command_settings(block.get("command"))
    line = start = _line_of(text, f"{name}:")
    for i, raw in enumerate(text.splitlines()[start:], start + 1):
        if raw.strip().startswith("command:"):
            line = i
            break
    where = f"{path}:{line}, {name}: command"
    if "max_connections" in settings:
        out.supply.max_connections = int(settings["max_connections"])
        out.supply.steps.append(f"max_connections = {settings['max_connections']} ({where})")
    if "superuser_reserved_connections" in settings:
        out.supply.superuser_reserved = int(settings["superuser_reserved_connections"])
    if "reserved_connections" in settings:
        out.supply.reserved = int(settings["reserved_connections"])


# --- .env ------------------------------------------------------------------------------------
def parse_env_text(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ")
        key, sep, value = line.partition("=")
        if sep:
            env[key.strip()] = value.strip().strip("'\"")
    return env


def read_env(path: str, text: str, out: Inputs, instances: int = 1) -> None:
    name = Path(path).name.removeprefix(".").removesuffix(".env") or "app"
    svc = fl.Service(
        name=name if name != "env" else "app", source=path, instances=instances, line=1
    )
    apply_env(svc, parse_env_text(text))
    out.fleet.services.append(svc)


# --- Terraform -------------------------------------------------------------------------------
_TF_ATTR = re.compile(r'(\w+)\s*=\s*"((?:[^"\\]|\\.)*)"')


def read_terraform(path: str, text: str, out: Inputs, instance_class: str | None) -> None:
    if "aws_db_parameter_group" not in text:
        raise InputError(f"{path}: no aws_db_parameter_group resource")
    m = re.search(r'instance_class\s*=\s*"([^"]+)"', text)
    klass = instance_class or out.instance_class or (m.group(1) if m else None)
    for offset, body in rds.terraform_parameter_blocks(text):
        attrs = dict(_TF_ATTR.findall(body))
        if attrs.get("name") != "max_connections":
            continue
        value = attrs.get("value", "").replace("\\", "")
        line = text[:offset].count("\n") + 1
        if value.strip().isdigit():
            out.supply.max_connections = int(value)
            out.supply.steps.append(f"max_connections = {value} ({path}:{line})")
            return
        if not klass:
            raise InputError(f"{path}:{line}: {value} needs an instance class (--instance-class)")
        try:
            mc, steps = rds.max_connections_step(value, rds.instance_class(klass), f"{path}:{line}")
        except rds.RdsError as exc:
            raise InputError(f"{path}:{line}: {exc}") from exc
        out.supply.max_connections = mc
        out.supply.steps += steps
        return
    if klass:
        try:
            mc, steps = rds.max_connections_step(
                rds.DEFAULT_MAX_CONNECTIONS_FORMULA,
                rds.instance_class(klass),
                f"{path}: no max_connections parameter, the RDS default",
            )
        except rds.RdsError as exc:
            raise InputError(f"{path}: {exc}") from exc
        out.supply.max_connections = mc
        out.supply.steps += steps


# --- postgresql.conf -------------------------------------------------------------------------
def parse_postgresql_conf(text: str) -> dict[str, str]:
    """name -> value as written (last one wins, as in PostgreSQL); include directives ignored."""
    conf: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip() if "'" not in raw else _strip_comment(raw)
        if not line:
            continue
        m = re.match(r"^([A-Za-z_][\w.]*)\s*(?:=\s*|\s+)(.*)$", line)
        if not m or m.group(1) in ("include", "include_if_exists", "include_dir"):
            continue
        value = m.group(2).strip()
        if value.startswith("'") and value.endswith("'") and len(value) >= 2:
            value = value[1:-1].replace("''", "'")
        conf[m.group(1).lower()] = value
    return conf


def _strip_comment(line: str) -> str:
    out, quoted = [], False
    for ch in line:
        if ch == "'":
            quoted = not quoted
        if ch == "#" and not quoted:
            break
        out.append(ch)
    return "".join(out).strip()


def supply_from_conf(conf: dict[str, str], path: str, out: Inputs) -> None:
    if "max_connections" in conf:
        out.supply.max_connections = int(conf["max_connections"])
        out.supply.steps.append(f"max_connections = {conf['max_connections']} ({path})")
    if "superuser_reserved_connections" in conf:
        out.supply.superuser_reserved = int(conf["superuser_reserved_connections"])
    if "reserved_connections" in conf:
        out.supply.reserved = int(conf["reserved_connections"])


# --- pgbouncer.ini ---------------------------------------------------------------------------
def read_pgbouncer_ini(path: str, out: Inputs) -> None:
    from pgfunnel.config.ini import ConfigError
    from pgfunnel.config.loader import load_config
    from pgfunnel.config.pools import resolve_pool_settings

    try:
        cfg = load_config(path)
    except ConfigError as exc:
        # The ini reader quotes the file: its secrets are known from _read, mask them.
        raise InputError(out.redactor.mask(str(exc))) from None
    except OSError as exc:
        raise InputError(f"{path}: {exc}") from exc
    auth_file = str(cfg.settings.auth_file or "")
    if auth_file:
        with contextlib.suppress(OSError):
            out.redactor.scan(Path(auth_file).read_text(encoding="utf-8"))
    st = cfg.settings
    spec = fl.PoolerSpec(
        replicas=out.fleet.pooler.replicas if out.fleet.pooler else 1,
        pool_mode=str(st.pool_mode),
        default_pool_size=int(st.default_pool_size),
        reserve_pool_size=int(st.reserve_pool_size),
        max_db_connections=int(st.max_db_connections),
        max_user_connections=int(st.max_user_connections),
        max_client_conn=int(st.max_client_conn),
        source=path,
    )
    with contextlib.suppress(OSError):
        ini_text = Path(path).read_text(encoding="utf-8")
        # Pooler findings point at the pool size, else at the [pgbouncer] section.
        key = "default_pool_size" if "default_pool_size" in ini_text else "[pgbouncer]"
        spec.line = _line_of(ini_text, key)
    # Every user who may log in: the auth_file's, and those a [users] entry names (found by
    # auth_query, say); with neither, any user ('*').
    users = sorted(set(cfg.userlist) | set(cfg.users)) or ["*"]
    for name, db in cfg.databases.items():
        if name == "*":
            continue
        if db.pool_size is not None:
            spec.pool_sizes[name] = db.pool_size
        if db.dbname:
            spec.dbnames[name] = db.dbname
        spec.db_caps[name] = resolve_pool_settings(st, db).max_db_connections
        db_users = [db.user] if db.user else users
        for u in db_users:
            spec.pools.append((name, u))
            ps = resolve_pool_settings(st, db, cfg.users.get(u))
            spec.pool_caps[(name, u)] = ps.pool_size + ps.reserve_pool_size
            spec.user_caps[u] = ps.max_user_connections
    if not spec.pools:
        spec.pools.append(("*", "*"))
        spec.notes.append("no [databases] entries besides '*': one pool assumed")
    if not cfg.userlist:
        spec.notes.append("no auth_file users: one pool per database assumed")
    out.fleet.pooler = spec


# --- advise YAML -----------------------------------------------------------------------------
def read_fleet_yaml(path: str, data: dict[str, Any], out: Inputs, text: str = "") -> None:
    parsed = fl.from_yaml(data, path)
    fl.locate(parsed, text, path)
    out.fleet.services += parsed.services
    out.fleet.jobs += parsed.jobs
    if parsed.pooler:
        out.fleet.pooler = parsed.pooler
    out.fleet.role_limits.update(parsed.role_limits)
    out.fleet.database_limits.update(parsed.database_limits)
    out.raw_fleet = data
    server = data.get("server") or {}
    if server.get("max_connections") is not None:
        out.supply.max_connections = int(server["max_connections"])
        out.supply.steps.append(f"max_connections = {server['max_connections']} ({path})")
    if server.get("superuser_reserved_connections") is not None:
        out.supply.superuser_reserved = int(server["superuser_reserved_connections"])
    if server.get("reserved_connections") is not None:
        out.supply.reserved = int(server["reserved_connections"])
    if server.get("instance_class"):
        out.instance_class = str(server["instance_class"])
    for name, value in (data.get("pin") or {}).items():
        out.supply.pinned[str(name)] = str(value)


# --- dispatch --------------------------------------------------------------------------------
def detect_kind(path: str, text: str) -> str:
    name = Path(path).name.lower()
    if name.endswith(".tf"):
        return "terraform"
    if name.endswith(".ini") or re.search(r"^\s*\[pgbouncer\]", text, re.M):
        return "pgbouncer"
    if name == ".env" or name.endswith(".env") or name.startswith(".env"):
        return "env"
    if name.endswith(".conf"):
        return "postgresql.conf"
    if name.endswith((".yaml", ".yml")):
        try:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as exc:
            raise InputError(f"{path}: {exc}") from exc
        if not docs:
            raise InputError(f"{path}: empty YAML")
        first = docs[0]
        if any(isinstance(d, dict) and "apiVersion" in d and "kind" in d for d in docs):
            return "kubernetes"
        fleet_keys = ("services", "jobs", "migrations", "serverless")
        if isinstance(first, dict) and any(isinstance(first.get(k), list) for k in fleet_keys):
            return "fleet"
        if isinstance(first, dict) and isinstance(first.get("services"), dict):
            return "compose"
        return "helm"
    raise InputError(
        f"{path}: unknown input kind (Helm values, manifests, compose, .env, .tf, "
        "pgbouncer.ini, postgresql.conf or advise YAML)"
    )


def read_inputs(paths: list[str], instance_class: str | None = None) -> Inputs:
    out = Inputs(instance_class=instance_class)
    ordered = sorted(
        paths, key=lambda p: 0 if "fleet" in detect_kind(p, _read(p, out, False)) else 1
    )
    for path in ordered:
        text = _read(path, out, True)
        kind = detect_kind(path, text)
        if kind == "terraform":
            read_terraform(path, text, out, instance_class)
        elif kind == "pgbouncer":
            read_pgbouncer_ini(path, out)
        elif kind == "env":
            read_env(path, text, out)
        elif kind == "postgresql.conf":
            out.conf.update(parse_postgresql_conf(text))
            supply_from_conf(out.conf, path, out)
        else:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
            if kind == "kubernetes":
                read_k8s(path, [d for d in docs if isinstance(d, dict)], text, out)
            elif kind == "fleet":
                read_fleet_yaml(path, docs[0], out, text)
            elif kind == "compose":
                read_compose(path, docs[0], text, out)
            else:
                if not isinstance(docs[0], dict):
                    raise InputError(f"{path}: expected a mapping")
                read_helm(path, docs[0], text, out)
    apply_hpas(out)
    if out.supply.max_connections is None and out.instance_class:
        # An instance class alone (flag or fleet YAML): RDS's default parameter group.
        try:
            mc, steps = rds.max_connections_step(
                rds.DEFAULT_MAX_CONNECTIONS_FORMULA,
                rds.instance_class(out.instance_class),
                "the RDS default parameter group",
            )
        except rds.RdsError as exc:
            raise InputError(str(exc)) from exc
        out.supply.max_connections = mc
        out.supply.steps += steps
    env_pw = os.environ.get("PGPASSWORD")
    if env_pw:
        out.redactor.scan(f"PGPASSWORD={env_pw}")
    return out


def _read(path: str, out: Inputs, count: bool) -> str:
    """The file's text with its secrets masked (and counted once, with `count`): no parser,
    error message or log line ever sees them."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason})") from None
    return out.redactor.redact_input(text, count=count)


def ceil_div(a: int, b: int) -> int:
    return math.ceil(a / b) if b else 0
