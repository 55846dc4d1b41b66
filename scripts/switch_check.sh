#!/usr/bin/env bash
# The switch's native checks, time-bounded for `make test` (about a minute together):
#   1. tests/switch under the ASan+UBSan build of the extension (leaks checked by
#      tests/switch/test_leaks.py under LeakSanitizer, in the same run);
#   2. the libFuzzer harness over scan.c from the checked-in corpus, FUZZ_SECONDS long.
# A sanitizer report or a fuzz crash fails it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
FUZZ_SECONDS=${FUZZ_SECONDS:-25}

so=$(bash scripts/switch_build.sh asan | tail -1)
libasan=$(gcc -print-file-name=libasan.so)
echo "switch-check: tests/switch under ASan+UBSan ($so)"
# The interpreter is not instrumented: libasan comes first, and the interpreter's own
# leftovers at exit are not reported here (test_leaks.py looks for the switch's).
LD_PRELOAD="$libasan" \
    ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:strict_string_checks=1 \
    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    PGFUNNEL_SWITCH_SO="$PWD/$so" \
    "$PY" -m pytest -q -p no:cacheprovider tests/switch

if ! command -v clang >/dev/null 2>&1; then
    echo "switch-check: clang is missing (scripts/bootstrap.sh installs it)" >&2
    exit 1
fi
fuzzer=$(bash scripts/switch_build.sh fuzz | tail -1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "switch-check: fuzzing scan.c for ${FUZZ_SECONDS}s"
# New inputs go to the scratch directory; the checked-in corpus is only read.
"$fuzzer" -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 -artifact_prefix="$work/" \
    "$work" tests/switch/corpus 2>"$work/fuzz.log" || {
    tail -40 "$work/fuzz.log" >&2
    exit 1
}
grep -E "stat::number_of_executed_units|Done" "$work/fuzz.log" | tr '\n' ' '
echo
