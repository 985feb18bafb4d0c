-- Everything the per-request role todo_app can reach a row through, read from the catalogs alone:
-- one row per object, (kind, object, detail). The isolation check compares these rows with
-- sql/checks/expected_reach.json, the same query run on a freshly migrated database (what the shipped
-- migrations and sql/policies/ make); any row added, changed or gone is a finding.
--
-- Derived from the catalogs, not from a list of tricks:
--   - objects made after initdb (oid >= 16384, FirstNormalObjectId) are "ours", in EVERY schema,
--     pg_catalog and information_schema included, whether an extension claims them or not: the
--     owner of a trusted extension can claim anything it owns with ALTER EXTENSION ... ADD, which
--     also records its grants as the extension's initial ones. The shipped migrations create no
--     extension, and the one every database starts with (plpgsql) was made by initdb. Ours are:
--     each relation todo_app or PUBLIC holds any privilege on (per column too), every function
--     with its volatility, leakproofness, strictness, parallel safety and a digest of its body (a
--     trigger runs its function without EXECUTE, so all of them count; an IMMUTABLE identity lets
--     a prepared statement's generic plan keep one caller for everyone after), every operator,
--     cast and collation (an operator named = found first on the search_path, or a column's
--     nondeterministic collation, decides what a WHERE means), every rule, trigger and event
--     trigger, every policy, and row-level security's flags on each table todo_app reaches;
--   - objects initdb made are judged by their privileges: anything granted to todo_app or PUBLIC
--     beyond what pg_init_privs says they came with, and every SECURITY DEFINER function todo_app
--     may call;
--   - todo_app itself: its attributes, the roles it belongs to (pg_read_all_data, another login
--     role, ...), its privileges on every schema and on this database, everything it owns (whatever
--     kind of object), and default privileges that will hand future objects to todo_app or PUBLIC.
-- Other sessions' temporary schemas are left out: todo_app has no USAGE on them, and their objects
-- come and go with those sessions.
-- Owners and grantors are left out: they differ between deployments, the reach does not (a policy
-- for a table's owner names it by what it is).
-- Run with search_path = '' so that names read the same everywhere:
--     PGOPTIONS="-c search_path=" psql "$DATABASE_URL" -f sql/checks/reach.sql

WITH todo_app AS (
    SELECT r.* FROM pg_catalog.pg_roles r WHERE rolname = 'todo_app'
),
relations AS (
    SELECT c.oid, c.relkind, c.relrowsecurity, c.relforcerowsecurity, c.relacl, c.relowner, c.reloptions,
           pg_catalog.format('%I.%I', n.nspname, c.relname) AS name, n.nspname AS schema,
           c.oid >= 16384 AS ours
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
      AND n.nspname NOT LIKE 'pg\_temp\_%' AND n.nspname NOT LIKE 'pg\_toast%'
),
table_privileges AS (
    SELECT unnest AS privilege FROM pg_catalog.unnest(
        ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']
        || CASE WHEN pg_catalog.current_setting('server_version_num')::int >= 170000
                THEN ARRAY['MAINTAIN'] ELSE ARRAY[]::text[] END)
),
-- What todo_app (or PUBLIC, which todo_app always is too) may do with each relation of ours.
granted AS (
    SELECT r.oid, p.privilege AS part, 1 AS position
    FROM relations r CROSS JOIN todo_app a CROSS JOIN table_privileges p
    WHERE r.ours AND r.relkind <> 'S' AND pg_catalog.has_table_privilege(a.oid, r.oid, p.privilege)

    UNION ALL
    SELECT r.oid, p.privilege, 1
    FROM relations r CROSS JOIN todo_app a
    CROSS JOIN pg_catalog.unnest(ARRAY['USAGE', 'SELECT', 'UPDATE']) AS p(privilege)
    WHERE r.ours AND r.relkind = 'S' AND pg_catalog.has_sequence_privilege(a.oid, r.oid, p.privilege)

    UNION ALL
    SELECT r.oid,
           pg_catalog.format('%s (%s)', p.privilege,
                             pg_catalog.string_agg(pg_catalog.quote_ident(c.attname), ', ' ORDER BY c.attnum)),
           2
    FROM relations r CROSS JOIN todo_app a
    JOIN pg_catalog.pg_attribute c ON c.attrelid = r.oid AND c.attnum > 0 AND NOT c.attisdropped
    CROSS JOIN pg_catalog.unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'REFERENCES']) AS p(privilege)
    WHERE r.ours AND r.relkind <> 'S'
      AND NOT pg_catalog.has_table_privilege(a.oid, r.oid, p.privilege)
      AND pg_catalog.has_column_privilege(a.oid, r.oid, c.attnum, p.privilege)
    GROUP BY r.oid, p.privilege
),
reached AS (
    SELECT r.*, g.privileges
    FROM relations r
    JOIN (SELECT oid, pg_catalog.string_agg(part, ', ' ORDER BY position, part) AS privileges
          FROM granted GROUP BY oid) g ON g.oid = r.oid
),
-- NOT MATERIALIZED: inlined where it is used, so that only the functions listed get a signature
-- formatted, not each of the thousands pg_catalog holds (the check's cost: bench.isolation_check).
functions AS NOT MATERIALIZED (
    -- Input argument types only, as DROP FUNCTION names a function: the same text on every version.
    SELECT f.*, pg_catalog.format('%I.%I(%s)', n.nspname, f.proname,
                                  pg_catalog.array_to_string(ARRAY(
                                      SELECT pg_catalog.format_type(t.type, NULL)
                                      FROM pg_catalog.unnest(f.proargtypes::pg_catalog.oid[]) WITH ORDINALITY AS t(type, n)
                                      ORDER BY t.n), ', ')) AS signature,
           f.oid >= 16384 AS ours
    FROM pg_catalog.pg_proc f
    JOIN pg_catalog.pg_namespace n ON n.oid = f.pronamespace
    WHERE n.nspname NOT LIKE 'pg\_temp\_%' AND n.nspname NOT LIKE 'pg\_toast%'
),
-- Grants to todo_app or PUBLIC on objects initdb made, beyond their initial ones. todo_app's oid is
-- read by a subquery rather than from the joined row a (which still leaves nothing when there is no
-- such role): the grantee is then tested on each entry of an ACL before the costlier comparison with
-- its initial privileges, which would otherwise run for every entry (the check's cost:
-- bench.isolation_check).
added_to_system_relations AS (
    SELECT r.name, r.relkind, acl.grantee, acl.privilege_type
    FROM relations r
    CROSS JOIN todo_app a
    CROSS JOIN LATERAL pg_catalog.aclexplode(r.relacl) AS acl
    WHERE NOT r.ours AND acl.grantee IN (0, (SELECT oid FROM todo_app))
      -- information_schema grants SELECT on its views to PUBLIC after initdb records pg_init_privs.
      AND NOT (r.schema = 'information_schema' AND acl.grantee = 0 AND acl.privilege_type = 'SELECT')
      AND NOT EXISTS (
          SELECT FROM pg_catalog.aclexplode(coalesce(
              (SELECT i.initprivs FROM pg_catalog.pg_init_privs i
               WHERE i.classoid = 'pg_catalog.pg_class'::pg_catalog.regclass AND i.objoid = r.oid AND i.objsubid = 0),
              pg_catalog.acldefault(CASE WHEN r.relkind = 'S' THEN 's' ELSE 'r' END::"char", r.relowner))) AS initial
          WHERE initial.grantee = acl.grantee AND initial.privilege_type = acl.privilege_type
      )
),
added_to_system_functions AS (
    SELECT f.signature, acl.grantee, acl.privilege_type
    FROM functions f
    CROSS JOIN todo_app a
    CROSS JOIN LATERAL pg_catalog.aclexplode(f.proacl) AS acl
    WHERE NOT f.ours AND acl.grantee IN (0, (SELECT oid FROM todo_app))
      AND NOT EXISTS (
          SELECT FROM pg_catalog.aclexplode(coalesce(
              (SELECT i.initprivs FROM pg_catalog.pg_init_privs i
               WHERE i.classoid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND i.objoid = f.oid AND i.objsubid = 0),
              pg_catalog.acldefault('f', f.proowner))) AS initial
          WHERE initial.grantee = acl.grantee AND initial.privilege_type = acl.privilege_type
      )
)

SELECT 'role' AS kind, 'todo_app' AS object,
       pg_catalog.concat_ws(' ',
           CASE WHEN rolsuper THEN 'SUPERUSER' ELSE 'NOSUPERUSER' END,
           CASE WHEN rolbypassrls THEN 'BYPASSRLS' ELSE 'NOBYPASSRLS' END,
           CASE WHEN rolcanlogin THEN 'LOGIN' ELSE 'NOLOGIN' END,
           CASE WHEN rolinherit THEN 'INHERIT' ELSE 'NOINHERIT' END,
           CASE WHEN rolcreaterole THEN 'CREATEROLE' ELSE 'NOCREATEROLE' END,
           CASE WHEN rolcreatedb THEN 'CREATEDB' ELSE 'NOCREATEDB' END,
           CASE WHEN rolreplication THEN 'REPLICATION' ELSE 'NOREPLICATION' END) AS detail
FROM todo_app

UNION ALL
SELECT 'membership', pg_catalog.format('todo_app in %I', m.rolname),
       'todo_app may act as this role and use everything it may'
FROM pg_catalog.pg_auth_members am
JOIN todo_app a ON am.member = a.oid
JOIN pg_catalog.pg_roles m ON m.oid = am.roleid
GROUP BY m.rolname

UNION ALL
SELECT 'schema', pg_catalog.quote_ident(n.nspname),
       pg_catalog.concat_ws(', ',
           CASE WHEN pg_catalog.has_schema_privilege(a.oid, n.oid, 'USAGE') THEN 'USAGE' END,
           CASE WHEN pg_catalog.has_schema_privilege(a.oid, n.oid, 'CREATE') THEN 'CREATE' END)
FROM pg_catalog.pg_namespace n CROSS JOIN todo_app a
WHERE n.nspname NOT LIKE 'pg\_temp\_%' AND n.nspname NOT LIKE 'pg\_toast%'
  AND (pg_catalog.has_schema_privilege(a.oid, n.oid, 'USAGE')
       OR pg_catalog.has_schema_privilege(a.oid, n.oid, 'CREATE'))

-- CREATE on the database lets todo_app make schemas, and one named todo_app comes first on the
-- default search_path ("$user", public), which requests no longer use (they name every table with its
-- schema, under an empty search_path) but a DBA's session and the migrations do. CONNECT and
-- TEMPORARY are left out: todo_app cannot log in, a temporary object is seen by its own session only,
-- and deployments differ in whether PUBLIC keeps them.
UNION ALL
SELECT 'database', '(this database)', 'CREATE'
FROM todo_app a
WHERE pg_catalog.has_database_privilege(a.oid, pg_catalog.current_database(), 'CREATE')

-- An owner may alter, grant and drop what it owns whatever its privileges say: a function todo_app
-- may call anyway (app.current_user_id(), made IMMUTABLE or given a SET of app.user_id) looks the same
-- above whoever owns it. The migrations make todo_app own nothing. pg_shdepend records every owner,
-- of any kind of object; the database itself is recorded there as a shared object. Other sessions'
-- temporary objects are left out, as everywhere here.
UNION ALL
SELECT 'owned by todo_app', pg_catalog.format('%s %s', o.type, o.identity),
       'todo_app may alter, grant or drop it, whatever its privileges say'
FROM pg_catalog.pg_shdepend d
JOIN todo_app a ON d.refclassid = 'pg_catalog.pg_authid'::pg_catalog.regclass AND d.refobjid = a.oid
JOIN pg_catalog.pg_database db ON db.datname = pg_catalog.current_database()
CROSS JOIN LATERAL pg_catalog.pg_identify_object(d.classid, d.objid, d.objsubid) AS o
WHERE d.deptype = 'o'
  AND (d.dbid = db.oid OR (d.classid = 'pg_catalog.pg_database'::pg_catalog.regclass AND d.objid = db.oid))
  AND coalesce(o.schema, '') NOT LIKE 'pg\_temp\_%' AND coalesce(o.schema, '') NOT LIKE 'pg\_toast%'

UNION ALL
SELECT CASE relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'f' THEN 'foreign table'
                    WHEN 'S' THEN 'sequence' ELSE 'table' END,
       name,
       privileges || CASE WHEN relkind IN ('v', 'm')
                          THEN pg_catalog.format('; %sdefinition md5 %s',
                              CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_options_to_table(reloptions)
                                                WHERE option_name = 'security_invoker' AND option_value::boolean)
                                   THEN 'security_invoker; ' ELSE '' END,
                              pg_catalog.md5(pg_catalog.pg_get_viewdef(oid)))
                          ELSE '' END
