"""Named prepared statements in the switch (ps.c) in front of a real PostgreSQL: the rewrite
of Parse/Bind/Describe/Close, answers kept in order, the per-server LRU, and a client leaving
with Parses in flight. Runs under ASan+UBSan in scripts/switch_check.sh."""

from __future__ import annotations

import socket
import struct

from pgfunnel._switch import EventKind, Kind, Mode, Reason, State, Switch
from pgfunnel.proto import messages as m
from pgfunnel.throwaway import Cluster
from tests.switch.conftest import Events, pair, pg_login, read_msg, read_until_z, wait_for

POOL = 9
SYNC = m.message(b"S")
EXECUTE = m.message(b"E", b"\0\0\0\0\0")


def parse(name: str, sql: str, types: tuple[int, ...] = ()) -> bytes:
    body = name.encode() + b"\0" + sql.encode() + b"\0" + struct.pack("!h", len(types))
    return m.message(b"P", body + b"".join(struct.pack("!I", t) for t in types))


def bind(name: str, *params: str) -> bytes:
    body = b"\0" + name.encode() + b"\0" + struct.pack("!hh", 0, len(params))
    for p in params:
        body += struct.pack("!i", len(p)) + p.encode()
    return m.message(b"B", body + struct.pack("!h", 0))


def describe_statement(name: str) -> bytes:
    return m.message(b"D", b"S" + name.encode() + b"\0")


def close_statement(name: str) -> bytes:
    return m.message(b"C", b"S" + name.encode() + b"\0")


