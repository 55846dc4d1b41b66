-- pgfunnel toolkit: databases with their connection limits (all versions).
SELECT datname, datconnlimit, datallowconn, datistemplate
FROM pg_database
ORDER BY datname
