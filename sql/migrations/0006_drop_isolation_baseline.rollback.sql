-- Puts back what 0004_isolation_baseline.sql made; the baseline is recorded again by the
-- post-apply step of a `todo-api migrate` run with the code of that time.

-- How a policy reads in the catalog, as Postgres normalises it (the columns of sql/audit/policies.sql).
CREATE VIEW app.policy_catalog AS
SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) AS table_name,
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
       pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) AS with_check_expression,
       -- Granted to PUBLIC, to todo_app, or to a role todo_app belongs to.
       EXISTS (
           SELECT FROM pg_catalog.unnest(p.polroles) AS granted(role_oid), pg_catalog.pg_roles AS app
           WHERE app.rolname = 'todo_app'
             AND (granted.role_oid = 0 OR pg_catalog.pg_has_role(app.oid, granted.role_oid, 'MEMBER'))
       ) AS applies_to_todo_app
FROM pg_catalog.pg_policy AS p
JOIN pg_catalog.pg_class AS c ON c.oid = p.polrelid
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace;

-- Every function and procedure of schema app, as CREATE OR REPLACE would recreate it.
CREATE VIEW app.function_catalog AS
SELECT p.oid::pg_catalog.regprocedure::text AS signature,
       pg_catalog.pg_get_functiondef(p.oid) AS definition
FROM pg_catalog.pg_proc AS p
WHERE p.pronamespace = 'app'::pg_catalog.regnamespace
  AND p.prokind IN ('f', 'p');

CREATE TABLE app.policy_baseline (
    table_name            text   NOT NULL,
    name                  text   NOT NULL,
    kind                  text   NOT NULL,
    command               text   NOT NULL,
    roles                 text[] NOT NULL,
    using_expression      text,
    with_check_expression text,
    PRIMARY KEY (table_name, name)
);

CREATE TABLE app.function_baseline (
    signature  text PRIMARY KEY,
    definition text NOT NULL
);

CREATE TABLE app.policy_file_baseline (
    file       text PRIMARY KEY,
    sha256     text NOT NULL,
    table_name text NOT NULL
);

REVOKE ALL ON app.policy_catalog, app.function_catalog, app.policy_baseline, app.function_baseline,
              app.policy_file_baseline FROM PUBLIC;

-- policy_files: {"sql/policies/tasks.sql": {"sha256": "...", "table": "public.tasks"}, ...}
CREATE PROCEDURE app.record_isolation_baseline(policy_files jsonb)
    LANGUAGE plpgsql
    SET search_path = ''
AS $$
BEGIN
    DELETE FROM app.policy_file_baseline;
    INSERT INTO app.policy_file_baseline (file, sha256, table_name)
        SELECT f.key, f.value ->> 'sha256', f.value ->> 'table'
        FROM pg_catalog.jsonb_each(policy_files) AS f;

    DELETE FROM app.policy_baseline;
    INSERT INTO app.policy_baseline
        SELECT table_name, name, kind, command, roles, using_expression, with_check_expression
        FROM app.policy_catalog
        WHERE table_name IN (SELECT table_name FROM app.policy_file_baseline);

    DELETE FROM app.function_baseline;
    INSERT INTO app.function_baseline SELECT signature, definition FROM app.function_catalog;
END
$$;
REVOKE EXECUTE ON PROCEDURE app.record_isolation_baseline(jsonb) FROM PUBLIC;
