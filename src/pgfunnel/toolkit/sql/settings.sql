-- pgfunnel toolkit: the timeout and keepalive settings as this session would reset to them.
SELECT name, reset_val AS setting, unit, source
FROM pg_settings
WHERE name IN (
    'idle_in_transaction_session_timeout', 'idle_session_timeout', 'statement_timeout',
    'transaction_timeout', 'tcp_keepalives_idle', 'tcp_keepalives_interval',
    'tcp_keepalives_count', 'tcp_user_timeout', 'client_connection_check_interval',
    'lock_timeout'
)
ORDER BY name
