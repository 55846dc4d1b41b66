"""One client holds a transaction open while another waits: psql's SHOW POOLS shows it live,
and SHOW HOLDERS, /metrics and the status page all name the holder's application."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from tests.integration.harness import Funnel, wait_for
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