FROM reached

UNION ALL
SELECT 'row level security', name,
       CASE WHEN NOT relrowsecurity THEN 'disabled'
            WHEN relforcerowsecurity THEN 'enabled, forced' ELSE 'enabled, not forced' END
FROM reached
WHERE relkind IN ('r', 'p')

UNION ALL
SELECT 'granted beyond PostgreSQL''s own',
       pg_catalog.format('%s %s', CASE relkind WHEN 'S' THEN 'sequence' WHEN 'v' THEN 'view' ELSE 'relation' END, name),
       pg_catalog.string_agg(pg_catalog.format('%s to %s', privilege_type,
                                               CASE WHEN grantee = 0 THEN 'PUBLIC' ELSE 'todo_app' END),
                             ', ' ORDER BY privilege_type, grantee)
FROM added_to_system_relations
GROUP BY relkind, name

UNION ALL
SELECT 'granted beyond PostgreSQL''s own', pg_catalog.format('function %s', signature),
       pg_catalog.string_agg(pg_catalog.format('%s to %s', privilege_type,
                                               CASE WHEN grantee = 0 THEN 'PUBLIC' ELSE 'todo_app' END),
                             ', ' ORDER BY privilege_type, grantee)
FROM added_to_system_functions
GROUP BY signature

-- A function's owner and oid differ between deployments; what it does and who may call it do not.
UNION ALL
SELECT CASE f.prokind WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate' WHEN 'w' THEN 'window function'
                      ELSE 'function' END,
       f.signature,
       pg_catalog.concat_ws('; ',
           CASE WHEN f.prosecdef THEN 'SECURITY DEFINER' ELSE 'SECURITY INVOKER' END,
           CASE WHEN pg_catalog.has_function_privilege(a.oid, f.oid, 'EXECUTE')
                THEN 'todo_app may call it' ELSE 'todo_app may not call it' END,
           CASE f.provolatile WHEN 'i' THEN 'IMMUTABLE' WHEN 's' THEN 'STABLE' ELSE 'VOLATILE' END,
           CASE WHEN f.proleakproof THEN 'LEAKPROOF' ELSE 'NOT LEAKPROOF' END,
           CASE WHEN f.proisstrict THEN 'STRICT' ELSE 'CALLED ON NULL INPUT' END,
           CASE f.proparallel WHEN 's' THEN 'PARALLEL SAFE' WHEN 'r' THEN 'PARALLEL RESTRICTED'
                              ELSE 'PARALLEL UNSAFE' END,
           'language ' || l.lanname,
           'returns ' || pg_catalog.pg_get_function_result(f.oid),
           pg_catalog.array_to_string(f.proconfig, ', '),
           'body md5 ' || pg_catalog.md5(coalesce(f.prosrc, '') || coalesce(f.probin, '')))
