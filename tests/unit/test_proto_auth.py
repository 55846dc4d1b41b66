"""Password exchanges: clients checked against userlist secrets; the pooler logging into servers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct

import pytest
from scramp import ScramMechanism

from pgfunnel.proto import messages as m
from pgfunnel.proto.auth import (
    AuthFailed,
    ClientAuth,
    ServerAuth,
    ServerAuthError,
    md5_secret,
    parse_scram_secret,
    secret_kind,
)
from pgfunnel.proto.framing import MessageReader

USER = "app"
PASSWORD = "s3cr3t pa55"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def pg_md5_secret(user: str, password: str) -> str:
    return "md5" + hashlib.md5((password + user).encode()).hexdigest()


def pg_md5_response(user: str, password: str, salt: bytes) -> str:
    """PostgreSQL's formula: 'md5' + md5(md5(password + user).hexdigest() + salt)."""
    inner = hashlib.md5((password + user).encode()).hexdigest()
    return "md5" + hashlib.md5(inner.encode() + salt).hexdigest()


def scram_secret(password: str, iterations: int = 4096) -> str:
    """A SCRAM secret formatted as PostgreSQL stores it in pg_authid.rolpassword."""
    salt, stored, server, it = ScramMechanism().make_auth_info(password, iteration_count=iterations)
    return f"SCRAM-SHA-256${it}:{b64(salt)}${b64(stored)}:{b64(server)}"


