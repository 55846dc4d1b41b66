"""pgbench -S through the switch alone: CPU per transaction of the native data plane.

A minimal Python front logs pgbench's clients in (trust, no checks: a benchmark, not a pooler),
logs `--pool` servers into a throwaway PostgreSQL over its unix socket, and hands every socket
to pgfunnel._switch in transaction mode. The switch runs in a process of its own so that its
CPU, and its thread's, can be read from /proc. Run:
`.venv/bin/python bench/switch_bench.py [--clients 10 50 200] [--pool 20] [--duration 10]`.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

from pgfunnel.proto import messages as m
from pgfunnel.throwaway import SUPERUSER, Cluster, free_port, pg_tool

SSL_REQUEST = 80877103


def _read_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise EOFError
        out += chunk
    return out


def _login_client(sock: socket.socket) -> None:
    """Accepts whatever startup packet comes (answering an SSLRequest 'N') and says hello."""
    while True:
        length = int.from_bytes(_read_exact(sock, 4), "big")
        body = _read_exact(sock, length - 4)
        if int.from_bytes(body[:4], "big") == SSL_REQUEST:
            sock.sendall(b"N")
            continue
        break
    hello = [
        m.auth_ok(),
        m.parameter_status("server_version", "15.0"),
        m.parameter_status("client_encoding", "UTF8"),
        m.parameter_status("standard_conforming_strings", "on"),
        m.parameter_status("DateStyle", "ISO, MDY"),
        m.parameter_status("integer_datetimes", "on"),
        m.backend_key_data(1, 1),
        m.ready_for_query(),
    ]
    sock.sendall(b"".join(hello))


def _login_server(sockdir: str, port: int) -> int:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(Path(sockdir) / f".s.PGSQL.{port}"))
    sock.sendall(m.startup_message({"user": SUPERUSER, "database": "postgres"}))
    buf = b""
    while not buf.endswith(m.ready_for_query()):
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("server login failed")
        buf += chunk
    return sock.detach()


def serve(listen: int, sockdir: str, pgport: int, pool: int) -> None:
    from pgfunnel._switch import Mode, Switch

    err = m.error_response("08P01", "switch bench", severity="FATAL")
    sw = Switch(unsupported_pkt=err, long_tx=err, server_gone=err)
    sw.add_pool(1, Mode.TRANSACTION)
    for _ in range(pool):
        sw.add_server(_login_server(sockdir, pgport), 1)
    sw.start()
    lsock = socket.create_server(("127.0.0.1", listen))
    lsock.settimeout(0.5)
    print("ready", flush=True)
    while True:
        try:
            conn, _ = lsock.accept()
        except TimeoutError:
            sw.events()
            continue
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(5)
        try:
            _login_client(conn)
        except (EOFError, OSError):
            conn.close()
            continue
        sw.add_client(conn.detach(), 1)
        sys.stdout.flush()


def _ticks(path: str) -> tuple[float, float]:
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    hz = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / hz, int(fields[12]) / hz


def _cpu(pid: int) -> dict[str, tuple[float, float]]:
    """(user, system) seconds: the whole process and each of its threads."""
    out = {"process": _ticks(f"/proc/{pid}/stat")}
    for tid in os.listdir(f"/proc/{pid}/task"):
        out[tid] = _ticks(f"/proc/{pid}/task/{tid}/stat")
    return out


def run(cluster: Cluster, clients: int, pool: int, duration: int, protocol: str) -> str:
    env = {**os.environ, "PGPASSWORD": "postgres"}
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            str(port),
            str(cluster.sockdir),
            str(cluster.port),
            str(pool),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        main_tid = str(proc.pid)
        before = _cpu(proc.pid)
        out = subprocess.run(
            [
                pg_tool("pgbench"),
                "-n",
                "-S",
                "-M",
                protocol,
                "-c",
                str(clients),
                "-j",
                "2",
                "-T",
                str(duration),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
                "postgres",
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        after = _cpu(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    xacts = int(out.stdout.split("actually processed: ")[1].split()[0])
    tps = next(line for line in out.stdout.splitlines() if line.startswith("tps")).split()[2]
    user = after["process"][0] - before["process"][0]
    system = after["process"][1] - before["process"][1]
    # The switch's thread: every thread of the process but the main one (which only logs in).
    sw_user = sum(
        after[t][0] - before.get(t, (0.0, 0.0))[0] for t in after if t not in ("process", main_tid)
    )
    return (
        f"{protocol:>8} {clients:>5} clients, pool {pool}: {float(tps):>9.0f} tps; per transaction "
        f"{user / xacts * 1e6:.2f} µs user + {system / xacts * 1e6:.2f} µs system "
        f"(switch thread {sw_user / xacts * 1e6:.2f} µs user)"
    )


def direct(cluster: Cluster, clients: int, duration: int, protocol: str) -> str:
    env = {**os.environ, "PGPASSWORD": "postgres"}
    out = subprocess.run(
        [
            pg_tool("pgbench"),
            "-n",
            "-S",
            "-M",
            protocol,
            "-c",
            str(clients),
            "-j",
            "2",
            "-T",
            str(duration),
            "-h",
            "127.0.0.1",
            "-p",
            str(cluster.port),
            "-U",
            "postgres",
            "postgres",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    tps = [line.split()[2] for line in out.stdout.splitlines() if line.startswith("tps")]
    if not tps:  # PostgreSQL alone may not take this many clients; the switch row still runs
        why = (out.stderr.strip().splitlines() or ["no tps line"])[-1]
        return f"{protocol:>8} {clients:>5} clients, direct : failed ({why})"
    return f"{protocol:>8} {clients:>5} clients, direct : {float(tps[0]):>9.0f} tps"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50, 200])
    parser.add_argument("--pool", type=int, default=20)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument(
        "--protocol", nargs="+", choices=["simple", "extended"], default=["simple", "extended"]
    )
    parser.add_argument("--serve", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(int(args.serve[0]), args.serve[1], int(args.serve[2]), int(args.serve[3]))
        return 0
    with Cluster(max_connections=max(args.clients) + args.pool + 20) as cluster:
        subprocess.run(
            [
                pg_tool("pgbench"),
                "-i",
                "-q",
                "-s",
                "10",
                "-h",
                str(cluster.sockdir),
                "-p",
                str(cluster.port),
                "-U",
                "postgres",
                "postgres",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        for protocol in args.protocol:
            for clients in args.clients:
                print(direct(cluster, clients, args.duration, protocol), flush=True)
                print(run(cluster, clients, args.pool, args.duration, protocol), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
