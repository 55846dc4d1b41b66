-- pgfunnel toolkit: PostgreSQL 14+ session statistics, evidence of leaks and churn.
SELECT
    datname,
    sessions,
    sessions_abandoned,
    sessions_fatal,
    sessions_killed,
    session_time,
    active_time,
    idle_in_transaction_time,
    numbackends
FROM pg_stat_database
WHERE datname IS NOT NULL
ORDER BY datname
