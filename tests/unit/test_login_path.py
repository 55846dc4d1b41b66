"""A client's login through ClientConn and a real (never started) App, byte by byte: the
welcome a pool shows (encoded once, built again when its servers report other parameters),
AuthenticationOk in the same write as that welcome, cancel keys, the refusals, and the hand-over
to the switch (App.promote_client) with what the client sent early."""

from __future__ import annotations

import asyncio
import itertools
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pgfunnel._switch import Event, EventKind
from pgfunnel._switch import Reason as SwReason
from pgfunnel.config.loader import load_config
from pgfunnel.net.app import App
from pgfunnel.net.client_conn import ClientConn, Phase
from pgfunnel.pool.objects import Client, ClientState, ServerState
from pgfunnel.pool.scheduler import Pool
from pgfunnel.proto import messages as m
from pgfunnel.proto import sqlstate as ss
from pgfunnel.proto.auth import ServerAuth, random_bytes
from pgfunnel.proto.messages import ServerError
from pgfunnel.proto.strings import Reason

WELCOME = {
    "server_version": "16.4",
    "server_encoding": "UTF8",
    "client_encoding": "UTF8",
    "DateStyle": "ISO, MDY",
    "TimeZone": "UTC",
    "standard_conforming_strings": "on",
    "integer_datetimes": "on",
    "IntervalStyle": "postgres",
    "is_superuser": "off",
}


_SIDS = itertools.count(7)


class Transport:
    """Records each write; enough of the bridge's SwitchTransport for a login."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.tls = False  # no TLS up (the switch's MessageFlag.TLS sets it)
        # The switch's id for the connection, as conn.c makes them: generation, slot + 1.
        n = next(_SIDS)
        self.sid = (n << 32) | (n % 1000 + 1)

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str) -> Any:
        return {"peername": ("10.0.0.7", 4242), "sockname": ("127.0.0.1", 6432)}.get(name)


def split(data: bytes) -> list[tuple[str, bytes]]:
    """The backend messages in `data`, as (type, payload)."""
    out, at = [], 0
    while at < len(data):
        kind = chr(data[at])
        (length,) = struct.unpack_from("!i", data, at + 1)
        out.append((kind, data[at + 5 : at + 1 + length]))
        at += 1 + length
    assert at == len(data)
    return out


def shown(messages: list[tuple[str, bytes]]) -> dict[str, str]:
    return dict(m.parse_parameter_status(p) for k, p in messages if k == "S")


class Promotions:
    """Stands in for Bridge.promote_client (the switch is never started): records what each
    logged-in client is handed over with; `ok` False plays a client gone meanwhile."""

    def __init__(self) -> None:
        self.calls: list[tuple[Client, Any, bytes]] = []
        self.ok = True

    def __call__(self, client: Client, transport: Any, pending: bytes) -> bool:
        self.calls.append((client, transport, pending))
        return self.ok


@pytest.fixture(params=["md5", "scram-sha-256"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[App]:
    """An App that is never started; `shop` is never connected to: its pool's welcome is set
    by the test, as a server login would set it."""
    (tmp_path / "users.txt").write_text('"app" "pw"\n')
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        "shop = host=127.0.0.1 port=5999 dbname=shop\n"
        "named = host=127.0.0.1 port=5999 dbname=shop application_name=from_ini\n"
        "[pgbouncer]\n"
        f"auth_file = {tmp_path / 'users.txt'}\n"
        f"auth_type = {request.param}\n"
        "pool_mode = transaction\n"
        f"unix_socket_dir = {tmp_path}\n"
    )
    loop = asyncio.new_event_loop()
    try:
        app = App(load_config(ini), loop)
        app.bridge.promote_client = Promotions()  # type: ignore[method-assign]
        yield app
    finally:
        loop.close()


def promotions(app: App) -> Promotions:
    recorder = app.bridge.promote_client
    assert isinstance(recorder, Promotions)
    return recorder


def ready_pool(app: App, db: str = "shop", welcome: dict[str, str] | None = None) -> Pool:
    database = app.database(db)
    assert database is not None
    pool = app.pooler.get_pool(database, app.user("app"))
    pool.welcome = dict(WELCOME if welcome is None else welcome)
    return pool


def login(
    app: App, password: str = "pw", db: str = "shop", early: bytes = b"", **startup: str
) -> tuple[ClientConn, Transport, list[bytes]]:
    """Log in as `app` with `password` (`early`: sent in the same read as the last answer);
    the writes that answered the client's last message."""
    conn = ClientConn(app)
    transport = Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(m.startup_message({"user": "app", "database": db, **startup}))
    client = ServerAuth("app", password)  # the client side of md5 and SCRAM
    while conn.phase is Phase.AUTH:
        kind, payload = split(transport.writes[-1])[-1]  # the request to answer
        assert kind == "R"
        code = m.read_i32(payload)
        reply = client.respond(code, payload[4:])
        assert reply is not None
        if code != m.AUTH_SASL:  # the last message of the exchange: a driver pipelines after it
            reply += early
        before = len(transport.writes)
        conn.data_received(reply)
        answer = transport.writes[before:]
    return conn, transport, answer