FROM functions f
JOIN pg_catalog.pg_language l ON l.oid = f.prolang
CROSS JOIN todo_app a
WHERE f.ours
   OR (f.prosecdef AND pg_catalog.has_function_privilege(a.oid, f.oid, 'EXECUTE'))

-- An operator or a cast runs its function as whoever wrote the expression, and is chosen by name and
-- types alone: `user_id = $1::varchar` takes an exact (text, varchar) match in public over
-- pg_catalog's text = text. Named as DROP OPERATOR and DROP CAST name them.
UNION ALL
SELECT 'operator',
       pg_catalog.format('%I.%s(%s, %s)', n.nspname, o.oprname,
                         CASE WHEN o.oprleft = 0 THEN 'NONE' ELSE pg_catalog.format_type(o.oprleft, NULL) END,
                         pg_catalog.format_type(o.oprright, NULL)),
       pg_catalog.concat_ws('; ',
           CASE WHEN o.oprcode = 0 THEN 'no function (a shell)'
                ELSE pg_catalog.format('function %s, %s', o.oprcode::pg_catalog.regprocedure,
                         CASE WHEN pg_catalog.has_function_privilege(a.oid, o.oprcode, 'EXECUTE')
                              THEN 'todo_app may call it' ELSE 'todo_app may not call it' END) END,
           'returns ' || pg_catalog.format_type(o.oprresult, NULL),
           CASE WHEN o.oprcom <> 0 THEN 'commutator ' || o.oprcom::pg_catalog.regoperator END,
           CASE WHEN o.oprnegate <> 0 THEN 'negator ' || o.oprnegate::pg_catalog.regoperator END)
