"""PgBouncer's signals: which ones pgfunnel takes, in which thread, and what each does to the
App (reload, the two shutdowns, pause and resume), in the order they were sent."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

from pgfunnel.admin.host import AdminError

if TYPE_CHECKING:
    from pgfunnel.net.app import App

log = logging.getLogger("pgfunnel")

# The signals pgfunnel acts on. Only the event loop's thread takes them (the others block
# them): the kernel gives a process signal to any thread that does not block it, and one
# taken by a libuv resolver thread could overtake one sent before it. See _SignalQueue.
HANDLED_SIGNALS = frozenset(
    {signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2}
)


def block_handled_signals() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)


def install_signals(app: App, loop: asyncio.AbstractEventLoop) -> None:
    """PgBouncer's signals, with its log lines: HUP reloads; INT waits for servers to be
    released, TERM for clients to leave (a second one of either, or QUIT, exits at once);
    USR1 pauses, USR2 resumes (ignored during a shutdown)."""

    def reload() -> None:
        log.info("got SIGHUP, re-reading config")
        with contextlib.suppress(AdminError):  # logged; the old config keeps running
            app.reload(command=False)

    def shutdown(mode: str, name: str, waits_for: str) -> None:
        if app.shutting_down is not None:
            log.info("got %s while shutting down, fast exit", name)
            app.stopping.set()
            return
        log.info("got %s, shutting down, waiting for all %s", name, waits_for)
        if app.suspended:
            app.die("suspend was in progress, going down immediately")
            return
        app.begin_shutdown(mode)

    def quit_now() -> None:
        log.info("got SIGQUIT, fast exit")
        app.stopping.set()

    def pause() -> None:
        if app.paused_all or app.suspended:
            log.info("got SIGUSR1, but already paused/suspended")
            return
        log.info("got SIGUSR1, pausing all activity")
        released = app.begin_pause(None, command=False)

        async def run() -> None:
            await app.wait_until(released)
            if app.paused_all:
                log.info("paused: all servers released")

        app.signal_task = loop.create_task(run())

    def resume() -> None:
        if app.shutting_down is not None:
            log.info("got SIGUSR2 while shutting down, ignoring")
            return
        if app.suspended:
            log.info("got SIGUSR2, continuing from SUSPEND")
        elif app.paused_all:
            log.info("got SIGUSR2, continuing from PAUSE")
        else:
            log.info("got SIGUSR2, but not paused/suspended")
            return
        app.resume(None, command=False)

    _SignalQueue(
        loop,
        app.bridge.drain,
        {
            signal.SIGHUP: reload,
            signal.SIGINT: lambda: shutdown(
                "WAIT_FOR_SERVERS", "SIGINT", "servers connections to be released"
            ),
            signal.SIGTERM: lambda: shutdown("WAIT_FOR_CLIENTS", "SIGTERM", "clients disconnect"),
            signal.SIGQUIT: quit_now,
            signal.SIGUSR1: pause,
            signal.SIGUSR2: resume,
        },
    )


class _SignalQueue:
    """Runs the signals' actions on the loop, in the order the signals were taken.

    Not loop.add_signal_handler: it acts in the order the C-level handlers ran, and when
    several signals are pending the kernel stacks their handler frames so that the last one
    set up runs first (SIGUSR2 before SIGUSR1, a resume before the pause). Python-level
    handlers run from the flags those handlers set, lowest signal number first; each only
    queues its signal, the queue is drained by a callback on the loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        first: Callable[[], None],
        actions: dict[int, Callable[[], None]],
    ):
        self.loop = loop
        self.first = first  # the switch's events so far: a reload judges them by the old config
        self.actions = actions
        self.queue: collections.deque[int] = collections.deque()
        for sig in actions:
            signal.signal(sig, self._taken)

    def _taken(self, signum: int, _frame: object) -> None:
        self.queue.append(signum)
        self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        while self.queue:
            self.first()
            self.actions[self.queue.popleft()]()
