"""`pgfunnel` on the command line: help, version, refused flags, config errors, daemon, signals."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from pgfunnel import __version__
from pgfunnel.throwaway import free_port
from tests.integration.harness import wait_for

PYTHON_M = [sys.executable, "-m", "pgfunnel"]
SCRIPT = Path(sys.executable).with_name("pgfunnel")
# The installed console script when there is one (a pip install -e makes it), else python -m.
PGFUNNEL = [str(SCRIPT)] if SCRIPT.exists() else PYTHON_M


def write_config(directory: Path, *extra: str, daemon_files: bool = False) -> tuple[Path, int]:
    """A minimal valid pgbouncer.ini in `directory`; `extra` lines go to [pgbouncer]."""
    port = free_port()
    userlist = directory / "userlist.txt"
    userlist.write_text('"postgres" "postgres"\n')
    lines = [
        "[databases]",
        "postgres = host=127.0.0.1 port=5432 dbname=postgres",
        "[pgbouncer]",
        "listen_addr = 127.0.0.1",
        f"listen_port = {port}",
        f"unix_socket_dir = {directory}",
        "auth_type = trust",
        f"auth_file = {userlist}",
    ]
    if daemon_files:
        lines += [
            f"pidfile = {directory / 'pgfunnel.pid'}",
            f"logfile = {directory / 'pgfunnel.log'}",
        ]
    lines += extra
    config = directory / "pgbouncer.ini"
    config.write_text("\n".join(lines) + "\n")
    return config, port


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# Quick invocations run side by side once per module: each one pays a full interpreter start.
CONFIG_ERRORS = {
    "key": ("pgf_no_such_setting = 1", ["unknown setting", "pgf_no_such_setting"]),
    "value": ("max_client_conn = lots", ["max_client_conn", "lots"]),
    "enum": ("pool_mode = sometimes", ["sometimes"]),
}


@dataclass
class Outputs:
    results: dict[str, subprocess.CompletedProcess[str]]
    configs: dict[str, tuple[Path, int]]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Outputs:
    configs: dict[str, tuple[Path, int]] = {}
    commands: dict[str, list[str]] = {
        "help": [*PYTHON_M, "--help"],
        "serve-help": [*PGFUNNEL, "serve", "--help"],
        "version": [*PGFUNNEL, "-V"],
        "serve-version": [*PGFUNNEL, "serve", "--version"],
    }
    for name in ("reboot", "daemon"):
        configs[name] = write_config(tmp_path_factory.mktemp(name))
    commands["reboot"] = [*PGFUNNEL, "serve", "-R", str(configs["reboot"][0])]
    commands["daemon"] = [*PGFUNNEL, "serve", "-d", str(configs["daemon"][0])]
    for name, (line, _) in CONFIG_ERRORS.items():
        configs[name] = write_config(tmp_path_factory.mktemp(name), "max_client_conn = 100", line)
        commands[name] = [*PGFUNNEL, "serve", "-q", str(configs[name][0])]
    procs = {
        name: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, cmd in commands.items()
    }
    results = {}
    for name, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    return Outputs(results, configs)


def test_python_m_help_lists_the_commands(outputs: Outputs) -> None:
    out = outputs.results["help"]
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: pgfunnel")
    assert "serve" in out.stdout


def test_serve_help_lists_pgbouncers_flags(outputs: Outputs) -> None:
    out = outputs.results["serve-help"]
    assert out.returncode == 0, out.stderr
    for flag in ("-d, --daemon", "-q, --quiet", "-v, --verbose", "-u USERNAME", "-R, --reboot"):
        assert flag in out.stdout, flag
    assert "-V, --version" in out.stdout
    assert "CONFIG" in out.stdout


@pytest.mark.parametrize("name", ["version", "serve-version"])
def test_version(outputs: Outputs, name: str) -> None:
    out = outputs.results[name]
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"pgfunnel {__version__}"


def test_reboot_flag_is_refused_clearly(outputs: Outputs) -> None:
    out = outputs.results["reboot"]
    assert out.returncode != 0
    assert "-R" in out.stderr and "not supported" in out.stderr
    assert not listening(outputs.configs["reboot"][1])


def test_daemon_without_pidfile_and_logfile_is_refused(outputs: Outputs) -> None:
    out = outputs.results["daemon"]
    assert out.returncode != 0
    assert "pidfile" in out.stderr and "logfile" in out.stderr
    assert not listening(outputs.configs["daemon"][1])


@pytest.mark.parametrize("name", sorted(CONFIG_ERRORS))
def test_config_error_names_file_and_line(outputs: Outputs, name: str) -> None:
    line, words = CONFIG_ERRORS[name]
    config, port = outputs.configs[name]
    line_number = config.read_text().splitlines().index(line) + 1
    out = outputs.results[name]
    assert out.returncode != 0
    assert f"{config}:{line_number}:" in out.stderr, out.stderr
    for word in words:
        assert word in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert not listening(port)


def _terminate(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)


def _gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "State:\tZ" in status  # exited; only its parent's reaping is left


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped): what a crash leaves behind."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_non_utf8_database_name_is_refused_at_start(tmp_path: Path) -> None:
    """A latin-1 name in the ini: a clear refusal naming file:line and the byte, exit 1."""
    config, port = write_config(tmp_path)
    config.write_bytes(
        config.read_bytes().replace(
            b"[databases]\n", b"[databases]\n'caf\xe9' = host=127.0.0.1 dbname=postgres\n", 1
        )
    )
    out = subprocess.run(
        [*PGFUNNEL, "serve", "-q", str(config)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1
    assert f"pgfunnel: {config}:2: database name 'caf\\xe9' is not valid UTF-8" in out.stderr
    assert not listening(port)


def test_daemon_writes_pidfile_listens_and_stops_on_sigterm(tmp_path: Path) -> None:
    config, port = write_config(tmp_path, daemon_files=True)
    pidfile, logfile = tmp_path / "pgfunnel.pid", tmp_path / "pgfunnel.log"
    stale = _dead_pid()
    pidfile.write_text(f"{stale}\n")  # left by a crash: PgBouncer removes it and goes on
    out = subprocess.run(
        [*PGFUNNEL, "serve", "-d", str(config)], capture_output=True, text=True, timeout=60
    )
    pid = 0
    try:
        assert out.returncode == 0, out.stderr
        wait_for(lambda: pidfile.exists() and pidfile.read_text().strip().isdigit(), 20)
        wait_for(lambda: int(pidfile.read_text()) != stale, 20)
        pid = int(pidfile.read_text())
        wait_for(lambda: listening(port), 20)
        assert not _gone(pid)
        log = logfile.read_text()
        assert "process up" in log and "stale pidfile, removing" in log
    finally:
        if pid:
            _terminate(pid)
    wait_for(lambda: _gone(pid), 20)
    assert not pidfile.exists()  # removed on a clean exit
    assert not listening(port)


@pytest.mark.parametrize("content", ["running", "", "garbage"])
def test_a_pidfile_of_a_running_instance_refuses_to_start(tmp_path: Path, content: str) -> None:
    """PgBouncer's check_pidfile: a pidfile naming a live process (or no readable pid) stops
    the start, and is left as it was."""
    config, port = write_config(tmp_path, daemon_files=True)
    pidfile = tmp_path / "pgfunnel.pid"
    text = f"{os.getpid()}\n" if content == "running" else content
    pidfile.write_text(text)
    out = subprocess.run(
        [*PGFUNNEL, "serve", "-d", str(config)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1
    assert f"pidfile '{pidfile}' exists, another instance running?" in out.stderr
    assert pidfile.read_text() == text  # not taken, not removed
    assert not listening(port)


def test_sigterm_stops_the_foreground_process_with_exit_0(tmp_path: Path) -> None:
    config, port = write_config(tmp_path, f"logfile = {tmp_path / 'pgfunnel.log'}")
    proc = subprocess.Popen(
        [*PGFUNNEL, "serve", "-q", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: listening(port) or proc.poll() is not None, 20)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    assert not listening(port)
    assert "got SIGTERM, shutting down" in (tmp_path / "pgfunnel.log").read_text()
