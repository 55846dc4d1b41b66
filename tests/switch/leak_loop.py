"""Connect/query/disconnect through the switch many times, good and bad paths alike; run by
test_leaks.py under LeakSanitizer (ASan build) so that any block the switch forgets shows up.

usage: leak_loop.py SWITCH_SO SOCKDIR PORT ROUNDS
"""

from __future__ import annotations

import importlib.util
import os
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pgfunnel._switch import Switch


def main() -> None:
    so, sockdir, port, rounds = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    spec = importlib.util.spec_from_file_location("pgfunnel._switch._switch", so)
    assert spec is not None and spec.loader is not None
    native = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(native)
    sys.modules["pgfunnel._switch._switch"] = native

    from pgfunnel._switch import Event, EventKind, Mode, Reason, Switch
    from pgfunnel.proto import messages as m
    from pgfunnel.throwaway import SUPERUSER
    from tests.switch.conftest import LONG_TX, SERVER_GONE, UNSUPPORTED, read_until_z

    def login() -> int:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(str(sockdir / f".s.PGSQL.{port}"))
        sock.sendall(m.startup_message({"user": SUPERUSER, "database": "postgres"}))
        params = dict(
            m.parse_parameter_status(payload)
            for kind, payload in read_until_z(sock)
            if kind == b"S"
        )
        return sw.add_server(sock.detach(), 1, params=params)

    def handle(events: list[Event]) -> None:
        for e in events:
            if e.kind is EventKind.ATTENTION:
                sw.close(e.conn)
                login()
            elif e.kind is EventKind.DEADLINE and e.reason == Reason.SERVER_LIFETIME:
                if sw.expire(e.conn, Reason.SERVER_LIFETIME):
                    handle(sw.events())  # an idle one is parked at once: ATTENTION

    sw = Switch(
        unsupported_pkt=UNSUPPORTED,
        long_tx=LONG_TX,
        server_gone=SERVER_GONE,
        buffer_size=4096,
        tracked=m.TRACKED_PARAMS,
        tick_ms=5,
    )
    sw.start()
    sw.add_pool(1, Mode.TRANSACTION)
    # Every deadline swept; servers live 30 ms (recycled through expire, ATTENTION, close and
    # a new login), silent clients are reported after 20 ms (some are closed through expire).
    long = 60_000_000
    sw.set_timeouts(
        1,
        query_wait=long,
        query_wait_notify=long,
        query=long,
        idle_transaction=long,
        client_idle=20_000,
        server_idle=long,
        server_lifetime=30_000,
        reserve=long,
    )
    login()
    login()
    zones = ["UTC", "Asia/Tokyo", "Europe/Paris", "No/Such_Zone"]  # the last: a failed SET
    for i in range(rounds):
        ours, theirs = socket.socketpair()
        ours.settimeout(10)
        # Tracked values that differ from round to round: a SET (and its swallowed answer) at
        # most links; the first query sometimes comes as bytes Python read after the login.
        wants = {"application_name": f"app{i % 3}", "TimeZone": zones[i % 4]}
        first = m.query("select 1")
        early = first if i % 2 and i % 11 != 7 else b""
        cid = sw.add_client(theirs.detach(), 1, pending=early, params=wants)
        if i % 11 == 7:
            seen: list[Event] = []
            while not any(e.kind is EventKind.DEADLINE and e.conn == cid for e in seen):
                # Not a spin: polling the switch's lock without pause can starve its thread,
                # which needs that lock to sweep the deadline this waits for.
                time.sleep(0.002)
                batch = sw.events()
                handle(batch)
                seen += batch
            assert sw.expire(cid, Reason.CLIENT_IDLE, m.error_response("08P01", "idle"))
            while ours.recv(4096):
                pass
            ours.close()
            continue
        if not early:
            ours.sendall(first)
        read_until_z(ours)
        if i % 5 == 0:
            ours.sendall(m.query("select repeat('x', 20000)"))  # bigger than the buffer
        elif i % 6 == 1:
            ours.sendall(m.query("set application_name = 'mine'"))  # its own SET: noted
        else:
            ours.sendall(m.query("select 1"))
        read_until_z(ours)
        if i % 7 == 3:
            ours.sendall(m.message(b"?"))  # refused: the client is closed by the switch
            while ours.recv(4096):
                pass
        else:
            if i % 7 == 5:
                ours.sendall(m.query("begin"))  # left open: parked, then closed by us
                read_until_z(ours)
            ours.sendall(m.terminate())
        ours.close()
        events = []
        while not any(e.kind is EventKind.CLOSED for e in events):
            time.sleep(0.001)  # as above: leave the switch's thread its lock
            events += sw.events()
        handle(events)
    login_rounds(sw, sockdir, port, rounds // 3)
    fast_rounds(sw, rounds // 3)
    tls_rounds(sw, rounds // 10, login)
    sw.stop()


def login_rounds(sw: Switch, sockdir: Path, port: int, rounds: int) -> None:
    """Accept, messages up, promote or a refusal; a server logged in through MESSAGE events
    and one whose connect fails; a listener paused by nothing, left for stop() to close."""
    from pgfunnel._switch import Event, EventKind, Reason
    from pgfunnel.proto import messages as m
    from pgfunnel.proto.login import ServerLogin
    from pgfunnel.throwaway import SUPERUSER
    from tests.switch.conftest import read_until_z

    seen: list[Event] = []

    def take(pred: Callable[[Event], bool]) -> Event:
        while True:
            for e in seen:
                if pred(e):
                    seen.remove(e)
                    return e
            seen.extend(sw.events())

    def message(conn: int) -> bytes:
        return take(lambda e: e.kind is EventKind.MESSAGE and e.conn == conn).data

    # A server logged in by Python from MESSAGE events, promoted into pool 1.
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.setblocking(False)
    srv.connect(str(sockdir / f".s.PGSQL.{port}"))
    sid = sw.connect_server(srv.detach(), 1)
    server_login = ServerLogin(SUPERUSER, "postgres", None, {})
    sw.send(sid, server_login.start())
    while not server_login.done:
        data = message(sid)
        while data:
            length = int.from_bytes(data[1:5], "big")
            server_login.receive(data[0], data[5 : 1 + length])
            data = data[1 + length :]
        if not server_login.done:
            sw.read_next(sid)
    sw.promote(sid, 1, params={"application_name": "", "TimeZone": "UTC"})
    # The pooler's own query on it (talk), then back into the pool.
    sw.talk(sid)
    sw.send(sid, m.query("select 1"))
    while not message(sid).endswith(m.ready_for_query()):
        sw.read_next(sid)
    sw.promote(sid, 1)
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    closed_port = refused.getsockname()[1]
    refused.close()
    failing = socket.socket()
    failing.setblocking(False)
    failing.connect_ex(("127.0.0.1", closed_port))
    fid = sw.connect_server(failing.detach(), 1, server_login.start())
    take(lambda e: e.kind is EventKind.CLOSED and e.conn == fid)

    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        path = os.path.join(d, "l.sock")
        ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ls.bind(path)
        ls.listen(16)
        ls.setblocking(False)
        lid = sw.listen(ls.detach())
        ssl = struct.pack("!ii", 8, m.SSL_REQUEST_CODE)
        startup = m.startup_message({"user": "u", "database": "d"})
        welcome = m.auth_ok() + m.backend_key_data(1, 2) + m.ready_for_query()
        for i in range(rounds):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.settimeout(10)
            c.connect(path)
            cid = take(lambda e: e.kind is EventKind.ACCEPTED and e.pool == lid).conn
            if i % 4 == 1:
                c.sendall(struct.pack("!ii", 7, 0))  # refused by the switch
                assert take(lambda e, c_id=cid: e.conn == c_id).reason == Reason.BAD_PACKET
            elif i % 4 == 2:
                c.sendall(startup + m.password_message(b"x"))
                message(cid)
                sw.close(cid, m.error_response("28000", "no", severity="FATAL"))
            else:
                # The query comes after the startup from the socket, or (i % 4 == 0) as bytes
                # Python carries into promote; the client wants its own application_name.
                first = m.query("select 1")
                c.sendall(ssl + startup + (first if i % 4 == 3 else b""))
                message(cid)
                sw.send(cid, b"N")
                sw.read_next(cid)
                message(cid)
                sw.send(cid, welcome)
                wants = {"application_name": f"login{i % 3}"}
                sw.promote(cid, 1, params=wants, pending=b"" if i % 4 == 3 else first)
                assert c.recv(1) == b"N"
                read_until_z(c)
                read_until_z(c)
                c.sendall(m.terminate())
            while c.recv(4096):
                pass
            c.close()


def fast_rounds(sw: Switch, rounds: int) -> None:
    """Logins the switch runs alone on a route: md5 and SCRAM, right and wrong passwords, a
    client leaving mid-exchange, routes replaced and cleared while a login is in its exchange,
    a query pipelined after the password; one route is left for stop() to free."""
    import hashlib

    from pgfunnel._switch import EventKind, RouteMethod
    from pgfunnel.proto import messages as m
    from pgfunnel.proto.auth import ServerAuth, scram_keys

    user, db, password = "fast", "d", "pw"
    key = db.encode() + b"\0" + user.encode()
    welcome = b"application_name\0\0TimeZone\0UTC\0server_version\x0015\0"
    salt = b"0123456789abcdef"
    _, stored, server = scram_keys(password, salt, 4096)

    def route(i: int) -> None:
        if i % 2:
            sw.set_route(
                key,
                1,
                RouteMethod.SCRAM,
                i,
                iterations=4096,
                salt=salt,
                stored=stored,
                server=server,
                welcome=welcome,
                app=b"dflt",
            )
        else:
            md5 = hashlib.md5((password + user).encode()).hexdigest().encode()
            sw.set_route(key, 1, RouteMethod.MD5, i, md5=md5, welcome=welcome)

    def read(c: socket.socket) -> tuple[bytes, bytes]:
        head = c.recv(5, socket.MSG_WAITALL)
        return head[:1], c.recv(int.from_bytes(head[1:5], "big") - 4, socket.MSG_WAITALL)

    def answer(c: socket.socket, auth: ServerAuth, kind: bytes, body: bytes, tail: bytes) -> bytes:
        """Plays the client's exchange from the message (kind, body) on; `tail` goes with its
        last password message. The last message's type (Z or E)."""
        while kind not in (b"Z", b"E"):
            if kind == b"R" and body[:4] != b"\0\0\0\0":
                code = int.from_bytes(body[:4], "big")
                reply = auth.respond(code, body[4:])
                if reply:
                    c.sendall(reply + (tail if code != m.AUTH_SASL else b""))
            kind, body = read(c)
        return kind

    sw.set_fast_cap(1000)
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        path = os.path.join(d, "f.sock")
        ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ls.bind(path)
        ls.listen(16)
        ls.setblocking(False)
        sw.listen(ls.detach())
        for i in range(rounds):
            route(i)
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.settimeout(10)
            c.connect(path)
            c.sendall(m.startup_message({"user": user, "database": db, "TimeZone": "UTC"}))
            kind, body = read(c)  # the password request: the route is in use from here
            if i % 5 == 2:
                c.close()  # leaves in the exchange
                continue
            if i % 5 == 3:
                sw.clear_routes()  # the login in progress keeps its route
            good = i % 5 != 1
            auth = ServerAuth(user, password if good else "nope")
            # A query pipelined after the password waits in the pool's queue (no server here
            # takes it) until the client leaves.
            last = answer(c, auth, kind, body, m.query("select 1"))
            assert last == (b"Z" if good else b"E"), last
            c.close()
        route(0)
        seen = sw.events()
        assert any(e.kind is EventKind.LOGGED_IN for e in seen) or rounds < 5


def tls_rounds(sw: Switch, rounds: int, login: Callable[[], int]) -> None:
    """TLS: logins through SSLRequest and a handshake, a query through pool 1's servers and
    back, a client leaving in the handshake or sending garbage, a context replaced while
    clients hold the old one; a server connection whose TLS is refused."""
    import ssl

    import trustme

    from pgfunnel._switch import TLS_CLIENTS, TLS_MODES, TLS_PROTOCOLS, TLS_SERVERS, EventKind
    from pgfunnel.proto import messages as m

    protocols = TLS_PROTOCOLS["tlsv1.2"] | TLS_PROTOCOLS["tlsv1.3"]
    from pgfunnel._switch import Reason, State

    sw.clear_routes()  # every login goes up to this loop (no route logins here)
    # The rounds before heard pool 1's servers parked (their lifetime) without replacing them
    for row in sw.conns():
        if row.state == State.SV_PARKED:
            sw.close(row.conn)
    login()
    login()
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        ca = trustme.CA()
        ca_file = os.path.join(d, "ca.pem")
        ca.cert_pem.write_to_path(ca_file)

        def configure(n: int) -> None:
            cert = ca.issue_cert("localhost")
            crt, key = os.path.join(d, f"c{n}.pem"), os.path.join(d, f"k{n}.pem")
            cert.cert_chain_pems[0].write_to_path(crt)
            cert.private_key_pem.write_to_path(key)
            sw.tls_configure(
                TLS_CLIENTS, TLS_MODES.index("prefer"), protocols, 1, key, crt, None, None,
                None, None,
            )  # fmt: skip

        configure(0)
        sw.tls_configure(TLS_SERVERS, 2, protocols, 1, None, None, None, None, None, None)
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(16)
        ls.setblocking(False)
        port = ls.getsockname()[1]
        lid = sw.listen(ls.detach())
        ctx = ssl.create_default_context(cafile=ca_file)

        def handle(batch: list[Any]) -> None:
            """Pool 1's servers expire and are replaced meanwhile (main's handler would take
            the events that follow an expire, and this loop's with them)."""
            for e in batch:
                if e.kind is EventKind.ATTENTION:
                    sw.close(e.conn)
                    login()
                elif e.kind is EventKind.DEADLINE and e.reason == Reason.SERVER_LIFETIME:
                    sw.expire(e.conn, Reason.SERVER_LIFETIME)  # its ATTENTION comes next

        def take(pred: Callable[[Any], bool]) -> Any:
            while True:
                batch = sw.events()
                handle(batch)
                for e in batch:
                    if pred(e):
                        return e
                time.sleep(0.001)

        def answered(tls: ssl.SSLSocket) -> None:
            """Up to a ReadyForQuery, handling events meanwhile (servers are replaced)."""
            got = b""
            tls.settimeout(0.01)
            while not (len(got) >= 6 and got[-6:-1] == b"Z\0\0\0\x05"):
                try:
                    chunk = tls.recv(65536)
                except TimeoutError:
                    handle(sw.events())
                    continue
                assert chunk
                got += chunk

        for i in range(rounds):
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            cid = take(lambda e: e.kind is EventKind.ACCEPTED and e.pool == lid).conn
            raw.sendall(struct.pack("!ii", 8, m.SSL_REQUEST_CODE))
            take(lambda e, c=cid: e.kind is EventKind.MESSAGE and e.conn == c)
            assert sw.tls_accept(cid)
            assert raw.recv(1) == b"S"
            if i % 4 == 1:
                raw.sendall(os.urandom(200))  # garbage in the handshake
                take(lambda e, c=cid: e.kind is EventKind.CLOSED and e.conn == c)
                raw.close()
                continue
            if i % 4 == 2:
                raw.close()  # gone in the handshake
                take(lambda e, c=cid: e.kind is EventKind.CLOSED and e.conn == c)
                continue
            tls = ctx.wrap_socket(raw, server_hostname="localhost")
            tls.sendall(m.startup_message({"user": "u", "database": "d"}))
            take(lambda e, c=cid: e.kind is EventKind.MESSAGE and e.conn == c)
            sw.send(cid, m.auth_ok() + m.ready_for_query())
            sw.promote(cid, 1, params={"application_name": "", "TimeZone": "UTC"})
            answered(tls)
            tls.sendall(m.query("select repeat('y', 30000)"))
            answered(tls)
            if i % 3 == 0:
                configure(i + 1)  # a reload: this client keeps the old context
            tls.sendall(m.terminate())
            tls.close()
            take(lambda e, c=cid: e.kind is EventKind.CLOSED and e.conn == c)
        # A server that refuses TLS under require: the SSLRequest, its 'N', the close.
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        conn = socket.socket()
        conn.setblocking(False)
        conn.connect_ex(srv.getsockname())
        sid = sw.connect_server(conn.detach(), 1, b"", TLS_MODES.index("require"), "localhost")
        peer, _ = srv.accept()
        assert peer.recv(8) == struct.pack("!ii", 8, m.SSL_REQUEST_CODE)
        peer.sendall(b"N")
        take(lambda e: e.kind is EventKind.CLOSED and e.conn == sid)
        peer.close()
        srv.close()


if __name__ == "__main__":
    main()
