"""Pure planning without sockets: diagnose analysis on synthetic snapshots and reap plans."""

from __future__ import annotations

import datetime as dt

import pytest

from pgfunnel.toolkit import diagnose as dg
from pgfunnel.toolkit import reap as rp
from pgfunnel.toolkit.model import Backend, Database, Role, Server, Snapshot
from pgfunnel.toolkit.pgtune import PgTuneInput, pgtune
from tests.unit.toolkit.schema_check import validate_diagnose

NOW = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)


def b(
    pid: int,
    state: str = "idle",
    age: float = 10,
    app: str = "web",
    user: str = "app",
    addr: str | None = "10.0.0.1",
    **kw: object,
) -> Backend:
    start = NOW - dt.timedelta(seconds=age + 100)
    change = NOW - dt.timedelta(seconds=age)
    xact = change - dt.timedelta(seconds=5) if state.startswith("idle in") else None
    return Backend(
        pid=pid,
        datname="shop",
        usename=user,
        application_name=app,
        client_addr=addr,
        backend_type="client backend",
        state=state,
        backend_start=start,
        state_change=change,
        xact_start=xact,
        state_age_s=age,
        xact_age_s=(NOW - xact).total_seconds() if xact else None,
        query="SELECT 1",
        is_superuser=kw.pop("is_superuser", False),
        can_signal=kw.pop("can_signal", True),
        **kw,  # type: ignore[arg-type]
    )


def snap(backends: list[Backend], max_connections: int = 20, **server: object) -> Snapshot:
    return Snapshot(
        Server(
            server_version="15.4",
            server_version_num=150004,
            max_connections=max_connections,
            superuser_reserved_connections=3,
            own_pid=999,
            now=NOW,
            current_user="postgres",
            is_superuser=True,
            **server,
        ),  # type: ignore[arg-type]
        backends,
        roles=[Role("app", 10), Role("batch", 15), Role("postgres", -1, rolsuper=True)],
        databases=[Database("shop", 20)],
        settings={"idle_in_transaction_session_timeout": "0", "tcp_keepalives_idle": "0"},
    )


def test_usage_thresholds_and_exit_codes() -> None:
    ok = dg.analyse(snap([b(i) for i in range(5)]))
    assert ok["status"] in ("ok", "warning") and ok["slots"]["usable"] == 17
    warn = dg.analyse(snap([b(i) for i in range(13)]))  # 13/17 = 76%
    assert any(f["id"] == "slots-warning" for f in warn["findings"])
    crit = dg.analyse(snap([b(i) for i in range(16)]))
    assert crit["exit_code"] == 2 and crit["findings"][0]["id"] == "slots-critical"
    for report in (ok, warn, crit):
        validate_diagnose(report)


def test_role_limits_share_and_superuser_exemption() -> None:
    rows = [b(i, user="app") for i in range(9)] + [b(50 + i, user="postgres") for i in range(3)]
    r = dg.analyse(snap(rows, max_connections=30))
    ids = {f["id"] for f in r["findings"]}
    assert "role-limit-near:app" in ids  # 9 of 10
    assert "role-limits-oversubscribed" not in ids  # 25 <= 27
    r2 = dg.analyse(snap(rows, max_connections=20))
    assert "role-limits-oversubscribed" in {f["id"] for f in r2["findings"]}
    roles = {x["name"]: x for x in r["limits"]["roles"]}
    assert roles["postgres"]["exempt"] is True


def test_pooler_in_front_is_detected() -> None:
    rows = [b(i, app="pgbouncer", addr="10.0.0.9") for i in range(4)]
    rows += [b(100 + i, app="", addr="10.0.0.7") for i in range(12)]
    r = dg.analyse(snap(rows, max_connections=40))
    reasons = {p["client_addr"]: p["reason"] for p in r["poolers"]}
    assert reasons["10.0.0.9"] == "application_name names a pooler"
    assert "backends from one address" in reasons["10.0.0.7"]
    assert any(f["id"] == "pooler-in-front" for f in r["findings"])


def test_hidden_rows_are_unknown_not_idle() -> None:
    hidden = Backend(
        pid=7, usename="other", datname="app", application_name="", query="<insufficient privilege>"
    )
    s = snap([b(1), hidden], can_read_all_stats=False)
    r = dg.analyse(s)
    assert r["slots"]["unknown_backends"] == 1
    assert r["idle"]["summary"]["idle"]["count"] == 1
    assert r["privileges"]["missing"] == ["pg_read_all_stats"]