def pg_scram_secret(password: str, iterations: int, salt: bytes = b"pgfunnel-salt-16") -> str:
    """The same secret computed from RFC 5802 directly: any iteration count PostgreSQL 16+
    accepts (scram_iterations may be as low as 1), which scramp refuses to make."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = _hmac(salted, b"Client Key")
    stored = hashlib.sha256(client_key).digest()
    server = _hmac(salted, b"Server Key")
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored)}:{b64(server)}"


SCRAM_SECRET = scram_secret(PASSWORD)
MD5_SECRET = pg_md5_secret(USER, PASSWORD)
FAILED = f'password authentication failed for user "{USER}"'


class LibpqScram:
    """The client side of SCRAM-SHA-256 as libpq runs it (RFC 5802/7677): empty username,
    no channel binding ('n,,'), written here from the RFC so the server side is checked
    against an independent implementation."""

    def __init__(self, password: str, nonce: str | None = None) -> None:
        self.password = password
        self.nonce = nonce or b64(os.urandom(18))
        self.first_bare = f"n=,r={self.nonce}"
        self.client_key = b""
        self.server_signature = b""

    def client_first(self) -> bytes:
        return f"n,,{self.first_bare}".encode()

    def client_final(self, server_first: bytes) -> bytes:
        text = server_first.decode()
        attrs = dict(part.split("=", 1) for part in text.split(","))
        nonce = attrs["r"]
        assert nonce.startswith(self.nonce) and len(nonce) > len(self.nonce)
        salted = hashlib.pbkdf2_hmac(
            "sha256", self.password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
        )
        self.client_key = _hmac(salted, b"Client Key")
        stored_key = hashlib.sha256(self.client_key).digest()
        server_key = _hmac(salted, b"Server Key")
        without_proof = f"c=biws,r={nonce}"
        auth_message = f"{self.first_bare},{text},{without_proof}".encode()
        proof = bytes(
            a ^ b for a, b in zip(self.client_key, _hmac(stored_key, auth_message), strict=True)
        )
        self.server_signature = _hmac(server_key, auth_message)
        return f"{without_proof},p={b64(proof)}".encode()


def split_messages(raw: bytes) -> list[tuple[int, bytes]]:
    reader = MessageReader()
    reader.feed(raw)
    out = []
    while (msg := reader.next()) is not None:
        out.append(msg)
    assert reader.take_rest() == b""
    return out


def auth_code(msg: tuple[int, bytes]) -> int:
    kind, payload = msg
    assert kind == m.AUTHENTICATION
    return m.read_i32(payload)


def scram_login(auth: ClientAuth, password: str) -> LibpqScram:
    """Run a libpq-style SCRAM exchange against `auth`; returns the client after success."""
    [request] = split_messages(auth.start())
    assert auth_code(request) == m.AUTH_SASL
    assert m.parse_cstrings(request[1][4:]) == ["SCRAM-SHA-256", ""]
    client = LibpqScram(password)
    initial = m.sasl_initial_response("SCRAM-SHA-256", client.client_first())
    [cont] = split_messages(auth.receive(initial[5:]))
    assert auth_code(cont) == m.AUTH_SASL_CONTINUE
    assert not auth.done
    final = client.client_final(cont[1][4:])
    final_msg, ok = split_messages(auth.receive(m.password_message(final)[5:]))
    assert auth_code(final_msg) == m.AUTH_SASL_FINAL
    assert final_msg[1][4:] == b"v=" + b64(client.server_signature).encode()
    assert auth_code(ok) == m.AUTH_OK
    assert auth.done
    return client


# --- secrets --------------------------------------------------------------------------------
def test_md5_secret_is_postgres_stored_form() -> None:
    assert md5_secret("admin", "1234") == "md545f2603610af569b6155c45067268c6b"
    assert md5_secret(USER, PASSWORD) == MD5_SECRET


def test_parse_scram_secret_round_trip() -> None:
    parsed = parse_scram_secret(SCRAM_SECRET)
    assert parsed is not None
    assert parsed.iterations == 4096
    assert len(parsed.salt) > 0 and len(parsed.stored_key) == len(parsed.server_key) == 32
    assert secret_kind(SCRAM_SECRET) == "scram"
    assert secret_kind(MD5_SECRET) == "md5"
    assert secret_kind(PASSWORD) == "plain"


@pytest.mark.parametrize(
    "bad",
    [
        "SCRAM-SHA-256$4096:c2FsdA==$notbase64!:c2VydmVy",
        "SCRAM-SHA-1$4096:c2FsdA==$c3RvcmVk:c2VydmVy",
        "SCRAM-SHA-256$many:c2FsdA==$c3RvcmVk:c2VydmVy",
        "SCRAM-SHA-256$4096",
    ],
)
def test_malformed_scram_secrets_are_plain_passwords(bad: str) -> None:
    assert parse_scram_secret(bad) is None
    assert secret_kind(bad) == "plain"


# --- ClientAuth: trust, plain, md5 ----------------------------------------------------------
@pytest.mark.parametrize("method", ["trust", "any"])
def test_trust_sends_auth_ok_at_once(method: str) -> None:
    auth = ClientAuth(method, USER, PASSWORD)
    assert auth.start() == m.auth_ok()
    assert auth.done


def test_trust_still_needs_the_user_in_the_auth_file() -> None:
    """PgBouncer: with trust, the user name must still exist in auth_file; `any` skips that."""
    with pytest.raises(AuthFailed, match=f'password authentication failed for user "{USER}"'):
        ClientAuth("trust", USER, None).start()
    assert ClientAuth("any", USER, None).start() == m.auth_ok()


def test_an_empty_stored_password_never_matches() -> None:
    auth = ClientAuth("plain", USER, "")
    auth.start()
    with pytest.raises(AuthFailed):
        auth.receive(b"\0")


@pytest.mark.parametrize(
    "secret", [PASSWORD, MD5_SECRET, SCRAM_SECRET], ids=["plain", "md5", "scram"]
)
def test_plain_accepts_the_password_against_any_secret_kind(secret: str) -> None:
    auth = ClientAuth("plain", USER, secret)
    assert auth.start() == m.auth_request(m.AUTH_CLEARTEXT)
    assert auth.receive(PASSWORD.encode() + b"\0") == m.auth_ok()
    assert auth.done


@pytest.mark.parametrize(
    "secret", [PASSWORD, MD5_SECRET, SCRAM_SECRET], ids=["plain", "md5", "scram"]
)
def test_plain_rejects_a_wrong_password(secret: str) -> None:
    auth = ClientAuth("plain", USER, secret)
    auth.start()
    with pytest.raises(AuthFailed) as info:
        auth.receive(b"wrong\0")
    assert str(info.value) == FAILED
    assert not auth.done


@pytest.mark.parametrize("secret", [PASSWORD, MD5_SECRET], ids=["plain", "md5"])
def test_md5_accepts_postgres_formula(secret: str) -> None:
    auth = ClientAuth("md5", USER, secret)
    [request] = split_messages(auth.start())
    assert auth_code(request) == m.AUTH_MD5
    salt = request[1][4:]
    assert len(salt) == 4
    answer = pg_md5_response(USER, PASSWORD, salt).encode() + b"\0"
    assert auth.receive(answer) == m.auth_ok()
    assert auth.done


@pytest.mark.parametrize("secret", [PASSWORD, MD5_SECRET], ids=["plain", "md5"])
def test_md5_rejects_a_wrong_password(secret: str) -> None:
    auth = ClientAuth("md5", USER, secret)
    salt = split_messages(auth.start())[0][1][4:]
    with pytest.raises(AuthFailed, match=f"^{FAILED}$"):
        auth.receive(pg_md5_response(USER, "guess", salt).encode() + b"\0")


def test_md5_answer_for_another_salt_is_rejected() -> None:
    auth = ClientAuth("md5", USER, PASSWORD)
    salt = split_messages(auth.start())[0][1][4:]
    other = bytes((b + 1) % 256 for b in salt)
    with pytest.raises(AuthFailed):
        auth.receive(pg_md5_response(USER, PASSWORD, other).encode() + b"\0")


def test_md5_salts_differ_between_logins() -> None:
    salts = {split_messages(ClientAuth("md5", USER, PASSWORD).start())[0][1] for _ in range(8)}
    assert len(salts) > 1


@pytest.mark.parametrize("method", ["plain", "md5"])
def test_unknown_user_fails(method: str) -> None:
    auth = ClientAuth(method, "ghost", None)
    auth.start()
    reply = b"md5" + b"0" * 32 + b"\0" if method == "md5" else b"anything\0"
    with pytest.raises(AuthFailed, match=r'^password authentication failed for user "ghost"$'):
        auth.receive(reply)
    assert not auth.done


def scram_attempt(auth: ClientAuth, password: str) -> tuple[bytes, AuthFailed]:
    """A libpq-style SCRAM exchange expected to fail at its end: (server-first, the error)."""
    [request] = split_messages(auth.start())
    assert auth_code(request) == m.AUTH_SASL
    client = LibpqScram(password)
    initial = m.sasl_initial_response("SCRAM-SHA-256", client.client_first())
    [cont] = split_messages(auth.receive(initial[5:]))
    assert auth_code(cont) == m.AUTH_SASL_CONTINUE
    final = client.client_final(cont[1][4:])
    with pytest.raises(AuthFailed) as failed:
        auth.receive(m.password_message(final)[5:])
    assert not auth.done and auth.client_key is None
    return cont[1][4:], failed.value


def _salt_and_iterations(server_first: bytes) -> tuple[str, str]:
    attrs = dict(part.split("=", 1) for part in server_first.decode().split(","))
    return attrs["s"], attrs["i"]


@pytest.mark.parametrize("secret", [None, "", MD5_SECRET])
def test_scram_without_a_usable_secret_runs_the_whole_exchange(secret: str | None) -> None:
    """An unknown user, an empty password and an md5 secret under SCRAM all get a full
    exchange (server-first with a salt and 4096 iterations) and fail only after the client's
    proof, with the wrong-password message: PostgreSQL's mock authentication."""
    first, error = scram_attempt(ClientAuth("scram-sha-256", USER, secret), PASSWORD)
    assert str(error) == FAILED
    salt, iterations = _salt_and_iterations(first)
    assert iterations == "4096" and len(base64.b64decode(salt)) == 16


