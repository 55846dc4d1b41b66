"""Type stub of the C extension; the typed face is pgfunnel._switch (see docs/switch.md)."""

from collections.abc import Mapping, Sequence

MODE_SESSION: int
MODE_TRANSACTION: int
MODE_STATEMENT: int
EV_WAITERS: int
EV_CLOSED: int
EV_ATTENTION: int
EV_PARAMS_FAILED: int
EV_DEADLINE: int
EV_ACCEPTED: int
EV_LISTEN_ERROR: int
EV_MESSAGE: int
EV_LOGGED_IN: int
EV_LOGIN_ENDED: int
ACCEPTED_SSL_ANSWERED: int
ACCEPTED_TLS: int
MSG_TLS: int
R_TLS_FAILED: int
TLS_PROTO_1_0: int
TLS_PROTO_1_1: int
TLS_PROTO_1_2: int
TLS_PROTO_1_3: int
LOGIN_ENDED_ASKED: int
FAST_MD5: int
FAST_SCRAM: int
R_CONNECT_FAILED: int
R_CHECK_NEEDED: int
R_RESET_NEEDED: int
R_DIRTY_PARTIAL: int
R_AUTH_FAILED: int
R_LOGIN_TIMEOUT: int
R_PLAN_CHANGED: int
R_PINNED_END: int
EV_HAZARD: int
HAZARDS_WARN: int
HAZARDS_REFUSE: int
HAZARDS_PIN: int
HZ_ADVISORY_LOCK: int
HZ_LISTEN: int
HZ_TEMP: int
HZ_HOLD_CURSOR: int
CL_LOGIN: int
SV_LOGIN: int
SV_TALK: int
MSG_MORE_BUFFERED: int
MSG_UNTYPED: int
MAX_STARTUP_PACKET: int
R_CLIENT_TERMINATE: int
R_CLIENT_EOF: int
R_SERVER_EOF: int
R_IO_ERROR: int
R_BAD_PACKET: int
R_TOO_BIG: int
R_UNKNOWN_TYPE: int
R_LONG_TX: int
R_IDLE_DATA: int
R_SERVER_GONE: int
R_SESSION_END: int
R_DIRTY_TXN: int
R_DIRTY_BUSY: int
R_CLOSE_NEEDED: int
R_QUERY_WAIT: int
R_QUERY_WAIT_NOTIFY: int
R_QUERY: int
R_IDLE_TRANSACTION: int
R_CLIENT_IDLE: int
R_SERVER_IDLE: int
R_SERVER_LIFETIME: int
R_RESERVE: int
KIND_CLIENT: int
KIND_SERVER: int
CL_ACTIVE: int
CL_WAITING: int
CL_LINKED: int
CL_CLOSING: int
SV_IDLE: int
SV_ACTIVE: int
SV_PARKED: int
SCAN_MORE: int
SCAN_TERMINATE: int
SCAN_BAD_LENGTH: int
SCAN_TOO_BIG: int
SCAN_UNKNOWN_TYPE: int
WAIT_BUCKETS_US: tuple[int, ...]
PARAM_VALUE_MAX: int

def quote_literal(data: bytes, /) -> bytes: ...
def scan(
    server: bool, state: tuple[int, bytes, int, bool], data: bytes, max_len: int, /
) -> tuple[int, int, tuple[int, bytes, int, bool], bytes]: ...

