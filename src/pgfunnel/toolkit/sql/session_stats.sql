-- pgfunnel toolkit: before PostgreSQL 14 there are no session statistics.
SELECT NULL::name AS datname WHERE false
