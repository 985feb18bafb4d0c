-- Who owns what the migrations made: schema app and every table with row-level security enabled,
-- one row per owner. Migrations must run as exactly this role, because the policy files say
-- `TO CURRENT_USER` for the policies of the table's owner (its triggers' own reads and writes): run
-- as another role, even a superuser, they would name that role instead. No row on a database not
-- yet migrated, whose migrating role becomes the owner.
--     psql "$DATABASE_URL" -f sql/checks/schema_owner.sql

SELECT DISTINCT pg_catalog.pg_get_userbyid(owned.owner) AS owner
FROM (
    SELECT n.nspowner AS owner
    FROM pg_catalog.pg_namespace n
    WHERE n.nspname = 'app'
    UNION
    SELECT c.relowner
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND c.relrowsecurity
      AND n.nspname <> 'information_schema' AND NOT pg_catalog.starts_with(n.nspname, 'pg_')
) owned
ORDER BY 1;
