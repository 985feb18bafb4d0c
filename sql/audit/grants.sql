-- What todo_app may do, as Postgres decides it: grants to todo_app itself, to PUBLIC, and to the roles
-- whose privileges it inherits. todo_app is NOINHERIT, so a role it was made a member of counts only
-- when granted WITH INHERIT TRUE; what it could reach by SET ROLE to any other is not listed here, and
-- any such membership is a finding of the isolation check (sql/checks/reach.sql). One row per object
-- and privilege; a privilege held on some columns only lists them. Only objects outside the system
-- catalogs are shown.
--     psql "$DATABASE_URL" -f sql/audit/grants.sql

WITH app AS (
    SELECT oid FROM pg_catalog.pg_roles WHERE rolname = 'todo_app'
),
schemas AS (
    SELECT oid, nspname FROM pg_catalog.pg_namespace
    WHERE nspname <> 'information_schema' AND nspname NOT LIKE 'pg\_%'
),
relations AS (
    SELECT c.oid, c.relkind, pg_catalog.format('%I.%I', s.nspname, c.relname) AS name,
           CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view'
                          WHEN 'f' THEN 'foreign table' WHEN 'S' THEN 'sequence' ELSE 'table' END AS object_type
    FROM pg_catalog.pg_class c
    JOIN schemas s ON s.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
),
granted AS (
    SELECT 'schema' AS object_type, s.nspname::text AS object, privilege, NULL::text AS columns
    FROM schemas s, app, pg_catalog.unnest(ARRAY['USAGE', 'CREATE']) AS privilege
    WHERE pg_catalog.has_schema_privilege(app.oid, s.oid, privilege)

    UNION ALL
    SELECT r.object_type, r.name, privilege, NULL
    FROM relations r, app,
         -- MAINTAIN (LOCK in any mode, VACUUM, REINDEX) is new in PostgreSQL 17, unknown before.
         pg_catalog.unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']
                           || CASE WHEN pg_catalog.current_setting('server_version_num')::int >= 170000
                                   THEN ARRAY['MAINTAIN'] ELSE ARRAY[]::text[] END)
             AS privilege
    WHERE r.relkind <> 'S' AND pg_catalog.has_table_privilege(app.oid, r.oid, privilege)

    UNION ALL
    SELECT r.object_type, r.name, privilege,
           pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum)
    FROM relations r
    JOIN pg_catalog.pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
    CROSS JOIN app
    CROSS JOIN pg_catalog.unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'REFERENCES']) AS privilege
    WHERE r.relkind <> 'S'
      AND NOT pg_catalog.has_table_privilege(app.oid, r.oid, privilege)
      AND pg_catalog.has_column_privilege(app.oid, r.oid, a.attnum, privilege)
    GROUP BY r.object_type, r.name, privilege

    UNION ALL
    SELECT r.object_type, r.name, privilege, NULL
    FROM relations r, app, pg_catalog.unnest(ARRAY['USAGE', 'SELECT', 'UPDATE']) AS privilege
    WHERE r.relkind = 'S' AND pg_catalog.has_sequence_privilege(app.oid, r.oid, privilege)

    UNION ALL
    SELECT CASE f.prokind WHEN 'p' THEN 'procedure' ELSE 'function' END,
           f.oid::regprocedure::text, 'EXECUTE', NULL
    FROM pg_catalog.pg_proc f
    JOIN schemas s ON s.oid = f.pronamespace
    CROSS JOIN app
    WHERE f.prokind IN ('f', 'p')
      AND pg_catalog.has_function_privilege(app.oid, f.oid, 'EXECUTE')
)
SELECT object_type, object, privilege, columns
FROM granted
ORDER BY object_type, object,
         pg_catalog.array_position(ARRAY['USAGE', 'CREATE', 'SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE',
                                         'REFERENCES', 'TRIGGER', 'MAINTAIN', 'EXECUTE'], privilege);
