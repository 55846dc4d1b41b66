"""`pgfunnel serve`: the config checks at start, daemonizing, the pidfile, the user switch,
the fd limit, logging (net/logfile.py), and the event loop that runs the App."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import pwd
import resource
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pgfunnel.config.ini import ConfigError
from pgfunnel.config.loader import Config
from pgfunnel.net import logfile
from pgfunnel.net.app import App
from pgfunnel.net.config_check import load_checked
from pgfunnel.net.signals import HANDLED_SIGNALS, block_handled_signals, install_signals

log = logging.getLogger("pgfunnel")


def _daemonize() -> None:
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)


def _switch_user(name: str) -> None:
    pw = pwd.getpwnam(name)
    os.setgid(pw.pw_gid)
    os.initgroups(name, pw.pw_gid)
    os.setuid(pw.pw_uid)


def serve_main(args: argparse.Namespace) -> int:
    if args.reboot:
        print(
            "pgfunnel: -R/--reboot (online restart) is not supported; "
            "restart pgfunnel normally or use SHUTDOWN WAIT_FOR_CLIENTS with so_reuseport",
            file=sys.stderr,
        )
        return 1
    try:
        config = load_checked(args.config)
    except ConfigError as exc:
        print(f"pgfunnel: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"pgfunnel: cannot read config: {exc}", file=sys.stderr)
        return 1
    if args.daemon and not (config.settings.pidfile and config.settings.logfile):
        print("pgfunnel: -d/--daemon needs pidfile and logfile in the config", file=sys.stderr)
        return 1
    user = args.user or config.settings.user
    if user:
        if os.geteuid() != 0:
            print("pgfunnel: -u/--user needs to start as root", file=sys.stderr)
            return 1
        try:
            _switch_user(user)
        except (KeyError, PermissionError) as exc:
            print(f"pgfunnel: cannot switch to user {user}: {exc}", file=sys.stderr)
            return 1
    pidfile = config.settings.pidfile
    stale = False
    if pidfile:
        refusal, stale = _check_pidfile(pidfile)
        if refusal is not None:
            print(f"pgfunnel: {refusal}", file=sys.stderr)
            return 1
    if args.daemon:
        _daemonize()
    try:
        logfile.setup(
            config.settings.logfile,
            verbose=int(config.settings.verbose) + args.verbose > 0,
            stderr=not args.quiet and not args.daemon,
        )
    except OSError as exc:
        print(f"pgfunnel: cannot open logfile: {exc}", file=sys.stderr)
        return 1
    if stale:
        log.info("stale pidfile, removing")
    for warning in config.unsupported:
        log.warning("%s", warning)
    if pidfile:
        try:
            fd = os.open(pidfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:  # another instance took it meanwhile
            log.critical("could not open pidfile '%s': %s", pidfile, exc.strerror)
            return 1
        with os.fdopen(fd, "w") as out:
            out.write(f"{os.getpid()}\n")
    try:
        return _run(config)
    finally:
        if pidfile:  # only once written: never another instance's
            with contextlib.suppress(OSError):
                os.unlink(pidfile)


def _check_pidfile(path: str) -> tuple[str | None, bool]:
    """PgBouncer's check_pidfile: (a refusal, or None to go on; whether a stale file was
    removed). A pidfile naming a live process, or unreadable as a pid, means another
    instance may be running: refuse, as PgBouncer does, rather than take its pidfile."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None, False
    except OSError as exc:
        return f"could not open pidfile '{path}': {exc.strerror}", False
    locked = f"pidfile '{path}' exists, another instance running?"
    try:
        pid = int(text.strip())
    except ValueError:
        return locked, False
    if pid <= 0:
        return locked, False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        pass  # nobody has that pid: a pidfile left by a crash
    except OSError:
        return locked, False  # alive, and someone else's (EPERM)
    else:
        return locked, False
    try:
        os.unlink(path)
    except OSError as exc:
        return f"could not remove stale pidfile: {exc.strerror}", False
    return None, True


def _raise_fd_limit(config: Config) -> None:
    """Each client and server is a file descriptor: lift the soft limit toward the hard one so
    max_client_conn is reachable (Debian's default soft limit is 1024)."""
    want = int(config.settings.max_client_conn) + 2 * int(config.settings.default_pool_size) + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < want:
            log.warning(
                "file descriptor limit %d is below what max_client_conn=%s needs (%d)",
                new,
                config.settings.max_client_conn,
                want,
            )


def _run(config: Config) -> int:
    _raise_fd_limit(config)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # uvloop is a declared dependency; this keeps odd platforms alive
        runner = asyncio.Runner()
    # Blocked until the handlers are installed, and for good in every thread but this one
    # (see HANDLED_SIGNALS); one sent meanwhile waits instead of killing the process.
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    try:
        with runner:
            return runner.run(_main(config))
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)


async def _main(config: Config) -> int:
    loop = asyncio.get_running_loop()
    # Threads started now inherit the blocked mask: libuv's resolver pool starts with the
    # first lookup; executor threads (asyncio's own resolver) block the signals themselves.
    loop.set_default_executor(ThreadPoolExecutor(initializer=block_handled_signals))
    await loop.getaddrinfo("127.0.0.1", 0)
    app = App(config, loop)
    try:
        await app.start()
    except (OSError, ConfigError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    install_signals(app, loop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)  # this thread only
    await app.stopping.wait()
    await app.stop()
    log.info("shutting down")
    return app.exit_code
