"""An unknown user and a wrong password look the same from outside: same SQLSTATE and text,
same exchange, and the same time (medians over 50 tries each, interleaved)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import statistics
import time
from collections.abc import Iterator

import asyncpg
import pytest

from pgfunnel.throwaway import Cluster
from tests.integration.harness import Funnel

USER, PASSWORD = "pgf_timing_known", "timing-pw"
TRIES = 50


def scram_secret(password: str, salt: bytes, iterations: int = 4096) -> str:
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored = hashlib.sha256(client_key).digest()
    server = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    salt64, stored64, server64 = (base64.b64encode(x).decode() for x in (salt, stored, server))
    return f"SCRAM-SHA-256${iterations}:{salt64}${stored64}:{server64}"


@pytest.fixture(scope="module")
def timing_funnel(pg: Cluster) -> Iterator[Funnel]:
    f = Funnel(
        pg,
        settings={"auth_type": "scram-sha-256"},
        userlist={USER: scram_secret(PASSWORD, b"sixteen byte slt")},
    )
    f.start()
    try:
        yield f
    finally:
        f.stop()


async def attempt(port: int, user: str, password: str) -> tuple[float, str, str]:
    start = time.perf_counter()
    try:
        conn = await asyncpg.connect(
            host="127.0.0.1",
            port=port,
            user=user,
            password=password,
            database="postgres",
            statement_cache_size=0,
            timeout=20,
        )
    except asyncpg.PostgresError as exc:
        return time.perf_counter() - start, exc.sqlstate, exc.message
    await conn.close()
    raise AssertionError(f"login as {user!r} unexpectedly succeeded")


def test_unknown_user_and_wrong_password_take_the_same_time(timing_funnel: Funnel) -> None:
    port = timing_funnel.port

    async def run() -> tuple[list[float], list[float]]:
        known: list[float] = []
        unknown: list[float] = []
        for _ in range(5):  # warm up both paths (imports, first derivations)
            await attempt(port, USER, "wrong")
            await attempt(port, "pgf_timing_nobody", "wrong")
        for i in range(TRIES):
            # Interleaved, so that a slow moment of the shared machine hits both sides.
            pair = [(USER, known), ("pgf_timing_nobody", unknown)]
            for user, times in pair if i % 2 else reversed(pair):
                elapsed, sqlstate, message = await attempt(port, user, "wrong")
                assert sqlstate == "28P01"
                assert message == f'password authentication failed for user "{user}"'
                times.append(elapsed)
        return known, unknown

    known, unknown = asyncio.run(run())
    known_median, unknown_median = statistics.median(known), statistics.median(unknown)
    assert abs(known_median - unknown_median) <= 0.10 * max(known_median, unknown_median), (
        f"median wrong password {known_median * 1000:.2f} ms, "
        f"unknown user {unknown_median * 1000:.2f} ms"
    )
