-- Findings that would let one user see or change another's rows. The API runs this as its login
-- role at start-up, refusing to serve while it returns any row, and again every minute while it
-- serves (with sql/checks/session_settings.sql, whose findings `todo-api migrate` shares, and
-- sql/checks/reach.sql); `todo-api policies` reports the same rows (plus drift from sql/policies/);
-- a DBA can run it by hand the same way:
--     psql "$DATABASE_URL" -f sql/checks/isolation.sql -f sql/checks/session_settings.sql
-- Each row is one finding, in words. No rows: the database enforces isolation.
-- The API runs it with an empty search_path, so that no function or operator another role made in a
-- schema on the session's path is picked over pg_catalog's (an =(oid, integer), a !~~(name, name)
-- or an @>(oid[], oid[]) made in schema public ran as the login role in every check), and names come
-- with their schema (public.tasks). Run by hand on another path (psql's default, "$user", public, as
-- above), nothing made elsewhere is picked either: every function is named with pg_catalog, each
-- comparison is of values pg_catalog has an operator for exactly, and those of two arrays, for which
-- it has only anyarray's, name pg_catalog's operator.

WITH todo_app AS (
    SELECT oid, rolsuper, rolbypassrls FROM pg_catalog.pg_roles WHERE rolname = 'todo_app'
),
-- Schemas that are ours to check: everything but the system catalogs.
user_schemas AS (
    SELECT oid FROM pg_catalog.pg_namespace
    WHERE nspname <> 'information_schema' AND NOT pg_catalog.starts_with(nspname, 'pg_')
),
-- Every relation of a given kind todo_app can read or write, in whole or in part.
exposed AS (
    SELECT c.oid, c.oid::regclass AS name, c.relkind, c.relrowsecurity, c.relforcerowsecurity,
           c.relowner, c.reloptions, r.oid AS role_oid
    FROM pg_catalog.pg_class c
    CROSS JOIN todo_app r
    WHERE c.relnamespace IN (SELECT oid FROM user_schemas)
      AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
      AND (pg_catalog.has_table_privilege(r.oid, c.oid, 'SELECT, INSERT, UPDATE, DELETE')
           OR pg_catalog.has_any_column_privilege(r.oid, c.oid, 'SELECT, INSERT, UPDATE'))
),
exposed_tables AS (
    SELECT * FROM exposed WHERE relkind IN ('r', 'p')
),
-- Policies that apply to todo_app: granted to PUBLIC, to todo_app, or to a role todo_app belongs to.
todo_app_policies AS (
    SELECT p.*
    FROM pg_catalog.pg_policy p
    CROSS JOIN todo_app r
    WHERE EXISTS (
        SELECT FROM pg_catalog.unnest(p.polroles) AS granted(role_oid)
        WHERE CASE WHEN granted.role_oid = 0::pg_catalog.oid THEN true
                   ELSE pg_catalog.pg_has_role(r.oid, granted.role_oid, 'MEMBER') END
    )
)
SELECT 'role todo_app does not exist' AS finding
WHERE NOT EXISTS (SELECT FROM todo_app)

-- Read from the catalog rather than with to_regclass, which needs USAGE on the schema.
UNION ALL
SELECT pg_catalog.format('table %s does not exist: the database is not migrated', expected)
FROM pg_catalog.unnest(ARRAY['public.users', 'public.tasks', 'public.idempotency_keys', 'public.task_events',
                              'public.task_event_purges', 'app.task_counts', 'app.task_event_counts']) AS expected
WHERE NOT EXISTS (
    SELECT FROM pg_catalog.pg_class AS c
    JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
    WHERE pg_catalog.format('%I.%I', n.nspname, c.relname) = expected
)

-- TRUNCATE empties a table without asking its policies, REFERENCES lets a foreign key of todo_app's
-- probe rows it cannot see, and TRIGGER lets it attach code that runs on other users' writes.
UNION ALL
SELECT pg_catalog.format('role todo_app has %s on %s, which row-level security does not govern', privilege, c.oid::regclass)
FROM pg_catalog.pg_class AS c
CROSS JOIN todo_app AS r
CROSS JOIN pg_catalog.unnest(ARRAY['TRUNCATE', 'REFERENCES', 'TRIGGER']) AS privilege
WHERE c.relnamespace IN (SELECT oid FROM user_schemas)
  AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND (pg_catalog.has_table_privilege(r.oid, c.oid, privilege)
       OR (privilege = 'REFERENCES' AND pg_catalog.has_any_column_privilege(r.oid, c.oid, 'REFERENCES')))

UNION ALL
SELECT 'role todo_app is a superuser, so row-level security does not apply to it'
FROM todo_app WHERE rolsuper

UNION ALL
SELECT 'role todo_app has BYPASSRLS, so row-level security does not apply to it'
FROM todo_app WHERE rolbypassrls

