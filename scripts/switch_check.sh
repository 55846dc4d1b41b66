#!/usr/bin/env bash
# The switch's native checks, time-bounded for `make test` (about a minute together):
#   1. tests/switch under the ASan+UBSan build of the extension (leaks checked by
#      tests/switch/test_leaks.py under LeakSanitizer, in the same run);
#   2. the libFuzzer harnesses from their checked-in corpora: scan.c alone (SCAN_SECONDS), the
#      connection/pool code over socket pairs (SWITCH_SECONDS), the login phases
#      (LOGIN_SECONDS), the logins the switch runs alone (FAST_SECONDS) and TLS (TLS_SECONDS).
# A sanitizer report or a fuzz crash fails it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SCAN_SECONDS=${SCAN_SECONDS:-12}
SWITCH_SECONDS=${SWITCH_SECONDS:-20}
LOGIN_SECONDS=${LOGIN_SECONDS:-8}
FAST_SECONDS=${FAST_SECONDS:-8}
TLS_SECONDS=${TLS_SECONDS:-6}

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
bash scripts/switch_build.sh fuzz >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# New inputs go to a scratch directory; the checked-in corpora are only read.
fuzz() {
    local name=$1 seconds=$2 corpus=$3
    echo "switch-check: fuzzing with $name for ${seconds}s"
    mkdir -p "$work/$name"
    build/switch-fuzz/"$name" -max_total_time="$seconds" -timeout=5 -print_final_stats=1 \
        -artifact_prefix="$work/$name-" "$work/$name" "$corpus" 2>"$work/$name.log" || {
        tail -40 "$work/$name.log" >&2
        echo "switch-check: $name failed; the input that failed is printed above (base64)" >&2
        exit 1
    }
    grep -E "stat::number_of_executed_units" "$work/$name.log"
}
fuzz fuzz_scan "$SCAN_SECONDS" tests/switch/corpus
fuzz fuzz_switch "$SWITCH_SECONDS" tests/switch/corpus_switch
fuzz fuzz_login "$LOGIN_SECONDS" tests/switch/corpus_login
fuzz fuzz_fastlogin "$FAST_SECONDS" tests/switch/corpus_fastlogin
fuzz fuzz_tls "$TLS_SECONDS" tests/switch/corpus_tls
