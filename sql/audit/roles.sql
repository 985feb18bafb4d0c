-- The two roles isolation rests on: todo_app, which every request runs as, and the login role running
-- this query (the role in DATABASE_URL). todo_app must be NOLOGIN, not a superuser and without
-- BYPASSRLS; the login role may bypass row-level security (Neon's console roles do) as long as it
-- can switch to todo_app, which the API does at the start of every transaction.
--     psql "$DATABASE_URL" -f sql/audit/roles.sql

SELECT r.rolname AS name,
       r.rolname = current_user AS is_login_role,
       r.rolsuper AS superuser,
       r.rolbypassrls AS bypassrls,
       r.rolcanlogin AS can_login,
       r.rolinherit AS inherits,
       r.rolcreaterole AS createrole,
       r.rolcreatedb AS createdb,
       ARRAY(
           -- DISTINCT: since PostgreSQL 16 one membership may be granted by several grantors.
           SELECT DISTINCT m.rolname::text
           FROM pg_catalog.pg_auth_members am
           JOIN pg_catalog.pg_roles m ON m.oid = am.roleid
           WHERE am.member = r.oid
           ORDER BY 1
       ) AS member_of,
       -- PostgreSQL 16 separates being a member from being allowed to SET ROLE; before 16 members may.
       CASE WHEN app.oid IS NULL THEN false
            WHEN pg_catalog.current_setting('server_version_num')::int >= 160000
            THEN pg_catalog.pg_has_role(r.oid, app.oid, 'SET')
            ELSE pg_catalog.pg_has_role(r.oid, app.oid, 'MEMBER') END AS can_switch_to_todo_app
FROM pg_catalog.pg_roles r
LEFT JOIN pg_catalog.pg_roles app ON app.rolname = 'todo_app'
WHERE r.rolname IN ('todo_app', current_user)
ORDER BY r.rolname = current_user, r.rolname;
