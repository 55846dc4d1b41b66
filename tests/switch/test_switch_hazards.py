"""pooling_hazards in the switch (ps.c, scan.c) in front of a real PostgreSQL: the HAZARD event,
a refused statement answered by the server in its place, a pinned client keeping its server.
Runs under ASan+UBSan in scripts/switch_check.sh."""

from __future__ import annotations

import socket
import struct

from pgfunnel._switch import EventKind, Hazard, HazardsMode, Mode, Reason, Switch
from pgfunnel.proto import messages as m
from pgfunnel.throwaway import Cluster
from tests.switch.conftest import Events, pair, pg_login, read_until_z

POOL = 13


def setup(sw: Switch, pg: Cluster, mode: HazardsMode, servers: int = 2) -> Events:
    events = Events(sw)
    sw.add_pool(POOL, Mode.TRANSACTION)
    sw.set_pool_prepared(POOL, 200)
    sw.set_pool_hazards(POOL, mode)
    for _ in range(servers):
        sw.add_server(pg_login(pg).detach(), POOL)
    return events


def client(sw: Switch) -> tuple[socket.socket, int]:
    ours, fd = pair()
    return ours, sw.add_client(fd, POOL)


def pid(sock: socket.socket) -> bytes:
    sock.sendall(m.query("select pg_backend_pid()"))
    msgs = read_until_z(sock)
    return next(p[6:] for k, p in msgs if k == b"D")


def test_refused_by_query_and_by_parse(switch: Switch, pg: Cluster) -> None:
    events = setup(switch, pg, HazardsMode.REFUSE)
    a, cid = client(switch)
    a.sendall(m.query("LISTEN somewhere"))
    msgs = read_until_z(a)
    assert msgs[0][0] == b"E" and b"C0A000\0" in msgs[0][1] and b"LISTEN cannot" in msgs[0][1]
    ev = events.wait(lambda e: e.kind is EventKind.HAZARD)
    assert (ev.conn, ev.reason) == (cid, Hazard.LISTEN | HazardsMode.REFUSE << 8)
    # a named Parse: the client's name stands for the refusal, with its parameter types
    body = b"lock\0select pg_advisory_lock($1)\0" + struct.pack("!hI", 1, 20)
    bind = m.message(b"B", b"\0lock\0" + struct.pack("!hhi", 0, 1, 1) + b"7" + b"\0\0")
    a.sendall(m.message(b"P", body) + bind + m.message(b"E", b"\0\0\0\0\0") + m.message(b"S"))
    msgs = read_until_z(a)
    assert [k for k, _ in msgs] == [b"1", b"2", b"E", b"Z"]
    assert b"advisory lock cannot" in msgs[2][1]
    a.sendall(m.query("select count(*) from pg_locks where locktype = 'advisory'"))
    assert [p[6:] for k, p in read_until_z(a) if k == b"D"] == [b"0"]


def test_pinned_until_it_leaves(switch: Switch, pg: Cluster) -> None:
    events = setup(switch, pg, HazardsMode.PIN)
    a, _ = client(switch)
    b, _ = client(switch)
    a.sendall(m.query("select pg_advisory_lock(11)"))
    read_until_z(a)
    mine = pid(a)
    b.sendall(m.query("begin"))
    read_until_z(b)
    assert pid(b) != mine
    b.sendall(m.query("commit"))
    read_until_z(b)
    for _ in range(3):
        assert pid(a) == mine
    a.close()
    att = events.wait(lambda e: e.kind is EventKind.ATTENTION)
    assert att.reason == Reason.PINNED_END
