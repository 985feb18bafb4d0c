-- The login role running this (the role in DATABASE_URL), as far as isolation is concerned: whether
-- it could read rows past row-level security on its own, outside the API's switch to todo_app. Best,
-- it is neither SUPERUSER nor BYPASSRLS and owns nothing (PostgREST's "authenticator"): an owner may
-- turn row-level security off, and on Neon every console role has BYPASSRLS.
--     psql "$DATABASE_URL" -f sql/checks/login_role.sql

SELECT r.rolname AS name, r.rolsuper AS superuser, r.rolbypassrls AS bypassrls,
       ARRAY(
           -- Owned, or owned by a role whose privileges it inherits.
           SELECT pg_catalog.format('schema %I', n.nspname)
           FROM pg_catalog.pg_namespace n
           WHERE n.nspname = 'app' AND pg_catalog.pg_has_role(r.oid, n.nspowner, 'USAGE')
           UNION ALL
           SELECT pg_catalog.format('table %I.%I', n.nspname, c.relname)
           FROM pg_catalog.pg_class c
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind IN ('r', 'p') AND c.relrowsecurity
             AND pg_catalog.pg_has_role(r.oid, c.relowner, 'USAGE')
           ORDER BY 1
       ) AS owns
FROM pg_catalog.pg_roles r
WHERE r.rolname = current_user;