def kinds(msgs: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [k for k, _ in msgs]


def rows(msgs: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [payload[6:] for kind, payload in msgs if kind == b"D"]


def setup(sw: Switch, pg: Cluster, servers: int = 1, max_prepared: int = 200) -> None:
    sw.add_pool(POOL, Mode.TRANSACTION)
    sw.set_pool_prepared(POOL, max_prepared)
    for _ in range(servers):
        sw.add_server(pg_login(pg).detach(), POOL)


def client(sw: Switch) -> socket.socket:
    ours, fd = pair()
    sw.add_client(fd, POOL)
    return ours


def server_names(sock: socket.socket) -> list[bytes]:
    sock.sendall(m.query("select name from pg_prepared_statements order by name"))
    return [payload[6:] for kind, payload in read_until_z(sock) if kind == b"D"]


def test_same_name_two_clients_one_server(switch: Switch, pg: Cluster) -> None:
    setup(switch, pg)
    a, b = client(switch), client(switch)
    a.sendall(parse("s", "select 'from a'") + SYNC)
    b.sendall(parse("s", "select 'from b'") + SYNC)
    assert kinds(read_until_z(a)) == [b"1", b"Z"]
    assert kinds(read_until_z(b)) == [b"1", b"Z"]
    for _ in range(3):
        a.sendall(bind("s") + EXECUTE + SYNC)
        b.sendall(bind("s") + EXECUTE + SYNC)
        assert rows(read_until_z(a)) == [b"from a"]
        assert rows(read_until_z(b)) == [b"from b"]
    assert server_names(a) == [b"PGFUNNEL_1", b"PGFUNNEL_2"]
    conns = {c.conn: c.prepared for c in switch.conns()}
    assert sorted(conns.values()) == [1, 1, 2]  # two clients with one each, the server's two
    pool = switch.pools()[0]
    assert (pool.client_parse_count, pool.server_parse_count, pool.bind_count) == (2, 2, 6)


def test_a_statement_shared_by_text_is_prepared_once_per_server(
    switch: Switch, pg: Cluster
) -> None:
    setup(switch, pg)
    a, b = client(switch), client(switch)
    a.sendall(parse("mine", "select $1::int + 1", (23,)) + bind("mine", "1") + EXECUTE + SYNC)
    assert rows(read_until_z(a)) == [b"2"]
    # b's Parse of the same text is answered without preparing it again.
    b.sendall(parse("theirs", "select $1::int + 1", (23,)) + bind("theirs", "5") + EXECUTE + SYNC)
    msgs = read_until_z(b)
    assert kinds(msgs) == [b"1", b"2", b"D", b"C", b"Z"] and rows(msgs) == [b"6"]
    assert server_names(b) == [b"PGFUNNEL_1"]
    assert switch.pools()[0].server_parse_count == 1


def test_the_statement_follows_its_client_to_another_server(switch: Switch, pg: Cluster) -> None:
    setup(switch, pg, servers=2)
    a, b = client(switch), client(switch)
    a.sendall(parse("q", "select 'q:' || $1::text") + SYNC)
    assert kinds(read_until_z(a)) == [b"1", b"Z"]
    b.sendall(m.query("begin"))  # b holds the server a just used
    assert read_until_z(b)[-1] == (b"Z", b"T")
    a.sendall(describe_statement("q") + bind("q", "x") + EXECUTE + SYNC)
    msgs = read_until_z(a)
    # The injected Parse's ParseComplete never reaches the client.
    assert kinds(msgs) == [b"t", b"T", b"2", b"D", b"C", b"Z"] and rows(msgs) == [b"q:x"]
    b.sendall(m.query("commit"))
    read_until_z(b)
    assert sorted(c.prepared for c in switch.conns() if c.kind is Kind.SERVER) == [1, 1]


def test_close_is_answered_in_order_and_the_server_keeps_the_statement(
    switch: Switch, pg: Cluster
) -> None:
    setup(switch, pg)
    a = client(switch)
    a.sendall(
        parse("x", "select 1")
        + bind("x")
        + EXECUTE
        + close_statement("x")
        # a Close of a name a never had is answered by the server, in order too
        + close_statement("never")
        + parse("y", "select 2")
        + SYNC
    )
    assert kinds(read_until_z(a)) == [b"1", b"2", b"D", b"C", b"3", b"3", b"1", b"Z"]
    a.sendall(bind("x") + EXECUTE + SYNC)
    msgs = read_until_z(a)
    assert msgs[0][0] == b"E" and b'Mprepared statement "x" does not exist\0' in msgs[0][1]
    assert server_names(a) == [b"PGFUNNEL_1", b"PGFUNNEL_2"]


def test_lru_closes_the_least_recently_used(switch: Switch, pg: Cluster) -> None:
    setup(switch, pg, max_prepared=2)
    a = client(switch)
    for i in range(5):
        a.sendall(parse(f"s{i}", f"select {i}") + bind(f"s{i}") + EXECUTE + SYNC)
        assert rows(read_until_z(a)) == [str(i).encode()]
    # s0 was closed on the server long ago; using it prepares it again (answers unchanged).
    a.sendall(bind("s0") + EXECUTE + bind("s4") + EXECUTE + SYNC)
    msgs = read_until_z(a)
    assert kinds(msgs) == [b"2", b"D", b"C", b"2", b"D", b"C", b"Z"]
    assert rows(msgs) == [b"0", b"4"]
    assert len(server_names(a)) == 2


def test_an_error_drops_what_the_server_skipped(switch: Switch, pg: Cluster) -> None:
    setup(switch, pg)
    a = client(switch)
    a.sendall(parse("bad", "selec 1") + parse("ok", "select 'ok'") + SYNC)
    assert kinds(read_until_z(a)) == [b"E", b"Z"]
    a.sendall(bind("ok") + EXECUTE + SYNC)  # "ok" was skipped: prepared now, answers in order
    msgs = read_until_z(a)
    assert kinds(msgs) == [b"2", b"D", b"C", b"Z"] and rows(msgs) == [b"ok"]


def test_a_client_leaving_with_a_parse_in_flight(switch: Switch, pg: Cluster) -> None:
    """The server is parked with its answers unknown; what was in flight is forgotten, and a
    later client gets its statement prepared afresh on a new server."""
    events = Events(switch)
    setup(switch, pg)
    a = client(switch)
    a.sendall(parse("p", "select pg_sleep(0.2), 'p'"))  # no Sync: a batch left open
    wait_for(lambda: any(c.state is State.CL_LINKED for c in switch.conns()))
    a.close()
    att = events.wait(lambda e: e.kind is EventKind.ATTENTION)
    assert att.reason == Reason.DIRTY_PARTIAL
    assert switch.close(att.conn)
    switch.add_server(pg_login(pg).detach(), POOL)
    b = client(switch)
    b.sendall(parse("p", "select pg_sleep(0.2), 'p'") + bind("p") + EXECUTE + SYNC)
    msgs = read_until_z(b)
    assert kinds(msgs) == [b"1", b"2", b"D", b"C", b"Z"]


def test_a_parse_bigger_than_the_buffer(pg: Cluster) -> None:
    from tests.switch.conftest import make_switch

    sw = make_switch(buffer_size=4096)
    sw.start()
    try:
        setup(sw, pg)
        a = client(sw)
        sql = "select '" + "x" * 20000 + "' as big"
        a.sendall(parse("big", sql) + bind("big") + EXECUTE + SYNC)
        msgs = read_until_z(a)
        assert kinds(msgs) == [b"1", b"2", b"D", b"C", b"Z"]
        assert rows(msgs) == [b"x" * 20000]
    finally:
        sw.stop()


def test_parse_then_flush_answers_without_a_sync(switch: Switch, pg: Cluster) -> None:
    """Parse then Flush: the ParseComplete comes without a Sync (and the client holds the
    server until it syncs)."""
    setup(switch, pg)
    a = client(switch)
    a.sendall(parse("f", "select 1") + m.message(b"H"))
    assert read_msg(a)[0] == b"1"
    a.sendall(SYNC)
    assert read_until_z(a) == [(b"Z", b"I")]


def test_held_statements_after_the_switchs_own_set(pg: Cluster) -> None:
    """A client queued with a failing Parse and a good one, linked to a server whose
    application_name the switch SETs first: the switch's SET answer is not counted against the
    client's batches, so the failed statement is not believed prepared."""
    from pgfunnel.proto.messages import TRACKED_PARAMS
    from tests.switch.conftest import LONG_TX, SERVER_GONE, UNSUPPORTED

    sw = Switch(
        unsupported_pkt=UNSUPPORTED,
        long_tx=LONG_TX,
        server_gone=SERVER_GONE,
        tracked=TRACKED_PARAMS,
    )
    sw.start()
    try:
        sw.add_pool(POOL, Mode.TRANSACTION)
        sw.set_pool_prepared(POOL, 200)
        sock = pg_login(pg)
        sw.add_server(sock.detach(), POOL, params={"application_name": ""})
        holder_ours, fd = pair()
        sw.add_client(fd, POOL, params={"application_name": "holder"})
        holder_ours.sendall(m.query("begin"))  # holds the only server
        assert read_until_z(holder_ours)[-1] == (b"Z", b"T")
        ours, fd = pair()
        sw.add_client(fd, POOL, params={"application_name": "queued"})
        # one write, so that both batches are read while the client has no server
        ours.sendall(
            parse("bad", "selec 1")
            + SYNC
            + parse("ok", "select 'ok'")
            + bind("ok")
            + EXECUTE
            + SYNC
        )
        wait_for(lambda: sw.pools()[0].cl_waiting == 1)
        holder_ours.sendall(m.query("commit"))
        read_until_z(holder_ours)
        assert kinds(read_until_z(ours)) == [b"E", b"Z"]
        msgs = read_until_z(ours)
        assert kinds(msgs) == [b"1", b"2", b"D", b"C", b"Z"] and rows(msgs) == [b"ok"]
        # "bad" was never prepared: the server says why again, not that it does not exist
        ours.sendall(bind("bad") + EXECUTE + SYNC)
        msgs = read_until_z(ours)
        assert msgs[0][0] == b"E" and b"C42601\0" in msgs[0][1]
        ours.sendall(m.query("show application_name"))
        assert rows(read_until_z(ours)) == [b"queued"]
    finally:
        sw.stop()