def test_mock_salt_is_stable_per_user_and_differs_between_users() -> None:
    """A real user's salt is the same on every try; so is an unknown user's, else comparing
    two tries would tell them apart."""
    salts = {
        _salt_and_iterations(scram_attempt(ClientAuth("scram-sha-256", "ghost", None), "x")[0])
        for _ in range(3)
    }
    other = _salt_and_iterations(scram_attempt(ClientAuth("scram-sha-256", "ghost2", None), "x")[0])
    assert len(salts) == 1 and other not in salts


def test_unknown_user_and_wrong_password_fail_alike() -> None:
    known_first, known = scram_attempt(ClientAuth("scram-sha-256", USER, SCRAM_SECRET), "wrong")
    ghost_first, ghost = scram_attempt(ClientAuth("scram-sha-256", USER, None), "wrong")
    assert str(known) == str(ghost) == FAILED
    # Same shape of server-first: nonce, 16-byte salt, iterations.
    assert [p[:2] for p in known_first.split(b",")] == [p[:2] for p in ghost_first.split(b",")]


def test_label_and_hba_line_are_kept_for_show_clients() -> None:
    auth = ClientAuth("password", USER, PASSWORD, hba_line="hba.conf:3")
    assert (auth.label, auth.hba_line, auth.method) == ("plain", "hba.conf:3", "plain")
    # The method really used: md5 with a SCRAM secret is a SCRAM login.
    assert ClientAuth("md5", USER, SCRAM_SECRET).label == "scram-sha-256"
    assert ClientAuth("md5", USER, MD5_SECRET).label == "md5"
    assert ClientAuth("trust", USER, PASSWORD, label="peer").label == "peer"


