"""Session settings in the switch (sets.c) in front of a real PostgreSQL: a client's SET follows
it to another server and never stays behind for the next client; more settings than the
switch keeps make the server's state unknown, and the next link starts from RESET ALL. Runs
under ASan+UBSan in scripts/switch_check.sh."""

from __future__ import annotations

import socket

from pgfunnel._switch import Mode, Switch
from pgfunnel.proto import messages as m
from pgfunnel.throwaway import Cluster
from tests.switch.conftest import pair, pg_login, read_until_z

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
    for i in range(70):  # sets.c keeps 64 per client
        ask(a, f"SET pgf.s{i} = '{i}'")
    # The server carries a's 70; the switch knows 64 of them: b's link resets them all.
    for name in ("pgf.s1", "pgf.s69"):
        assert ask(b, f"SELECT coalesce(current_setting('{name}', true), '')") == [b""]
    # a, back on the server, gets the 64 it kept again.
    assert ask(a, "SELECT current_setting('pgf.s1')") == [b"1"]
