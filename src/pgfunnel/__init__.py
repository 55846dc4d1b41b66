"""pgfunnel: a PgBouncer-compatible PostgreSQL connection pooler and the 53300 toolkit."""

__version__ = "0.1.0"
