-- Row-level security on public.task_event_purges, proved from SQL: when the trigger on public.tasks
-- purges a user's events, the newest event id it removed is recorded for that user, who alone sees
-- the record, and nobody writes, changes or removes a record directly. A stream resumes from
-- `Last-Event-ID: 0` only while its user has no record (api/events/queries.py). Identities are
-- switched the way the API switches them, inside one transaction that is rolled back at the end.
-- Run it as the migrating role (Neon's owner, or the embedded database's, which does not bypass
-- row-level security):
--
--     psql "${MIGRATION_DATABASE_URL:-$DATABASE_URL}" -X -v ON_ERROR_STOP=1 -f sql/tests/task_event_purges.sql
--
-- Every line of output is `ok - ...`; the first failure stops with `ERROR: not ok - ...` (exit 3).

\set QUIET 1
BEGIN;
\ir lib/assert.sql

SET LOCAL ROLE todo_app;

-- Bob writes one task: nothing of his is purged.
SELECT '# acting as ' || set_config('app.user_id', 'sqltest-bob', true);
SELECT set_config('app.max_tasks_per_user', '2', true) IS NOT NULL AS quiet \gset
INSERT INTO public.users (id) VALUES ('sqltest-bob');
INSERT INTO public.tasks (user_id, title) VALUES ('sqltest-bob', 'bob''s');

-- Alice writes three events where two are kept: her third write purges her first.
SELECT '# acting as ' || set_config('app.user_id', 'sqltest-alice', true);
SELECT set_config('app.max_tasks_per_user', '2', true) IS NOT NULL AS quiet \gset
INSERT INTO public.users (id) VALUES ('sqltest-alice');
SELECT pg_temp.is((SELECT count(*) FROM public.task_event_purges), 0::bigint,
                  'SELECT: before any purge, alice has no record');
INSERT INTO public.tasks (user_id, title) VALUES ('sqltest-alice', 'one');
SELECT max(id) AS first_event FROM public.task_events \gset
UPDATE public.tasks SET title = 'two';
UPDATE public.tasks SET title = 'three';

-- SELECT
SELECT pg_temp.is(
    (SELECT array_agg(user_id || ' ' || purged_through) FROM public.task_event_purges),
    ARRAY['sqltest-alice ' || :first_event],
    'SELECT: alice sees the record of her purge, up to the event it removed');
SELECT '# acting as ' || set_config('app.user_id', 'sqltest-bob', true);
SELECT pg_temp.is((SELECT count(*) FROM public.task_event_purges), 0::bigint,
                  'SELECT: bob cannot see alice''s record, and has none of his own');
SELECT '# acting as nobody' || set_config('app.user_id', '', true);
SELECT pg_temp.is((SELECT count(*) FROM public.task_event_purges), 0::bigint, 'SELECT: nobody sees no record');

-- A later purge raises the record.
SELECT '# acting as ' || set_config('app.user_id', 'sqltest-alice', true);
SELECT min(id) AS second_event FROM public.task_events \gset
UPDATE public.tasks SET title = 'four';
SELECT pg_temp.is(
    (SELECT purged_through FROM public.task_event_purges), :second_event::bigint,
    'UPDATE: alice''s next purge raises her record to the event it removed');

-- INSERT, UPDATE, DELETE
SELECT pg_temp.throws(
    $$INSERT INTO public.task_event_purges (user_id, purged_through) VALUES ('sqltest-bob', 1)$$,
    '42501', 'permission denied',
    'INSERT: nobody records a purge directly');
SELECT pg_temp.throws(
    $$UPDATE public.task_event_purges SET purged_through = 0$$,
    '42501', 'permission denied',
    'UPDATE: nobody lowers a record, not even its user');
SELECT pg_temp.throws(
    $$DELETE FROM public.task_event_purges$$,
    '42501', 'permission denied',
    'DELETE: nobody removes a record, not even its user');

ROLLBACK;
