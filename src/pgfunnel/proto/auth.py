"""Password exchanges, sans-IO: checking clients against userlist secrets, logging into servers."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass

from scramp.utils import saslprep

from pgfunnel.config.hba import HbaRules, IdentMap
from pgfunnel.proto import messages as m

SCRAM = "SCRAM-SHA-256"
DEFAULT_ITERATIONS = 4096  # what PostgreSQL uses unless scram_iterations says otherwise
# Keys the fake salts of mock SCRAM exchanges. Drawn once per process and never changed, so an
# unknown user is offered the same salt on every try, as a real user's stored salt is.
_MOCK_KEY = secrets.token_bytes(32)
_ENTROPY_CHUNK = 4096


class _Entropy:
    """Bytes from the kernel's CSPRNG drawn a page at a time, for what every login needs
    (md5 salts, SCRAM nonces, cancel keys): one getrandom call per hundred logins instead of
    three per login, as PgBouncer's arc4random-style generator. Each byte is handed out once;
    a forked child starts with none, so parent and child never share any."""

    def __init__(self) -> None:
        self._buf = b""
        self._at = 0
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._buf, self._at = b"", 0

    def take(self, n: int) -> bytes:
        at = self._at
        if at + n > len(self._buf):
            self._buf, at = os.urandom(max(_ENTROPY_CHUNK, n)), 0
        self._at = at + n
        return self._buf[at : at + n]


random_bytes = _Entropy().take


def scram_keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes, bytes]:
    """(ClientKey, StoredKey, ServerKey) for a password, as PostgreSQL derives them. Our own
    PBKDF2 rather than scramp's, which refuses the iteration counts below 4096 that PostgreSQL
    16's scram_iterations allows."""
    try:
        prepared = saslprep(password)
    except Exception:  # PostgreSQL, too, falls back to the raw bytes when SASLprep fails
        prepared = password
    salted = hashlib.pbkdf2_hmac("sha256", prepared.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    return client_key, hashlib.sha256(client_key).digest(), server_key


class ScramError(Exception):
    """A SCRAM exchange with a server went wrong."""


def md5_secret(user: str, password: str) -> str:
    """PostgreSQL's stored md5 form: 'md5' + md5(password || user)."""
    return "md5" + hashlib.md5((password + user).encode()).hexdigest()


def md5_response(user: str, secret_or_password: str, salt: bytes) -> str:
    """The md5 password message for a salt, from a plain password or an 'md5...' secret."""
    inner = secret_or_password
    if not (inner.startswith("md5") and len(inner) == 35):
        inner = md5_secret(user, inner)
    return "md5" + hashlib.md5(inner[3:].encode() + salt).hexdigest()


@dataclass(frozen=True)
class ScramSecret:
    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes


@functools.lru_cache(maxsize=1024)
def parse_scram_secret(secret: str) -> ScramSecret | None:
    """'SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>' as PostgreSQL stores it.
    Cached: a user's secret is parsed (three base64 decodes) once, not at every login; the
    answer is a function of the string alone and ScramSecret is immutable."""
    if not secret.startswith(SCRAM + "$"):
        return None  # a plain password or an md5 secret: no exception to raise and catch
    try:
        mech, rest = secret.split("$", 1)
        if mech != SCRAM:
            return None
        iter_salt, keys = rest.split("$", 1)
        iterations, salt = iter_salt.split(":", 1)
        stored, server = keys.split(":", 1)
        return ScramSecret(
            int(iterations),
            base64.b64decode(salt, validate=True),
            base64.b64decode(stored, validate=True),
            base64.b64decode(server, validate=True),
        )
    except (ValueError, TypeError):
        return None


def secret_kind(secret: str) -> str:
    if secret.startswith("md5") and len(secret) == 35:
        return "md5"
    if parse_scram_secret(secret) is not None:
        return "scram"
    return "plain"


class AuthFailed(Exception):
    """The client's password did not match; the message is the one PostgreSQL would send."""


def mock_scram_secret(user: str, key: bytes = _MOCK_KEY) -> ScramSecret:
    """A SCRAM secret no password matches, with a salt fixed per user name: what an unknown
    user (or one whose secret cannot answer SCRAM) is offered, as PostgreSQL's mock
    authentication does, so that the exchange looks and costs the same as a wrong password."""
    digest = hmac.new(key, user.encode("utf-8", "surrogateescape"), hashlib.sha256).digest()
    return ScramSecret(DEFAULT_ITERATIONS, digest[:16], b"\0" * 32, digest)


class ClientAuth:
    """Checks one client's password: start() gives the request, receive() each reply.

    `method` is the auth_type in force (trust, any, plain/password, md5, scram-sha-256) and
    `secret` the user's userlist or auth_query entry (None when the user has none). As
    PgBouncer does, md5 upgrades to SCRAM when the stored secret is a SCRAM secret, since md5
    cannot be checked against it. A user without a usable secret goes through the same
    exchange as any other and fails only at its end, with the same message as a wrong
    password: neither the messages nor their timing tell which names exist.

    `label` and `hba_line` say how the client authenticated, for SHOW CLIENTS.
    """

    def __init__(
        self,
        method: str,
        user: str,
        secret: str | None,
        derived: dict[str, ScramSecret] | None = None,
        *,
        label: str | None = None,
        hba_line: str = "",
        mock_key: bytes = _MOCK_KEY,
    ) -> None:
        self.user = user
        self.hba_line = hba_line
        self._mock_key = mock_key
        # Plain passwords turned into SCRAM secrets, kept by the caller across logins: PBKDF2
        # costs milliseconds, and a burst of reconnecting clients must not pay it each time.
        self.derived = derived if derived is not None else {}
        self.secret = secret
        self.done = False
        self.client_key: bytes | None = None  # recovered from SCRAM, for logging into servers
        kind = secret_kind(secret) if secret is not None else None
        self.any_user = method == "any"
        if method in ("trust", "any"):
            self.method = "trust"
        elif (method == "md5" and kind == "scram") or method == "scram-sha-256":
            self.method = "scram"
        elif method in ("md5", "plain"):
            self.method = method
        elif method == "password":  # the hba name of auth_type plain
            self.method = "plain"
        else:
            raise ValueError(f"unsupported auth_type {method!r}")
        # The method as SHOW CLIENTS reports it: the one really used (md5 may have become SCRAM).
        default = "scram-sha-256" if self.method == "scram" else method
        self.label = label or ("plain" if default == "password" else default)
        self._salt = b""  # md5's, drawn when the request goes out
        self._scram: _ScramServerExchange | None = None
        self._scram_stage = 0
        self._mock = False  # the SCRAM exchange runs against a secret nothing matches
        # The user `pgbouncer` on the unix socket under the pooler's own OS user: admitted to
        # the admin console with every right, whatever admin_users says (PgBouncer's rule).
        self.own_user = False
        self.source = ""  # where the secret came from: auth_file, auth_query (SHOW USERS)

    def start(self) -> bytes:
        """The first message to send: AuthenticationOk for trust, else the password request.
        Raises AuthFailed for trust when the user is not in the auth file (PgBouncer's rule)."""
        if self.method == "trust":
            if self.secret is None and not self.any_user:
                raise self._fail()
            self.done = True
            return m.auth_ok()
        if self.method == "plain":
            return m.auth_request(m.AUTH_CLEARTEXT)
        if self.method == "md5":
            self._salt = random_bytes(4)
            return m.auth_request(m.AUTH_MD5, self._salt)
        return m.auth_request(m.AUTH_SASL, m.cstr(SCRAM) + b"\0")

    def _fail(self) -> AuthFailed:
        return AuthFailed(f'password authentication failed for user "{self.user}"')

    def receive(self, payload: bytes) -> bytes:
        """Handle one PasswordMessage payload; returns bytes to send, raises AuthFailed."""
        if self.method == "scram":
            return self._scram_step(payload)
        if not self.secret:
            raise self._fail()  # no entry, or an empty password: never a match
        if self.method == "plain":
            given = payload.rstrip(b"\0").decode(errors="replace")
            if not self._check_plain(given):
                raise self._fail()
            self.done = True
            return m.auth_ok()
        if self.method == "md5":
            given = payload.rstrip(b"\0").decode(errors="replace")
            if secret_kind(self.secret) == "scram":
                raise self._fail()
            expected = md5_response(self.user, self.secret, self._salt)
            if not hmac.compare_digest(given, expected):
                raise self._fail()
            self.done = True
            return m.auth_ok()
        return self._scram_step(payload)

    def _check_plain(self, given: str) -> bool:
        assert self.secret is not None
        kind = secret_kind(self.secret)
        if kind == "plain":
            return hmac.compare_digest(given, self.secret)
        if kind == "md5":
            return hmac.compare_digest(md5_secret(self.user, given), self.secret)
        parsed = parse_scram_secret(self.secret)
        assert parsed is not None
        client_key, stored, _ = scram_keys(given, parsed.salt, parsed.iterations)
        if not hmac.compare_digest(stored, parsed.stored_key):
            return False
        # The same key a SCRAM login recovers: the pooler can log into a server that stores
        # this secret (a user found by auth_query has no password of ours).
        self.client_key = client_key
        return True

    def route_secret(self) -> tuple[str, str] | tuple[str, ScramSecret] | None:
        """After a successful exchange, what the switch needs to check this user's next
        logins itself (net/fast_login.py): ("md5", the 32 hex digits of PostgreSQL's md5
        secret) or ("scram", the secret, derived once from a plain password); None for the
        methods it does not run (trust, plain, peer) or a secret it cannot use."""
        if not self.done or self._mock or not self.secret:
            return None
        if self.method == "md5":
            kind = secret_kind(self.secret)
            if kind == "md5":
                return "md5", self.secret[3:]
            if kind == "plain":
                return "md5", md5_secret(self.user, self.secret)[3:]
            return None
        if self.method == "scram":
            return "scram", self._auth_info()
        return None

    def _auth_info(self) -> ScramSecret:
        if not self.secret or secret_kind(self.secret) == "md5":
            # No user, an empty password, or an md5 secret (which cannot answer SCRAM): the
            # exchange goes on against a secret nothing matches.
            self._mock = True
            return mock_scram_secret(self.user, self._mock_key)
        parsed = parse_scram_secret(self.secret)
        if parsed is not None:
            return parsed
        cached = self.derived.get(self.secret)
        if cached is None:
            salt = secrets.token_bytes(16)
            _, stored, server = scram_keys(self.secret, salt, DEFAULT_ITERATIONS)
            cached = ScramSecret(DEFAULT_ITERATIONS, salt, stored, server)
            self.derived[self.secret] = cached
        return cached

    def _scram_step(self, payload: bytes) -> bytes:
        try:
            if self._scram_stage == 0:
                mech, _, rest = payload.partition(b"\0")
                if mech.decode() != SCRAM or len(rest) < 4:
                    raise self._fail()
                data_len = m.read_i32(rest)
                first = _ScramServerExchange(self._auth_info(), rest[4 : 4 + data_len].decode())
                self._scram = first
                self._scram_stage = 1
                return m.auth_request(m.AUTH_SASL_CONTINUE, first.server_first.encode())
            exchange = self._scram
            assert isinstance(exchange, _ScramServerExchange)
            final = exchange.finish(payload.decode())
            if self._mock:  # unreachable in practice: no proof matches the mock secret
                raise self._fail()
            self.client_key = exchange.client_key
            self.done = True
            return m.auth_request(m.AUTH_SASL_FINAL, final.encode()) + m.auth_ok()
        except (UnicodeDecodeError, ValueError, KeyError) as exc:
            raise self._fail() from exc


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.digest(key, text.encode(), "sha256")


def _xor(a: bytes, b: bytes) -> bytes:
    """Bytewise XOR of two strings of the same length (SCRAM's proof and ClientKey)."""
    return (int.from_bytes(a) ^ int.from_bytes(b)).to_bytes(len(a))


class _ScramServerExchange:
    """The server side of SCRAM-SHA-256 as PostgreSQL runs it (the username in the exchange is
    empty and ignored; no channel binding since we offer no -PLUS mechanism)."""

    def __init__(self, secret: ScramSecret, client_first: str) -> None:
        self.secret = secret
        if client_first.startswith(("n,", "y,")):
            gs2_flag, authzid, bare = client_first.split(",", 2)
        else:
            raise ValueError("channel binding requested but not offered")
        self.gs2_header = f"{gs2_flag},{authzid},"
        self.client_first_bare = bare
        attrs = dict(part.split("=", 1) for part in bare.split(",") if "=" in part)
        client_nonce = attrs["r"]
        if not client_nonce:
            raise ValueError("empty client nonce")
        self.nonce = client_nonce + base64.b64encode(random_bytes(18)).decode()
        salt = base64.b64encode(secret.salt).decode()
        self.server_first = f"r={self.nonce},s={salt},i={secret.iterations}"
        self.client_key: bytes | None = None

    def finish(self, client_final: str) -> str:
        without_proof, _, proof_b64 = client_final.rpartition(",p=")
        attrs = dict(part.split("=", 1) for part in without_proof.split(",") if "=" in part)
        if attrs.get("r") != self.nonce:
            raise ValueError("nonce mismatch")
        if base64.b64decode(attrs.get("c", "")) != self.gs2_header.encode():
            raise ValueError("channel binding mismatch")
        auth_message = f"{self.client_first_bare},{self.server_first},{without_proof}"
        signature = _hmac(self.secret.stored_key, auth_message)
        proof = base64.b64decode(proof_b64, validate=True)
        if len(proof) != len(signature):
            raise ValueError("bad proof length")
        client_key = _xor(proof, signature)
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), self.secret.stored_key):
            raise ValueError("wrong password")
        self.client_key = client_key
        server_signature = _hmac(self.secret.server_key, auth_message)
        return "v=" + base64.b64encode(server_signature).decode()


