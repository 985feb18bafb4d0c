-- Every role that can become todo_app, and so set app.user_id to anyone: its members, members of
-- those, and so on, and every role holding ADMIN on one of them (it may grant the role to itself).
-- Superusers can become any role and are not listed. The isolation check (sql/checks/isolation.sql)
-- reports any of them that is not the login role, the owner of the database or of schema app, or a
-- login role made as `todo-api migrate --login-role` makes one.
--     psql "$DATABASE_URL" -f sql/audit/todo_app_members.sql

WITH RECURSIVE can_become(role_oid, how) AS (
    SELECT am.member, CASE WHEN am.admin_option THEN 'ADMIN on todo_app' ELSE 'member of todo_app' END
    FROM pg_catalog.pg_auth_members am
    JOIN pg_catalog.pg_roles app ON app.oid = am.roleid AND app.rolname = 'todo_app'
    UNION
    SELECT am.member,
           CASE WHEN am.admin_option THEN 'ADMIN on ' ELSE 'member of ' END
           || pg_catalog.pg_get_userbyid(am.roleid) COLLATE "default"
    FROM pg_catalog.pg_auth_members am
    JOIN can_become b ON am.roleid = b.role_oid
)
SELECT pg_catalog.pg_get_userbyid(role_oid)::text AS name,
       pg_catalog.array_agg(DISTINCT how ORDER BY how) AS how
FROM can_become
GROUP BY role_oid
ORDER BY 1;
