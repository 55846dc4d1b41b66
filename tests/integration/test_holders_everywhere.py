"""One client holds a transaction open while another waits: psql's SHOW POOLS shows it live,
and SHOW HOLDERS, /metrics and the status page all name the holder's application."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from pgfunnel.throwaway import Cluster
from tests.integration.harness import Funnel, own_role, wait_for
from tests.integration.test_admin_console import psql
from tests.integration.test_metrics import http_get, scrape, start_with_metrics

POOLS_HEADER = (
    "database | user | cl_active | cl_waiting | cl_active_cancel_req | cl_waiting_cancel_req | "
    "sv_active | sv_active_cancel | sv_being_canceled | sv_idle | sv_used | sv_tested | "
    "sv_login | maxwait | maxwait_us | pool_mode | load_balance_hosts"
)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.split("|")]


def test_a_held_transaction_is_named_by_show_holders_metrics_and_the_status_page(
    funnel: Callable[..., Funnel],
) -> None:
    f, base = start_with_metrics(funnel, settings={"default_pool_size": 1})
    holder = f.connect(application_name="billing-worker")
    waiter = f.connect(application_name="web")
    out: list[Any] = []
    try:
        holder.execute("BEGIN")
        holder.execute("SELECT 1")
        thread = threading.Thread(
            target=lambda: out.append(waiter.execute("SELECT 'served'").fetchone()), daemon=True
        )
        thread.start()
        wait_for(lambda: int(f.pool()["cl_waiting"]) == 1)

        # psql against the admin console: PgBouncer's columns, live figures.
        pools = psql(f, "SHOW POOLS")
        assert pools.returncode == 0, pools.stderr
        lines = pools.stdout.splitlines()
        assert " | ".join(_cells(lines[0])) == POOLS_HEADER
        [row] = [_cells(x) for x in lines[2:] if x.strip().startswith("postgres ")]
        columns = _cells(lines[0])
        live = dict(zip(columns, row, strict=True))
        assert (live["cl_active"], live["cl_waiting"], live["sv_active"]) == ("1", "1", "1")
        assert live["pool_mode"] == "transaction"

        holders = psql(f, "SHOW HOLDERS")
        assert holders.returncode == 0, holders.stderr
        text = holders.stdout
        assert "billing-worker" in text and "idle in transaction" in text
        assert "web" not in text.split("\n", 2)[2]  # the waiter holds nothing

        samples = scrape(base)
        held = [
            dict(labels) for (name, labels) in samples if name == "pgfunnel_holder_held_seconds"
        ]
        assert [h["application_name"] for h in held] == ["billing-worker"]

        status, _, page = http_get(base + "/")
        assert status == 200
        assert 'data-application-name="billing-worker"' in page
    finally:
        holder.execute("COMMIT")
        thread.join(10)
        holder.close()
        waiter.close()
    assert out == [("served",)]


def test_the_holders_log_line_names_the_waiting_pools_own_holders(
    pg: Cluster, funnel: Callable[..., Funnel]
) -> None:
    """Two users of one database: the other user's pool holds its servers longer, but the
    line for the pool whose clients wait names that pool's holders (the top three of the
    database, taken before filtering by pool, named none)."""
    with own_role(pg, "holders_b", "holders_b_pw") as role:
        f = funnel(settings={"default_pool_size": 3}, userlist={role: "holders_b_pw"})
        longer = [f.connect(application_name=f"other-user-{i}") for i in range(3)]
        mine = [
            f.connect(user=role, password="holders_b_pw", application_name=f"b-holder-{i}")
            for i in range(3)
        ]
        waiter = f.connect(user=role, password="holders_b_pw", application_name="b-waiter")
        out: list[Any] = []
        try:
            for conn in [*longer, *mine]:  # the other user's transactions begin first
                conn.execute("BEGIN")
                conn.execute("SELECT 1")
            thread = threading.Thread(
                target=lambda: out.append(waiter.execute("SELECT 'served'").fetchone()),
                daemon=True,
            )
            thread.start()
            line = wait_for(
                lambda: next((x for x in f.log().splitlines() if "top holders:" in x), None),
                timeout=20,
            )
            assert f"postgres/{role}" in line
            assert line.count("b-holder-") == 3, line
            assert "other-user" not in line and "none (servers are logging in)" not in line
        finally:
            for conn in [*longer, *mine]:
                conn.execute("COMMIT")
            thread.join(10)
            for conn in [*longer, *mine, waiter]:
                conn.close()
        assert out == [("served",)]