# --- logging into a server ------------------------------------------------------------------
class ServerAuthError(Exception):
    """The server asked for something we cannot answer (no password, unsupported method)."""


class ServerAuth:
    """Answers a server's authentication requests for one login."""

    def __init__(self, user: str, password: str | None, client_key: bytes | None = None) -> None:
        self.user = user
        self.password = password
        self.client_key = client_key
        self._scram: _ScramClient | None = None

    def respond(self, code: int, data: bytes) -> bytes | None:
        """Bytes to send for an AuthenticationXXX request (None for AuthenticationOk)."""
        if code == m.AUTH_OK:
            return None
        if code == m.AUTH_CLEARTEXT:
            if self.password is None or secret_kind(self.password) != "plain":
                raise ServerAuthError("server asked for a cleartext password; none is configured")
            return m.password_message(m.cstr(self.password))
        if code == m.AUTH_MD5:
            if self.password is None or secret_kind(self.password) == "scram":
                raise ServerAuthError("server asked for md5 auth; no usable password configured")
            return m.password_message(m.cstr(md5_response(self.user, self.password, data[:4])))
        if code == m.AUTH_SASL:
            mechs = [x.decode() for x in data.split(b"\0") if x]
            if SCRAM not in mechs:
                raise ServerAuthError(f"server offers only SASL mechanisms {mechs}")
            if self.password is not None and secret_kind(self.password) == "plain":
                self._scram = _ScramClient(password=self.password)
            elif self.client_key is not None:
                self._scram = _ScramClient(client_key=self.client_key)
            else:
                raise ServerAuthError("server asked for SCRAM; no plain password or SCRAM key")
            first = self._scram.get_client_first().encode()
            return m.sasl_initial_response(SCRAM, first)
        if code == m.AUTH_SASL_CONTINUE:
            if self._scram is None:
                raise ServerAuthError("SASL continue before SASL start")
            try:
                self._scram.set_server_first(data.decode())
                return m.password_message(self._scram.get_client_final().encode())
            except (ScramError, ValueError, KeyError) as exc:
                raise ServerAuthError(f"SCRAM exchange failed: {exc}") from exc
        if code == m.AUTH_SASL_FINAL:
            if self._scram is None:
                raise ServerAuthError("SASL final before SASL start")
            try:
                self._scram.set_server_final(data.decode())
            except (ScramError, ValueError, KeyError) as exc:
                raise ServerAuthError(f"server's SCRAM signature did not verify: {exc}") from exc
            return None
        raise ServerAuthError(f"unsupported authentication request {code} from server")


