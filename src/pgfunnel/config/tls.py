"""The TLS settings as the switch takes them (`Switch.tls_configure`): PgBouncer's shortcuts
for protocols and ciphers made concrete, and what a configuration lacks before it can run."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from pgfunnel._switch import TLS_DHE, TLS_MODES, TLS_PROTOCOLS
from pgfunnel.config.settings import Settings

__all__ = ["TlsSide", "cipher_list", "problems", "protocol_bits", "side"]

_ALL: Final = ("tlsv1.0", "tlsv1.1", "tlsv1.2", "tlsv1.3")
_SECURE: Final = ("tlsv1.2", "tlsv1.3")
_PROTOCOL_WORDS: Final[dict[str, tuple[str, ...]]] = {
    "all": _ALL,
    "legacy": _ALL,
    "secure": _SECURE,
    "default": _SECURE,
}
# PgBouncer's cipher shortcuts: the secure ones leave OpenSSL's (system-wide) defaults.
_CIPHER_WORDS: Final[dict[str, str]] = {
    "default": "",
    "secure": "",
    "normal": "",
    "fast": "",
    "compat": "HIGH:+3DES:!aNULL",
    "legacy": "HIGH:+3DES:!aNULL",
    "insecure": "ALL:!aNULL:!eNULL",
    "all": "ALL:!aNULL:!eNULL",
}


def protocol_bits(text: str) -> int:
    """`tlsv1.2,tlsv1.3`, `secure`, `all`, ... as the switch's TLS_PROTO_* bits."""
    bits = 0
    for word in re.split(r"[\s,:]+", text.strip().lower()):
        if not word:
            continue
        names = _PROTOCOL_WORDS.get(word, (word,))
        for name in names:
            if name not in TLS_PROTOCOLS:
                raise ValueError(f"unknown TLS protocol {word!r}")
            bits |= TLS_PROTOCOLS[name]
    if not bits:
        raise ValueError("no TLS protocol given")
    return bits


def cipher_list(text: str) -> str:
    """A cipher setting as OpenSSL's cipher string ("": its defaults)."""
    return _CIPHER_WORDS.get(text.strip().lower(), text.strip())


@dataclass(frozen=True)
class TlsSide:
    """One side's context as `Switch.tls_configure` takes it (equal: the same context)."""

    side: int
    mode: int
    protocols: int
    dhe: int
    key_file: str
    cert_file: str
    ca_file: str
    ciphers: str
    ciphers13: str
    ecdhcurve: str


def side(settings: Settings, clients: bool) -> TlsSide:
    """The client side (clients=True) or the server side of `settings`."""
    s = settings
    if clients:
        dhe = s.client_tls_dheparams.strip().lower()
        return TlsSide(
            0,
            TLS_MODES.index(s.client_tls_sslmode),
            protocol_bits(s.client_tls_protocols),
            TLS_DHE.index(dhe) if dhe in TLS_DHE else 1,
            s.client_tls_key_file,
            s.client_tls_cert_file,
            s.client_tls_ca_file,
            cipher_list(s.client_tls_ciphers),
            s.client_tls13_ciphers.strip(),
            s.client_tls_ecdhcurve.strip(),
        )
    return TlsSide(
        1,
        TLS_MODES.index(s.server_tls_sslmode),
        protocol_bits(s.server_tls_protocols),
        1,
        s.server_tls_key_file,
        s.server_tls_cert_file,
        s.server_tls_ca_file,
        cipher_list(s.server_tls_ciphers),
        s.server_tls13_ciphers.strip(),
        "",
    )


def problems(settings: Settings) -> list[tuple[str, str]]:
    """(setting, why) for each TLS setting that cannot work as given; [] when all can."""
    s = settings
    out: list[tuple[str, str]] = []
    for name in ("client_tls_protocols", "server_tls_protocols"):
        try:
            protocol_bits(getattr(s, name))
        except ValueError as exc:
            out.append((name, str(exc)))
    if s.client_tls_dheparams.strip().lower() not in TLS_DHE:
        out.append(("client_tls_dheparams", "must be none, auto or legacy"))
    mode = s.client_tls_sslmode
    if mode != "disable" and not (s.client_tls_key_file and s.client_tls_cert_file):
        out.append(
            (
                "client_tls_sslmode",
                f"client_tls_sslmode = {mode} needs client_tls_key_file and client_tls_cert_file",
            )
        )
    if mode in ("verify-ca", "verify-full") and not s.client_tls_ca_file:
        out.append(("client_tls_sslmode", f"client_tls_sslmode = {mode} needs client_tls_ca_file"))
    if s.auth_type == "cert" and mode == "disable":
        out.append(("auth_type", "auth_type = cert needs client TLS (client_tls_sslmode)"))
    if s.auth_type == "cert" and not s.client_tls_ca_file:
        out.append(("auth_type", "auth_type = cert needs client_tls_ca_file"))
    if bool(s.server_tls_key_file) != bool(s.server_tls_cert_file):
        out.append(
            ("server_tls_key_file", "server_tls_key_file and server_tls_cert_file go together")
        )
    return out
