#!/usr/bin/env bash
# Installs whatever `make test` and `make demo` need and is missing: Debian's PostgreSQL
# server and client tools, python3-venv, promtool and chromium (tests), then a .venv with the
# project and its test deps.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
have_initdb() {
    command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}
have_initdb || need_apt+=(postgresql postgresql-contrib)
command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client)
command -v pgbench >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pgbench >/dev/null 2>&1 \
    || need_apt+=(postgresql-contrib)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then need_apt+=(python3-venv); fi
if [ "${PGFUNNEL_NEED_PROMTOOL:-1}" = 1 ] && ! command -v promtool >/dev/null 2>&1; then
    need_apt+=(prometheus)
fi

# The switch (a C extension) builds with gcc against Python's headers; `make test` also builds
# it with ASan+UBSan (gcc) and fuzzes its framing with libFuzzer (clang, libclang-rt).
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)
python3 -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
    || need_apt+=(python3-dev)
# OpenSSL's libcrypto and its headers: the switch checks md5 and SCRAM passwords with it.
[ -f /usr/include/openssl/evp.h ] || need_apt+=(libssl-dev)
command -v clang >/dev/null 2>&1 || need_apt+=(clang)
ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1 \
    || need_apt+=(libclang-rt-14-dev)

# The status page test opens the page in a real headless browser.
if [ "${PGFUNNEL_NEED_CHROMIUM:-1}" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
    need_apt+=(chromium)
fi

if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "bootstrap: missing Debian packages: ${need_apt[*]} (run as root, or install them)" >&2
        exit 1
    fi
    echo "bootstrap: installing ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    # Debian starts a cluster of its own on install; the project never uses it.
    if command -v pg_lsclusters >/dev/null 2>&1; then
        pg_lsclusters -h 2>/dev/null | while read -r ver name _; do
            pg_ctlcluster "$ver" "$name" stop >/dev/null 2>&1 || true
        done
    fi
fi

stamp=.venv/.pgfunnel-installed
if [ ! -x .venv/bin/python ]; then
    rm -rf .venv
    python3 -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    # The test build: the switch's warnings are errors (setup.py).
    PGFUNNEL_WERROR=1 .venv/bin/python -m pip install -q -e '.[test]'
    # A PgBouncer exporter the tests run unchanged; its own pins are too old (see pyproject).
    .venv/bin/python -m pip install -q --no-deps 'prometheus-pgbouncer-exporter==2.1.2'
    touch "$stamp"
fi
# An editable install builds the switch once; rebuild it in place (-Werror) when its C changed.
so=$(ls src/pgfunnel/_switch/_switch*.so 2>/dev/null | head -1)
if [ -z "$so" ] || [ -n "$(find src/pgfunnel/_switch -name '*.[ch]' -newer "$so")" ]; then
    bash scripts/switch_build.sh dev >/dev/null
fi
