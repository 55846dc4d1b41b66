"""Who may log in: a new client's method (auth_type, hba, peer, the console's own user) and
auth_query lookups over small pools of connections to the server, as auth_user."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import ssl
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from pgfunnel._switch import TLS_MODES, TLS_PROTOCOLS
from pgfunnel.config.loader import DatabaseConfig
from pgfunnel.config.tls import TlsSide
from pgfunnel.net.client_conn import Phase
from pgfunnel.net.unixsock import is_unix, unix_connect, unix_path
from pgfunnel.proto import messages as m
from pgfunnel.proto import sqlstate as ss
from pgfunnel.proto.auth import (
    ANY_NEEDS_FORCED_USER,
    CERT_FAILED,
    HBA_REJECT,
    NO_HBA_ENTRY,
    PEER_FAILED,
    Access,
    ClientAuth,
    FailureLimiter,
    ServerAuthError,
    cert_refusal,
    choose_method,
    peer_allowed,
)
from pgfunnel.proto.auth_query import AuthQueryAnswer, AuthQueryFailed, Found, request
from pgfunnel.proto.login import LoginFailed, ServerLogin
from pgfunnel.proto.messages import ServerError
from pgfunnel.proto.strings import Refusal

if TYPE_CHECKING:
    from pgfunnel.net.app import App
    from pgfunnel.net.client_conn import ClientConn

log = logging.getLogger("pgfunnel")

OWN_USER: Final = "pgbouncer"  # PgBouncer's console user for its own OS user
FAILED_PREFIX: Final = "password authentication failed for user "
_HDR = struct.Struct("!ci")
_PEERCRED = struct.Struct("3i")
# Login failures from one address: the first FAILURE_LOG_BURST of each FAILURE_LOG_PERIOD
# are logged, then one line with the count left out: a password-guessing loop must not
# flood the log, and a person mistyping a password a few times still sees every try.
FAILURE_LOG_PERIOD: Final = 60.0
FAILURE_LOG_BURST: Final = 5
_FAILURE_TEXTS: Final = tuple(
    text.split("{", 1)[0]
    for text in (FAILED_PREFIX, PEER_FAILED, NO_HBA_ENTRY, HBA_REJECT, CERT_FAILED, "not allowed")
)
LOOKUP_FAILED: Final = "authentication lookup failed (auth_query): {why}"
LOOKUP_HINT: Final = "The pooler's log says why; the server named by auth_dbname must answer."


class LookupError_(Exception):  # LookupError is a builtin
    """An auth_query lookup could not give an answer; `why` is short and safe for clients."""

    def __init__(self, why: str, detail: str) -> None:
        super().__init__(detail)
        self.why = why


@dataclass(frozen=True)
class _Target:
    host: str | None
    port: int
    dbname: str
    user: str
    password: str | None


def lookup_ssl_context(tls: TlsSide) -> ssl.SSLContext:
    """The server side's TLS settings for Python's own server connections (auth_query)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    verify = tls.mode >= TLS_MODES.index("verify-ca")
    ctx.check_hostname = tls.mode == TLS_MODES.index("verify-full")
    ctx.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
    if verify:
        if tls.ca_file:
            ctx.load_verify_locations(tls.ca_file)
        else:
            ctx.load_default_certs()
    if tls.cert_file:
        ctx.load_cert_chain(tls.cert_file, tls.key_file or None)
    versions = [v for name, v in _VERSIONS if tls.protocols & TLS_PROTOCOLS[name]]
    if versions:
        ctx.minimum_version, ctx.maximum_version = versions[0], versions[-1]
    if tls.ciphers:
        ctx.set_ciphers(tls.ciphers)
    ctx.set_alpn_protocols(["postgresql"])
    return ctx


_VERSIONS = (
    ("tlsv1.0", ssl.TLSVersion.TLSv1),
    ("tlsv1.1", ssl.TLSVersion.TLSv1_1),
    ("tlsv1.2", ssl.TLSVersion.TLSv1_2),
    ("tlsv1.3", ssl.TLSVersion.TLSv1_3),
)


