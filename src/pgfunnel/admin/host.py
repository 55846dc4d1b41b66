"""What the admin console and the metrics endpoint may ask of the application object."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pgfunnel.config.loader import Config
    from pgfunnel.config.settings import Settings
    from pgfunnel.pool.objects import Client
    from pgfunnel.pool.scheduler import HazardCount, Holder, Pooler


class AdminError(Exception):
    """A console command that cannot be carried out; the client gets this SQLSTATE and text
    (PgBouncer's where it has one), and the detail and hint when there are."""

    def __init__(
        self, sqlstate: str, message: str, detail: str | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail
        self.hint = hint


class Host(Protocol):
    """The application object (`net.app.App`) as the console and metrics see it.

    Reads are plain attributes; every command that changes state is a method here, so the
    console stays a table of parsers and the App keeps the one copy of each rule."""

    pooler: Pooler
    config: Config
    settings: Settings
    admin_clients: dict[Client, None]
    logging_in: dict[Any, None]  # connections still authenticating (ClientConn keys)
    client_count: int
    started_at: float  # now() when the pooler started
    paused_all: bool  # PAUSE without a database, or SIGUSR1
    suspended: bool
    shutting_down: str | None  # None, "WAIT_FOR_SERVERS" or "WAIT_FOR_CLIENTS"
    refused: dict[str, int]  # clients refused before reaching a pool, by reason
    logins: dict[str, int]  # logins into a pool, by where they ran: "switch" or "pooler"
    # Named prepared statements per connection id (clients' and servers'; 0s left out), as of
    # the last refresh (SHOW CLIENTS / SERVERS' prepared_statements)
    prepared: dict[int, int]
    # The `tls` column (protocol/cipher/ECDH=group) of the connections with TLS up, as of the
    # last refresh
    tls: dict[int, str]
    # pooling_hazards: (database, user, application_name, hazard) -> how often, what was done
    hazards: dict[tuple[str, str, str, str], HazardCount]

    def now(self) -> float: ...

    def wall(self, t: float) -> float: ...

    def is_admin_user(self, user: str) -> bool: ...

    def holders(self, limit: int | None = None, db: str | None = None) -> list[Holder]: ...

    def refresh(self) -> None:
        """Read the switch's snapshots into the pool objects before reporting them."""
        ...

    # --- commands (raise AdminError on a bad request) ----------------------------------------
    async def pause(self, db: str | None) -> None: ...

    def resume(self, db: str | None) -> None: ...

    def disable(self, db: str) -> None: ...

    def enable(self, db: str) -> None: ...

    def reconnect(self, db: str | None) -> None: ...

    def kill(self, db: str) -> None: ...

    def kill_client(self, client_id: int) -> None: ...

    async def suspend(self) -> None: ...

    def shutdown(self, mode: str | None) -> None: ...

    def reload(self) -> None: ...

    async def wait_close(self, db: str | None) -> None: ...

    def set_setting(self, name: str, value: str) -> None: ...

    def carries(self, sid: int) -> str:
        """What a client carries: its session settings and SQL prepared statements, as SET and
        PREPARE made them outside a transaction (the switch replays them on every server)."""
        ...

    def prepared_mem(self) -> tuple[int, int, int, int]:
        """What named prepared statements hold: (distinct statements, their bytes, clients'
        names for them, statements prepared on servers)."""
        ...
