"""Builds pgfunnel._switch, the C data plane; everything else about the package is in
pyproject.toml. PGFUNNEL_WERROR=1 (the test build: scripts/bootstrap.sh) makes warnings errors."""

import os

from setuptools import Extension, setup

SRC = "src/pgfunnel/_switch/"
FLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Wshadow", "-Wvla"]
if os.environ.get("PGFUNNEL_WERROR") == "1":
    FLAGS.append("-Werror")

setup(
    ext_modules=[
        Extension(
            "pgfunnel._switch._switch",
            sources=[
                SRC + f
                for f in (
                    "scan.c",
                    "conn.c",
                    "pool.c",
                    "stats.c",
                    "loop.c",
                    "params.c",
                    "timers.c",
                    "login.c",
                    "fastlogin.c",
                    "cancelkey.c",
                    "ps.c",
                    "sets.c",
                    "tls.c",
                    "module.c",
                )
            ],
            depends=[SRC + "switch.h", SRC + "scan.h", SRC + "io.h"],
            extra_compile_args=FLAGS,
            # OpenSSL: libcrypto for the digests of the logins the switch runs (md5, SCRAM's
            # SHA-256 and HMAC); libssl for TLS on both sides (tls.c).
            libraries=["pthread", "ssl", "crypto"],
        )
    ]
)
