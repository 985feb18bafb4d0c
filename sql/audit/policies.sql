-- Every row-level security policy, with its expressions as Postgres prints them (the same columns
-- as the pg_policies view, plus the policy's oid, which tells a policy just re-created from a file
-- from the one that was live before).
--     psql "$DATABASE_URL" -f sql/audit/policies.sql

SELECT p.oid::bigint AS oid,
       pg_catalog.format('%I.%I', n.nspname, c.relname) AS table_name,
       p.polname::text AS name,
       CASE WHEN p.polpermissive THEN 'PERMISSIVE' ELSE 'RESTRICTIVE' END AS kind,
       CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE'
                     WHEN 'd' THEN 'DELETE' ELSE 'ALL' END AS command,
       ARRAY(
           SELECT CASE WHEN granted.role_oid = 0 THEN 'public'
                       ELSE pg_catalog.pg_get_userbyid(granted.role_oid)::text END
           FROM pg_catalog.unnest(p.polroles) AS granted(role_oid)
           ORDER BY 1
       ) AS roles,
       pg_catalog.pg_get_expr(p.polqual, p.polrelid) AS using_expression,
       pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) AS with_check_expression
FROM pg_catalog.pg_policy p
JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
ORDER BY n.nspname, c.relname, p.polname;
