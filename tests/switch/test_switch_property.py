"""Issue 10's property, against a real PostgreSQL: after any sequence of client messages and a
disconnect, the next client gets a server that is idle, outside any batch and holding no half
message (its `select 1` is answered exactly, status I). The test plays Python's part for the
servers the switch reports: ROLLBACK for an open transaction, a new server for a busy one."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgfunnel._switch import EventKind, Mode, Reason, Switch
from pgfunnel.proto import messages as m
from pgfunnel.throwaway import Cluster
from tests.switch.conftest import Events, make_switch, pg_login, read_until_z, wait_for

POOL = 3
SQL = ["select 1", "begin", "commit", "rollback", "select 1/0", "select pg_sleep(0.01)"]


def parse(sql: str) -> bytes:
    return m.message(b"P", b"\0" + sql.encode() + b"\0\0\0")


BIND = m.message(b"B", b"\0\0\0\0\0\0\0\0")
EXECUTE = m.message(b"E", b"\0\0\0\0\0")

message = st.one_of(
    st.sampled_from(SQL).map(m.query),
    st.sampled_from(SQL).map(lambda sql: parse(sql) + BIND + EXECUTE),
    st.just(m.message(b"H")),
    st.just(m.message(b"S")),
)


@st.composite
def session(draw: st.DrawFn) -> tuple[bytes, int, bool]:
    """A client's bytes, how many of the last message it sends (all or part), and whether
    it reads the answers before leaving."""
    msgs = draw(st.lists(message, min_size=1, max_size=6))
    last = msgs[-1]
    cut = draw(st.integers(1, len(last)))
    return b"".join(msgs[:-1]) + last[:cut], draw(st.booleans())


class Harness:
    def __init__(self, sw: Switch, pg: Cluster) -> None:
        self.sw = sw
        self.pg = pg
        self.events = Events(sw)

    def settle(self, cid: int) -> None:
        """Waits for the switch to have closed client `cid`; then does Python's part for
        every server it reported."""
        self.events.wait(lambda e: e.kind is EventKind.CLOSED and e.conn == cid)
        for e in self.events.seen:
            if e.kind is not EventKind.ATTENTION:
                continue
            if e.reason == Reason.DIRTY_TXN:
                fd, _ = self.sw.detach(e.conn)
                with socket.socket(fileno=fd) as s:
                    s.setblocking(True)
                    s.settimeout(10)
                    s.sendall(m.query("rollback"))
                    assert read_until_z(s)[-1] == (b"Z", b"I")
                    self.sw.add_server(s.detach(), POOL)
            else:
                assert e.reason in (Reason.DIRTY_BUSY, Reason.DIRTY_PARTIAL)
                self.sw.close(e.conn)
                self.sw.add_server(pg_login(self.pg).detach(), POOL)
        self.events.seen.clear()

    def client(self) -> tuple[socket.socket, int]:
        ours, theirs = socket.socketpair()
        ours.settimeout(10)
        return ours, self.sw.add_client(theirs.detach(), POOL)


@pytest.fixture(scope="module")
def harness(pg: Cluster) -> Iterator[Harness]:
    sw = make_switch()
    sw.start()
    sw.add_pool(POOL, Mode.TRANSACTION)
    for _ in range(2):
        sw.add_server(pg_login(pg).detach(), POOL)
    yield Harness(sw, pg)
    sw.stop()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sessions=st.lists(session(), min_size=1, max_size=3))
def test_no_unfinished_work_reaches_the_next_client(
    harness: Harness, sessions: list[tuple[bytes, bool]]
) -> None:
    for data, reads in sessions:
        sock, cid = harness.client()
        with sock:
            sock.sendall(data)
            if reads:
                sock.settimeout(0.05)
                try:
                    while sock.recv(65536):
                        pass
                except TimeoutError:
                    pass
        harness.settle(cid)
    checker, cid = harness.client()
    with checker:
        checker.sendall(m.query("select 1"))
        kinds = [(k, p if k == b"Z" else b"") for k, p in read_until_z(checker)]
        assert kinds == [(b"T", b""), (b"D", b""), (b"C", b""), (b"Z", b"I")]
        checker.sendall(m.terminate())
    harness.settle(cid)
    wait_for(lambda: harness.sw.pools()[0].sv_idle == 2)
