"""The untyped first packets: GSSENCRequest and SSLRequest answered N, then a normal login; -u."""

from __future__ import annotations

import os
import pwd
import socket
import struct
import subprocess
import sys
from typing import Any

import pytest

from pgfunnel.proto import messages as m
from tests.integration.harness import Funnel, wait_for


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def test_gssenc_then_ssl_requests_get_n_and_login_goes_on(funnel: Any) -> None:
    f: Funnel = funnel(settings={"auth_type": "trust"})
    with socket.create_connection(("127.0.0.1", f.port), timeout=10) as sock:
        sock.sendall(struct.pack("!ii", 8, m.GSSENC_REQUEST_CODE))
        assert _recv_exact(sock, 1) == b"N"
        sock.sendall(struct.pack("!ii", 8, m.SSL_REQUEST_CODE))
        assert _recv_exact(sock, 1) == b"N"
        sock.sendall(m.startup_message({"user": "postgres", "database": "postgres"}))
        kind, length = struct.unpack("!ci", _recv_exact(sock, 5))
        body = _recv_exact(sock, length - 4)
        assert kind == b"R" and struct.unpack("!i", body)[0] == m.AUTH_OK
        # ... and the login completes with ReadyForQuery once the pool knows its server.
        seen = b""
        while not seen.endswith(m.ready_for_query()):
            seen += sock.recv(4096)
        sock.sendall(m.query("SELECT 7"))
        reply = b""
        while not reply.endswith(m.ready_for_query()):
            chunk = sock.recv(4096)
            assert chunk, "the pooler closed the connection"
            reply += chunk
        assert b"\x00\x01\x00\x00\x00\x017" in reply  # one column, length 1, "7"
        sock.sendall(m.terminate())


@pytest.mark.skipif(os.geteuid() != 0, reason="-u needs to start as root")
def test_user_flag_switches_to_that_user(pg: Any) -> None:
    target = pwd.getpwnam("postgres" if _exists("postgres") else "nobody")
    f = Funnel(pg, settings={"logfile": "", "unix_socket_dir": ""})
    os.chmod(f.dir, 0o755)  # the switched user must still read the config and userlist
    os.chmod(f.userlist_path, 0o644)
    os.chmod(f.config, 0o644)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgfunnel", "serve", "-q", "-u", target.pw_name, str(f.config)],
        stderr=subprocess.PIPE,
    )
    f.proc = proc
    try:

        def uid() -> int | None:
            try:
                with open(f"/proc/{proc.pid}/status") as status:
                    for line in status:
                        if line.startswith("Uid:"):
                            return int(line.split()[1])
            except FileNotFoundError:
                return None
            return None

        assert wait_for(lambda: uid() == target.pw_uid)
        wait_for(lambda: _accepts(f.port))
        with f.connect() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        f.stop()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False