def test_auth_ok_and_welcome_go_in_one_write(app: App) -> None:
    ready_pool(app)
    conn, _, answer = login(app)
    assert len(answer) == 1
    kinds = [k for k, _ in split(answer[0])]
    # SCRAM's SASLFinal comes first, then AuthenticationOk, the parameters, the key, RFQ.
    assert kinds[-2:] == ["K", "Z"] and set(kinds[:-2]) <= {"R", "S"}
    auths = [m.read_i32(p) for k, p in split(answer[0]) if k == "R"]
    assert auths[-1] == m.AUTH_OK
    assert kinds.index("S") > kinds.index("R")
    assert conn.phase is Phase.FORWARD


def test_welcome_shows_the_pool_parameters_and_the_clients_own(app: App) -> None:
    ready_pool(app)
    conn, _, answer = login(app, client_encoding="LATIN1", application_name="psql")
    messages = split(answer[0])
    params = shown(messages)
    assert params == {**WELCOME, "client_encoding": "LATIN1", "application_name": "psql"}
    # The pool's order, then what the pool does not report.
    names = [m.parse_parameter_status(p)[0] for k, p in messages if k == "S"]
    assert names == [*WELCOME, "application_name"]
    # The client's parameters are tracked as shown.
    client = conn.client
    assert client.params["client_encoding"] == "LATIN1"
    assert client.params["TimeZone"] == "UTC"
    assert client.params["application_name"] == "psql"


def test_database_application_name_is_shown_to_a_client_without_one(app: App) -> None:
    ready_pool(app, "named")
    _, _, answer = login(app, db="named")
    assert shown(split(answer[0]))["application_name"] == "from_ini"


def test_cached_welcome_is_rebuilt_when_the_pool_parameters_change(app: App) -> None:
    pool = ready_pool(app)
    _, _, first = login(app)
    cached = app.welcome_of(pool)
    assert app.welcome_of(pool) is cached  # the same parameters: encoded once
    # A new server login reports another TimeZone (a RELOAD changed the entry): the pool's
    # welcome is a new dict.
    pool.welcome = {**WELCOME, "TimeZone": "Europe/Paris"}
    _, _, second = login(app)
    assert shown(split(first[0]))["TimeZone"] == "UTC"
    assert shown(split(second[0]))["TimeZone"] == "Europe/Paris"
    assert app.welcome_of(pool) is not cached
    # Changed in place, too.
    assert pool.welcome is not None
    pool.welcome["DateStyle"] = "German, DMY"
    _, _, third = login(app)
    assert shown(split(third[0]))["DateStyle"] == "German, DMY"
    assert shown(split(third[0]))["TimeZone"] == "Europe/Paris"


def test_cancel_keys_are_distinct_31_bit_and_name_their_connection(app: App) -> None:
    ready_pool(app)
    keys, sids = [], []
    for _ in range(20):
        _, transport, answer = login(app)
        sids.append(transport.sid)
        (payload,) = [p for k, p in split(answer[0]) if k == "K"]
        pid, key = struct.unpack("!ii", payload)
        assert 0 <= pid < 2**31 and 0 <= key < 2**31
        # No table: the switch turns the pair back into the connection it was made for.
        assert app.bridge.sw.cancel_target(pid, key) == transport.sid
        keys.append((pid, key))
    assert len(set(keys)) == len(keys)
    # Pairs it never gave out name no connection, or one with an id no live connection has.
    assert app.bridge.sw.cancel_target(-1, 0) == 0
    assert app.bridge.sw.cancel_target(0, 2**31) == 0
    assert app.bridge.sw.cancel_target(keys[0][0], keys[0][1] ^ 1) not in sids