class _ScramClient:
    """The client side of SCRAM-SHA-256 towards a server, from a password or, for SCRAM
    pass-through, from the ClientKey recovered from a client's own SCRAM login."""

    def __init__(self, password: str | None = None, client_key: bytes | None = None) -> None:
        self.password = password
        self.client_key = client_key
        self.server_key: bytes | None = None
        self.nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        self.first_bare = f"n=,r={self.nonce}"
        self.server_first = ""
        self.server_nonce = ""
        self.auth_message = ""

    def get_client_first(self) -> str:
        return "n,," + self.first_bare

    def set_server_first(self, server_first: str) -> None:
        attrs = dict(part.split("=", 1) for part in server_first.split(","))
        if not attrs.get("r", "").startswith(self.nonce) or attrs["r"] == self.nonce:
            raise ScramError("server nonce does not extend ours")
        self.server_first = server_first
        self.server_nonce = attrs["r"]
        if self.password is not None:
            salt = base64.b64decode(attrs["s"])
            iterations = int(attrs["i"])
            if iterations < 1:
                raise ScramError(f"bad iteration count {iterations}")
            self.client_key, _, self.server_key = scram_keys(self.password, salt, iterations)

    def get_client_final(self) -> str:
        assert self.client_key is not None
        without_proof = f"c=biws,r={self.server_nonce}"
        self.auth_message = f"{self.first_bare},{self.server_first},{without_proof}"
        stored_key = hashlib.sha256(self.client_key).digest()
        signature = _hmac(stored_key, self.auth_message)
        proof = _xor(self.client_key, signature)
        return f"{without_proof},p={base64.b64encode(proof).decode()}"

    def set_server_final(self, server_final: str) -> None:
        if server_final.startswith("e="):
            raise ScramError(server_final[2:])
        if self.server_key is None:
            # Pass-through holds no ServerKey; the server already accepted a proof that only
            # the shared secret could make.
            return
        expected = base64.b64encode(_hmac(self.server_key, self.auth_message)).decode()
        if not hmac.compare_digest(server_final.removeprefix("v="), expected):
            raise ScramError("server signature does not match")