def test_unsupported_auth_type() -> None:
    with pytest.raises(ValueError, match="cert"):
        ClientAuth("cert", USER, PASSWORD)


# --- ClientAuth: SCRAM ----------------------------------------------------------------------
@pytest.mark.parametrize("secret", [PASSWORD, SCRAM_SECRET], ids=["plain", "scram"])
def test_scram_login_as_libpq_does_it(secret: str) -> None:
    auth = ClientAuth("scram-sha-256", USER, secret)
    client = scram_login(auth, PASSWORD)
    assert auth.client_key == client.client_key


def test_md5_auth_type_upgrades_to_scram_for_a_scram_secret() -> None:
    auth = ClientAuth("md5", USER, SCRAM_SECRET)
    client = scram_login(auth, PASSWORD)
    assert auth.client_key == client.client_key


def test_md5_auth_type_keeps_md5_for_plain_and_md5_secrets() -> None:
    for secret in (PASSWORD, MD5_SECRET):
        assert auth_code(split_messages(ClientAuth("md5", USER, secret).start())[0]) == 5


@pytest.mark.parametrize("secret", [PASSWORD, SCRAM_SECRET], ids=["plain", "scram"])
def test_scram_wrong_password(secret: str) -> None:
    auth = ClientAuth("scram-sha-256", USER, secret)
    auth.start()
    client = LibpqScram("not it")
    cont = auth.receive(m.sasl_initial_response("SCRAM-SHA-256", client.client_first())[5:])
    with pytest.raises(AuthFailed) as info:
        auth.receive(client.client_final(split_messages(cont)[0][1][4:]))
    assert str(info.value) == FAILED
    assert not auth.done
    assert auth.client_key is None


def test_scram_with_only_an_md5_secret_fails() -> None:
    # The right password does not help: an md5 secret cannot check a SCRAM proof.
    _, error = scram_attempt(ClientAuth("scram-sha-256", USER, MD5_SECRET), PASSWORD)
    assert str(error) == FAILED