-- PostgreSQL 16 separates being a member from being allowed to SET ROLE; before 16 members may.
UNION ALL
SELECT pg_catalog.format('login role %s cannot switch to todo_app: grant todo_app to it', current_user)
FROM todo_app r
WHERE NOT CASE WHEN pg_catalog.current_setting('server_version_num')::int >= 160000
               THEN pg_catalog.pg_has_role(current_user, r.oid, 'SET')
               ELSE pg_catalog.pg_has_role(current_user, r.oid, 'MEMBER') END

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
    -- pg_catalog has @> and = for arrays only as anyarray's: an @>(oid[], oid[]) or =(oid[], oid[]) made
    -- in a schema on the path matches exactly and is picked over them, so comparisons of arrays (here
    -- and below) name pg_catalog's.
    WHERE p.polrelid = t.oid AND (p.polroles OPERATOR(pg_catalog.@>) ARRAY[0::pg_catalog.oid]
                                  OR p.polroles OPERATOR(pg_catalog.@>) ARRAY[t.role_oid])
)

-- Permissive policies are OR-ed together, so one that is simply `true` admits every row.
UNION ALL
SELECT pg_catalog.format('policy "%s" on %s admits every row: %s (true)', polname, polrelid::regclass,
                         CASE WHEN pg_catalog.pg_get_expr(polqual, polrelid) = 'true'
                              THEN 'USING' ELSE 'WITH CHECK' END)
FROM todo_app_policies
WHERE polpermissive
  AND (pg_catalog.pg_get_expr(polqual, polrelid) = 'true'
       OR pg_catalog.pg_get_expr(polwithcheck, polrelid) = 'true')

