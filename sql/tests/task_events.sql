-- Row-level security on public.task_events, proved from SQL: a user sees their own events only,
-- nobody writes, changes or removes an event directly, and the trigger on public.tasks writes one
-- event per real change, in order. Identities are switched the way the API switches them, inside
-- one transaction that is rolled back at the end:
--
--     psql "$DATABASE_URL" -X -v ON_ERROR_STOP=1 -f sql/tests/task_events.sql
--
-- Every line of output is `ok - ...`; the first failure stops with `ERROR: not ok - ...` (exit 3).

\set QUIET 1
BEGIN;
\ir lib/assert.sql

SET LOCAL ROLE todo_app;

-- Alice creates, renames, renames to the same title, completes and deletes a task.
SELECT '# acting as ' || set_config('app.user_id', 'sqltest-alice', true);
INSERT INTO public.users (id) VALUES ('sqltest-alice');
INSERT INTO public.tasks (user_id, title) VALUES ('sqltest-alice', 'first');
UPDATE public.tasks SET title = 'renamed' WHERE title = 'first';
UPDATE public.tasks SET title = 'renamed', completed = false WHERE title = 'renamed';
UPDATE public.tasks SET completed = true WHERE title = 'renamed';
DELETE FROM public.tasks WHERE title = 'renamed';

-- Bob writes one task of his own.
SELECT '# acting as ' || set_config('app.user_id', 'sqltest-bob', true);
INSERT INTO public.users (id) VALUES ('sqltest-bob');
INSERT INTO public.tasks (user_id, title) VALUES ('sqltest-bob', 'bob''s');

-- SELECT
SELECT pg_temp.is(
    (SELECT count(*) FROM public.task_events WHERE user_id = 'sqltest-alice'), 0::bigint,
    'SELECT: bob cannot see alice''s events');
SELECT pg_temp.is(
    (SELECT array_agg(kind || ' ' || (task ->> 'title')) FROM public.task_events), ARRAY['task.created bob''s'],
    'SELECT: bob sees the event of his own write, and nothing else');

SELECT '# acting as ' || set_config('app.user_id', 'sqltest-alice', true);
SELECT pg_temp.is(
    (SELECT array_agg(kind || ' ' || coalesce(task ->> 'title', '') || ' ' || coalesce(task ->> 'completed', '')
                      ORDER BY id)
     FROM public.task_events),
    ARRAY['task.created first false', 'task.updated renamed false', 'task.updated renamed true', 'task.deleted  '],
    'SELECT: alice sees one event per real change of hers, in order, and none for the write that changed nothing');
SELECT pg_temp.is(
    (SELECT count(DISTINCT task_id) FROM public.task_events), 1::bigint,
    'SELECT: every one of alice''s events names her one task');

-- INSERT
SELECT pg_temp.throws(
    $$INSERT INTO public.task_events (user_id, kind, task_id, task)
      VALUES ('sqltest-alice', 'task.created', 1, '{}')$$,
    '42501', 'permission denied',
    'INSERT: nobody, not even its owner, writes an event directly');

-- UPDATE
SELECT pg_temp.throws(
    $$UPDATE public.task_events SET task = '{"title": "forged"}'$$,
    '42501', 'permission denied',
    'UPDATE: nobody, not even its owner, changes an event');

-- DELETE
SELECT pg_temp.throws(
    $$DELETE FROM public.task_events$$,
    '42501', 'permission denied',
    'DELETE: nobody, not even its owner, removes an event (only the trigger purges)');

-- Nobody sees any event.
SELECT '# acting as nobody' || set_config('app.user_id', '', true);
SELECT pg_temp.is((SELECT count(*) FROM public.task_events), 0::bigint, 'SELECT: nobody sees no event');

-- The purge keeps at most app.max_tasks_per_user events of a user, the newest, and only theirs.
SELECT '# acting as ' || set_config('app.user_id', 'sqltest-alice', true);
SELECT set_config('app.max_tasks_per_user', '2', true) IS NOT NULL AS quiet \gset
INSERT INTO public.tasks (user_id, title) VALUES ('sqltest-alice', 'one');
UPDATE public.tasks SET title = 'two';
UPDATE public.tasks SET title = 'three';
SELECT pg_temp.is(
    (SELECT array_agg(task ->> 'title' ORDER BY id) FROM public.task_events), ARRAY['two', 'three'],
    'DELETE: alice''s writes past the bound purge her oldest events');
SELECT '# acting as ' || set_config('app.user_id', 'sqltest-bob', true);
SELECT pg_temp.is(
    (SELECT count(*) FROM public.task_events), 1::bigint,
    'DELETE: alice''s purge leaves bob''s events alone');

ROLLBACK;
