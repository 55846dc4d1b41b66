-- pgfunnel reap: one race-safe statement. A planned session is ended only if, at this
-- moment, it is still the same backend (pid and backend_start), still in the planned state
-- since the planned state_change, still old enough, a client backend, not us, and ours to
-- signal. Anything else is left alone and reported as changed.
-- "Ours to signal" is PostgreSQL's own rule for pg_terminate_backend: a superuser's session only
-- for a superuser, otherwise the privileges (inherited, i.e. USAGE, not bare MEMBER) of the
-- session's role or of pg_signal_backend. Matching it exactly keeps the call from raising.
WITH planned (pid, backend_start, state, state_change, min_state_age_s, min_xact_age_s) AS (
    VALUES
{planned}
)
SELECT a.pid, pg_terminate_backend(a.pid) AS terminated
FROM pg_stat_activity a
JOIN planned p
  ON p.pid = a.pid
 AND a.backend_start = p.backend_start
 AND a.state = p.state
 AND a.state_change = p.state_change
WHERE a.backend_type = 'client backend'
  AND a.pid <> pg_backend_pid()
  AND now() - a.state_change >= make_interval(secs => p.min_state_age_s)
  AND (p.min_xact_age_s IS NULL OR now() - a.xact_start >= make_interval(secs => p.min_xact_age_s))
  AND (
        (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
        OR (NOT (SELECT rolsuper FROM pg_roles WHERE oid = a.usesysid)
            AND (pg_has_role(current_user, a.usesysid, 'USAGE')
                 OR pg_has_role(current_user, 'pg_signal_backend', 'USAGE')))
  )
