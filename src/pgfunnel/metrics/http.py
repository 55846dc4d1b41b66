"""The metrics HTTP endpoint: /metrics, /live, /ready and the status page, on asyncio streams.

Deliberately small: one GET or HEAD per connection, answered HTTP/1.1 with Content-Length and
`Connection: close`. A slow or malformed request costs one bounded read; an error while
rendering is logged and answered 500, and never reaches the pooler.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from pgfunnel.metrics.collector import make_registry
from pgfunnel.metrics.health import Prober, readiness
from pgfunnel.metrics.status_page import render

if TYPE_CHECKING:
    from pgfunnel.admin.host import Host

log = logging.getLogger("pgfunnel.metrics")

HEAD_LIMIT = 16 * 1024  # request line and headers; anything longer gets 431
READ_TIMEOUT = 5.0  # seconds a client has to send its request head
WRITE_TIMEOUT = 10.0  # seconds to drain an answer to a client that does not read

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
TEXT = "text/plain; charset=utf-8"
HTML = "text/html; charset=utf-8"
JSON = "application/json"

Response = tuple[int, str, bytes]


class MetricsServer:
    """Serves the host's metrics, health and status page on metrics_addr:metrics_port."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.registry = make_registry(host)
        self.prober = Prober()
        self.servers: list[asyncio.Server] = []
        self._conns: set[asyncio.StreamWriter] = set()
        self.routes: dict[str, Callable[[], Awaitable[Response]]] = {
            "/": self._status_page,
            "/metrics": self._metrics,
            "/live": self._live,
            "/ready": self._ready,
        }

    @property
    def ports(self) -> list[int]:
        """The ports actually bound (metrics_port 0 picks a free one)."""
        found: list[int] = []
        for srv in self.servers:
            for sock in srv.sockets:
                port = int(sock.getsockname()[1])
                if port not in found:
                    found.append(port)
        return found

    async def start(self) -> None:
        s = self.host.settings
        port = int(s.metrics_port)
        addrs = [a.strip() for a in str(s.metrics_addr).split(",") if a.strip()]
        for addr in addrs:
            srv = await asyncio.start_server(
                self._serve,
                None if addr == "*" else addr,
                port,
                limit=HEAD_LIMIT,
                reuse_address=True,
            )
            self.servers.append(srv)
        log.info("metrics: listening on %s port %s", addrs, ", ".join(map(str, self.ports)))

    async def stop(self) -> None:
        for srv in self.servers:
            srv.close()
        for writer in list(self._conns):
            writer.transport.abort()
        self.prober.close()
        for srv in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(srv.wait_closed(), 1.0)
        self.servers.clear()

    # --- one connection ----------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        try:
            method, response = await self._answer(reader)
            if response is not None:
                await self._send(writer, method, *response)
        except (ConnectionError, TimeoutError):
            pass
        except Exception:  # a bug here must cost one request, never the pooler
            log.exception("metrics: request failed")
        finally:
            self._conns.discard(writer)
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[str, Response | None]:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            return "GET", (408, TEXT, b"request timeout\n")
        except asyncio.LimitOverrunError:
            return "GET", (431, TEXT, b"request head too large\n")
        except asyncio.IncompleteReadError:
            return "GET", None  # the client went away before asking anything
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return "GET", (400, TEXT, b"bad request\n")
        method, target, version = parts
        if version not in ("HTTP/1.0", "HTTP/1.1"):
            return method, (505, TEXT, b"HTTP/1.0 or HTTP/1.1 only\n")
        route = self.routes.get(urlsplit(target).path)
        if route is None:
            return method, (404, TEXT, b"not found: try /, /metrics, /live or /ready\n")
        if method not in ("GET", "HEAD"):
            return method, (405, TEXT, b"GET or HEAD only\n")
        try:
            return method, await route()
        except Exception:
            log.exception("metrics: rendering %s failed", target)
            return method, (500, TEXT, b"internal error, see the pooler's log\n")

    async def _send(
        self, writer: asyncio.StreamWriter, method: str, status: int, ctype: str, body: bytes
    ) -> None:
        headers = [
            f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}",
            f"Content-Type: {ctype}",
            f"Content-Length: {len(body)}",
            "Cache-Control: no-store",
            "Connection: close",
        ]
        if status == 405:
            headers.append("Allow: GET, HEAD")
        writer.write(("\r\n".join(headers) + "\r\n\r\n").encode("latin-1"))
        if method != "HEAD":
            writer.write(body)
        async with asyncio.timeout(WRITE_TIMEOUT):
            await writer.drain()

    # --- routes ------------------------------------------------------------------------------
    async def _metrics(self) -> Response:
        return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)

    async def _live(self) -> Response:
        return 200, TEXT, b"ok\n"

    async def _ready(self) -> Response:
        ready, body = await readiness(self.host, self.prober)
        data = (json.dumps(body, indent=2) + "\n").encode()
        return (200 if ready else 503), JSON, data

    async def _status_page(self) -> Response:
        # Names are UTF-8: net.config_check.check_utf8 refuses others at load.
        return 200, HTML, render(self.host).encode()