def test_pooler_console_rows() -> None:
    pooler = {
        "pools": [
            {
                "database": "shop",
                "user": "app",
                "cl_active": "10",
                "cl_waiting": "4",
                "sv_active": "20",
                "sv_idle": "0",
                "sv_used": "0",
                "maxwait": "12",
                "maxwait_us": "500000",
                "pool_mode": "transaction",
            }
        ],
        "databases": [{"name": "shop", "pool_size": "20", "max_connections": "0"}],
    }
    r = dg.analyse(snap([b(1)]), pooler=pooler)
    validate_diagnose(r)
    pool = r["pooler"]["pools"][0]
    assert (pool["cl_waiting"], pool["maxwait_s"], pool["server_connections"]) == (4, 12.5, 20)
    assert r["findings"][0]["severity"] == "critical"


def test_reap_order_caps_and_exclusions() -> None:
    rows = [
        b(1, "idle in transaction", 100, app="a"),
        b(2, "idle in transaction (aborted)", 50, app="a"),
        b(3, "idle in transaction", 500, app="a"),
        b(4, "idle", 9000, app="a"),
        b(5, "idle in transaction", 600, app="psql", is_superuser=True),
        b(6, "idle in transaction", 600, app="pg_dump"),
        b(7, "idle in transaction", 600, app="other", can_signal=False),
        b(8, "active", 600, app="a"),
        b(999, "idle in transaction", 600, app="me"),
        b(9, "idle in transaction", 5, app="a"),
    ]
    f = rp.Filters(idle_in_transaction_s=30, idle_s=3600, max_share=1)
    plan = rp.plan(snap(rows), f)
    assert [t.backend.pid for t in plan.targets] == [2, 3, 1, 4]
    skipped = {s.backend.pid for s in plan.skipped}
    assert skipped == {5, 6}
    assert [s.backend.pid for s in plan.no_privilege] == [7]
    assert plan.statement is not None and "(2, " in plan.statement and "999" not in plan.statement
    capped = rp.plan(snap(rows), rp.Filters(idle_in_transaction_s=30, idle_s=3600, max_share=0.5))
    assert [t.backend.pid for t in capped.targets] == [2, 3, 1]  # half of app a's 6 sessions
    assert any("share cap" in s.reason and s.backend.pid == 4 for s in capped.skipped)
    one = rp.plan(snap(rows), rp.Filters(idle_in_transaction_s=30, max_targets=1, max_share=1))
    assert [t.backend.pid for t in one.targets] == [2]
    only_b = rp.plan(
        snap(rows), rp.Filters(idle_in_transaction_s=30, max_share=1, roles=["nobody"])
    )
    assert only_b.targets == [] and only_b.statement is None
    cidr = rp.plan(
        snap(rows), rp.Filters(idle_in_transaction_s=30, max_share=1, client_cidrs=["10.0.0.0/24"])
    )
    assert len(cidr.targets) == 3
    with pytest.raises(ValueError):
        rp.Filters().validate()


def test_pgtune_reproduces_the_reference_numbers() -> None:
    out = dict(pgtune(PgTuneInput(16 * 1024**3, 8, 200, "web", 18)))
    assert out["work_mem"] == "20164kB"
    assert (out["shared_buffers"], out["effective_cache_size"]) == ("4GB", "12GB")
    assert (out["maintenance_work_mem"], out["wal_buffers"]) == ("1GB", "16MB")
    assert out["max_parallel_workers_per_gather"] == "4"
    assert out["io_method"] == "io_uring"
    dw = dict(pgtune(PgTuneInput(64 * 1024**3, 16, None, "dw", 15)))
    assert dw["max_connections"] == "40" and dw["max_parallel_workers_per_gather"] == "8"
    assert dw["random_page_cost"] == "4" and dw["autovacuum_max_workers"] == "4"
    small = dict(pgtune(PgTuneInput(2 * 1024**3, 2, 100, "oltp", 15)))
    assert small["work_mem"] == "4854kB" and "max_worker_processes" not in small