def test_wrong_password_gets_no_auth_ok(app: App) -> None:
    ready_pool(app)
    conn, transport, answer = login(app, password="nope")
    messages = split(b"".join(answer))
    assert [k for k, _ in messages] == ["E"]
    error = m.parse_error_fields(messages[0][1])
    assert error.sqlstate == ss.INVALID_PASSWORD
    assert error.message == 'password authentication failed for user "app"'
    assert transport.closed and conn.phase is Phase.CLOSED


def test_refused_after_authentication_gets_auth_ok_then_the_error(app: App) -> None:
    pool = ready_pool(app)
    pool.welcome = None  # the pool's server logins fail: no welcome, an error to repeat
    pool.login_error = ServerError("FATAL", "3D000", 'database "shop" does not exist')
    pool.login_failed_until = app.now() + 60
    _, transport, answer = login(app)
    messages = split(b"".join(answer))
    assert [k for k, _ in messages][-2:] == ["R", "E"]
    assert m.read_i32(messages[-2][1]) == m.AUTH_OK
    assert m.parse_error_fields(messages[-1][1]).sqlstate == "3D000"
    assert transport.closed


def test_a_plain_password_is_derived_into_scram_once(app: App) -> None:
    ready_pool(app)
    login(app)
    login(app)
    if app.settings.auth_type == "scram-sha-256":
        assert list(app.scram_derived) == ["pw"]
    else:
        assert not app.scram_derived


def test_random_bytes_are_fresh() -> None:
    draws = [random_bytes(8) for _ in range(2000)]  # crosses the page it draws at a time
    assert all(len(d) == 8 for d in draws)
    assert len(set(draws)) == len(draws)


def test_a_logged_in_client_is_handed_to_the_switch_with_what_it_sent_early(app: App) -> None:
    pool = ready_pool(app)
    early = m.query("SELECT 1") + m.query("SELECT 2")
    conn, transport, answer = login(app, early=early)
    [(client, handed, pending)] = promotions(app).calls
    assert handed is transport and client is conn.client
    assert pending == early  # queued in the switch behind the welcome, in order
    kinds = [k for k, _ in split(b"".join(answer))]
    assert kinds[-1] == "Z" and "E" not in kinds  # the welcome went out, nothing of the queries
    assert conn.phase is Phase.FORWARD and client.conn is None  # the switch carries it now
    assert client.pool is pool and client.state is ClientState.ACTIVE
    assert client.auth_info[0] == app.settings.auth_type  # kept for SHOW CLIENTS / USERS
    assert not transport.closed
    assert conn not in app.logging_in


def test_a_client_gone_before_the_hand_over_is_counted_out(app: App) -> None:
    pool = ready_pool(app)
    promotions(app).ok = False  # it closed meanwhile: its CLOSED event is on its way
    before = app.client_count
    conn, _, _ = login(app)
    assert app.client_count == before
    assert conn.client.state is ClientState.CLOSED
    assert all(conn.client not in members for members in pool.clients.values())


def test_a_client_of_a_pool_not_yet_logged_in_waits_then_is_handed_over(app: App) -> None:
    pool = ready_pool(app)
    pool.welcome = None  # no server has logged in yet: the client waits for the first
    connecting: list[object] = []

    async def connect(server: object) -> None:  # no socket: the login is played below
        connecting.append(server)

    app._connect = connect  # type: ignore[method-assign]
    conn, transport, answer = login(app, early=m.query("SELECT 1"))
    app.loop.run_until_complete(asyncio.sleep(0))
    messages = split(b"".join(answer))
    assert {k for k, _ in messages} == {"R"}  # AuthenticationOk alone (after SASLFinal)
    assert m.read_i32(messages[-1][1]) == m.AUTH_OK
    assert conn.client.state is ClientState.WAITING_LOGIN
    assert promotions(app).calls == []
    [server] = list(pool.servers[ServerState.LOGIN])
    assert connecting == [server]
    app.bridge.promote_server = lambda server: True  # type: ignore[method-assign]
    app.server_login_ok(server, WELCOME)  # the pool's first login: FinishLogin, then Promote
    [(client, _, pending)] = promotions(app).calls
    assert client is conn.client and pending == m.query("SELECT 1")
    assert [k for k, _ in split(transport.writes[-1])][-2:] == ["K", "Z"]


