#!/usr/bin/env bash
# Builds the switch (src/pgfunnel/_switch) outside the PEP 517 backend, for the checks that
# need their own flags:
#   dev   the extension in place, as the test build: C11, -Wall -Wextra -Werror
#   asan  the extension with ASan+UBSan, into build/switch-asan/ (tests load it through
#         PGFUNNEL_SWITCH_SO, see tests/switch/conftest.py)
#   fuzz  the libFuzzer harnesses (scan.c alone; conn/pool/loop over socket pairs; the login
#         phases; TLS), into
#         build/switch-fuzz/ (needs clang)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SRC=src/pgfunnel/_switch
INC=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
SUFFIX=$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
WARN=(-std=c11 -Wall -Wextra -Werror -Wshadow -Wvla)
CORE=("$SRC/scan.c" "$SRC/conn.c" "$SRC/pool.c" "$SRC/stats.c" "$SRC/loop.c" "$SRC/params.c"
    "$SRC/timers.c" "$SRC/login.c" "$SRC/fastlogin.c" "$SRC/cancelkey.c" "$SRC/ps.c" "$SRC/sets.c"
    "$SRC/tls.c" "$SRC/module.c")

case "${1:-dev}" in
dev)
    ${CC:-gcc} "${WARN[@]}" -O2 -g -fPIC -shared -I"$INC" "${CORE[@]}" -lpthread -lssl -lcrypto \
        -o "$SRC/_switch$SUFFIX"
    echo "$SRC/_switch$SUFFIX"
    ;;
asan)
    mkdir -p build/switch-asan
    ${CC:-gcc} "${WARN[@]}" -O1 -g -fPIC -shared -fno-omit-frame-pointer \
        -fsanitize=address,undefined -fno-sanitize-recover=undefined \
        -I"$INC" "${CORE[@]}" -lpthread -lssl -lcrypto -o "build/switch-asan/_switch$SUFFIX"
    echo "build/switch-asan/_switch$SUFFIX"
    ;;
fuzz)
    mkdir -p build/switch-fuzz
    FUZZ=(-O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -I"$SRC")
    clang "${WARN[@]}" "${FUZZ[@]}" "$SRC/scan.c" tests/switch/fuzz_scan.c \
        -o build/switch-fuzz/fuzz_scan
    # Everything but the CPython glue: the connection and pool code over real socket pairs.
    clang "${WARN[@]}" "${FUZZ[@]}" "${CORE[@]:0:13}" tests/switch/fuzz_switch.c -lpthread -lssl -lcrypto \
        -o build/switch-fuzz/fuzz_switch
    # The login phases: accept, connect completion, framing, flow control (login.c).
    clang "${WARN[@]}" "${FUZZ[@]}" "${CORE[@]:0:13}" tests/switch/fuzz_login.c -lpthread -lssl -lcrypto \
        -o build/switch-fuzz/fuzz_login
    # The logins the switch runs alone on a route (fastlogin.c).
    clang "${WARN[@]}" "${FUZZ[@]}" "${CORE[@]:0:13}" tests/switch/fuzz_fastlogin.c -lpthread \
        -lssl -lcrypto -o build/switch-fuzz/fuzz_fastlogin
    # TLS (tls.c): the handshake's and the SSLRequest answer's peer, the ALPN parser.
    clang "${WARN[@]}" "${FUZZ[@]}" "${CORE[@]:0:13}" tests/switch/fuzz_tls.c -lpthread \
        -lssl -lcrypto -o build/switch-fuzz/fuzz_tls
    echo build/switch-fuzz/fuzz_scan build/switch-fuzz/fuzz_switch build/switch-fuzz/fuzz_login \
        build/switch-fuzz/fuzz_fastlogin build/switch-fuzz/fuzz_tls
    ;;
*)
    echo "usage: $0 [dev|asan|fuzz]" >&2
    exit 2
    ;;
esac
