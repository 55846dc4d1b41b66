"""Argument parsing for `pgfunnel ...`: builds the parsers and hands off; no logic of its own."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pgfunnel import __version__, cli_toolkit


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="run the pooler (a drop-in for pgbouncer)",
        description="Run the pooler with a pgbouncer.ini configuration file. "
        "The flags are PgBouncer's.",
    )
    p.add_argument("config", metavar="CONFIG", help="path to pgbouncer.ini")
    p.add_argument(
        "-d", "--daemon", action="store_true", help="run in the background (needs pidfile, logfile)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no logging to stderr")
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more logging; repeat for more (adds to the verbose setting)",
    )
    p.add_argument("-u", "--user", metavar="USERNAME", help="switch to this user at startup")
    p.add_argument(
        "-R",
        "--reboot",
        action="store_true",
        help="online restart (not supported by pgfunnel; refused)",
    )
    p.add_argument("-V", "--version", action="version", version=f"pgfunnel {__version__}")
    p.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from pgfunnel.net.serve import serve_main

    return serve_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgfunnel",
        description="A PgBouncer-compatible PostgreSQL pooler and the 53300 toolkit.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"pgfunnel {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _serve_parser(sub)
    cli_toolkit.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    result: int = args.func(args)
    return result
