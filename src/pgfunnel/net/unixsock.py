"""Where a server's unix socket is (a directory, `@name` in Linux's abstract namespace, or
none) and how to connect to it, and to a TCP server: shared by server logins, cancels,
auth_query and /ready."""

from __future__ import annotations

import asyncio
import os
import socket


def is_unix(host: str | None) -> bool:
    """No host, a socket directory (`/dir`) or an abstract-namespace name (`@name`)."""
    return not host or host.startswith(("/", "@"))


def unix_path(host: str | None, port: int, default_dir: str = "/tmp") -> str:
    """The unix socket `.s.PGSQL.PORT` in the host's directory, or in unix_socket_dir
    (`default_dir`) for a database without host, as PgBouncer does. A directory starting with
    `@` gives `@name/.s.PGSQL.PORT`, a name in Linux's abstract namespace (`sockaddr`). ""
    when there is no directory (an empty unix_socket_dir), where PgBouncer refuses to connect
    rather than guess /tmp."""
    directory = host or default_dir
    if not directory:
        return ""
    if directory.startswith("@"):
        return f"{directory}/.s.PGSQL.{port}"  # PgBouncer's and PostgreSQL's spelling
    return os.path.join(directory, f".s.PGSQL.{port}")


def sockaddr(path: str) -> str:
    """The address bind/connect take: an abstract-namespace name has a NUL for its `@`."""
    return "\0" + path[1:] if path.startswith("@") else path


async def unix_connect(loop: asyncio.AbstractEventLoop, path: str) -> socket.socket:
    """A connected AF_UNIX socket. Made here rather than by create_unix_connection(path):
    libuv, under uvloop, cannot connect to an abstract-namespace name."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, sockaddr(path))
    except BaseException:
        sock.close()
        raise
    return sock


async def tcp_connect(loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
    """A connected, non-blocking TCP socket with TCP_NODELAY, trying each address the name
    resolves to in turn (as create_connection does), for a socket the switch then owns."""
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError = OSError(f"cannot resolve {host}")
    for family, kind, proto, _, addr in infos:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, addr)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise last
