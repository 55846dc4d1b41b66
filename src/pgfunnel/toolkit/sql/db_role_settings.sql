-- pgfunnel toolkit: per-role and per-database settings (ALTER ROLE/DATABASE ... SET).
SELECT
    coalesce(r.rolname, '') AS rolname,
    coalesce(d.datname, '') AS datname,
    cfg AS setting
FROM pg_db_role_setting s
LEFT JOIN pg_roles r ON r.oid = s.setrole
LEFT JOIN pg_database d ON d.oid = s.setdatabase
CROSS JOIN LATERAL unnest(s.setconfig) AS cfg
ORDER BY 1, 2, 3