class Switch:
    def __init__(
        self,
        *,
        unsupported_pkt: bytes,
        long_tx: bytes,
        server_gone: bytes,
        max_packet_size: int = ...,
        buffer_size: int = ...,
        tracked: tuple[str, ...] = ...,
        tick_ms: int = ...,
        login_max: int = ...,
    ) -> None: ...
    def fileno(self) -> int: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def add_pool(self, pool: int, mode: int, /) -> None: ...
    def add_client(
        self,
        fd: int,
        pool: int,
        /,
        pending: bytes = ...,
        params: Mapping[str, str] | Sequence[tuple[str, str]] | None = ...,
    ) -> int: ...
    def add_server(
        self,
        fd: int,
        pool: int,
        /,
        params: Mapping[str, str] | Sequence[tuple[str, str]] | None = ...,
        connected_us: int = ...,
    ) -> int: ...
    def set_params(
        self, conn: int, params: Mapping[str, str] | Sequence[tuple[str, str]], /
    ) -> None: ...
    def params(self, conn: int, /) -> dict[str, str]: ...
    def pause(self, pool: int, on: bool, /) -> None: ...
    def waiting(self, pool: int, /) -> int: ...
    def send(self, conn: int, data: bytes, /) -> None: ...
    def close(self, conn: int, final: bytes = ..., /) -> bool: ...
    def detach(self, conn: int, /) -> tuple[int, bytes]: ...
    def end_idle(self, conn: int, final: bytes = ..., /) -> bool: ...
    def tls_configure(
        self,
        side: int,
        mode: int,
        protocols: int,
        dhe: int,
        key_file: str | None,
        cert_file: str | None,
        ca_file: str | None,
        ciphers: str | None,
        ciphers13: str | None,
        ecdhcurve: str | None,
        /,
    ) -> None: ...
    def tls_accept(self, conn: int, /) -> bool: ...
    def tls_info(self, conn: int, /) -> str: ...
    def tls_infos(self) -> dict[int, str]: ...
    def tls_peer(self, conn: int, /) -> tuple[str, bool] | None: ...
    def set_close_needed(self, conn: int, /) -> bool: ...
    def set_timeouts(
        self,
        pool: int,
        /,
        *,
        query_wait: int = ...,
        query_wait_notify: int = ...,
        query: int = ...,
        idle_transaction: int = ...,
        client_idle: int = ...,
        server_idle: int = ...,
        server_lifetime: int = ...,
        reserve: int = ...,
    ) -> None: ...
    def expire(self, conn: int, reason: int, final: bytes = ..., /) -> bool: ...
    def ticks(self) -> int: ...
    def listen(self, fd: int, /) -> int: ...
    def listen_resume(self, listener: int, /) -> None: ...
    def set_login_cap(self, n: int, /) -> None: ...
    def set_route(
        self,
        key: bytes,
        pool: int,
        method: int,
        gen: int,
        *,
        md5: bytes = ...,
        iterations: int = ...,
        salt: bytes = ...,
        stored: bytes = ...,
        server: bytes = ...,
        welcome: bytes = ...,
        app: bytes = ...,
    ) -> None: ...
    def clear_routes(self) -> None: ...
    def routes(self) -> int: ...
    def set_fast_cap(self, n: int, /) -> None: ...
    def fast_expire(self, grace_us: int, timeout_us: int, msg: bytes, /) -> None: ...
    def connect_server(
        self, fd: int, pool: int, first: bytes = ..., tls_mode: int = ..., host: str | None = ..., /
    ) -> int: ...
    def read_next(self, conn: int, /) -> bool: ...
    def promote(
        self,
        conn: int,
        pool: int,
        /,
        params: Mapping[str, str] | Sequence[tuple[str, str]] | None = ...,
        pending: bytes = ...,
    ) -> bool: ...
    def talk(self, conn: int, /) -> bool: ...
    def peer(self, conn: int, /) -> tuple[int, str, int, int, int]: ...
    def events(self) -> list[tuple[int, int, int, int, bytes, int]]: ...
    def pools(
        self,
    ) -> list[
        tuple[
            int,
            int,
            int,
            int,
            int,
            int,
            int,
            int,
            int,
            int,
            int,
            int,
            int,
            int,
            int,
            tuple[int, ...],
            bool,
            int,
            int,
            int,
            int,
            int,
            int,
        ]
    ]: ...
    def conns(
        self,
    ) -> list[tuple[int, int, int, int, int, int, int, int, int, str, int, int, int, int, int]]: ...
    def peer_of(self, conn: int, /) -> int: ...
    def cancel_key(self, conn: int, /) -> tuple[int, int]: ...
    def cancel_target(self, pid: int, key: int, /) -> int: ...
    def suspend(self, on: bool, /) -> None: ...
    def unflushed(self) -> list[int]: ...
    def cancel_wait(self, client: int, error: bytes = ..., /) -> int: ...
    def set_pool_checks(
        self, pool: int, /, *, check_delay_us: int = ..., reset_always: bool = ...
    ) -> None: ...
    def set_pool_prepared(self, pool: int, max_prepared_statements: int, /) -> None: ...
    def ps_mem(self) -> tuple[int, int, int, int]: ...
    def set_pool_hazards(self, pool: int, mode: int, /) -> None: ...
    def carries(self, conn: int, /) -> str: ...
