"""`pgfunnel serve`'s log: PgBouncer's line format, and the logfile, opened again on RELOAD and
SIGHUP so that logrotate can move it away (or the setting can name another file)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import Any, ClassVar

log = logging.getLogger("pgfunnel")

# The process id printed in every line. os.getpid() is a system call; a pooler logging two
# lines per connection (log_connections, log_disconnections) asked for it twice per login.
# A forked child (daemonizing happens before logging is set up) reads it again.
_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


class LineFormat(logging.Formatter):
    """PgBouncer's log line: `2024-04-19 14:21:06.654 UTC [pid] LOG message`."""

    LEVELS: ClassVar[dict[str, str]] = {
        "DEBUG": "DEBUG",
        "INFO": "LOG",
        "WARNING": "WARNING",
        "ERROR": "ERROR",
        "CRITICAL": "FATAL",  # die()
    }

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        level = self.LEVELS.get(record.levelname, record.levelname)
        text = self.line(record.created, int(record.msecs), level, record.getMessage())
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text

    def line(self, created: float, msecs: int, level: str, message: str) -> str:
        second = int(created)
        if second != self._second:  # the date and time change once a second, not per line
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._stamp}.{msecs:03d} UTC [{_pid}] {level} {message}"


# Lines held while the bridge handles a run of the switch's LOGGED_IN, LOGIN_ENDED and CLOSED
# events (`held`): written with one write per handler at its end instead of one per line. A
# connection storm logs two lines per login (log_connections, log_disconnections), and their
# writes were a third of Python's time. A run is part of one wake-up's events: the lines come
# in order, written at most the switch's LAZY_US (50 ms) after what they tell and stamped with
# its time (`event_time`); nothing in a run answers a client or swaps the logfile.
_held: dict[logging.StreamHandler[Any], list[str]] | None = None
# The wall time lines are stamped with while the bridge handles a switch event (`event_time`):
# when the switch posted it, which may be some milliseconds before Python hears of it. None:
# the time a line is logged.
_at: float | None = None


class _Held:
    """emit() that holds the formatted line during a batch, else writes it at once."""

    def emit(self, record: logging.LogRecord) -> None:
        handler: Any = self
        if _at is not None:  # a line about a switch event: the event's time
            record.created = _at
            record.msecs = (_at - int(_at)) * 1000
        if _held is None:
            super().emit(record)  # type: ignore[misc]
            return
        try:
            _held.setdefault(handler, []).append(handler.format(record) + handler.terminator)
        except Exception:
            handler.handleError(record)


class _LogFile(_Held, logging.FileHandler):
    """The logfile: UTF-8 whatever the locale; a character it cannot write never costs the
    line."""

    def __init__(self, path: str) -> None:
        super().__init__(path, encoding="utf-8", errors="backslashreplace")


class _Stderr(_Held, logging.StreamHandler):  # type: ignore[type-arg]
    pass


def _own_handlers() -> list[tuple[logging.StreamHandler[Any], LineFormat]] | None:
    """serve's handlers with their formatter when the log is serve's own (its handlers,
    PgBouncer's format, no filters, INFO shown), else None."""
    if not _configured or log.filters or log.propagate:
        return None
    ours: list[tuple[logging.StreamHandler[Any], LineFormat]] = []
    for handler in log.handlers:
        fmt = handler.formatter
        if (
            not isinstance(handler, (_LogFile, _Stderr))
            or not isinstance(fmt, LineFormat)
            or handler.filters
            or handler.level > logging.INFO
        ):
            return None
        ours.append((handler, fmt))
    return ours


# serve's handlers, looked up once per run of held lines (None: not serve's own log).
_ours: list[tuple[logging.StreamHandler[Any], LineFormat]] | None = None


def held_info(message: str) -> bool:
    """Hold an INFO line (`message` formatted already) for the batch in progress without a
    LogRecord, when the log is serve's own (its handlers, PgBouncer's format, no filters):
    the login and close lines of a connection storm, two per login, cost Python's logging
    machinery more than the rest of the login's bookkeeping. False: the caller logs it the
    usual way (outside a batch, or handlers that are not serve's). Whether INFO is on is the
    caller's to check."""
    if _held is None or _ours is None:
        return False
    now = time.time() if _at is None else _at
    msecs = int((now - int(now)) * 1000)
    line, made_by = "", None
    for handler, fmt in _ours:
        if fmt is not made_by:  # the file and stderr share one formatter: one line for both
            line, made_by = fmt.line(now, msecs, "LOG", message), fmt
        _held.setdefault(handler, []).append(line + handler.terminator)
    return True


def event_time(wall: float | None) -> None:
    """Stamp the lines logged from now on with `wall` (time.time()'s clock), None: with the
    time they are logged. Set by the bridge for each switch event it handles."""
    global _at
    _at = wall


def info(message: str) -> None:
    """An INFO line already formatted: held without a LogRecord when it can be, else logged."""
    if not held_info(message):
        log.info("%s", message)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Hold the lines logged inside, then write each handler's with one write (nested: the
    outermost writes)."""
    global _held, _ours
    if _held is not None:
        yield
        return
    _held = {}
    _ours = _own_handlers()  # nothing in a run swaps the logfile
    try:
        yield
    finally:
        lines, _held, _ours = _held, None, None
        for handler, parts in lines.items():
            handler.acquire()
            try:
                handler.stream.write("".join(parts))
                handler.flush()
            except Exception:
                handler.handleError(logging.makeLogRecord({"msg": "held log lines lost"}))
            finally:
                handler.release()


_configured = False  # set by setup(): reopen() acts on a log that serve set up, never a test's


def setup(logfile: str, *, verbose: bool, stderr: bool) -> None:
    """Log to `logfile` (if set) and to stderr (unless -q or daemonized), in PgBouncer's
    format. Raises OSError when the logfile cannot be opened."""
    global _configured
    # LineFormat prints none of the caller's file, thread or process: a record need not look
    # them up (a getpid and a frame walk per line; two lines per login under log_connections).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger("pgfunnel")
    root.handlers.clear()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    fmt = LineFormat()
    if logfile:
        handler = _LogFile(logfile)
        handler.setFormatter(fmt)
        root.addHandler(handler)
    if stderr:
        sh = _Stderr(sys.stderr)
        sh.setFormatter(fmt)
        root.addHandler(sh)
    root.propagate = False
    _configured = True


def reopen(logfile: str) -> None:
    """RELOAD / SIGHUP: open the logfile again by its name, the file logrotate put in place of
    the one it moved away, or the file a changed setting names; an empty setting stops file
    logging. A file that cannot be opened is logged and the old one stays in use."""
    if not _configured:
        return
    root = logging.getLogger("pgfunnel")
    old = [h for h in root.handlers if isinstance(h, _LogFile)]
    new: _LogFile | None = None
    if logfile:
        try:
            new = _LogFile(logfile)
        except OSError as exc:
            log.error(
                "could not open logfile '%s': %s; logging goes on where it went", logfile, exc
            )
            return
        new.setFormatter(old[0].formatter if old else _formatter_of(root))
        root.addHandler(new)
    for handler in old:
        root.removeHandler(handler)
        handler.close()


def _formatter_of(root: logging.Logger) -> logging.Formatter:
    for handler in root.handlers:
        if handler.formatter is not None:
            return handler.formatter
    return LineFormat()