class _LookupConn:
    """One connection to the server as auth_user, logged in with ServerLogin."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def _message(self) -> tuple[int, bytes]:
        kind, length = _HDR.unpack(await self.reader.readexactly(5))
        if length < 4 or length > 1 << 24:
            raise ConnectionError(f"bad message length {length} from server")
        return kind[0], await self.reader.readexactly(length - 4)

    @classmethod
    async def open(cls, target: _Target, unix_dir: str, tls: TlsSide | None) -> _LookupConn:
        if is_unix(target.host):
            path = unix_path(target.host, target.port, unix_dir)
            if not path:
                raise ConnectionError("unix socket dir not configured")
            sock = await unix_connect(asyncio.get_running_loop(), path)
            reader, writer = await asyncio.open_unix_connection(sock=sock)
        else:
            reader, writer = await asyncio.open_connection(target.host, target.port)
        conn = cls(reader, writer)
        try:
            if tls is not None and tls.mode > 0 and not is_unix(target.host):
                await conn._start_tls(str(target.host), tls)
            login = ServerLogin(
                target.user,
                target.dbname,
                target.password,
                {"application_name": "pgfunnel auth_query"},
            )
            writer.write(login.start())
            while not login.done:
                kind, payload = await conn._message()
                reply = login.receive(kind, payload)
                if reply:
                    writer.write(reply)
        except BaseException:
            conn.close()
            raise
        return conn

    async def _start_tls(self, host: str, tls: TlsSide) -> None:
        """server_tls_sslmode for this lookup connection, as the switch runs it for the pool's
        servers: an SSLRequest; on 'S' the handshake (verify-ca: the chain, verify-full: the
        name too), on 'N' clear text below require."""
        self.writer.write(struct.pack("!ii", 8, m.SSL_REQUEST_CODE))
        answer = await self.reader.readexactly(1)
        if answer == b"N" and tls.mode < TLS_MODES.index("require"):
            return
        if answer != b"S":
            raise ConnectionError(
                "server refused SSL" if answer == b"N" else "bad answer to the SSLRequest"
            )
        if self.reader._buffer:  # type: ignore[attr-defined]
            raise ConnectionError("received unencrypted data after SSL response")
        # Always the host: Python sends SNI only for a name and checks an address against the
        # certificate's IP entries (None would skip verify-full's check altogether)
        await self.writer.start_tls(lookup_ssl_context(tls), server_hostname=host)

    async def query(self, sql: str, user: str) -> Found | None:
        self.writer.write(request(sql, user))
        answer = AuthQueryAnswer()
        while not answer.done:
            answer.receive(*await self._message())
        return answer.result()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.write(m.terminate())
        self.writer.close()


class _LookupPool:
    """At most `size` connections for one (server, database, auth_user); idle ones are reused
    LIFO, and a lookup waits for one only as long as its timeout allows."""

    def __init__(self, target: _Target, size: int) -> None:
        self.target = target
        self.idle: list[_LookupConn] = []
        # One slot per connection, idle or in use: a lookup holds one from before it takes
        # or opens a connection until it has put it back or closed it.
        self.slots = asyncio.Semaphore(max(1, size))
        self.closed = False

    async def lookup(
        self, sql: str, user: str, timeout: float, unix_dir: str, tls: TlsSide | None = None
    ) -> Found | None:
        async with asyncio.timeout(timeout):
            await self.slots.acquire()
        conn: _LookupConn | None = None
        try:
            async with asyncio.timeout(timeout):
                conn = (
                    self.idle.pop()
                    if self.idle
                    else await _LookupConn.open(self.target, unix_dir, tls)
                )
                found = await conn.query(sql, user)
        except BaseException:
            # A connection that timed out or failed mid-answer is never reused.
            if conn is not None:
                conn.close()
            raise
        else:
            if self.closed:
                conn.close()
            else:
                self.idle.append(conn)
        finally:
            self.slots.release()
        return found

    def close(self) -> None:
        self.closed = True
        for conn in self.idle:
            conn.close()
        self.idle.clear()


class AuthLookups:
    """The App's part of authentication: auth_query pools, the secrets they returned (for
    logging into servers as those users), and the per-address failure log limit."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.pools: dict[_Target, _LookupPool] = {}
        # user -> secret auth_query returned, used to log into servers as that user. Like
        # PgBouncer, every login of such a user runs the query again and refreshes it.
        self.secrets: dict[str, str] = {}
        self._failures = FailureLimiter(FAILURE_LOG_PERIOD, FAILURE_LOG_BURST)
        self._tasks: set[asyncio.Task[None]] = set()

    def clear(self) -> None:
        """RELOAD and RECONNECT: forget the looked-up secrets and close idle connections."""
        self.secrets.clear()
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()

    def close(self) -> None:
        """Shutdown: lookups in flight stop (their clients are being closed anyway)."""
        for task in list(self._tasks):
            task.cancel()
        self.clear()

    # --- failure logging -------------------------------------------------------------------
    def quiet_failure(self, addr: str, reason: str, now: float) -> bool:
        """True when `reason` is a login failure and `addr` already had FAILURE_LOG_BURST of
        them logged in the current period. The period's first logged failure is preceded by
        the count the previous period left out."""
        if not reason.startswith(_FAILURE_TEXTS):
            return False
        log_it, left_out, length = self._failures.note(addr, now)
        if left_out:
            log.info(
                "%d more login failures from %s in %ds were not logged",
                left_out,
                addr,
                int(length),
            )
        return not log_it

    # --- choosing and running the method ---------------------------------------------------
    def start(self, conn: ClientConn, dbname: str, user: str) -> None:
        """Decide how `conn` authenticates and start it: conn.begin_auth(ClientAuth), or a
        refusal with PostgreSQL's SQLSTATE and text. A user that neither auth_file nor the
        console rule knows is looked up with auth_query first, without blocking the loop."""
        app = self.app
        client = conn.client
        unix = client.addr == "unix"
        uid, os_user = peer_cred(conn) if unix else (None, None)
        if client.is_admin and unix and user == OWN_USER and uid == os.getuid():
            auth = ClientAuth("any", user, None, label="peer")
            auth.own_user = True
            if app.settings.log_connections:
                app.log_client(client, "pgbouncer access from unix socket")
            conn.begin_auth(auth)
            return
        access = choose_method(
            app.settings.auth_type,
            app.config.hba,
            None if unix else client.addr,
            dbname,
            user,
            conn.tls,
        )
        if access.refusal is not None:
            self.refuse(conn, ss.INVALID_AUTHORIZATION, access.refusal)
            return
        dbc = None if client.is_admin else app.config.database(dbname)
        if access.method == "any" and not client.is_admin and (dbc is None or not dbc.user):
            log.error("C-%#x: auth_type=any requires forced user", client.id)
            self.refuse(conn, ss.PROTOCOL_VIOLATION, ANY_NEEDS_FORCED_USER)
            return
        secret = app.userlist().get(user)
        plan = None
        if secret is None and access.method != "any":
            plan = self._plan(dbc)
        if plan is None:
            self._finish(conn, access, user, secret, os_user)
            return
        target, sql = plan
        task = asyncio.ensure_future(
            self._lookup_then_finish(conn, target, sql, access, user, os_user)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _plan(self, dbc: DatabaseConfig | None) -> tuple[_Target, str] | None:
        """Where and how to look a user up: auth_user/auth_dbname/auth_query of the database,
        else the global ones; auth_dbname defaults to the client's database. None: no lookup
        (no auth_user, or the console without an auth_dbname)."""
        s = self.app.settings
        auth_user = (dbc.auth_user if dbc is not None else None) or s.auth_user
        if not auth_user:
            return None
        auth_db = (dbc.auth_dbname if dbc is not None else None) or s.auth_dbname
        where = self.app.config.database(auth_db) if auth_db else dbc
        if where is None:
            if auth_db:
                log.error('authentication database "%s" is not configured.', auth_db)
            return None
        password = self.app.userlist().get(auth_user)
        if password is None and where.user == auth_user:
            password = where.password
        target = _Target(where.host, where.port, where.dbname, auth_user, password)
        sql = (dbc.auth_query if dbc is not None else None) or s.auth_query
        return target, sql

    async def _lookup_then_finish(
        self,
        conn: ClientConn,
        target: _Target,
        sql: str,
        access: Access,
        user: str,
        os_user: str | None,
    ) -> None:
        try:
            found = await self.lookup(target, sql, user)
        except LookupError_ as exc:
            if conn.transport is not None:
                error = ServerError(
                    "FATAL",
                    ss.CONNECTION_FAILURE,
                    LOOKUP_FAILED.format(why=exc.why),
                    hint=LOOKUP_HINT,
                )
                self.app.count_refusal(Refusal.AUTH_FAILED)
                conn.fail(error, error.message)
            return
        if conn.transport is None or conn.phase is Phase.CLOSED:
            return  # the client left (or timed out) while we asked
        secret = None
        if found is not None:
            secret = found.secret or ""  # NULL (expired, no password): nothing matches it
            if found.secret:
                self.secrets[user] = found.secret
        self._finish(conn, access, user, secret, os_user)

    async def lookup(self, target: _Target, sql: str, user: str) -> Found | None:
        """Run auth_query for `user`; raises LookupError_ with a short reason for the client
        (the whole story goes to the log)."""
        s = self.app.settings
        timeout = float(s.server_connect_timeout) or 15.0
        pool = self.pools.get(target)
        if pool is None:
            pool = self.pools[target] = _LookupPool(target, int(s.default_pool_size))
        where = f"{target.user}@{target.host or 'unix'}:{target.port}/{target.dbname}"
        try:
            return await pool.lookup(
                sql, user, timeout, str(s.unix_socket_dir), self.app.tls_sides[False]
            )
        except TimeoutError:
            log.warning("auth_query as %s: no answer within %gs", where, timeout)
            raise LookupError_("timed out", "timeout") from None
        except ServerAuthError as exc:
            log.warning("auth_query as %s: server login failed: %s", where, exc)
            raise LookupError_("auth_user could not log in", str(exc)) from None
        except LoginFailed as exc:
            log.warning(
                "auth_query as %s: server login failed: %s %s",
                where,
                exc.error.sqlstate,
                exc.error.message,
            )
            raise LookupError_("auth_user could not log in", str(exc)) from None
        except AuthQueryFailed as exc:
            log.warning("auth_query as %s: %s", where, exc)
            raise LookupError_("the query failed", str(exc)) from None
        except (OSError, EOFError, asyncio.IncompleteReadError) as exc:
            log.warning("auth_query as %s: %s", where, exc)
            raise LookupError_("could not reach the server", str(exc)) from None

    def _finish(
        self,
        conn: ClientConn,
        access: Access,
        user: str,
        secret: str | None,
        os_user: str | None,
    ) -> None:
        app = self.app
        method, hba_line = access.method, access.hba_line
        if method == "peer":
            # As PgBouncer: the user must exist (auth_file or auth_query), and the OS user at
            # the other end of the socket must be it, or be mapped to it.
            if secret is None or not peer_allowed(os_user, user, access.map_name, app.config.ident):
                self.refuse(conn, ss.INVALID_AUTHORIZATION, PEER_FAILED.format(user=user))
                return
            auth = ClientAuth("any", user, secret, label="peer", hba_line=hba_line)
        elif method == "cert":
            # The certificate the TLS handshake verified (the switch's) names the user.
            peer = app.bridge.sw.tls_peer(conn.client.sid) if conn.tls else None
            why = cert_refusal(peer, conn.tls, user, access.map_name, app.config.ident)
            if why is not None:
                app.log_client(conn.client, "%s", why)
                self.refuse(conn, ss.INVALID_AUTHORIZATION, CERT_FAILED)
                return
            auth = ClientAuth("any", user, secret, label="cert", hba_line=hba_line)
        else:
            try:
                auth = ClientAuth(method, user, secret, app.scram_derived, hba_line=hba_line)
            except ValueError:
                msg = f"auth_type {method} is not supported by pgfunnel yet"
                self.refuse(conn, ss.FEATURE_NOT_SUPPORTED, msg)
                return
        if secret is not None:
            auth.source = "auth_file" if user in app.userlist() else "auth_query"
        conn.begin_auth(auth)

    def refuse(self, conn: ClientConn, sqlstate: str, message: str) -> None:
        self.app.count_refusal(Refusal.AUTH_FAILED)
        conn.fail(ServerError("FATAL", sqlstate, message), message)


def peer_cred(conn: ClientConn) -> tuple[int | None, str | None]:
    """The uid and OS user name at the other end of a unix socket (SO_PEERCRED, read by the
    switch when it accepted the socket)."""
    transport = conn.transport
    uid = transport.get_extra_info("peer_uid") if transport is not None else None
    if uid is None:
        return None, None
    try:
        return uid, pwd.getpwuid(uid).pw_name
    except KeyError:
        return uid, None
