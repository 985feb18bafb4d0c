-- What changed since `todo-api migrate` recorded the isolation baseline
-- (sql/migrations/0004_isolation_baseline.sql): policies on the tables sql/policies/ governs, or on
-- any table if they apply to todo_app, that were added, dropped or altered by hand; and functions
-- of schema app that were added, dropped or replaced. It reads the catalogs and the baseline only.
--     psql "$DATABASE_URL" -f sql/checks/drift.sql
-- Each row is one finding, with the table and policy it is about (when it is about one).

WITH live AS (
    SELECT * FROM app.policy_catalog
    WHERE applies_to_todo_app OR table_name IN (SELECT table_name FROM app.policy_file_baseline)
),
recorded AS (
    SELECT * FROM app.policy_baseline
)
SELECT pg_catalog.format('policy "%s" on %s is live but was not applied by todo-api migrate', l.name, l.table_name)
           AS finding,
       l.table_name, l.name AS policy
FROM live AS l
WHERE NOT EXISTS (SELECT FROM recorded AS r WHERE r.table_name = l.table_name AND r.name = l.name)

UNION ALL
SELECT pg_catalog.format('policy "%s" on %s was applied by todo-api migrate but is not live', r.name, r.table_name),
       r.table_name, r.name
FROM recorded AS r
WHERE NOT EXISTS (SELECT FROM live AS l WHERE l.table_name = r.table_name AND l.name = r.name)

UNION ALL
SELECT pg_catalog.format('policy "%s" on %s changed since todo-api migrate applied it: it is %s %s TO %s USING %s WITH CHECK %s',
                         l.name, l.table_name, l.kind, l.command, pg_catalog.array_to_string(l.roles, ', '),
                         coalesce(l.using_expression, '(none)'), coalesce(l.with_check_expression, '(none)')),
       l.table_name, l.name
FROM live AS l
JOIN recorded AS r ON r.table_name = l.table_name AND r.name = l.name
WHERE (l.kind, l.command, l.roles, l.using_expression, l.with_check_expression)
      IS DISTINCT FROM (r.kind, r.command, r.roles, r.using_expression, r.with_check_expression)

UNION ALL
SELECT pg_catalog.format('function %s was not created by todo-api migrate', f.signature), NULL, NULL
FROM app.function_catalog AS f
WHERE NOT EXISTS (SELECT FROM app.function_baseline AS b WHERE b.signature = f.signature)

UNION ALL
SELECT pg_catalog.format('function %s was created by todo-api migrate but is gone', b.signature), NULL, NULL
FROM app.function_baseline AS b
WHERE NOT EXISTS (SELECT FROM app.function_catalog AS f WHERE f.signature = b.signature)

UNION ALL
SELECT pg_catalog.format('function %s was replaced since todo-api migrate created it', f.signature), NULL, NULL
FROM app.function_catalog AS f
JOIN app.function_baseline AS b ON b.signature = f.signature
WHERE f.definition IS DISTINCT FROM b.definition;
