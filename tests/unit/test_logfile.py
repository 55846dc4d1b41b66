"""serve's log: PgBouncer's line format, lines held for a batch of switch events, and the
login and close lines that skip Python's LogRecord (held_info) yet come out the same."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgfunnel.net import logfile

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} UTC \[\d+\] (LOG|WARNING) (.*)$")


@pytest.fixture
def logpath(tmp_path: Path) -> Iterator[Path]:
    """serve's logging set up to a file, and undone after the test."""
    root = logging.getLogger("pgfunnel")
    saved = (list(root.handlers), root.level, root.propagate)
    path = tmp_path / "pgfunnel.log"
    logfile.setup(str(path), verbose=False, stderr=False)
    try:
        yield path
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        root.propagate = saved[2]
        logfile._configured = False


def only_serves_handlers() -> None:
    """Drop the handlers pytest adds for the test's call (they would make held_info give way)."""
    root = logging.getLogger("pgfunnel")
    root.handlers[:] = [h for h in root.handlers if isinstance(h, logging.FileHandler)]


def lines(path: Path) -> list[tuple[str, str]]:
    out = []
    for text in path.read_text().splitlines():
        match = LINE.match(text)
        assert match is not None, text
        out.append((match[1], match[2]))
    return out


def test_held_lines_come_out_in_order_in_one_format(logpath: Path) -> None:
    only_serves_handlers()
    log = logging.getLogger("pgfunnel.net.app")
    with logfile.held():
        log.info("C-%#x: before", 0x10)
        assert logfile.held_info("C-0x11: db/user@127.0.0.1:5000 login attempt: db=db")
        log.warning("a warning between")
        assert logfile.held_info("C-0x11: db/user@127.0.0.1:5000 closing because: x (age=0s)")
        assert logpath.read_text() == ""  # held until the batch ends
    assert lines(logpath) == [
        ("LOG", "C-0x10: before"),
        ("LOG", "C-0x11: db/user@127.0.0.1:5000 login attempt: db=db"),
        ("WARNING", "a warning between"),
        ("LOG", "C-0x11: db/user@127.0.0.1:5000 closing because: x (age=0s)"),
    ]


def test_outside_a_batch_the_caller_logs_it(logpath: Path) -> None:
    only_serves_handlers()
    assert not logfile.held_info("not held")
    assert logpath.read_text() == ""


def test_handlers_that_are_not_serves_own_get_a_record(logpath: Path) -> None:
    only_serves_handlers()
    root = logging.getLogger("pgfunnel")
    handler = root.handlers[0]
    handler.addFilter(lambda record: True)
    with logfile.held():
        assert not logfile.held_info("filtered: a LogRecord for the filter")
    handler.filters.clear()
    extra = logging.StreamHandler()
    root.addHandler(extra)
    try:
        with logfile.held():
            assert not logfile.held_info("a handler of someone else's")
    finally:
        root.removeHandler(extra)
    assert logpath.read_text() == ""


def test_not_configured_means_no_shortcut() -> None:
    with logfile.held():
        assert not logfile.held_info("a test's logging, not serve's")


def test_lines_logged_for_a_switch_event_carry_its_time(logpath: Path) -> None:
    """The switch may hand Python a login or a close some milliseconds late: every line logged
    while the bridge handles it, held or not, carries the time the switch posted it."""
    only_serves_handlers()
    log = logging.getLogger("pgfunnel.net.app")
    then = 1_700_000_000.25  # 2023-11-14 22:13:20.250 UTC
    logfile.event_time(then)
    try:
        with logfile.held():
            assert logfile.held_info("C-0x1: a held line")
            log.warning("a warning held with it")
        log.info("a line logged at once")
    finally:
        logfile.event_time(None)
    log.info("a line of no event")
    stamps = [text[:23] for text in logpath.read_text().splitlines()]
    assert stamps[:3] == ["2023-11-14 22:13:20.250"] * 3
    assert stamps[3] > "2026"