@pytest.mark.parametrize(
    "first",
    [
        b"p=tls-server-end-point,,n=,r=abc",  # channel binding we never offered
        b"n,,n=,r=",  # empty nonce
        b"n,,n=",  # no nonce
        b"garbage",
    ],
)
def test_scram_bad_client_first_fails(first: bytes) -> None:
    auth = ClientAuth("scram-sha-256", USER, SCRAM_SECRET)
    auth.start()
    with pytest.raises(AuthFailed, match=FAILED):
        auth.receive(m.sasl_initial_response("SCRAM-SHA-256", first)[5:])


def test_scram_unknown_mechanism_fails() -> None:
    auth = ClientAuth("scram-sha-256", USER, SCRAM_SECRET)
    auth.start()
    first = LibpqScram(PASSWORD).client_first()
    with pytest.raises(AuthFailed):
        auth.receive(m.sasl_initial_response("SCRAM-SHA-256-PLUS", first)[5:])


def _started(auth: ClientAuth, client: LibpqScram) -> bytes:
    auth.start()
    cont = auth.receive(m.sasl_initial_response("SCRAM-SHA-256", client.client_first())[5:])
    return split_messages(cont)[0][1][4:]


def test_scram_client_final_with_another_nonce_fails() -> None:
    auth = ClientAuth("scram-sha-256", USER, SCRAM_SECRET)
    client = LibpqScram(PASSWORD)
    final = client.client_final(_started(auth, client)).decode()
    attrs = final.split(",")
    attrs[1] = attrs[1] + "x"
    with pytest.raises(AuthFailed):
        auth.receive(",".join(attrs).encode())


def test_scram_client_final_with_wrong_channel_binding_fails() -> None:
    auth = ClientAuth("scram-sha-256", USER, SCRAM_SECRET)
    client = LibpqScram(PASSWORD)
    final = client.client_final(_started(auth, client))
    with pytest.raises(AuthFailed):
        auth.receive(final.replace(b"c=biws", b"c=eSws"))


def test_scram_garbled_proof_fails() -> None:
    auth = ClientAuth("scram-sha-256", USER, SCRAM_SECRET)
    client = LibpqScram(PASSWORD)
    final = client.client_final(_started(auth, client))
    with pytest.raises(AuthFailed):
        auth.receive(final[: final.index(b"p=") + 2] + b"!!!notbase64")
    auth2 = ClientAuth("scram-sha-256", USER, SCRAM_SECRET)
    client2 = LibpqScram(PASSWORD)
    final2 = client2.client_final(_started(auth2, client2))
    with pytest.raises(AuthFailed):
        auth2.receive(final2[: final2.index(b"p=") + 2] + b64(b"short").encode())


def test_scram_server_first_carries_the_stored_salt_and_iterations() -> None:
    secret = pg_scram_secret(PASSWORD, iterations=1000)
    parsed = parse_scram_secret(secret)
    assert parsed is not None
    auth = ClientAuth("scram-sha-256", USER, secret)
    client = LibpqScram(PASSWORD)
    server_first = _started(auth, client).decode()
    attrs = dict(part.split("=", 1) for part in server_first.split(","))
    assert attrs["s"] == b64(parsed.salt)
    assert attrs["i"] == "1000"
    assert attrs["r"].startswith(client.nonce)


def test_scram_secret_made_by_hand_matches_scramp() -> None:
    salt = base64.b64decode(SCRAM_SECRET.split("$")[1].split(":")[1])
    assert pg_scram_secret(PASSWORD, 4096, salt) == SCRAM_SECRET


@pytest.mark.parametrize("iterations", [1, 1000, 4096])
def test_scram_login_against_a_secret_with_any_iteration_count(iterations: int) -> None:
    auth = ClientAuth("scram-sha-256", USER, pg_scram_secret(PASSWORD, iterations))
    client = scram_login(auth, PASSWORD)
    assert auth.client_key == client.client_key


