-- pgfunnel toolkit: server facts and the caller's privileges (all versions).
SELECT
    current_setting('server_version') AS server_version,
    current_setting('server_version_num')::int AS server_version_num,
    current_setting('max_connections')::int AS max_connections,
    current_setting('superuser_reserved_connections')::int AS superuser_reserved_connections,
    coalesce(current_setting('reserved_connections', true), '0')::int AS reserved_connections,
    current_setting('max_wal_senders')::int AS max_wal_senders,
    current_setting('autovacuum_max_workers')::int AS autovacuum_max_workers,
    current_setting('max_worker_processes')::int AS max_worker_processes,
    pg_backend_pid() AS own_pid,
    now() AS now,
    current_user AS current_user,
    (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS is_superuser,
    pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') AS can_read_all_stats,
    pg_has_role(current_user, 'pg_signal_backend', 'USAGE') AS can_signal_backend,
    has_table_privilege('pg_catalog.pg_file_settings', 'SELECT')
        AND has_function_privilege('pg_catalog.pg_show_all_file_settings()', 'EXECUTE')
        AS can_read_file_settings,
    pg_is_in_recovery() AS in_recovery
