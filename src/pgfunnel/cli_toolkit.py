"""Argument parsing for the 53300 toolkit commands: diagnose, reap, advise, check, alerts."""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers the toolkit subcommands (filled in by the toolkit work)."""
