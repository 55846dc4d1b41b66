"""The one declarative table of [pgbouncer] settings: names, kinds, defaults, reload rules, docs."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar, cast, dataclass_transform

__all__ = [
    "SETTINGS",
    "SettingKind",
    "SettingSpec",
    "Settings",
    "format_value",
    "parse_seconds",
    "parse_value",
    "setting",
    "settings_markdown",
]

SettingKind = Literal["int", "time", "bool", "str", "enum", "list"]

# PgBouncer keeps CF_INT values in a C int and CF_UINT ones in an unsigned int.
_INT_MIN: Final = -(2**31)
_INT_MAX: Final = 2**31 - 1
_UINT_MAX: Final = 2**32 - 1
# Times are stored as unsigned 64-bit microseconds; anything larger cannot be represented.
_USEC: Final = 1_000_000
_TIME_MAX_USEC: Final = 2**63 - 1

_C_SPACE: Final = " \t\n\v\f\r"
_LIST_SPLIT = re.compile(r"[, \t\n\v\f\r]+")
# strtod() as PgBouncer calls it: decimal only here; hex floats, inf and nan are refused because
# they make no sense as a number of seconds.
_TIME_RE = re.compile(r"[+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INT_RE = re.compile(r"([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")

_AUTH_TYPES: Final = ("cert", "md5", "scram-sha-256", "plain", "trust", "any", "hba", "pam", "ldap")
_POOL_MODES: Final = ("session", "transaction", "statement")
_SSLMODES: Final = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

_DEFAULT_AUTH_QUERY: Final = (
    "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END "
    "FROM pg_authid WHERE rolname=$1 AND rolcanlogin"
)

_T = TypeVar("_T")


@dataclass(frozen=True)
class SettingSpec:
    """One row of the settings table, as SHOW CONFIG, the ini reader and the docs see it."""

    name: str
    kind: SettingKind
    default: object
    reloadable: bool
    doc: str
    supported: bool
    choices: tuple[str, ...] = ()
    # The default as PgBouncer spells it in SHOW CONFIG's "default" column (e.g. 0777).
    default_text: str = ""
    minimum: int | None = None
    maximum: int | None = None


def setting(
    *,
    default: Any,
    doc: str,
    reloadable: bool = True,
    supported: bool = True,
    choices: tuple[str, ...] = (),
    default_text: str | None = None,
    minimum: int | None = None,
    maximum: int | None = None,
) -> Any:
    """Declare one field of `Settings`; the kind follows from the default (and `choices`)."""
    kind: SettingKind
    if choices:
        kind = "enum"
    elif isinstance(default, bool):
        kind = "bool"
    elif isinstance(default, int):
        kind = "int"
    elif isinstance(default, float):
        kind = "time"
    elif isinstance(default, tuple):
        kind = "list"
    elif isinstance(default, str):
        kind = "str"
    else:  # pragma: no cover - a programming error in the table itself
        raise TypeError(f"unsupported default {default!r}")
    if kind == "int":
        minimum = _INT_MIN if minimum is None else minimum
        maximum = _INT_MAX if maximum is None else maximum
    metadata = {
        "kind": kind,
        "doc": doc,
        "reloadable": reloadable,
        "supported": supported,
        "choices": choices,
        "default_text": default_text,
        "minimum": minimum,
        "maximum": maximum,
    }
    return dataclasses.field(default=default, metadata=metadata)


@dataclass_transform(frozen_default=True, field_specifiers=(setting,))
def _settings_table(cls: type[_T]) -> type[_T]:
    # dataclass_transform lets type checkers see that every `setting(default=...)` has a default.
    return dataclasses.dataclass(frozen=True)(cls)


@_settings_table
class Settings:
    """Every [pgbouncer] setting PgBouncer 1.25 knows, plus pgfunnel's own, with its default."""

    # --- generic -------------------------------------------------------------------------------
    logfile: str = setting(
        default="",
        doc="File to append the log to, in addition to stderr; reopened on RELOAD or SIGHUP.",
    )
    pidfile: str = setting(
        default="",
        reloadable=False,
        doc="File that receives the process id; needed for running in the background.",
    )
    listen_addr: tuple[str, ...] = setting(
        default=(),
        reloadable=False,
        doc="Comma-separated TCP addresses (IPv4, IPv6 or host names) to accept clients on; `*` "
        "means every address. Empty means no TCP listener, only the Unix socket.",
    )
    listen_port: int = setting(
        default=6432,
        reloadable=False,
        doc="Port of the TCP listener; also names the Unix socket file (`.s.PGSQL.<port>`).",
    )
    listen_backlog: int = setting(
        default=128,
        reloadable=False,
        doc="Backlog passed to listen(2): how many not yet accepted connections the kernel queues.",
    )
    unix_socket_dir: str = setting(
        default="/tmp",
        reloadable=False,
        doc="Directory of the listening Unix socket, also used for servers without `host`. "
        "Empty disables the Unix socket; a leading `@` means the Linux abstract namespace.",
    )
    unix_socket_mode: int = setting(
        default=0o777,
        default_text="0777",
        reloadable=False,
        doc="Permission bits of the Unix socket file (C syntax: a leading 0 means octal).",
    )
    unix_socket_group: str = setting(
        default="",
        reloadable=False,
        supported=False,
        doc="Group that owns the Unix socket file.",
    )
    user: str = setting(
        default="",
        reloadable=False,
        doc="Unix user to switch to after start-up (only possible when started as root).",
    )
    pool_mode: str = setting(
        default="session",
        choices=_POOL_MODES,
        doc="When a server goes back to the pool: `session` when the client leaves, "
        "`transaction` when a transaction ends, `statement` after every statement "
        "(multi-statement transactions are refused).",
    )
    max_client_conn: int = setting(
        default=100,
        doc="Most client connections accepted at once; raise the file descriptor limit with it.",
    )
    default_pool_size: int = setting(
        default=20,
        doc="Most server connections per database/user pair, unless `pool_size` overrides it "
        "in [databases] or [users].",
    )
    min_pool_size: int = setting(
        default=0,
        doc="Keep at least this many server connections open in a pool (capped at the pool size); "
        "only for pools with a forced user or a connected client. 0 disables.",
    )
    reserve_pool_size: int = setting(
        default=0,
        doc="Extra server connections a pool may open when a client has waited "
        "`reserve_pool_timeout`. 0 disables.",
    )
    reserve_pool_timeout: float = setting(
        default=5.0,
        doc="Seconds a client waits before the reserve pool may be used. 0 disables.",
    )
    max_db_connections: int = setting(
        default=0,
        doc="Most server connections per database, all users together (the client-side "
        "database name). 0 means no limit.",
    )
    max_db_client_connections: int = setting(
        default=0,
        supported=False,
        doc="Most client connections per database, all users together. 0 means no limit.",
    )
    max_user_connections: int = setting(
        default=0,
        doc="Most server connections per user, all databases together. 0 means no limit.",
    )
    max_user_client_connections: int = setting(
        default=0,
        supported=False,
        doc="Most client connections per user, all databases together. 0 means no limit.",
    )
    server_round_robin: bool = setting(
        default=False,
        supported=False,
        doc="Hand out idle servers in turn (FIFO) instead of reusing the most recent one (LIFO); "
        "useful when a database address load-balances across several hosts.",
    )
    track_extra_parameters: tuple[str, ...] = setting(
        default=("IntervalStyle",),
        reloadable=False,
        doc="Parameters tracked per client and restored on each server, beyond client_encoding, "
        "datestyle, timezone, standard_conforming_strings and application_name: a client may "
        "send them at startup, and a SET of one follows the client. Only parameters the server "
        "reports can be tracked (32 in all at most).",
    )
    ignore_startup_parameters: tuple[str, ...] = setting(
        default=(),
        doc="Startup-packet parameters to accept and ignore instead of refusing the client "
        "(e.g. `extra_float_digits`); `options` ignores unknown parameters inside `options`.",
    )
    peer_id: int = setting(
        default=0,
        supported=False,
        doc="Id of this process among peered poolers (see [peers]), at most 16383. "
        "0 disables peering.",
    )
    disable_pqexec: bool = setting(
        default=False,
        reloadable=False,
        supported=False,
        doc="Refuse the simple query protocol, so only extended-protocol clients work.",
    )
    application_name_add_host: bool = setting(
        default=False,
        doc="Append the client's address and port to the application_name it sets at connect time.",
    )
    conffile: str = setting(
        default="",
        doc="Path of the configuration file; changing it makes the next RELOAD read another file. "
        "Defaults to the file given on the command line.",
    )
    service_name: str = setting(
        default="",
        reloadable=False,
        supported=False,
        doc="Windows service name; an alias of `job_name`.",
    )
    job_name: str = setting(
        default="pgbouncer",
        reloadable=False,
        supported=False,
        doc="Windows service name used at registration.",
    )
    stats_period: int = setting(
        default=60,
        doc="Seconds between updates of the averages in SHOW STATS and the stats log line.",
    )
    max_prepared_statements: int = setting(
        default=200,
        minimum=0,
        doc="Protocol-level named prepared statements tracked in transaction and statement "
        "pooling: each client's statements are prepared on whichever server it lands on, at "
        "most this many per server connection (the least recently used is closed first). "
        "0 turns the tracking off: named statements then reach the server as sent.",
    )
    scram_iterations: int = setting(
        default=4096,
        supported=False,
        doc="PBKDF2 iterations used when the pooler computes a SCRAM-SHA-256 secret itself.",
    )

    # --- authentication ------------------------------------------------------------------------
    auth_type: str = setting(
        default="md5",
        choices=_AUTH_TYPES,
        doc="How clients authenticate: `md5` (SCRAM is used for users with a SCRAM secret), "
        "`scram-sha-256`, `plain` (clear text), `trust` (no password; the user must be in "
        "`auth_file` or found by `auth_query`), `any` (no password; the user name is ignored "
        "and each database needs a forced `user=`), `hba` (rules from `auth_hba_file`, "
        "including `peer` on the Unix socket), `cert` (TLS with a client certificate that "
        "`client_tls_ca_file` validates; its CommonName is the user), `pam`, `ldap`. pgfunnel "
        "implements all but pam and ldap. Whatever the type, the user `pgbouncer` "
        "connecting over the Unix socket as the pooler's own OS user enters the admin console "
        "without a password.",
    )
    auth_hba_file: str = setting(
        default="",
        doc="pg_hba.conf-style file used when `auth_type` is `hba`: local, host, hostssl and "
        "hostnossl rules with database and user lists (`all`, `sameuser`, `replication`, "
        "`@file`), CIDR or address-and-mask networks (IPv4, IPv6), and the methods trust, "
        "reject, md5, password, scram-sha-256, cert and peer (`map=` names an "
        "`auth_ident_file` map). The first matching rule decides; no match refuses the "
        "login. A line pgfunnel cannot read stops the load with its file:line. Re-read on "
        "RELOAD.",
    )
    auth_ident_file: str = setting(
        default="",
        doc="pg_ident.conf-style user maps (`MAPNAME SYSTEM-USER PG-USER`; a system user "
        "starting with `/` is a regular expression) for hba rules with `peer` or `cert` and "
        "`map=`. Re-read on RELOAD.",
    )
    auth_file: str = setting(
        default="",
        doc="userlist.txt with user names and passwords or secrets. A relative path is taken "
        "from the working directory, as PgBouncer does.",
    )
    auth_user: str = setting(
        default="",
        doc="User that runs `auth_query` to look up users missing from `auth_file` (its own "
        "password comes from `auth_file`). Also settable per database in [databases].",
    )
    auth_query: str = setting(
        default=_DEFAULT_AUTH_QUERY,
        doc="Query returning the user name and password hash (md5 or SCRAM secret) of `$1`, "
        "run as `auth_user` with `$1` bound as a parameter. The default refuses roles whose "
        "VALID UNTIL has passed and roles without LOGIN. It runs at each login of a user not in "
        "`auth_file`, as PgBouncer's does; its connections are pooled, at most "
        "`default_pool_size` per database. Also settable per database in [databases].",
    )
    auth_dbname: str = setting(
        default="",
        doc="Database (from [databases]) in which `auth_query` runs; empty means the "
        "client's own database. Also settable per database in [databases].",
    )
    auth_ldap_options: str = setting(
        default="",
        supported=False,
        doc="LDAP connection options for `auth_type = ldap`.",
    )

    # --- logging -------------------------------------------------------------------------------
    syslog: bool = setting(default=False, supported=False, doc="Also log to syslog.")
    syslog_ident: str = setting(
        default="pgbouncer", supported=False, doc="Program name used in syslog messages."
    )
    syslog_facility: str = setting(
        default="daemon",
        supported=False,
        doc="Syslog facility: auth, authpriv, daemon, user or local0 to local7.",
    )
    log_connections: bool = setting(default=True, doc="Log every successful client login.")
    log_disconnections: bool = setting(default=True, doc="Log every disconnection with its reason.")
    log_pooler_errors: bool = setting(
        default=True, doc="Log the error messages the pooler itself sends to clients."
    )
    log_stats: bool = setting(
        default=True,
        supported=False,
        doc="Write the aggregated statistics to the log every `stats_period`.",
    )
    verbose: int = setting(
        default=0, doc="Log verbosity: 1 adds debug messages, 2 and 3 add more detail."
    )

    # --- console access ------------------------------------------------------------------------
    admin_users: tuple[str, ...] = setting(
        default=(),
        doc="Users (comma-separated) allowed to run every admin console command. With "
        "`auth_type = any`, any user is admin.",
    )
    stats_users: tuple[str, ...] = setting(
        default=(),
        doc="Users (comma-separated) allowed the read-only SHOW commands on the admin console.",
    )

    # --- connection sanity checks and timeouts -------------------------------------------------
    server_reset_query: str = setting(
        default="DISCARD ALL",
        doc="Query run on a server when its client leaves, before another client gets it; "
        "only in session pooling unless `server_reset_query_always` is set.",
    )
    server_reset_query_always: bool = setting(
        default=False, doc="Run `server_reset_query` in every pooling mode."
    )
    server_check_delay: float = setting(
        default=30.0,
        doc="Seconds an idle server may be reused without running `server_check_query`. "
        "0 checks every time.",
    )
    server_check_query: str = setting(
        default="<empty>",
        doc="Query run on an idle server before reuse to see that it is alive. `<empty>` sends "
        "an empty query; an empty value disables the check.",
    )
    server_fast_close: bool = setting(
        default=False,
        supported=False,
        doc="In session pooling, close servers marked for reconnection (RECONNECT, RELOAD, DNS "
        "change) as soon as their transaction ends, disconnecting the client too.",
    )
    server_lifetime: float = setting(
        default=3600.0,
        doc="Seconds after which an unused server connection is closed. 0 means use once. "
        "Can be set per database.",
    )
    server_idle_timeout: float = setting(
        default=600.0, doc="Seconds after which an idle server connection is closed. 0 disables."
    )
    server_connect_timeout: float = setting(
        default=15.0, doc="Seconds allowed for connecting to and logging into a server."
    )
    server_login_retry: float = setting(
        default=15.0,
        doc="Seconds to wait after a failed server connect or login before trying again; "
        "meanwhile clients of that pool get an error at once.",
    )
    client_login_timeout: float = setting(
        default=60.0, doc="Seconds a client has to finish logging in before it is disconnected."
    )
    autodb_idle_timeout: float = setting(
        default=3600.0,
        supported=False,
        doc="Seconds after which unused databases created from the `*` entry are dropped.",
    )
    dns_max_ttl: float = setting(
        default=15.0, supported=False, doc="Seconds a successful DNS lookup is cached."
    )
    dns_nxdomain_ttl: float = setting(
        default=15.0, supported=False, doc="Seconds a failed or NXDOMAIN DNS lookup is cached."
    )
    dns_zone_check_period: float = setting(
        default=0.0,
        supported=False,
        doc="Seconds between checks of DNS zone serials (c-ares only). 0 disables.",
    )
    resolv_conf: str = setting(
        default="",
        reloadable=False,
        supported=False,
        doc="Custom resolv.conf for DNS lookups; empty uses the system's.",
    )
    query_wait_notify: int = setting(
        default=5,
        doc="Seconds a client waits in the queue before it is sent a notice that it is queued "
        "(pgfunnel adds its position in the queue and why it waits). 0 disables.",
    )

    # --- TLS (the switch: src/pgfunnel/_switch/tls.c) -----------------------------------------
    client_tls_sslmode: str = setting(
        default="disable",
        choices=_SSLMODES,
        doc="TLS for client connections. disable: an SSLRequest is answered 'N'; allow and "
        "prefer: TLS if the client asks (a client certificate is not validated); require: TCP "
        "clients must use TLS (`SSL required`); verify-ca and verify-full: they must also "
        "present a certificate that `client_tls_ca_file` validates. PostgreSQL 17's direct TLS "
        "(ALPN `postgresql`) is accepted too. Unix-socket clients never use TLS.",
    )
    client_tls_key_file: str = setting(
        default="", doc="Private key presented to clients (PEM); needed unless disable."
    )
    client_tls_cert_file: str = setting(
        default="", doc="Certificate (chain) presented to clients (PEM); needed unless disable."
    )
    client_tls_ca_file: str = setting(
        default="",
        doc="CA certificates that validate client certificates (verify-ca, verify-full, "
        "auth_type cert). Below verify-ca a certificate is asked for when this is set, "
        "not required.",
    )
    client_tls_protocols: str = setting(
        default="secure",
        doc="TLS versions allowed for clients: tlsv1.0, tlsv1.1, tlsv1.2, tlsv1.3 (comma or "
        "space separated), `all`/`legacy` (1.0 to 1.3) or `secure`/`default` (1.2 and 1.3).",
    )
    client_tls_ciphers: str = setting(
        default="default",
        doc="Ciphers for client TLS up to 1.2, in OpenSSL's syntax; `default`, `secure`, "
        "`normal` and `fast` leave OpenSSL's defaults, `compat`/`legacy` and `insecure`/`all` "
        "allow more.",
    )
    client_tls13_ciphers: str = setting(
        default="", doc="TLS 1.3 cipher suites for clients; empty: OpenSSL's defaults."
    )
    client_tls_ecdhcurve: str = setting(
        default="auto",
        doc="Groups for ECDH key exchange with clients (OpenSSL's list, e.g. X25519:P-256); "
        "auto: OpenSSL's.",
    )
    client_tls_dheparams: str = setting(
        default="auto",
        doc="DHE key exchange with clients (TLS 1.2): none, auto or legacy (both: parameters "
        "matched to the key, as OpenSSL chooses).",
    )
    server_tls_sslmode: str = setting(
        default="prefer",
        choices=_SSLMODES,
        doc="TLS to servers (TCP only). disable: no SSLRequest; allow and prefer: TLS if the "
        "server offers it, else in clear; require: TLS or no connection (`server refused "
        "SSL`), certificate not checked; verify-ca: the certificate must chain to "
        "`server_tls_ca_file` (or the system's CAs); verify-full: and name the host.",
    )
    server_tls_ca_file: str = setting(
        default="", doc="CA certificates that validate servers (verify-ca, verify-full)."
    )
    server_tls_key_file: str = setting(
        default="", doc="Private key presented to servers as a client certificate."
    )
    server_tls_cert_file: str = setting(
        default="", doc="Client certificate presented to servers (cert authentication)."
    )
    server_tls_protocols: str = setting(
        default="secure", doc="TLS versions allowed for servers, as client_tls_protocols."
    )
    server_tls_ciphers: str = setting(
        default="default", doc="Ciphers for server TLS up to 1.2, as client_tls_ciphers."
    )
    server_tls13_ciphers: str = setting(
        default="", doc="TLS 1.3 cipher suites for servers; empty: OpenSSL's defaults."
    )

    # --- dangerous timeouts --------------------------------------------------------------------
    query_timeout: float = setting(
        default=0.0,
        doc="Cancel queries running longer than this many seconds. 0 disables.",
    )
    query_wait_timeout: float = setting(
        default=120.0,
        doc="Seconds a client may wait for a server before it is disconnected. 0 waits forever.",
    )
    cancel_wait_timeout: float = setting(
        default=10.0,
        supported=False,
        doc="Seconds a cancel request may wait for a server connection. 0 waits forever.",
    )
    client_idle_timeout: float = setting(
        default=0.0,
        doc="Close client connections idle longer than this many seconds. 0 disables.",
    )
    idle_transaction_timeout: float = setting(
        default=0.0,
        doc="Disconnect clients idle inside a transaction for longer than this many seconds. "
        "0 disables.",
    )
    transaction_timeout: float = setting(
        default=0.0,
        supported=False,
        doc="Disconnect clients whose transaction has lasted longer than this many seconds. "
        "0 disables.",
    )
    suspend_timeout: float = setting(
        default=10.0,
        doc="Seconds SUSPEND waits for buffers to flush; a connection that has not flushed "
        "by then is dropped. 0 waits for ever.",
    )

    # --- low-level network ---------------------------------------------------------------------
    pkt_buf: int = setting(
        default=4096,
        reloadable=False,
        supported=False,
        doc="Size in bytes of the internal packet buffer.",
    )
    max_packet_size: int = setting(
        default=2147483647,
        minimum=0,
        maximum=_UINT_MAX,
        doc="Largest protocol message, in bytes, let through.",
    )
    sbuf_loopcnt: int = setting(
        default=5,
        supported=False,
        doc="Buffers processed on one connection before moving on to others. 0 means no limit.",
    )
    so_reuseport: bool = setting(
        default=False,
        reloadable=False,
        supported=False,
        doc="Set SO_REUSEPORT on TCP listeners so several processes can share the port.",
    )
    tcp_defer_accept: bool = setting(
        default=True,
        supported=False,
        doc="Set TCP_DEFER_ACCEPT on listeners (Linux only).",
    )
    tcp_socket_buffer: int = setting(
        default=0,
        supported=False,
        doc="Kernel send and receive buffer size in bytes. 0 keeps the system default.",
    )
    tcp_keepalive: bool = setting(
        default=True, supported=False, doc="Turn on TCP keepalive with the system's defaults."
    )
    tcp_keepcnt: int = setting(
        default=0, supported=False, doc="TCP_KEEPCNT. 0 keeps the system default."
    )
    tcp_keepidle: int = setting(
        default=0, supported=False, doc="TCP_KEEPIDLE in seconds. 0 keeps the system default."
    )
    tcp_keepintvl: int = setting(
        default=0, supported=False, doc="TCP_KEEPINTVL in seconds. 0 keeps the system default."
    )
    tcp_user_timeout: int = setting(
        default=0,
        supported=False,
        doc="TCP_USER_TIMEOUT in milliseconds (Linux only). 0 keeps the system default.",
    )

    # --- pgfunnel additions (not in PgBouncer) -------------------------------------------------
    metrics_addr: str = setting(
        default="",
        reloadable=False,
        doc="pgfunnel only: address of the Prometheus and health HTTP endpoint. Empty turns the "
        "endpoint off.",
    )
    metrics_port: int = setting(
        default=9127,
        reloadable=False,
        doc="pgfunnel only: port of the metrics endpoint (9127, as pgbouncer_exporter uses); "
        "only used when `metrics_addr` is set.",
    )
    pooling_hazards: str = setting(
        default="warn",
        choices=("warn", "refuse", "pin"),
        doc="pgfunnel only: what a transaction or statement pool does when a client does what "
        "cannot survive transaction pooling (a session advisory lock, LISTEN, a temporary "
        "table, a cursor WITH HOLD): `warn` counts it per application (SHOW "
        "HAZARDS, /metrics) and logs it once per client; `refuse` also fails that statement "
        "with SQLSTATE 0A000 and the reason; `pin` also keeps the client on its server until it "
        "leaves (then the server is reset with server_reset_query, or closed).",
    )

    def with_values(self, values: Mapping[str, object]) -> Settings:
        """A copy with some settings replaced by already parsed values."""
        unknown = sorted(set(values) - set(SETTINGS))
        if unknown:
            raise KeyError(f"unknown setting(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **cast(dict[str, Any], dict(values)))

    def get(self, name: str) -> object:
        """The value of one setting by name (for SHOW CONFIG and SET)."""
        if name not in SETTINGS:
            raise KeyError(f"unknown setting: {name}")
        value: object = getattr(self, name)
        return value


def _spec(field: dataclasses.Field[Any]) -> SettingSpec:
    meta = field.metadata
    default: object = field.default
    spec = SettingSpec(
        name=field.name,
        kind=meta["kind"],
        default=default,
        reloadable=meta["reloadable"],
        doc=meta["doc"],
        supported=meta["supported"],
        choices=meta["choices"],
        minimum=meta["minimum"],
        maximum=meta["maximum"],
    )
    text = meta["default_text"]
    return dataclasses.replace(spec, default_text=_format(spec, default) if text is None else text)


def _lookup(name: str) -> SettingSpec:
    try:
        return SETTINGS[name]
    except KeyError:
        raise KeyError(f"unknown setting: {name}") from None


def _parse_c_long(raw: str) -> int | None:
    # strtol(value, &end, 0) accepting only a full match: optional leading space and sign, then
    # 0x-hex, 0-octal or decimal.  Python's int(x, 0) refuses "0777", which PgBouncer reads as 511.
    m = _INT_RE.fullmatch(raw.lstrip(_C_SPACE))
    if m is None:
        return None
    sign, digits = m.groups()
    if digits[:2] in ("0x", "0X"):
        value = int(digits[2:], 16)
    elif digits.startswith("0"):
        value = int(digits, 8)
    else:
        value = int(digits)
    return -value if sign == "-" else value


def parse_value(name: str, raw: str) -> object:
    """Convert an ini value to the setting's type, exactly as strictly as PgBouncer reads it.

    Raises KeyError for an unknown setting name and ValueError (naming the value and what was
    expected) for a bad value.
    """
    spec = _lookup(name)
    kind = spec.kind
    if kind == "str":
        return raw
    if kind == "list":
        # PgBouncer's list settings separate names by commas and/or white space.
        return tuple(part for part in _LIST_SPLIT.split(raw) if part)
    if kind == "enum":
        # PgBouncer compares enum values case-insensitively and stores the canonical spelling.
        for choice in spec.choices:
            if choice.lower() == raw.lower():
                return choice
        raise ValueError(
            f"invalid value {raw!r} for {name}: expected one of {', '.join(spec.choices)}"
        )
    if kind in ("int", "bool"):
        value = _parse_c_long(raw)
        if value is None:
            what = "an integer (0 = off, 1 = on)" if kind == "bool" else "an integer"
            raise ValueError(f"invalid value {raw!r} for {name}: expected {what}")
        if kind == "bool":
            # PgBouncer keeps its switches in C ints: any integer works and non-zero means on.
            if not _INT_MIN <= value <= _INT_MAX:
                raise ValueError(f"invalid value {raw!r} for {name}: out of range")
            return value != 0
        lo = _INT_MIN if spec.minimum is None else spec.minimum
        hi = _INT_MAX if spec.maximum is None else spec.maximum
        if not lo <= value <= hi:
            raise ValueError(
                f"invalid value {raw!r} for {name}: expected an integer from {lo} to {hi}"
            )
        return value
    try:
        return parse_seconds(raw)
    except ValueError as exc:
        raise ValueError(f"invalid value {raw!r} for {name}: {exc}") from None


def parse_seconds(raw: str) -> float:
    """A time value as PgBouncer reads it with strtod(): seconds, fractions allowed, no unit
    suffix, not negative.  Raises ValueError."""
    if _TIME_RE.fullmatch(raw.lstrip(_C_SPACE)) is None:
        raise ValueError("expected a number of seconds such as 30 or 0.5 (no unit suffix)")
    seconds = float(raw)
    # Compared before converting: 1e308 is a finite float, but in microseconds it is infinite
    # and round() of that raises OverflowError, which no caller of a parser expects.
    if not math.isfinite(seconds) or seconds * _USEC > _TIME_MAX_USEC:
        raise ValueError(f"too large (at most {_TIME_MAX_USEC // _USEC} seconds)")
    usec = round(seconds * _USEC)
    # PgBouncer keeps whole microseconds; rounding (not its truncation) keeps 1.001 == 1.001.
    return usec / _USEC


def _format(spec: SettingSpec, value: object) -> str:
    kind = spec.kind
    if kind == "bool":
        return "1" if value else "0"
    if kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{spec.name} takes an int, not {value!r}")
        return str(value)
    if kind == "time":
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise TypeError(f"{spec.name} takes seconds as a float, not {value!r}")
        # The same %g that PgBouncer's SHOW CONFIG uses: 5 -> "5", 0.5 -> "0.5".
        return f"{float(value):g}"
    if kind == "list":
        if not isinstance(value, tuple | list):
            raise TypeError(f"{spec.name} takes a tuple of names, not {value!r}")
        return ",".join(str(v) for v in value)
    if not isinstance(value, str):
        raise TypeError(f"{spec.name} takes a str, not {value!r}")
    return value


def format_value(name: str, value: object) -> str:
    """The text PgBouncer's SHOW CONFIG shows for this value of the setting."""
    return _format(_lookup(name), value)


# Sorted by name because that is the order PgBouncer's SHOW CONFIG uses.
SETTINGS: Final[dict[str, SettingSpec]] = {
    spec.name: spec
    for spec in sorted(
        (_spec(f) for f in dataclasses.fields(cast(Any, Settings))), key=lambda s: s.name
    )
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def settings_markdown() -> str:
    """The settings table of docs/configuration.md, generated so the two cannot drift apart."""
    lines = [
        "| Setting | Default | Reloadable | Supported | Meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for spec in SETTINGS.values():
        default = f"`{_cell(spec.default_text)}`" if spec.default_text else "*(empty)*"
        lines.append(
            f"| `{spec.name}` | {default} | {'yes' if spec.reloadable else 'no'} | "
            f"{'yes' if spec.supported else 'no'} | {_cell(spec.doc)} |"
        )
    return "\n".join(lines) + "\n"
