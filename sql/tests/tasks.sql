-- Row-level security on public.tasks, proved from SQL: for every command, the owner can and anyone
-- else cannot. Identities are switched the way the API switches them, inside one transaction that
-- is rolled back at the end, so this can run against any migrated database (a Neon branch, say):
--
--     psql "${MIGRATION_DATABASE_URL:-$DATABASE_URL}" -X -v ON_ERROR_STOP=1 -f sql/tests/tasks.sql
--
-- Every line of output is `ok - ...`; the first failure stops with `ERROR: not ok - ...` (exit 3).
-- Statements an attacker would try are run without a WHERE on user_id where that matters: only then
-- does each command's own policy, and not the SELECT policy alone, decide what they touch.

\set QUIET 1
BEGIN;
\ir lib/assert.sql

-- The API does set_config('role', 'todo_app', true), which is SET LOCAL ROLE todo_app.
SET LOCAL ROLE todo_app;

-- Alice and Bob each create their user row and one task, through the policies.
SELECT '# acting as ' || set_config('app.user_id', 'sqltest-alice', true);
INSERT INTO public.users (id, name) VALUES ('sqltest-alice', 'Alice');
SELECT pg_temp.is(
    pg_temp.row_count($$INSERT INTO public.tasks (user_id, title) VALUES ('sqltest-alice', 'alice task')$$),
    1::bigint, 'INSERT: alice creates her own task');

SELECT '# acting as ' || set_config('app.user_id', 'sqltest-bob', true);
INSERT INTO public.users (id, name) VALUES ('sqltest-bob', 'Bob');
INSERT INTO public.tasks (user_id, title) VALUES ('sqltest-bob', 'bob task');

-- SELECT
SELECT pg_temp.is(
    (SELECT count(*) FROM public.tasks WHERE user_id = 'sqltest-alice'), 0::bigint,
    'SELECT: bob cannot see alice''s task');
SELECT pg_temp.is(
    (SELECT array_agg(title) FROM public.tasks), ARRAY['bob task'],
    'SELECT: bob sees his own task and nothing else');

-- INSERT
SELECT pg_temp.throws(
    $$INSERT INTO public.tasks (user_id, title) VALUES ('sqltest-alice', 'planted by bob')$$,
    '42501', 'new row violates row-level security policy',
    'INSERT: bob cannot create a task in alice''s name');
SELECT pg_temp.throws(
    $$INSERT INTO public.tasks (id, user_id, title) OVERRIDING SYSTEM VALUE VALUES (999999, 'sqltest-bob', 'x')$$,
    '42501', 'permission denied',
    'INSERT: bob cannot choose a task id');
-- The database holds a title to the API's rules (0007_deleted_means_gone.sql): trimmed as Python's
-- str.strip() trims, so not only of spaces, and not empty.
SELECT pg_temp.throws(
    $$INSERT INTO public.tasks (user_id, title) VALUES ('sqltest-bob', E'\u3000padded\u00a0')$$,
    '23514', 'tasks_title_trimmed',
    'INSERT: nobody stores an untrimmed title, whatever the whitespace');
SELECT pg_temp.throws(
    $$INSERT INTO public.tasks (user_id, title) VALUES ('sqltest-bob', E'\t')$$,
    '23514', 'tasks_title_trimmed',
    'INSERT: nobody stores a title of whitespace only');

-- UPDATE
SELECT pg_temp.is(
    pg_temp.row_count($$UPDATE public.tasks SET title = 'changed by bob' WHERE user_id = 'sqltest-alice'$$),
    0::bigint, 'UPDATE: bob cannot change alice''s task by naming her');
SELECT pg_temp.is(
    pg_temp.row_count($$UPDATE public.tasks SET completed = true$$),
    1::bigint, 'UPDATE: bob''s update of every task changes only his own');
SELECT pg_temp.throws(
    $$UPDATE public.tasks SET user_id = 'sqltest-alice'$$,
    '42501', 'permission denied',
    'UPDATE: bob cannot hand his task to alice (user_id is not writable)');

-- DELETE
SELECT pg_temp.is(
    pg_temp.row_count($$DELETE FROM public.tasks WHERE user_id = 'sqltest-alice'$$),
    0::bigint, 'DELETE: bob cannot delete alice''s task by naming her');
SELECT pg_temp.is(
    pg_temp.row_count($$DELETE FROM public.tasks$$),
    1::bigint, 'DELETE: bob''s delete of every task deletes only his own');

-- Nobody: a transaction that never said whose it is, or said '' (what the setting reads as on a
-- pooled connection after an earlier transaction set it), sees and changes nothing, while Alice's
-- task is there to be seen.
SELECT '# acting as nobody' || set_config('app.user_id', '', true);
SELECT pg_temp.is((SELECT count(*) FROM public.tasks), 0::bigint, 'SELECT: nobody sees no task');
SELECT pg_temp.throws(
    $$INSERT INTO public.tasks (user_id, title) VALUES ('sqltest-alice', 'anonymous')$$,
    '42501', 'new row violates row-level security policy',
    'INSERT: nobody cannot create a task');
SELECT pg_temp.is(pg_temp.row_count($$UPDATE public.tasks SET completed = true$$), 0::bigint,
    'UPDATE: nobody changes no task');
SELECT pg_temp.is(pg_temp.row_count($$DELETE FROM public.tasks$$), 0::bigint,
    'DELETE: nobody deletes no task');

-- Alice's task came through all of that untouched, and she can change and delete it.
SELECT '# acting as ' || set_config('app.user_id', 'sqltest-alice', true);
SELECT pg_temp.is(
    (SELECT array_agg(format('%s/%s', title, completed::text)) FROM public.tasks), ARRAY['alice task/false'],
    'SELECT: alice sees her task, unchanged by bob and nobody');
SELECT pg_temp.is(
    pg_temp.row_count($$UPDATE public.tasks SET title = 'alice task, renamed', completed = true$$),
    1::bigint, 'UPDATE: alice changes her own task');
SELECT pg_temp.is(
    pg_temp.row_count($$DELETE FROM public.tasks$$),
    1::bigint, 'DELETE: alice deletes her own task');

ROLLBACK;