FROM pg_catalog.pg_operator o
JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace
CROSS JOIN todo_app a
WHERE o.oid >= 16384 AND n.nspname NOT LIKE 'pg\_temp\_%' AND n.nspname NOT LIKE 'pg\_toast%'

UNION ALL
SELECT 'cast',
       pg_catalog.format('(%s AS %s)', pg_catalog.format_type(c.castsource, NULL),
                         pg_catalog.format_type(c.casttarget, NULL)),
       pg_catalog.concat_ws('; ',
           CASE c.castmethod WHEN 'f' THEN pg_catalog.format('WITH FUNCTION %s, %s',
                                               c.castfunc::pg_catalog.regprocedure,
                                               CASE WHEN pg_catalog.has_function_privilege(a.oid, c.castfunc, 'EXECUTE')
                                                    THEN 'todo_app may call it' ELSE 'todo_app may not call it' END)
                             WHEN 'i' THEN 'WITH INOUT' ELSE 'WITHOUT FUNCTION' END,
           CASE c.castcontext WHEN 'i' THEN 'AS IMPLICIT' WHEN 'a' THEN 'AS ASSIGNMENT' ELSE 'explicit only' END)
FROM pg_catalog.pg_cast c
CROSS JOIN todo_app a
WHERE c.oid >= 16384