def test_reap_default_share_cap_spares_idle_pools_but_not_leaked_transactions() -> None:
    """Without --max-share, every idle-in-transaction session past the age is a target (an
    application whose sessions all leak loses them all); idle targets are capped at half of
    their application's sessions, counting what the round already ends."""
    leaky = [b(i, "idle in transaction", 100, app="leaky") for i in range(1, 5)]
    pool = [b(10 + i, "idle", 9000, app="pool") for i in range(6)]
    mixed = [b(20, "idle in transaction", 100, app="mixed")]
    mixed += [b(21 + i, "idle", 9000, app="mixed") for i in range(3)]
    rows = leaky + pool + mixed
    f = rp.Filters(idle_in_transaction_s=30, idle_s=3600)
    plan = rp.plan(snap(rows, max_connections=40), f)
    ended = {t.backend.pid for t in plan.targets}
    assert {1, 2, 3, 4} <= ended  # all four of leaky's sessions
    assert len(ended & {10, 11, 12, 13, 14, 15}) == 3  # half of pool's six idle sessions
    # mixed: its leaked transaction, then one idle session (2 of 4 = the 0.5 cap)
    assert 20 in ended and len(ended & {21, 22, 23}) == 1
    capped = [s for s in plan.skipped if "share cap" in s.reason]
    assert len(capped) == 5
    assert all(s.backend.state == "idle" for s in capped)
    assert "--max-share 1 lifts it" in capped[0].reason
    # An explicit --max-share caps every target, idle in transaction too.
    half = rp.plan(
        snap(rows, max_connections=40), rp.Filters(idle_in_transaction_s=30, max_share=0.5)
    )
    assert len({t.backend.pid for t in half.targets} & {1, 2, 3, 4}) == 2
    assert any("--max-share 0.5" in s.reason for s in half.skipped)
    with pytest.raises(ValueError, match="max-share"):
        rp.Filters(idle_s=60, max_share=0).validate()


def test_reap_reports_hidden_sessions_and_missing_privileges() -> None:
    hidden = Backend(
        pid=70,
        usename="other",
        datname="shop",
        application_name="x",
        query="<insufficient privilege>",
    )
    rows = [
        b(1, "idle in transaction", 100, user="batch", can_signal=False),
        b(2, "idle in transaction", 100, user="root", is_superuser=True, can_signal=False),
        hidden,
    ]
    s = snap(rows, can_read_all_stats=False)
    s.server.current_user = "ops"
    plan = rp.plan(s, rp.Filters(idle_in_transaction_s=30, include_superusers=True))
    assert plan.targets == [] and plan.incomplete
    assert [x.backend.pid for x in plan.not_visible] == [70]
    assert {x.backend.pid for x in plan.no_privilege} == {1, 2}
    lines = " | ".join(plan.missing_privileges)
    assert "GRANT pg_read_all_stats TO ops;" in lines
    assert "GRANT pg_signal_backend TO ops;" in lines
    assert "superuser session(s) can be ended by a superuser only" in lines
    # Filters on what hidden rows still show (user, database, application) apply to them.
    other_db = rp.plan(s, rp.Filters(idle_in_transaction_s=30, databases=["elsewhere"]))
    assert other_db.not_visible == [] and not other_db.incomplete


def test_reap_audit_marks_every_target_unknown_when_the_statement_fails() -> None:
    from pgfunnel.toolkit.commands import audit_lines
    from pgfunnel.toolkit.live import StatementError

    plan = rp.plan(snap([b(1, "idle in transaction", 100)]), rp.Filters(idle_in_transaction_s=30))
    err = StatementError("42501", "permission denied to terminate process")
    lines = audit_lines(plan, None, executed=True, failure=err)
    assert [(x["pid"], x["action"]) for x in lines] == [(1, "outcome_unknown")]
    assert lines[0]["error"] == "SQLSTATE 42501: permission denied to terminate process"


def _pg16(reserved: int, roles: list[Role]) -> Snapshot:
    s = snap([b(i) for i in range(4)], max_connections=30, reserved_connections=reserved)
    s.server.server_version, s.server.server_version_num = "16.2", 160002
    s.roles = roles
    return s


