"""The status page of a real `pgfunnel serve`, opened in a real headless Chromium."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import Funnel, wait_for
from tests.integration.test_metrics import Holder, holding, http_get, start_with_metrics

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"  # git-ignored, kept after runs
PHONE = "412,915"


def chromium() -> str:
    """Debian's chromium (make bootstrap installs it); a clear failure when it is missing."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("chromium not found: run `make bootstrap` (apt-get install chromium)")


def run_chromium(*args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="pgf-chromium-") as profile:
        proc = subprocess.run(
            [
                chromium(),
                "--headless",
                "--no-sandbox",  # needed as root, harmless otherwise
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--window-size={PHONE}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=90,
            env={**os.environ, "HOME": profile},
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


class Page(HTMLParser):
    """Collects the page's tables as the test needs them: rows by class, cells by data-col."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, Any]] = []  # {"class", "attrs", "cells": {col: value}, "text"}
        self.meta: list[dict[str, str | None]] = []
        self.saturation: list[dict[str, str | None]] = []
        self._row: dict[str, Any] | None = None
        self._cell: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "meta":
            self.meta.append(a)
        elif tag == "tr" and a.get("class") in ("pool", "holder", "waiter"):
            self._row = {"class": a["class"], "attrs": a, "cells": {}, "text": {}}
            self.rows.append(self._row)
        elif tag == "td" and self._row is not None and a.get("data-col"):
            self._cell = a["data-col"]
            self._row["cells"][self._cell] = a.get("data-value")
            self._row["text"][self._cell] = ""
        elif tag == "div" and "sat" in (a.get("class") or "").split():
            self.saturation.append(a)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._cell = None
        elif tag == "tr":
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._row is not None and self._cell is not None:
            self._row["text"][self._cell] += data

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["class"] == kind]


@pytest.fixture
def held(funnel: Callable[..., Funnel]) -> Iterator[tuple[Funnel, str, Holder]]:
    yield from holding(funnel)


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def test_status_page_in_chromium_matches_show_pools(held) -> None:  # type: ignore[no-untyped-def]
    f, base, h = held
    url = base + "/"
    status, headers, _ = http_get(url)
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "status-page-phone.png"
    shot.unlink(missing_ok=True)
    run_chromium(f"--screenshot={shot}", url)
    assert shot.exists(), "chromium wrote no screenshot"
    assert png_size(shot) == (412, 915)
    print(f"\nstatus page screenshot: {shot}")

    page = Page()
    page.feed(run_chromium("--dump-dom", url).stdout)
    assert {"name": "viewport", "content": "width=device-width, initial-scale=1"} in page.meta
    assert any(m.get("http-equiv") == "refresh" for m in page.meta)

    # Same pools, same figures as the admin console's SHOW POOLS.
    show = {(r["database"], r["user"]): r for r in f.admin("SHOW POOLS")}
    pools = pools_of(page)
    assert set(pools) == set(show) == {("postgres", "postgres"), ("pgbouncer", "pgbouncer")}
    admin = pools.pop(("pgbouncer", "pgbouncer"))
    # The console counts the connection asking SHOW POOLS; the page was rendered without it.
    assert int(admin["cells"]["cl_active"]) == show[("pgbouncer", "pgbouncer")]["cl_active"] - 1
    for key, row in pools.items():
        cells = row["cells"]
        for col in ("cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_used", "sv_login"):
            assert int(cells[col]) == show[key][col], col
            assert row["text"][col] == str(show[key][col])
        # maxwait grows while we look: the page was rendered a moment before SHOW POOLS.
        assert 0 <= show[key]["maxwait"] - int(cells["maxwait"]) <= 1
        assert cells["pool_mode"] == show[key]["pool_mode"]
    assert pools[("postgres", "postgres")]["cells"]["cl_waiting"] == "1"

    # The holder and the waiter are named.
    (holder,) = page.of("holder")
    assert holder["attrs"]["data-application-name"] == "holder-app"
    assert holder["text"]["application_name"] == "holder-app"
    assert holder["text"]["state"] == "idle in transaction"
    assert holder["text"]["user"] == "postgres"
    assert holder["text"]["addr"].startswith("127.0.0.1:")
    pid = h.holder.execute("SELECT pg_backend_pid()").fetchone()[0]
    assert holder["cells"]["server_pid"] == str(pid)
    assert float(holder["cells"]["held"]) > 0
    (waiter,) = page.of("waiter")
    assert waiter["text"]["application_name"] == "waiter-app"
    assert float(waiter["cells"]["wait"]) > 0

    # Saturation: the one server the pool may have is in use.
    (sat,) = page.saturation
    assert (sat["data-in-use"], sat["data-granted"], sat["data-percent"]) == ("1", "1", "100")
    assert sat["data-backpressure"] == "0"

    h.release()
    page = wait_for(lambda: _without_holders(url), timeout=10)
    assert page.of("waiter") == []
    assert pools_of(page)[("postgres", "postgres")]["cells"]["cl_waiting"] == "0"


def pools_of(page: Page) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["attrs"]["data-database"], r["attrs"]["data-user"]): r for r in page.of("pool")}


def _without_holders(url: str) -> Page | None:
    page = Page()
    page.feed(http_get(url)[2])
    return None if page.of("holder") else page


def test_status_page_escapes_names(funnel) -> None:  # type: ignore[no-untyped-def]
    """Names come from configs and clients: the page shows them as text, never as markup."""
    f, base = start_with_metrics(funnel)
    with f.connect(application_name="<script>alert(1)</script>") as conn:
        conn.execute("BEGIN")
        conn.execute("SELECT 1")
        html = http_get(base + "/")[2]
        conn.execute("COMMIT")
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    page = Page()
    page.feed(html)
    assert page.of("holder")[0]["text"]["application_name"] == "<script>alert(1)</script>"
