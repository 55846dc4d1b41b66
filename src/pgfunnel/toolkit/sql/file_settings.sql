-- pgfunnel toolkit: the configuration files' values (postgresql.conf, postgresql.auto.conf
-- written by ALTER SYSTEM), the last valid entry per name. Superusers only by default: run only
-- when server.sql found the privilege.
SELECT DISTINCT ON (name) name, setting
FROM pg_file_settings
WHERE error IS NULL
  AND name IN (
    'idle_in_transaction_session_timeout', 'idle_session_timeout', 'statement_timeout',
    'transaction_timeout', 'tcp_keepalives_idle', 'tcp_keepalives_interval',
    'tcp_keepalives_count', 'tcp_user_timeout', 'client_connection_check_interval',
    'lock_timeout'
  )
ORDER BY name, seqno DESC
