"""The logfile on a real pgfunnel: PgBouncer's line format, opened again on SIGHUP and RELOAD
(logrotate moves the file away and signals; a changed setting names another file), and a file
that cannot be opened on reload keeps the old one in use."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.integration.harness import Funnel, wait_for

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} UTC \[(\d+)\] (LOG|WARNING|ERROR) .+$")


def _logged_in(path: Path, f: Funnel) -> bool:
    with f.connect(application_name="after") as conn:
        conn.execute("SELECT 1")
    return path.exists() and "login attempt" in path.read_text(errors="replace")


def test_lines_carry_pgbouncers_format_and_the_pooler_pid(funnel: Callable[..., Funnel]) -> None:
    f = funnel(settings={"log_connections": 1})
    with f.connect() as conn:
        conn.execute("SELECT 1")
    wait_for(lambda: "login attempt" in f.log())
    assert f.proc is not None
    lines = f.log().splitlines()
    for line in lines:
        match = LINE.match(line)
        assert match, line
        assert int(match.group(1)) == f.proc.pid


def test_sighup_opens_the_logfile_again_after_logrotate_moved_it(
    funnel: Callable[..., Funnel],
) -> None:
    f = funnel(settings={"log_connections": 1})
    with f.connect() as conn:
        conn.execute("SELECT 1")
    wait_for(lambda: "login attempt" in f.log())
    rotated = f.logfile.with_name("pgfunnel.log.1")
    os.rename(f.logfile, rotated)  # what logrotate does before its postrotate `kill -HUP`
    assert f.proc is not None
    f.proc.send_signal(signal.SIGHUP)
    # The SIGHUP line still goes to the file that was open; new lines go to a new file.
    wait_for(lambda: "got SIGHUP, re-reading config" in rotated.read_text())
    wait_for(lambda: _logged_in(f.logfile, f))
    assert "got SIGHUP" not in f.logfile.read_text()
    old = rotated.read_text()
    with f.connect() as conn:
        conn.execute("SELECT 1")
    wait_for(lambda: f.log().count("login attempt") >= 2)
    assert rotated.read_text() == old  # nothing more is written to the moved file


def test_reload_follows_a_changed_logfile_setting(funnel: Callable[..., Funnel]) -> None:
    f = funnel(settings={"log_connections": 1})
    other = f.dir / "other.log"
    text = f.config.read_text().replace(f"logfile = {f.logfile}", f"logfile = {other}")
    f.config.write_text(text)
    f.admin("RELOAD")
    wait_for(lambda: _logged_in(other, f))
    assert "RELOAD command issued" in f.log()
    before = f.log()
    with f.connect() as conn:
        conn.execute("SELECT 1")
    wait_for(lambda: other.read_text().count("login attempt") >= 2)
    assert f.log() == before  # the old file is closed, not written to


def test_console_set_logfile_switches_the_file(funnel: Callable[..., Funnel]) -> None:
    f = funnel(settings={"log_connections": 1})
    other = f.dir / "set.log"
    f.admin(f"SET logfile = '{other}'")
    wait_for(lambda: _logged_in(other, f))


def test_a_logfile_that_cannot_be_opened_on_reload_keeps_the_old_one(
    funnel: Callable[..., Funnel],
) -> None:
    f = funnel(settings={"log_connections": 1})
    missing = f.dir / "no-such-dir" / "pgfunnel.log"
    text = f.config.read_text().replace(f"logfile = {f.logfile}", f"logfile = {missing}")
    f.config.write_text(text)
    f.admin("RELOAD")
    wait_for(lambda: "could not open logfile" in f.log())
    assert str(missing) in f.log()
    wait_for(lambda: _logged_in(f.logfile, f))
    assert not missing.parent.exists()


def test_a_logfile_that_cannot_be_opened_at_start_is_an_error_not_a_traceback(
    tmp_path: Path,
) -> None:
    ini = tmp_path / "pgbouncer.ini"
    missing = tmp_path / "no-such-dir" / "pgfunnel.log"
    ini.write_text(
        "[databases]\npostgres = host=127.0.0.1 port=1 dbname=postgres\n"
        f"[pgbouncer]\nlisten_port = 0\nlogfile = {missing}\nauth_type = trust\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pgfunnel", "serve", str(ini)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "pgfunnel: cannot open logfile:" in done.stderr
    assert str(missing) in done.stderr
    assert "Traceback" not in done.stderr
