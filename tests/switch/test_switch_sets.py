"""Session settings in the switch (sets.c) in front of a real PostgreSQL: a client's SET follows
it to another server and never stays behind for the next client; more settings than the
switch keeps make the server's state unknown, and the next link starts from RESET ALL; a
failed replay does the same. Runs
under ASan+UBSan in scripts/switch_check.sh."""

from __future__ import annotations

import socket

from pgfunnel._switch import Mode, Switch
from pgfunnel.proto import messages as m
from pgfunnel.throwaway import Cluster
from tests.switch.conftest import pair, pg_login, read_until_z, wait_for

POOL = 11


def setup(sw: Switch, pg: Cluster, servers: int) -> None:
    sw.add_pool(POOL, Mode.TRANSACTION)
    for _ in range(servers):
        sw.add_server(pg_login(pg).detach(), POOL)


def client(sw: Switch) -> socket.socket:
    ours, fd = pair()
    sw.add_client(fd, POOL)
    return ours


def ask(sock: socket.socket, sql: str) -> list[bytes]:
    sock.sendall(m.query(sql))
    msgs = read_until_z(sock)
    errors = [payload for kind, payload in msgs if kind == b"E"]
    assert not errors, errors
    return [payload[6:] for kind, payload in msgs if kind == b"D"]


def test_a_set_follows_its_client_and_not_the_server(switch: Switch, pg: Cluster) -> None:
    setup(switch, pg, servers=2)
    a, b = client(switch), client(switch)
    ask(a, "SET work_mem = '9MB'")
    ask(b, "BEGIN")  # b holds the server a used
    assert ask(b, "SHOW work_mem") == [b"4MB"]
    assert ask(a, "SHOW work_mem") == [b"9MB"]  # on the other server
    ask(b, "COMMIT")
    for _ in range(3):
        assert ask(b, "SHOW work_mem") == [b"4MB"]
        assert ask(a, "SHOW work_mem") == [b"9MB"]
    ask(a, "RESET work_mem")
    assert ask(a, "SHOW work_mem") == [b"4MB"]


def test_a_failed_set_is_not_followed(switch: Switch, pg: Cluster) -> None:
    setup(switch, pg, servers=1)
    a, b = client(switch), client(switch)
    a.sendall(m.query("SET work_mem = 'lots'"))
    assert read_until_z(a)[0][0] == b"E"
    ask(a, "SET work_mem = '5MB'")
    assert ask(b, "SHOW work_mem") == [b"4MB"]
    assert ask(a, "SHOW work_mem") == [b"5MB"]


def test_more_settings_than_kept_reset_the_server_for_the_next_client(
    switch: Switch, pg: Cluster
) -> None:
    setup(switch, pg, servers=1)
    a, b = client(switch), client(switch)
    for i in range(110):  # sets.c keeps 100 per client
        ask(a, f"SET pgf.s{i} = '{i}'")
    # The server carries a's 110; the switch knows 100 of them: b's link resets them all.
    for name in ("pgf.s1", "pgf.s109"):
        assert ask(b, f"SELECT coalesce(current_setting('{name}', true), '')") == [b""]
    # a, back on the server, gets the 64 it kept again.
    assert ask(a, "SELECT current_setting('pgf.s1')") == [b"1"]


def test_a_pipelined_set_and_query_keep_their_server_until_both_are_answered(
    switch: Switch, pg: Cluster
) -> None:
    """A SET the switch holds to look at still owes its ReadyForQuery: with a query pipelined
    behind it while the client holds its server, the server is not given to a waiting client
    between the two answers (which would hand it the first client's rows)."""
    setup(switch, pg, servers=1)
    a, b = client(switch), client(switch)
    a.sendall(m.query("select pg_sleep(0.3)"))  # a holds the only server meanwhile
    wait_for(lambda: switch.pools()[0].sv_active == 1)
    b.sendall(m.query("select 'for b'"))
    wait_for(lambda: switch.pools()[0].cl_waiting == 1)
    a.sendall(m.query("SET work_mem = '5MB'") + m.query("select 'for a'"))
    read_until_z(a)  # the sleep
    assert [k for k, _ in read_until_z(a)] == [b"C", b"Z"]  # the SET
    second = read_until_z(a)
    assert [p[6:] for k, p in second if k == b"D"] == [b"for a"]
    assert [p[6:] for k, p in read_until_z(b) if k == b"D"] == [b"for b"]