# --- which method applies to a client -------------------------------------------------------
# PostgreSQL's texts for the refusals that come before any password exchange (SQLSTATE 28000).
NO_HBA_ENTRY = 'no pg_hba.conf entry for host "{host}", user "{user}", database "{db}", {enc}'
HBA_REJECT = (
    'pg_hba.conf rejects connection for host "{host}", user "{user}", database "{db}", {enc}'
)
PEER_FAILED = 'Peer authentication failed for user "{user}"'
# auth_type cert: PgBouncer's text to the client; its log lines say which check failed.
CERT_FAILED = "certificate authentication failed"
CERT_NO_TLS = "TLS connection required"
CERT_NO_CERT = "TLS client certificate required"
CERT_MISMATCH = "TLS certificate name mismatch"
ANY_NEEDS_FORCED_USER = "bouncer config error"  # PgBouncer's text: auth_type=any, no user=


@dataclass(frozen=True)
class Access:
    """The method a client must pass, from auth_type or the first matching hba rule.
    `refusal` is set when the rule (or the lack of one) refuses the client outright."""

    method: str
    hba_line: str = ""
    map_name: str | None = None
    refusal: str | None = None


def choose_method(
    auth_type: str,
    hba: HbaRules | None,
    addr: str | None,
    database: str,
    user: str,
    tls: bool = False,
) -> Access:
    """`addr` is the client's IP address, None on the unix socket; `tls`: the client uses
    TLS (hostssl rules match it, hostnossl ones do not)."""
    if auth_type != "hba":
        return Access(auth_type)
    host = "[local]" if addr is None else addr
    enc = "SSL encryption" if tls else "no encryption"
    rule = hba.match(addr, tls, database, user) if hba is not None else None
    if rule is None:
        return Access(
            "reject", refusal=NO_HBA_ENTRY.format(host=host, user=user, db=database, enc=enc)
        )
    if rule.method == "reject":
        return Access(
            "reject",
            rule.where,
            refusal=HBA_REJECT.format(host=host, user=user, db=database, enc=enc),
        )
    return Access(rule.method, rule.where, rule.map_name)