def test_plain_auth_against_a_scram_secret_with_few_iterations() -> None:
    # PostgreSQL 16's scram_iterations accepts 1..; such secrets end up in userlist.txt too.
    auth = ClientAuth("plain", USER, pg_scram_secret(PASSWORD, 1000))
    auth.start()
    assert auth.receive(PASSWORD.encode() + b"\0") == m.auth_ok()


def test_plain_secret_derivation_is_cached_across_logins() -> None:
    cache: dict = {}
    first = LibpqScram(PASSWORD)
    server_first_1 = _started(ClientAuth("scram-sha-256", USER, PASSWORD, cache), first)
    assert PASSWORD in cache
    second = ClientAuth("scram-sha-256", USER, PASSWORD, cache)
    client = scram_login(second, PASSWORD)
    salt_1 = dict(p.split("=", 1) for p in server_first_1.decode().split(","))["s"]
    assert second.client_key == client.client_key
    assert base64.b64decode(salt_1) == cache[PASSWORD].salt


# --- SCRAM pass-through ---------------------------------------------------------------------
def server_exchange(auth: ServerAuth, server: ClientAuth) -> None:
    """Log `auth` into `server` (ClientAuth plays PostgreSQL), as ServerLogin would."""
    for kind, payload in split_messages(server.start()):
        assert kind == m.AUTHENTICATION
        code = m.read_i32(payload)
        while True:
            reply = auth.respond(code, payload[4:])
            if reply is None:
                break
            [(ptype, body)] = split_messages(reply)
            assert ptype == ord("p")
            answers = split_messages(server.receive(body))
            for _, answer in answers[:-1]:
                assert auth.respond(m.read_i32(answer), answer[4:]) is None
            _, payload = answers[-1]
            code = m.read_i32(payload)
        assert code == m.AUTH_OK


def test_client_key_lets_the_pooler_log_into_a_server_with_the_same_secret() -> None:
    front = ClientAuth("scram-sha-256", USER, SCRAM_SECRET)
    scram_login(front, PASSWORD)
    assert front.client_key is not None
    backend = ClientAuth("scram-sha-256", USER, SCRAM_SECRET)  # plays PostgreSQL
    server_exchange(ServerAuth(USER, None, front.client_key), backend)
    assert backend.done
    assert backend.client_key == front.client_key


def test_client_key_from_another_password_is_refused_by_the_server() -> None:
    other = ClientAuth("scram-sha-256", USER, scram_secret("other"))
    scram_login(other, "other")
    backend = ClientAuth("scram-sha-256", USER, SCRAM_SECRET)
    with pytest.raises(AuthFailed):
        server_exchange(ServerAuth(USER, None, other.client_key), backend)


@pytest.mark.parametrize("stored", [PASSWORD, SCRAM_SECRET], ids=["plain", "scram"])
def test_server_auth_scram_with_a_plain_password(stored: str) -> None:
    backend = ClientAuth("scram-sha-256", USER, stored)
    server_exchange(ServerAuth(USER, PASSWORD), backend)
    assert backend.done


def test_server_auth_scram_login_to_a_server_with_few_iterations() -> None:
    backend = ClientAuth("scram-sha-256", USER, pg_scram_secret(PASSWORD, 1000))
    server_exchange(ServerAuth(USER, PASSWORD), backend)
    assert backend.done


def test_server_auth_rejects_a_forged_server_signature() -> None:
    auth = ServerAuth(USER, PASSWORD)
    backend = ClientAuth("scram-sha-256", USER, SCRAM_SECRET)
    [(_, req)] = split_messages(backend.start())
    first = auth.respond(m.AUTH_SASL, req[4:])
    assert first is not None
    [(_, cont)] = split_messages(backend.receive(first[5:]))
    final = auth.respond(m.AUTH_SASL_CONTINUE, cont[4:])
    assert final is not None
    (_, sasl_final), _ = split_messages(backend.receive(final[5:]))
    forged = b"v=" + b64(bytes(32)).encode()
    assert sasl_final[4:] != forged
    with pytest.raises(ServerAuthError, match="signature"):
        auth.respond(m.AUTH_SASL_FINAL, forged)


