"""The floor under any uvloop pooler: CPU per transaction of a forwarder with no logic at all.

Each client gets its own backend and bytes are copied both ways, nothing else: what remains is
uvloop's and the kernel's share. Run: `.venv/bin/python bench/floor.py [--clients 200]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time

from pgfunnel.throwaway import Cluster, free_port, pg_tool


class _Server(asyncio.Protocol):
    def __init__(self, client: _Client) -> None:
        self.client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.client.server = self
        for chunk in self.client.early:
            self.transport.write(chunk)

    def data_received(self, data: bytes) -> None:
        self.client.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.transport.close()


class _Client(asyncio.Protocol):
    def __init__(self, port: int) -> None:
        self.port = port
        self.server: _Server | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        self.connecting = loop.create_task(
            loop.create_connection(lambda: _Server(self), "127.0.0.1", self.port)
        )

    def data_received(self, data: bytes) -> None:
        if self.server is not None:
            self.server.transport.write(data)
        else:
            self.early.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.server is not None:
            self.server.transport.close()


def serve(listen: int, target: int) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await loop.create_server(lambda: _Client(target), "127.0.0.1", listen)
        await asyncio.Event().wait()

    uvloop.run(main())


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--serve", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(*args.serve)
        return 0
    env = {**os.environ, "PGPASSWORD": "postgres"}
    with Cluster(max_connections=args.clients + 20) as cluster:
        base = ["-h", "127.0.0.1", "-U", "postgres"]
        subprocess.run(
            [
                pg_tool("pgbench"),
                "-i",
                "-q",
                "-s",
                "10",
                *base,
                "-p",
                str(cluster.port),
                "postgres",
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        port = free_port()
        proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), str(cluster.port)])
        try:
            time.sleep(1)
            before = _cpu(proc.pid)
            out = subprocess.run(
                [
                    pg_tool("pgbench"),
                    "-n",
                    "-S",
                    "-c",
                    str(args.clients),
                    "-j",
                    "2",
                    "-T",
                    str(args.duration),
                    *base,
                    "-p",
                    str(port),
                    "postgres",
                ],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            used = _cpu(proc.pid) - before
        finally:
            proc.kill()
            proc.wait()
    xacts = int(out.stdout.split("actually processed: ")[1].split()[0])
    tps = next(line for line in out.stdout.splitlines() if line.startswith("tps"))
    print(
        f"bare uvloop forwarder, {args.clients} clients: {tps}; "
        f"{used / xacts * 1e6:.1f} µs CPU per transaction"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
