"""The switch in front of a real PostgreSQL: servers logged in by Python (as the pooler's login
will), clients speaking v3 through the switch, and issue 10's batch rule against real data."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from pgfunnel._switch import EventKind, Mode, Reason, Switch
from pgfunnel.proto import messages as m
from pgfunnel.throwaway import Cluster
from tests.switch.conftest import Events, assert_eof, pair, pg_login, read_msg, read_until_z

POOL = 7


def parse(sql: str) -> bytes:
    return m.message(b"P", b"\0" + sql.encode() + b"\0\0\0")


BIND = m.message(b"B", b"\0\0\0\0\0\0\0\0")
EXECUTE = m.message(b"E", b"\0\0\0\0\0")
FLUSH = m.message(b"H")
SYNC = m.message(b"S")


@pytest.fixture
def table(pg: Cluster) -> Iterator[str]:
    pg.psql("drop table if exists switch_t; create table switch_t (v int)")
    yield "switch_t"
    pg.psql("drop table if exists switch_t")


def rows(msgs: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [payload[6:] for kind, payload in msgs if kind == b"D"]


def add_client(sw: Switch) -> socket.socket:
    ours, fd = pair()
    sw.add_client(fd, POOL)
    return ours


def test_simple_and_extended_queries_through_the_switch(switch: Switch, pg: Cluster) -> None:
    switch.add_pool(POOL, Mode.TRANSACTION)
    server = pg_login(pg)
    switch.add_server(server.detach(), POOL)
    c = add_client(switch)
    c.sendall(m.query("select 40 + 2"))
    assert rows(read_until_z(c)) == [b"42"]
    c.sendall(parse("select 'x' || 'y'") + BIND + EXECUTE + SYNC)
    msgs = read_until_z(c)
    assert [k for k, _ in msgs] == [b"1", b"2", b"D", b"C", b"Z"]
    assert rows(msgs) == [b"xy"]
    c.sendall(m.query("select 1/0"))
    msgs = read_until_z(c)
    assert msgs[0][0] == b"E" and b"C22012\0" in msgs[0][1]
    assert msgs[-1] == (b"Z", b"I")
    pool = switch.pools()[0]
    assert (pool.xact_count, pool.query_count) == (3, 3)


def test_an_unsynced_insert_of_a_vanished_client_is_never_committed(
    switch: Switch, pg: Cluster, table: str
) -> None:
    """Issue 10 point 1, raw form: Parse(insert) Bind Execute Flush, then close. The server is
    reported, Python closes it, and no other client's query ever runs on it."""
    events = Events(switch)
    switch.add_pool(POOL, Mode.TRANSACTION)
    first = pg_login(pg)
    switch.add_server(first.detach(), POOL)
    a = add_client(switch)
    a.sendall(parse(f"insert into {table} values (99)") + BIND + EXECUTE + FLUSH)
    kind, _ = read_msg(a)
    assert kind == b"1"
    b = add_client(switch)
    b.sendall(m.query("select 1"))  # waits: the only server holds a's open batch
    a.close()
    att = events.wait(lambda e: e.kind is EventKind.ATTENTION)
    assert att.reason == Reason.DIRTY_PARTIAL
    assert switch.close(att.conn)
    second = pg_login(pg)
    switch.add_server(second.detach(), POOL)
    assert rows(read_until_z(b)) == [b"1"]
    assert pg.psql(f"select count(*) from {table}") == "0"


def test_a_transaction_left_open_is_rolled_back_by_python(
    switch: Switch, pg: Cluster, table: str
) -> None:
    events = Events(switch)
    switch.add_pool(POOL, Mode.TRANSACTION)
    server = pg_login(pg)
    switch.add_server(server.detach(), POOL)
    a = add_client(switch)
    a.sendall(m.query(f"begin; insert into {table} values (1)"))
    assert read_until_z(a)[-1] == (b"Z", b"T")
    a.close()
    att = events.wait(lambda e: e.kind is EventKind.ATTENTION)
    assert att.reason == Reason.DIRTY_TXN
    fd, _ = switch.detach(att.conn)
    with socket.socket(fileno=fd) as mine:
        mine.setblocking(True)
        mine.settimeout(10)
        mine.sendall(m.query("rollback"))
        assert read_until_z(mine)[-1] == (b"Z", b"I")
        switch.add_server(mine.detach(), POOL)
    b = add_client(switch)
    b.sendall(m.query(f"select count(*) from {table}"))
    assert rows(read_until_z(b)) == [b"0"]


def test_a_refused_message_type_never_reaches_postgres(switch: Switch, pg: Cluster) -> None:
    switch.add_pool(POOL, Mode.TRANSACTION)
    server = pg_login(pg)
    switch.add_server(server.detach(), POOL)
    bad = add_client(switch)
    bad.sendall(m.message(b"\0", b"boom"))
    assert b"C08P01\0" in assert_eof(bad)
    good = add_client(switch)
    good.sendall(m.query("select pg_backend_pid() = pg_backend_pid()"))
    assert rows(read_until_z(good)) == [b"t"]
    assert switch.pools()[0].sv_idle == 1