-- A function a policy calls resolves unqualified names through the caller's search_path, which
-- whoever controls that path can point at objects of their own.
UNION ALL
SELECT pg_catalog.format('function %s, used by policy %s, does not pin its search_path (add SET search_path = '''')',
                         f.oid::regprocedure,
                         pg_catalog.string_agg(pg_catalog.format('"%s" on %s', p.polname, p.polrelid::regclass),
                                               ', ' ORDER BY p.polrelid::regclass::text, p.polname))
FROM pg_catalog.pg_depend d
JOIN pg_catalog.pg_policy p ON d.classid = 'pg_catalog.pg_policy'::regclass::oid AND d.objid = p.oid
JOIN pg_catalog.pg_proc f ON d.refclassid = 'pg_catalog.pg_proc'::regclass::oid AND d.refobjid = f.oid
WHERE NOT EXISTS (SELECT FROM pg_catalog.unnest(f.proconfig) AS setting WHERE pg_catalog.starts_with(setting, 'search_path='))
GROUP BY f.oid

-- A SECURITY DEFINER function runs as its owner, who (on Neon) bypasses row-level security.
UNION ALL
SELECT pg_catalog.format('function %s runs as its owner %s (SECURITY DEFINER) and todo_app may call it',
                         f.oid::regprocedure, pg_catalog.pg_get_userbyid(f.proowner))
FROM pg_catalog.pg_proc f
CROSS JOIN todo_app r
WHERE f.prosecdef
  AND f.pronamespace IN (SELECT oid FROM user_schemas)
  AND pg_catalog.has_function_privilege(r.oid, f.oid, 'EXECUTE')
  AND pg_catalog.has_schema_privilege(r.oid, f.pronamespace, 'USAGE')

-- A view reads its tables with its owner's rights unless it is security_invoker (PostgreSQL 15+).
UNION ALL
SELECT pg_catalog.format('view %s is open to todo_app without security_invoker, so it reads as its owner %s',
                         name, pg_catalog.pg_get_userbyid(relowner))
FROM exposed
WHERE relkind = 'v'
  AND NOT EXISTS (
      SELECT FROM pg_catalog.pg_options_to_table(reloptions)
      WHERE option_name = 'security_invoker' AND option_value::boolean
  )

UNION ALL
SELECT pg_catalog.format('materialized view %s is open to todo_app, and materialized views have no row-level security', name)
FROM exposed
WHERE relkind = 'm'

-- A unique or exclusion check sees every row, past row-level security: a write that collides with
-- a row the writer cannot see fails, and so tells them the value is stored by someone. A key must
-- start with the owner column (user_id; id on public.users, where each user inserts only their own),
-- compared for equality, or with an identity column nobody writes (docs/security.md, "Covert
-- channels"). An expression (indkey 0) or any other first column is a finding.
UNION ALL
SELECT pg_catalog.format('%s %I on %I.%I starts with %s, not the owner: a write that collides with a row '
                         'of another user tells the writer that row exists (make the key start with user_id)',
                         CASE WHEN i.indisexclusion THEN 'exclusion constraint' ELSE 'unique index' END,
                         ic.relname, n.nspname, c.relname,
                         COALESCE(pg_catalog.quote_ident(a.attname::text), 'an expression'))
FROM exposed_tables t
JOIN pg_catalog.pg_class c ON c.oid = t.oid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_index i ON i.indrelid = t.oid
JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = t.oid AND a.attnum = i.indkey[0] AND i.indkey[0] <> 0
WHERE (i.indisunique OR i.indisexclusion)
  AND NOT (
      (a.attname = 'user_id' OR (a.attname = 'id' AND n.nspname = 'public' AND c.relname = 'users'))
      -- An exclusion constraint keeps users apart only if it compares the owner for equality.
      AND (NOT i.indisexclusion
           OR EXISTS (SELECT FROM pg_catalog.pg_constraint con
                      JOIN pg_catalog.pg_operator o ON o.oid = con.conexclop[1]
                      WHERE con.conindid = i.indexrelid AND o.oprname = '='))
      OR a.attidentity = 'a'
  )

-- A foreign key's check sees every row as well: a write whose value names a row of another user is
-- stored, one that names no row is refused, so the writer learns which rows exist. A key must start
-- with the owner column on both sides (user_id, referencing public.users' id or another user_id):
-- the policies fix it to the writer, so the check only ever finds the writer's own rows. This holds
-- on every table todo_app reaches, written by it or, from what it writes, by a trigger.
UNION ALL
SELECT pg_catalog.format('foreign key %I on %I.%I starts with %I and references %I.%I (%I), not the owner: a '
                         'write that names a row of another user tells the writer that row exists '
                         '(make the key start with user_id on both sides)',
                         con.conname, n.nspname, c.relname, a.attname, rn.nspname, rc.relname, ra.attname)
FROM exposed_tables t
JOIN pg_catalog.pg_constraint con ON con.conrelid = t.oid AND con.contype = 'f'
JOIN pg_catalog.pg_class c ON c.oid = con.conrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = con.conkey[1]
JOIN pg_catalog.pg_class rc ON rc.oid = con.confrelid
JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace
JOIN pg_catalog.pg_attribute ra ON ra.attrelid = con.confrelid AND ra.attnum = con.confkey[1]
WHERE NOT (a.attname = 'user_id'
           AND (ra.attname = 'user_id' OR (ra.attname = 'id' AND rn.nspname = 'public' AND rc.relname = 'users')))

-- Whoever can become todo_app can set app.user_id to anyone. Members and holders of ADMIN (who may
-- grant todo_app to themselves), through any chain of roles, are the login role, the database's or
-- schema app's owner (the roles that administer it, docs/security.md "What is trusted"), and login
-- roles made the way `todo-api migrate --login-role` makes them: LOGIN NOINHERIT, nothing more, a
-- member of todo_app alone. Any other is a finding; `todo-api policies` lists them all
-- (sql/audit/todo_app_members.sql). Superusers can become any role and are trusted by definition.
UNION ALL
SELECT pg_catalog.format('role %s can become todo_app (%s), so it can act as any user: revoke it, or serve '
                         'through it as the login role', m.rolname, m.how)
FROM (
    WITH RECURSIVE can_become(role_oid, how) AS (
        SELECT am.member, CASE WHEN am.admin_option THEN 'ADMIN on todo_app' ELSE 'member of todo_app' END
        FROM pg_catalog.pg_auth_members am JOIN todo_app r ON am.roleid = r.oid
        UNION
        SELECT am.member, pg_catalog.format('through %s', pg_catalog.pg_get_userbyid(am.roleid)) COLLATE "default"
        FROM pg_catalog.pg_auth_members am JOIN can_become b ON am.roleid = b.role_oid
    )
    SELECT DISTINCT ON (b.role_oid) b.role_oid, ro.rolname, b.how
    FROM can_become b JOIN pg_catalog.pg_roles ro ON ro.oid = b.role_oid
    ORDER BY b.role_oid, b.how
) AS m
WHERE m.rolname <> session_user
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_database d
                  WHERE d.datname = pg_catalog.current_database() AND d.datdba = m.role_oid)
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_namespace n WHERE n.nspname = 'app' AND n.nspowner = m.role_oid)
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_roles s WHERE s.oid = m.role_oid AND s.rolsuper)
  AND NOT EXISTS (
      SELECT FROM pg_catalog.pg_roles l CROSS JOIN todo_app r
      WHERE l.oid = m.role_oid
        AND l.rolcanlogin AND NOT l.rolinherit AND NOT l.rolsuper AND NOT l.rolbypassrls
        AND NOT l.rolcreaterole AND NOT l.rolcreatedb AND NOT l.rolreplication
        AND (SELECT pg_catalog.array_agg(DISTINCT am.roleid) FROM pg_catalog.pg_auth_members am
             WHERE am.member = l.oid) OPERATOR(pg_catalog.=) ARRAY[r.oid]
        AND NOT EXISTS (SELECT FROM pg_catalog.pg_auth_members am
                        WHERE am.member = l.oid AND am.admin_option)
  );