@pytest.mark.parametrize("acted", [False, True])
def test_a_query_wait_deadline_counts_only_a_close_the_switch_made(
    app: App, monkeypatch: pytest.MonkeyPatch, acted: bool
) -> None:
    """A DEADLINE is read after the fact: if the client got its server meanwhile, `expire`
    does nothing and nothing is counted or forgotten (it once counted a timeout anyway)."""
    pool = ready_pool(app)
    conn, transport, _ = login(app)
    client = conn.client
    app.bridge.clients[transport.sid] = client
    client.sid = transport.sid
    asked: list[tuple[int, SwReason]] = []

    def expire(sid: int, why: SwReason, final: bytes = b"") -> bool:
        asked.append((sid, why))
        assert m.parse_error_fields(final[5:]).sqlstate == "08P01"  # query_wait_timeout
        return acted

    monkeypatch.setattr(app.bridge.sw, "expire", expire)
    app.deadline(transport.sid, pool, SwReason.QUERY_WAIT)
    assert asked == [(transport.sid, SwReason.QUERY_WAIT)]
    assert pool.stats.timeouts.get(Reason.QUERY_WAIT_TIMEOUT, 0) == (1 if acted else 0)
    assert (transport.sid in app.bridge.clients) is not acted
    assert (client.state is ClientState.CLOSED) is acted


@pytest.mark.parametrize(("floor", "acted"), [(1, True), (0, False), (0, True)])
def test_a_server_idle_deadline_keeps_min_pool_size_and_counts_only_a_close(
    app: App, monkeypatch: pytest.MonkeyPatch, floor: int, acted: bool
) -> None:
    """server_idle_timeout never takes a pool under min_pool_size; above it the server is
    ended with Terminate, and counted and forgotten only if the switch did close it."""
    pool = ready_pool(app)
    pool.settings.min_pool_size = floor
    server = app.pooler._new_server(pool, 1.0)
    app.pooler._set_server_state(server, ServerState.IDLE, 1.0)
    server.sid = 11
    app.bridge.servers[server.sid] = server
    asked: list[tuple[int, SwReason, bytes]] = []

    def expire(sid: int, why: SwReason, final: bytes = b"") -> bool:
        asked.append((sid, why, final))
        return acted

    monkeypatch.setattr(app.bridge.sw, "expire", expire)
    app.deadline(server.sid, pool, SwReason.SERVER_IDLE)
    if floor:
        assert asked == []  # at min_pool_size: kept, not even asked
    else:
        assert asked == [(server.sid, SwReason.SERVER_IDLE, m.terminate())]
    closed = acted and not floor
    assert pool.stats.timeouts.get(Reason.IDLE_TIMEOUT, 0) == (1 if closed else 0)
    assert (server.sid in app.bridge.servers) is not closed
    assert (server.state is ServerState.CLOSED) is closed
    assert pool.server_count == (0 if closed else 1)


def test_a_waiters_event_is_acted_on_with_the_queue_as_it_is_now(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WAITERS is read after the fact: its count may include a client that got a server since
    (one Python promoted meanwhile). Python asks the switch for the queue as it is now."""
    pool = ready_pool(app)
    pid = app.bridge.pool_id(pool)
    monkeypatch.setattr(app.bridge.sw, "waiting", lambda p: 0 if p == pid else 99)
    told: list[int] = []
    monkeypatch.setattr(app, "pool_waiters", lambda pool, waiting: told.append(waiting))
    app.bridge._event(Event(EventKind.WAITERS, 0, pid, 1, b""))
    assert told == [0]
