-- Every table outside the system catalogs: whether row-level security is enabled and forced (FORCE
-- makes it apply to the table's owner too), how many policies it has, and whether todo_app can reach
-- it at all: any privilege on it or on one of its columns, TRUNCATE (which row-level security does not
-- govern), REFERENCES, TRIGGER and MAINTAIN included. A table todo_app cannot reach (yoyo's
-- bookkeeping, say) needs no policy.
--     psql "$DATABASE_URL" -f sql/audit/tables.sql

SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) AS name,
       pg_catalog.pg_get_userbyid(c.relowner) AS owner,
       c.relrowsecurity AS rls_enabled,
       c.relforcerowsecurity AS rls_forced,
       (SELECT pg_catalog.count(*) FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid)::int AS policies,
       COALESCE(pg_catalog.has_table_privilege(app.oid, c.oid,
                                                'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
                OR pg_catalog.has_any_column_privilege(app.oid, c.oid, 'SELECT, INSERT, UPDATE, REFERENCES')
                -- MAINTAIN is new in PostgreSQL 17, unknown before.
                OR CASE WHEN pg_catalog.current_setting('server_version_num')::int >= 170000
                        THEN pg_catalog.has_table_privilege(app.oid, c.oid, 'MAINTAIN') ELSE false END,
                false) AS open_to_todo_app
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_roles app ON app.rolname = 'todo_app'
WHERE c.relkind IN ('r', 'p')
  AND n.nspname <> 'information_schema'
  AND n.nspname NOT LIKE 'pg\_%'
ORDER BY n.nspname, c.relname;
