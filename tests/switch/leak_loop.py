"""Connect/query/disconnect through the switch many times, good and bad paths alike; run by
test_leaks.py under LeakSanitizer (ASan build) so that any block the switch forgets shows up.

usage: leak_loop.py SWITCH_SO SOCKDIR PORT ROUNDS
"""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path


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
            events += sw.events()
        handle(events)
    sw.stop()


if __name__ == "__main__":
    main()