-- A column compares with its own collation, over the default one of the value it is compared with: a
-- nondeterministic collation (ICU's und-u-ks-level2, say) on user_id would make the policies' `user_id
-- = the caller's id` admit 'ALICE' to alice's rows. Every collation made after initdb counts.
UNION ALL
SELECT 'collation', pg_catalog.format('%I.%I', n.nspname, c.collname),
       pg_catalog.concat_ws('; ',
           CASE c.collprovider WHEN 'i' THEN 'provider icu' WHEN 'b' THEN 'provider builtin'
                               WHEN 'c' THEN 'provider libc' ELSE 'the database''s provider' END,
           CASE WHEN c.collisdeterministic THEN 'deterministic' ELSE 'NONDETERMINISTIC' END)
FROM pg_catalog.pg_collation c
JOIN pg_catalog.pg_namespace n ON n.oid = c.collnamespace
WHERE c.oid >= 16384 AND n.nspname NOT LIKE 'pg\_temp\_%' AND n.nspname NOT LIKE 'pg\_toast%'

UNION ALL
SELECT 'policy', pg_catalog.format('%s "%s"', r.name, p.polname),
       pg_catalog.format('%s %s TO %s USING %s WITH CHECK %s',
           CASE WHEN p.polpermissive THEN 'PERMISSIVE' ELSE 'RESTRICTIVE' END,
           CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE'
                         WHEN 'd' THEN 'DELETE' ELSE 'ALL' END,
           -- The table's owner is named by its place, not its name: the role that migrates is
           -- neondb_owner on Neon and another name elsewhere, and the shipped state is the same.
           (SELECT pg_catalog.string_agg(CASE WHEN g = 0 THEN 'public'
                                              WHEN g = r.relowner THEN '(the table''s owner)'
                                              ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(g)) END,
                                         ', ' ORDER BY 1)
            FROM pg_catalog.unnest(p.polroles) AS g),
           coalesce(pg_catalog.pg_get_expr(p.polqual, p.polrelid), '(none)'),
           coalesce(pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid), '(none)'))