def cert_refusal(
    peer: tuple[str, bool] | None,
    tls: bool,
    user: str,
    map_name: str | None = None,
    ident: IdentMap | None = None,
) -> str | None:
    """auth_type cert: why the client's certificate does not make it `user` (PgBouncer's log
    texts), or None. `peer`: the certificate's CommonName and whether the CA file verified
    it (the switch's tls_peer). An hba rule's map may let the name be another user's."""
    if not tls:
        return CERT_NO_TLS
    if peer is None or not peer[1]:
        return CERT_NO_CERT
    cn = peer[0]
    if map_name is not None:
        return None if ident is not None and ident.allows(map_name, cn, user) else CERT_MISMATCH
    return None if cn == user else CERT_MISMATCH


def peer_allowed(
    os_user: str | None, user: str, map_name: str | None, ident: IdentMap | None
) -> bool:
    """peer: the OS user at the other end of the unix socket is the user, or the rule's map
    lets it be."""
    if os_user is None:
        return False
    if map_name is None:
        return os_user == user
    return ident is not None and ident.allows(map_name, os_user, user)


class FailureLimiter:
    """Which login failures to log: the first `burst` per address in each `period` seconds,
    then none until the period ends, when the count left out is reported once. Time is
    passed in. A scan from many addresses cannot grow the map past `max_addresses`."""

    def __init__(self, period: float, burst: int, max_addresses: int = 10000) -> None:
        self.period = period
        self.burst = burst
        self.max_addresses = max_addresses
        self._seen: dict[str, tuple[float, int]] = {}  # addr -> (period start, failures)

    def note(self, addr: str, now: float) -> tuple[bool, int, float]:
        """Record one failure: (log it?, failures left out of the period that just ended,
        that period's length in seconds)."""
        start, count = self._seen.get(addr, (now, 0))
        left_out, length = 0, 0.0
        if now - start >= self.period:
            left_out, length = max(0, count - self.burst), now - start
            start, count = now, 0
        if addr not in self._seen and len(self._seen) >= self.max_addresses:
            self._seen = {a: v for a, v in self._seen.items() if now - v[0] < self.period}
        self._seen[addr] = (start, count + 1)
        return count < self.burst, left_out, length
