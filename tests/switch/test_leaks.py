"""A connect/query/disconnect loop through the switch leaks nothing: run under LeakSanitizer
with the ASan+UBSan build, every leak whose allocation stack passes through the switch's own
sources fails the test (the interpreter's own end-of-process leftovers are not ours)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from pgfunnel.throwaway import Cluster

ROOT = Path(__file__).resolve().parents[2]
OURS = re.compile(
    r"_switch/(scan|conn|pool|stats|loop|params|timers|login|module|fastlogin|ps|sets|tls)\.c"
)


def asan_build() -> Path:
    out = subprocess.run(
        ["bash", str(ROOT / "scripts/switch_build.sh"), "asan"],
        cwd=ROOT,
        env={**os.environ, "PY": sys.executable},
        capture_output=True,
        text=True,
        check=True,
    )
    return ROOT / out.stdout.strip().splitlines()[-1]


def switch_leaks(log_dir: Path) -> list[str]:
    """The leak reports (one per leaked allocation) whose stack names a switch source file."""
    found = []
    for log in log_dir.glob("lsan.*"):
        for block in log.read_text().split("\n\n"):
            # The static Switch type's dict, made once by PyType_Ready in PyInit__switch,
            # lives as long as the process: not a leak (with enough methods its keys outgrow
            # pymalloc's 512 bytes and LeakSanitizer sees them).
            frames = [line for line in block.splitlines() if "in PyInit__switch " not in line]
            if "leak of" in block and OURS.search("\n".join(frames)):
                found.append(block)
    return found


def test_connect_query_disconnect_leaks_nothing(pg: Cluster, tmp_path: Path) -> None:
    so = asan_build()
    libasan = subprocess.run(
        ["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True, check=True
    ).stdout.strip()
    env = {
        **os.environ,
        "LD_PRELOAD": libasan,
        "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:fast_unwind_on_malloc=0",
        "LSAN_OPTIONS": f"exitcode=0:log_path={tmp_path}/lsan",
        "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
        # this tree's package first (a worktree's, not an editable install elsewhere)
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    }
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests/switch/leak_loop.py"),
            str(so),
            str(pg.sockdir),
            str(pg.port),
            "300",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(tmp_path.glob("lsan.*")), "LeakSanitizer did not run"
    assert switch_leaks(tmp_path) == []
