-- pgfunnel toolkit: every backend but our own, with what decides slots, ages and reaping.
SELECT
    a.pid,
    a.datname,
    a.usename,
    a.application_name,
    host(a.client_addr) AS client_addr,
    a.client_port,
    a.backend_type,
    a.state,
    a.backend_start,
    a.xact_start,
    a.query_start,
    a.state_change,
    a.wait_event_type,
    a.wait_event,
    a.backend_xid::text AS backend_xid,
    a.backend_xmin::text AS backend_xmin,
    CASE WHEN a.backend_xmin IS NOT NULL THEN age(a.backend_xmin) END AS xmin_age,
    CASE WHEN a.backend_xid IS NOT NULL THEN age(a.backend_xid) END AS xid_age,
    left(a.query, 2000) AS query,
    extract(epoch FROM now() - a.state_change)::float8 AS state_age_s,
    extract(epoch FROM now() - a.xact_start)::float8 AS xact_age_s,
    r.rolsuper AS is_superuser,
    r.rolreplication AS is_replication_role,
    -- pg_terminate_backend's own check: inherited privileges (USAGE), not bare membership.
    CASE
        WHEN (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN true
        WHEN r.rolsuper THEN false
        ELSE pg_has_role(current_user, a.usesysid, 'USAGE')
             OR pg_has_role(current_user, 'pg_signal_backend', 'USAGE')
    END AS can_signal
FROM pg_stat_activity a
LEFT JOIN pg_roles r ON r.oid = a.usesysid
WHERE a.pid <> pg_backend_pid()
ORDER BY a.pid
