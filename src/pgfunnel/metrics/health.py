"""Readiness: can every pool reach its server, or is it serving under 53300 back-pressure?

An idle pooler tries no logins, so its pools alone cannot tell that PostgreSQL went away; each
distinct server address is also probed with a bare connect (no startup packet, so PostgreSQL
logs nothing), bounded by a short timeout and cached for about a second so that a burst of
probes from a load balancer costs one connect per address.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pgfunnel.net.unixsock import is_unix, unix_connect, unix_path
from pgfunnel.proto import sqlstate as ss

if TYPE_CHECKING:
    from pgfunnel.admin.host import Host
    from pgfunnel.pool.scheduler import Pool

PROBE_TIMEOUT = 1.0  # seconds a connect may take before the address counts as unreachable
PROBE_CACHE = 1.0  # seconds a probe's answer is reused
# A transient login failure older than this (and not refreshed by retries for waiting clients)
# no longer describes the server: the probe decides then.
BACKOFF_STALE_MIN = 5.0

OK = "ok"
DEGRADED = "degraded"
BACKPRESSURE = "back-pressure"
SHUTTING_DOWN = "shutting-down"  # the pooler's own state, not a pool's
SUSPENDED = "suspended"


@dataclass(frozen=True)
class Target:
    """Where a database's servers are: a TCP host and port, or a unix socket path."""

    host: str | None
    port: int
    path: str | None  # the unix socket, when there is one

    @property
    def label(self) -> str:
        return self.path if self.path is not None else f"{self.host}:{self.port}"


def target_of(host: Host, dbc: Any) -> Target:
    """The address the App connects to for this database (same rule as net.app._connect)."""
    if is_unix(dbc.host):
        return Target(None, dbc.port, unix_path(dbc.host, dbc.port, host.settings.unix_socket_dir))
    return Target(str(dbc.host), int(dbc.port), None)


class Prober:
    """TCP / unix-socket reachability of server addresses, cached per address."""

    def __init__(self, timeout: float = PROBE_TIMEOUT, ttl: float = PROBE_CACHE) -> None:
        self.timeout = timeout
        self.ttl = ttl
        # target -> (loop time of the answer, None when reachable else the error text)
        self._answers: dict[Target, tuple[float, str | None]] = {}
        self._running: dict[Target, asyncio.Task[str | None]] = {}

    async def check(self, targets: list[Target]) -> dict[Target, str | None]:
        loop = asyncio.get_running_loop()
        now = loop.time()
        out: dict[Target, str | None] = {}
        pending: dict[Target, asyncio.Task[str | None]] = {}
        for target in dict.fromkeys(targets):
            cached = self._answers.get(target)
            if cached is not None and now - cached[0] < self.ttl:
                out[target] = cached[1]
                continue
            task = self._running.get(target)
            if task is None:  # one probe per address however many requests ask at once
                task = loop.create_task(self._probe(target))
                self._running[target] = task
                task.add_done_callback(functools.partial(self._forget, target))
            pending[target] = task
        for target, task in pending.items():
            error = await asyncio.shield(task)
            self._answers[target] = (loop.time(), error)
            out[target] = error
        # Addresses nobody asked about for a while are forgotten (a reload may drop them).
        for target, (at, _) in list(self._answers.items()):
            if now - at > 60 * self.ttl:
                del self._answers[target]
        return out

    def _forget(self, target: Target, _task: asyncio.Task[str | None]) -> None:
        self._running.pop(target, None)

    async def _probe(self, target: Target) -> str | None:
        try:
            async with asyncio.timeout(self.timeout):
                if target.path == "":
                    return "unix socket dir not configured"
                if target.path is not None:
                    sock = await unix_connect(asyncio.get_running_loop(), target.path)
                    _, writer = await asyncio.open_unix_connection(sock=sock)
                else:
                    _, writer = await asyncio.open_connection(target.host, target.port)
        except TimeoutError:
            return f"connect timed out after {self.timeout:g}s"
        except OSError as exc:
            return exc.strerror or str(exc)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return None

    def close(self) -> None:
        for task in list(self._running.values()):
            task.cancel()
        self._running.clear()


async def readiness(host: Host, prober: Prober) -> tuple[bool, dict[str, Any]]:
    """(ready, JSON body): one entry per pool, and one per configured database that has none.

    The body: {"ready": bool, "status": worst of the entries, "pools": [{"database", "user"
    (null for a configured database without a forced user), "status": "ok" | "back-pressure"
    | "degraded", "reason" ("" when ok), "server": "host:port" or the socket path}]}. While
    the pooler shuts down or is suspended, "status" is "shutting-down" or "suspended", with a
    "reason", and it is not ready whatever its pools say."""
    now = host.now()
    entries: list[dict[str, Any]] = []
    checks: list[tuple[dict[str, Any], Target]] = []
    pooled: set[str] = set()
    for pool in host.pooler.pools.values():
        entry: dict[str, Any] = {"database": pool.db.name, "user": pool.user.name}
        status, reason = pool_status(pool, now)
        target = target_of(host, pool.db.config)
        entry.update(status=status, reason=reason, server=target.label)
        entries.append(entry)
        checks.append((entry, target))
        pooled.add(pool.db.name)
    # Configured databases no client has used yet are probed too: the first client of one
    # must not be the first to find its server gone.
    for name, dbc in host.config.databases.items():
        if name == "*" or name in pooled:
            continue
        target = target_of(host, dbc)
        entry = {"database": name, "user": dbc.user, "status": OK, "reason": ""}
        entry["server"] = target.label
        entries.append(entry)
        checks.append((entry, target))
    answers = await prober.check([target for _, target in checks])
    for entry, target in checks:
        error = answers.get(target)
        if error is not None:
            entry["status"] = DEGRADED
            entry["reason"] = f"server {target.label} unreachable: {error}"
    statuses = {e["status"] for e in entries}
    worst = next((s for s in (DEGRADED, BACKPRESSURE) if s in statuses), OK)
    ready = worst != DEGRADED
    body: dict[str, Any] = {"ready": ready, "status": worst, "pools": entries}
    # A pooler on its way out, or suspended, takes no new clients: send them elsewhere.
    if host.shutting_down is not None:
        body.update(ready=False, status=SHUTTING_DOWN)
        body["reason"] = f"shutting down ({host.shutting_down}): not accepting new clients"
    elif host.suspended:
        body.update(ready=False, status=SUSPENDED, reason="suspended (SUSPEND): RESUME to serve")
    return body["ready"], body


def pool_status(pool: Pool, now: float) -> tuple[str, str]:
    """The pool's own view (no probe): ok, back-pressure (53300: still serving) or degraded."""
    if pool.login_failed_until > now and pool.login_error is not None:
        err = pool.login_error
        return DEGRADED, f"server login failed: {err.sqlstate} {err.message}"
    bo = pool.backoff
    # Nothing retries a login without waiting clients, so an old failure may no longer hold.
    recent = now - bo.last_failure <= max(2 * pool.settings.server_login_retry, BACKOFF_STALE_MIN)
    if bo.active and bo.error is not None and recent:
        if bo.error.sqlstate == ss.TOO_MANY_CONNECTIONS:
            return BACKPRESSURE, (
                f"server refuses more connections (53300): {bo.error.message}; "
                f"serving with {pool.server_count} of pool_size {pool.settings.pool_size}"
            )
        return DEGRADED, f"server login failing: {bo.error.sqlstate} {bo.error.message}"
    if bo.granted is not None and recent:
        return BACKPRESSURE, (
            f"recovering from 53300: server grants {bo.granted} of pool_size "
            f"{pool.settings.pool_size}"
        )
    return OK, ""
