-- Every reason an existing role may not be the API's login role (`todo-api migrate --login-role`):
-- it could read rows past row-level security on its own, outside the API's switch to todo_app; it
-- is todo_app itself; or it is a group, whose members would gain todo_app with it. One row, an
-- empty array when the role is fit; no row when it does not exist. The role is named by the setting todo_api.login_role:
--     PGOPTIONS='-c todo_api.login_role=todo_login' psql "$DATABASE_URL" -f sql/checks/unfit_login_role.sql

SELECT pg_catalog.array_remove(ARRAY[
    CASE WHEN r.rolname = 'todo_app' THEN 'is todo_app itself, which the API switches to' END,
    CASE WHEN r.rolsuper THEN 'is a superuser, which row-level security never binds' END,
    CASE WHEN r.rolbypassrls THEN 'has BYPASSRLS, so row-level security does not bind it' END,
    -- A role that cannot log in is a group (pg_monitor, say): the API can never serve as it, and
    -- todo_app would pass to whoever is, or is later made, its member.
    CASE WHEN NOT r.rolcanlogin THEN 'cannot log in (NOLOGIN), so it is a group whose members would all '
                                      'become able to act as any user' END,
    CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_database d
                      WHERE d.datname = pg_catalog.current_database() AND d.datdba = r.oid)
           OR EXISTS (SELECT FROM pg_catalog.pg_shdepend o
                      WHERE o.refclassid = 'pg_catalog.pg_authid'::pg_catalog.regclass
                        AND o.refobjid = r.oid AND o.deptype = 'o'
                        AND o.dbid = (SELECT oid FROM pg_catalog.pg_database
                                      WHERE datname = pg_catalog.current_database()))
         THEN pg_catalog.format('owns objects in database %I, and an owner may turn row-level '
                                'security off', pg_catalog.current_database()) END,
    -- What it may become with SET ROLE counts as what it is: sql/checks/login_role.sql's may_become.
    (SELECT 'may become ' || pg_catalog.string_agg(pg_catalog.format('%I', b.rolname), ', ' ORDER BY b.rolname)
                 || ', which row-level security does not bind, or which owns what the API keeps, '
                 || 'or reads or writes every table'
     FROM pg_catalog.pg_roles b
     WHERE b.oid <> r.oid AND b.rolname <> 'todo_app'
       AND pg_catalog.pg_has_role(r.oid, b.oid, 'MEMBER')
       AND (b.rolsuper OR b.rolbypassrls OR b.rolname IN ('pg_read_all_data', 'pg_write_all_data')
            OR EXISTS (SELECT FROM pg_catalog.pg_namespace n WHERE n.nspname = 'app' AND n.nspowner = b.oid)
            OR EXISTS (SELECT FROM pg_catalog.pg_class c
                       WHERE c.relkind IN ('r', 'p') AND c.relrowsecurity AND c.relowner = b.oid)))
], NULL) AS reasons
FROM pg_catalog.pg_roles r
WHERE r.rolname = pg_catalog.current_setting('todo_api.login_role');
