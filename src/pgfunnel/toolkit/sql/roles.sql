-- pgfunnel toolkit: login roles with their connection limits (all versions).
-- uses_reserved: PostgreSQL 16+ lets a role into the reserved_connections slots when it has the
-- privileges (USAGE, i.e. inherited) of pg_use_reserved_connections; false before 16.
SELECT
    r.rolname,
    r.rolconnlimit,
    r.rolsuper,
    r.rolcanlogin,
    r.rolreplication,
    CASE WHEN to_regrole('pg_use_reserved_connections') IS NULL THEN false
         ELSE pg_has_role(r.oid, 'pg_use_reserved_connections', 'USAGE') END AS uses_reserved
FROM pg_roles r
WHERE r.rolcanlogin
ORDER BY r.rolname