FROM pg_catalog.pg_policy p
JOIN relations r ON r.oid = p.polrelid

UNION ALL
SELECT 'rule', pg_catalog.format('%s "%s"', r.name, w.rulename), pg_catalog.pg_get_ruledef(w.oid)
FROM pg_catalog.pg_rewrite w
JOIN relations r ON r.oid = w.ev_class
WHERE w.oid >= 16384 AND w.rulename <> '_RETURN'

UNION ALL
SELECT 'trigger', pg_catalog.format('%s "%s"', r.name, t.tgname),
       pg_catalog.format('%s%s', pg_catalog.pg_get_triggerdef(t.oid),
                         CASE t.tgenabled WHEN 'D' THEN ' (disabled)' WHEN 'R' THEN ' (on replica only)'
                                          WHEN 'A' THEN ' (always)' ELSE '' END)
FROM pg_catalog.pg_trigger t
JOIN relations r ON r.oid = t.tgrelid
WHERE NOT t.tgisinternal

UNION ALL
SELECT 'event trigger', pg_catalog.quote_ident(e.evtname),
       pg_catalog.format('on %s runs %s', e.evtevent, e.evtfoid::pg_catalog.regprocedure)
FROM pg_catalog.pg_event_trigger e

-- Large objects belong to no table and no policy governs them: whoever may read one reads it whole,
-- and anything can be copied into one (the PG 18 probe of stop 83). The migrations make none. Found by
-- EXISTS, their ACL shown as it is: an aggregate of each one's grants, as for default privileges
-- below, took a quarter more of the check's CPU (python -m bench.isolation_check).
UNION ALL
SELECT 'large object', l.oid::pg_catalog.text, pg_catalog.array_to_string(l.lomacl, ', ')
FROM pg_catalog.pg_largeobject_metadata l
WHERE EXISTS (SELECT FROM pg_catalog.aclexplode(l.lomacl) AS acl
              WHERE acl.grantee = 0 OR acl.grantee = (SELECT oid FROM todo_app))

-- Future objects: ALTER DEFAULT PRIVILEGES that will grant them to todo_app or PUBLIC. Without any
-- row, functions are executable by PUBLIC and types usable by it; that default is left out.
UNION ALL
SELECT 'default privileges',
       pg_catalog.format('on future %s %s',
           CASE d.defaclobjtype WHEN 'r' THEN 'tables' WHEN 'S' THEN 'sequences' WHEN 'f' THEN 'functions'
                                WHEN 'T' THEN 'types' WHEN 'n' THEN 'schemas' ELSE 'large objects' END,
           CASE WHEN d.defaclnamespace = 0 THEN 'in every schema'
                ELSE pg_catalog.format('in schema %I', n.nspname) END),
       pg_catalog.string_agg(DISTINCT pg_catalog.format('%s to %s', acl.privilege_type,
                                                        CASE WHEN acl.grantee = 0 THEN 'PUBLIC' ELSE 'todo_app' END),
                             ', ')
FROM pg_catalog.pg_default_acl d
LEFT JOIN pg_catalog.pg_namespace n ON n.oid = d.defaclnamespace
CROSS JOIN todo_app a
CROSS JOIN LATERAL pg_catalog.aclexplode(d.defaclacl) AS acl
WHERE acl.grantee IN (0, a.oid)
  AND NOT (d.defaclnamespace = 0 AND acl.grantee = 0
           AND (d.defaclobjtype, acl.privilege_type) IN (('f', 'EXECUTE'), ('T', 'USAGE')))
GROUP BY d.defaclobjtype, d.defaclnamespace, n.nspname

ORDER BY kind, object;