def test_pg16_reserved_connections_members_are_listed() -> None:
    roles = [
        Role("app", 10),
        Role("ops", uses_reserved=True),
        Role("postgres", rolsuper=True, uses_reserved=True),  # superusers: their own tier
    ]
    r = dg.analyse(_pg16(5, roles))
    validate_diagnose(r)
    slots = r["slots"]
    assert (slots["usable"], slots["reserved_connections_roles"]) == (22, ["ops"])
    assert slots["headroom"] == {
        "ordinary_roles": 18,
        "reserved_connections_members": 23,
        "superusers": 26,
    }
    assert "reserved-connections-no-members" not in {f["id"] for f in r["findings"]}


def test_pg16_reserved_connections_without_members_warns() -> None:
    roles = [Role("app", 10), Role("postgres", rolsuper=True, uses_reserved=True)]
    r = dg.analyse(_pg16(5, roles))
    validate_diagnose(r)
    assert r["slots"]["reserved_connections_roles"] == []
    finding = next(f for f in r["findings"] if f["id"] == "reserved-connections-no-members")
    assert finding["severity"] == "warning" and r["exit_code"] >= 1
    assert "GRANT pg_use_reserved_connections TO <ops_role>;" in finding["remedy"][0]
    # Without reserved slots there is no such tier: nothing listed, nothing to warn about.
    none = dg.analyse(_pg16(0, roles))
    assert none["slots"]["reserved_connections_roles"] is None
    assert "reserved-connections-no-members" not in {f["id"] for f in none["findings"]}


def test_pg16_reserved_refusal_names_the_roles_that_still_get_in() -> None:
    from pgfunnel.toolkit.limits import RESERVED_ROLE_16, classify_53300

    hit = classify_53300(f"FATAL:  {RESERVED_ROLE_16}")
    assert hit is not None and hit.kind == "reserved_connections"
    roles = [Role("app", 10), Role("ops", uses_reserved=True)]
    r = dg.analyse(_pg16(5, roles), connect_error=hit, via="reserved-dsn")
    validate_diagnose(r)
    full = next(f for f in r["findings"] if f["id"] == "server-full")
    assert "pg_use_reserved_connections): ops." in full["detail"]


def _pool(user: str, active: int, idle: int = 0, waiting: int = 0) -> dict[str, str | None]:
    return {
        "database": "shop",
        "user": user,
        "cl_active": str(active),
        "cl_waiting": str(waiting),
        "sv_active": str(active),
        "sv_idle": str(idle),
        "sv_used": "0",
        "maxwait": "0",
        "maxwait_us": "0",
        "pool_mode": "transaction",
    }


def test_pooler_pools_at_pool_size_or_the_database_cap_are_findings_before_anyone_waits() -> None:
    db = {"name": "shop", "pool_size": "10", "reserve_pool_size": "2", "max_connections": "0"}
    busy = dg.analyse(snap([b(1)]), pooler={"pools": [_pool("app", 10)], "databases": [db]})
    validate_diagnose(busy)
    full = next(f for f in busy["findings"] if f["id"] == "pooler-pool-full:shop/app")
    assert full["severity"] == "warning" and "every server connection busy" in full["title"]
    assert "reserve_pool_size 2" in full["detail"]
    assert busy["pooler"]["pools"][0]["reserve_pool_size"] == 2
    assert busy["exit_code"] >= 1
    grown = dg.analyse(snap([b(1)]), pooler={"pools": [_pool("app", 6, idle=4)], "databases": [db]})
    f = next(f for f in grown["findings"] if f["id"] == "pooler-pool-full:shop/app")
    assert f["severity"] == "info" and "4 idle" in f["title"]
    below = dg.analyse(snap([b(1)]), pooler={"pools": [_pool("app", 9)], "databases": [db]})
    assert not [f for f in below["findings"] if f["id"].startswith("pooler-")]
    # Two users' pools of 10 under max_db_connections 12: the database cap is what binds.
    capped = {**db, "max_connections": "12", "current_connections": "12"}
    r = dg.analyse(
        snap([b(1)]),
        pooler={"pools": [_pool("app", 6), _pool("report", 6)], "databases": [capped]},
    )
    validate_diagnose(r)
    cap = next(f for f in r["findings"] if f["id"] == "pooler-db-cap:shop")
    assert cap["severity"] == "warning" and "(12/12)" in cap["title"]
