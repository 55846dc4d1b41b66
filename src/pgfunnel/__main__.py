"""Lets `python -m pgfunnel ...` behave as the `pgfunnel` command."""

from pgfunnel.cli import main

raise SystemExit(main())