def test_key_client_refuses_a_server_nonce_that_does_not_extend_its_own() -> None:
    auth = ServerAuth(USER, None, bytes(32))
    first = auth.respond(m.AUTH_SASL, b"SCRAM-SHA-256\0\0")
    assert first is not None and b"n,,n=,r=" in first
    with pytest.raises(ServerAuthError):
        auth.respond(m.AUTH_SASL_CONTINUE, b"r=someone-else,s=c2FsdA==,i=4096")


# --- ServerAuth: md5, cleartext, errors -----------------------------------------------------
@pytest.mark.parametrize("password", [PASSWORD, MD5_SECRET], ids=["plain", "md5-secret"])
def test_server_auth_md5(password: str) -> None:
    salt = b"\x9a\x01\xff\x10"
    reply = ServerAuth(USER, password).respond(m.AUTH_MD5, salt)
    expected = pg_md5_response(USER, PASSWORD, salt)
    assert reply == b"p" + struct.pack("!i", 4 + 35 + 1) + expected.encode() + b"\0"


def test_server_auth_cleartext() -> None:
    assert ServerAuth(USER, PASSWORD).respond(m.AUTH_CLEARTEXT, b"") == (
        m.password_message(PASSWORD.encode() + b"\0")
    )


def test_server_auth_ok_needs_no_reply() -> None:
    assert ServerAuth(USER, None).respond(m.AUTH_OK, b"") is None


@pytest.mark.parametrize(
    ("password", "code", "data"),
    [
        (None, m.AUTH_CLEARTEXT, b""),
        (MD5_SECRET, m.AUTH_CLEARTEXT, b""),
        (SCRAM_SECRET, m.AUTH_CLEARTEXT, b""),
        (None, m.AUTH_MD5, b"salt"),
        (SCRAM_SECRET, m.AUTH_MD5, b"salt"),
        (None, m.AUTH_SASL, b"SCRAM-SHA-256\0\0"),
        (MD5_SECRET, m.AUTH_SASL, b"SCRAM-SHA-256\0\0"),
        (SCRAM_SECRET, m.AUTH_SASL, b"SCRAM-SHA-256\0\0"),
        (PASSWORD, m.AUTH_SASL, b"SCRAM-SHA-256-PLUS\0\0"),
        (PASSWORD, m.AUTH_SASL_CONTINUE, b"r=x,s=eA==,i=1"),
        (PASSWORD, m.AUTH_SASL_FINAL, b"v=eA=="),
        (PASSWORD, 7, b""),  # GSS
        (PASSWORD, 9, b""),  # SSPI
    ],
)
def test_server_auth_errors(password: str | None, code: int, data: bytes) -> None:
    with pytest.raises(ServerAuthError):
        ServerAuth(USER, password).respond(code, data)


def test_plain_login_against_a_scram_secret_recovers_the_client_key() -> None:
    """So that the pooler can log into a server storing that secret, as after a SCRAM login."""
    auth = ClientAuth("plain", USER, SCRAM_SECRET)
    auth.start()
    assert auth.receive(PASSWORD.encode() + b"\0") == m.auth_ok()
    assert auth.client_key is not None
    backend = ClientAuth("scram-sha-256", USER, SCRAM_SECRET)  # plays PostgreSQL
    server_exchange(ServerAuth(USER, SCRAM_SECRET, auth.client_key), backend)
    assert backend.done
    wrong = ClientAuth("plain", USER, SCRAM_SECRET)
    wrong.start()
    with pytest.raises(AuthFailed):
        wrong.receive(b"nope\0")
    assert wrong.client_key is None
