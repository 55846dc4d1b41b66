#!/usr/bin/env python3
"""Many idle logged-in clients on one pooler: the pooler's resident memory per client.

bench/run.py calls `measure_idle` on a freshly started PgBouncer and a freshly started pgfunnel
in the same run. The clients are cheap: a few worker processes (this file with `--worker`), each
logging in its share over loopback with the raw protocol on asyncio and then holding the
sockets idle, so the client side needs neither a thread nor a library connection object per
client. A worker stops by itself when its parent closes its stdin or after `--hold` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import resource
import select
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PROTOCOL_3 = 196608
# Logins in flight per worker: enough to be quick, few enough not to overflow a listen backlog
# of 128 (PgBouncer's default), whose dropped SYNs would cost a second each.
IN_FLIGHT = 32


def raise_nofile(wanted: int) -> int:
    """Lift RLIMIT_NOFILE's soft limit toward `wanted` (and the hard one, when root): the limit in
    force afterwards. Children (the poolers, the workers) inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    if hard != resource.RLIM_INFINITY and hard < wanted and os.geteuid() == 0:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            pass
    new_soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
    return new_soft


def rss_kib(pid: int) -> int | None:
    """VmRSS of a process (all its threads), in KiB, from /proc; None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def startup_packet(user: str, database: str) -> bytes:
    body = struct.pack("!I", PROTOCOL_3)
    for key, value in (("user", user), ("database", database), ("application_name", "idle")):
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def password_message(text: str) -> bytes:
    payload = text.encode() + b"\0"
    return b"p" + struct.pack("!I", len(payload) + 4) + payload


def md5_password(user: str, password: str, salt: bytes) -> str:
    inner = hashlib.md5((password + user).encode()).hexdigest()
    return "md5" + hashlib.md5(inner.encode() + salt).hexdigest()


class LoginError(Exception):
    """The pooler refused a login, or asked for a method these clients do not speak."""


async def login(
    port: int, user: str, password: str, database: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """One client, logged in up to ReadyForQuery (trust, cleartext or md5), left open."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(startup_packet(user, database))
        while True:
            kind = await reader.readexactly(1)
            (length,) = struct.unpack("!I", await reader.readexactly(4))
            body = await reader.readexactly(length - 4)
            if kind == b"R":
                (code,) = struct.unpack("!I", body[:4])
                if code == 3:
                    writer.write(password_message(password))
                elif code == 5:
                    writer.write(password_message(md5_password(user, password, body[4:8])))
                elif code != 0:
                    raise LoginError(f"authentication request {code} is not supported here")
            elif kind == b"E":
                fields = dict((f[:1], f[1:]) for f in body.split(b"\0") if f)
                message = fields.get(b"M", b"?").decode(errors="replace")
                raise LoginError(f"{fields.get(b'C', b'?').decode()}: {message}")
            elif kind == b"Z":
                return reader, writer
    except BaseException:
        writer.close()
        raise


async def hold(args: argparse.Namespace) -> None:
    gate = asyncio.Semaphore(IN_FLIGHT)
    held: list[asyncio.StreamWriter] = []
    errors: list[str] = []

    async def one() -> None:
        async with gate:
            try:
                _, writer = await asyncio.wait_for(
                    login(args.port, args.user, args.password, args.database), timeout=60
                )
                held.append(writer)
            except (OSError, EOFError, LoginError, TimeoutError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    await asyncio.gather(*(one() for _ in range(args.count)))
    first = errors[0].replace("\n", " ") if errors else ""
    print(f"ready {len(held)} {len(errors)} {first}", flush=True)
    # Idle until the parent closes our stdin (it has measured) or the hold time is up.
    # (A reader callback, not a thread: a thread blocked in read() would outlive the timeout.)
    loop = asyncio.get_running_loop()
    closed: asyncio.Future[None] = loop.create_future()

    def stdin_readable() -> None:
        if not os.read(sys.stdin.fileno(), 4096) and not closed.done():
            closed.set_result(None)

    loop.add_reader(sys.stdin.fileno(), stdin_readable)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(closed, timeout=args.hold)
    loop.remove_reader(sys.stdin.fileno())
    for writer in held:
        writer.close()


@dataclass
class IdleResult:
    """What one pooler's resident memory did when `held` idle clients logged in."""

    clients: int
    held: int
    failed: int
    rss_before_kib: int | None
    rss_after_kib: int | None
    seconds: float
    note: str = ""

    @property
    def kib_per_client(self) -> float | None:
        if self.rss_before_kib is None or self.rss_after_kib is None or not self.held:
            return None
        return (self.rss_after_kib - self.rss_before_kib) / self.held


def measure_idle(
    pooler_pid: int,
    port: int,
    user: str,
    password: str,
    database: str,
    clients: int,
    workers: int = 4,
    settle: float = 2.0,
    timeout: float = 300.0,
) -> IdleResult:
    """Log `clients` idle clients into the pooler at `port`, read its RSS, let them go."""
    raise_nofile(clients // workers + 200)
    before = rss_kib(pooler_pid)
    started = time.monotonic()
    shares = [clients // workers + (i < clients % workers) for i in range(workers)]
    procs = [
        subprocess.Popen(
            [
                *(sys.executable, __file__, "--worker", "--port", str(port)),
                *("--user", user, "--password", password, "--database", database),
                *("--count", str(share), "--hold", str(int(timeout))),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for share in shares
        if share
    ]
    held = failed = 0
    notes: list[str] = []
    try:
        for proc in procs:
            assert proc.stdout is not None
            remaining = max(1.0, timeout - (time.monotonic() - started))
            ready, _, _ = select.select([proc.stdout], [], [], remaining)
            line = proc.stdout.readline() if ready else ""
            parts = line.split(" ", 3)
            if len(parts) < 3 or parts[0] != "ready":
                notes.append("a worker did not report (timed out or died)")
                continue
            held += int(parts[1])
            failed += int(parts[2])
            if len(parts) > 3 and parts[3].strip():
                notes.append(parts[3].strip())
        seconds = time.monotonic() - started
        # Let the pooler finish whatever it does after the last login before reading its RSS.
        time.sleep(settle)
        after = rss_kib(pooler_pid)
    finally:
        for proc in procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return IdleResult(clients, held, failed, before, after, seconds, notes[0] if notes else "")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/idle_rss.py", description=__doc__)
    parser.add_argument("--worker", action="store_true", help="hold clients (run by the parent)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", default="")
    parser.add_argument("--database", required=True)
    parser.add_argument("--count", type=int, default=2500, help="clients in this worker")
    parser.add_argument("--hold", type=float, default=300, help="give up holding after S s")
    parser.add_argument("--pid", type=int, help="without --worker: the pooler's pid")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        raise_nofile(args.count + 100)
        asyncio.run(hold(args))
        return 0
    if args.pid is None:
        raise SystemExit("bench/idle_rss.py: --pid PID of the pooler is required")
    result = measure_idle(
        args.pid, args.port, args.user, args.password, args.database, args.count, timeout=args.hold
    )
    per = result.kib_per_client
    print(
        f"{result.held} of {result.clients} clients held ({result.failed} failed), "
        f"RSS {result.rss_before_kib} -> {result.rss_after_kib} KiB, "
        f"{'-' if per is None else f'{per:.2f}'} KiB per client {result.note}".rstrip()
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
