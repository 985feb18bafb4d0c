-- Findings that would let one user see or change another's rows. The API runs this at start-up as
-- its login role and refuses to serve while it returns any row; a DBA can run it by hand the same way.
-- Each row is one finding, in words.

WITH todo_app AS (
    SELECT oid, rolsuper, rolbypassrls FROM pg_catalog.pg_roles WHERE rolname = 'todo_app'
),
-- Every ordinary or partitioned table todo_app can read or write, in whole or in part.
exposed_tables AS (
    SELECT c.oid, c.oid::regclass AS name, c.relrowsecurity, c.relforcerowsecurity, r.oid AS role_oid
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    CROSS JOIN todo_app r
    WHERE c.relkind IN ('r', 'p')
      AND n.nspname <> 'information_schema'
      AND n.nspname NOT LIKE 'pg\_%'
      AND (pg_catalog.has_table_privilege(r.oid, c.oid, 'SELECT, INSERT, UPDATE, DELETE')
           OR pg_catalog.has_any_column_privilege(r.oid, c.oid, 'SELECT, INSERT, UPDATE'))
)
SELECT 'role todo_app does not exist' AS finding
WHERE NOT EXISTS (SELECT FROM todo_app)

UNION ALL
SELECT pg_catalog.format('table %s does not exist: the database is not migrated', expected)
FROM pg_catalog.unnest(ARRAY['public.users', 'public.tasks']) AS expected
WHERE pg_catalog.to_regclass(expected) IS NULL

UNION ALL
SELECT 'role todo_app is a superuser, so row-level security does not apply to it'
FROM todo_app WHERE rolsuper

UNION ALL
SELECT 'role todo_app has BYPASSRLS, so row-level security does not apply to it'
FROM todo_app WHERE rolbypassrls

UNION ALL
SELECT pg_catalog.format('table %s is open to todo_app without row-level security enabled', name)
FROM exposed_tables WHERE NOT relrowsecurity

UNION ALL
SELECT pg_catalog.format('table %s is open to todo_app without row-level security forced', name)
FROM exposed_tables WHERE NOT relforcerowsecurity

UNION ALL
SELECT pg_catalog.format('table %s is open to todo_app without a policy for it', name)
FROM exposed_tables t
WHERE NOT EXISTS (
    SELECT FROM pg_catalog.pg_policy p
    WHERE p.polrelid = t.oid AND (p.polroles @> ARRAY[0::oid] OR p.polroles @> ARRAY[t.role_oid])
);
