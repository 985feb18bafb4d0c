-- The login role running this (the role in DATABASE_URL), as far as isolation is concerned: whether
-- it could read rows past row-level security on its own, outside the API's switch to todo_app. Best,
-- it is neither SUPERUSER nor BYPASSRLS, owns nothing, and may become no role that is or does
-- (PostgREST's "authenticator"): an owner may turn row-level security off, on Neon every console role
-- has BYPASSRLS, and a statement may SET ROLE to any role the login role is a member of.
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
       ) AS owns,
       ARRAY(
           -- Roles it may become with SET ROLE (any membership, inherited or not; todo_app aside, the
           -- role the API switches to, which the isolation check vets) whose rights reach past
           -- row-level security: a superuser, BYPASSRLS, an owner of what the API keeps, or the
           -- predefined roles that read or write every table (the app schema's own tables included).
           SELECT pg_catalog.format('%I (%s)', b.rolname, why)
           FROM pg_catalog.pg_roles b
           CROSS JOIN LATERAL pg_catalog.concat_ws(', ',
               CASE WHEN b.rolsuper THEN 'a superuser' END,
               CASE WHEN b.rolbypassrls THEN 'BYPASSRLS' END,
               CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_namespace n
                                 WHERE n.nspname = 'app' AND n.nspowner = b.oid)
                      OR EXISTS (SELECT FROM pg_catalog.pg_class c
                                 WHERE c.relkind IN ('r', 'p') AND c.relrowsecurity AND c.relowner = b.oid)
                    THEN 'owns the tables' END,
               CASE b.rolname WHEN 'pg_read_all_data' THEN 'reads every table'
                              WHEN 'pg_write_all_data' THEN 'writes every table' END
           ) AS why
           WHERE b.oid <> r.oid AND b.rolname <> 'todo_app' AND why <> ''
             AND pg_catalog.pg_has_role(r.oid, b.oid, 'MEMBER')
           ORDER BY 1
       ) AS may_become
FROM pg_catalog.pg_roles r
WHERE r.rolname = current_user;
