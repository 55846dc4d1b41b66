-- pgfunnel toolkit: the timeout and keepalive settings, with what is needed to tell the
-- server-wide value from this session's own. reset_val alone is not it: it includes the
-- ALTER ROLE / ALTER DATABASE ... SET values of the role and database we connected as.
-- applies_here: a per-role or per-database entry of pg_db_role_setting applies to this session;
-- all_roles_value: the ALTER ROLE ALL SET value, which every session gets (server-wide).
WITH here AS (
    SELECT
        split_part(cfg, '=', 1) AS name,
        bool_or(NOT (s.setrole = 0 AND s.setdatabase = 0)) AS applies_here,
        max(CASE WHEN s.setrole = 0 AND s.setdatabase = 0
                 THEN substr(cfg, strpos(cfg, '=') + 1) END) AS all_roles_value
    FROM pg_db_role_setting s
    CROSS JOIN LATERAL unnest(s.setconfig) AS cfg
    WHERE s.setrole IN (0, (SELECT oid FROM pg_roles WHERE rolname = session_user))
      AND s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
    GROUP BY 1
)
SELECT
    p.name,
    p.setting,
    p.reset_val,
    p.boot_val,
    p.unit,
    p.source,
    coalesce(h.applies_here, false) AS applies_here,
    h.all_roles_value
FROM pg_settings p
LEFT JOIN here h ON h.name = p.name
WHERE p.name IN (
    'idle_in_transaction_session_timeout', 'idle_session_timeout', 'statement_timeout',
    'transaction_timeout', 'tcp_keepalives_idle', 'tcp_keepalives_interval',
    'tcp_keepalives_count', 'tcp_user_timeout', 'client_connection_check_interval',
    'lock_timeout'
)
ORDER BY p.name
