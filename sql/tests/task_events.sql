-- Row-level security on public.task_events, proved from SQL: a user sees their own events only,
-- nobody writes, changes or removes an event directly, and the trigger on public.tasks writes one
-- event per real change, in order, and purges a user's oldest only when there is something to
-- purge; anyone's write purges every user's expired events. Identities are switched the way the API
-- switches them, inside one transaction that is rolled back at the end. Run it as the migrating role
-- (Neon's owner, or the embedded database's, which does not bypass row-level security), which also
-- makes events old by hand and reads the purge's bookkeeping:
--
--     psql "${MIGRATION_DATABASE_URL:-$DATABASE_URL}" -X -v ON_ERROR_STOP=1 -f sql/tests/task_events.sql
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
SELECT pg_temp.is(
    (SELECT array_agg(kind || ' ' || (task ->> 'title') || ' ' || (task ->> 'completed') ORDER BY id)
     FROM public.task_events),
    ARRAY['task.created first false', 'task.updated renamed false', 'task.updated renamed true'],
    'SELECT: alice sees one event per real change of hers, in order, each with the task as it became');
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
    ARRAY['task.created  ', 'task.updated  ', 'task.updated  ', 'task.deleted  '],
    'SELECT: once she deletes the task, its events keep their place and order, and none keeps a copy of it');
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

-- The purge's bookkeeping (app.task_event_counts, which only its owner reads): each user's count of
-- kept events and when the first of them was created, which decide whether a write purges at all.
RESET ROLE;
SELECT pg_temp.is(
    (SELECT events FROM app.task_event_counts WHERE user_id = 'sqltest-alice'), 2,
    'DELETE: after the purge by count, alice''s count is what is kept');
-- As a DBA would make events old by hand. The owner's UPDATE policy admits only the trigger on tasks
-- (which clears a deleted task's copies), so FORCE is lifted for these UPDATEs alone, as
-- idempotency_keys.sql does: an owner without BYPASSRLS (the embedded database's) would otherwise
-- change no row, silently.
ALTER TABLE public.task_events NO FORCE ROW LEVEL SECURITY;
UPDATE public.task_events SET created_at = now() - interval '30 hours'
    WHERE user_id = 'sqltest-alice' AND task ->> 'title' = 'two';
UPDATE public.task_events SET created_at = now() - interval '20 hours'
    WHERE user_id = 'sqltest-alice' AND task ->> 'title' = 'three';
ALTER TABLE public.task_events FORCE ROW LEVEL SECURITY;
SELECT pg_temp.is(
    (SELECT first_event_at FROM app.task_event_counts WHERE user_id = 'sqltest-alice'), now() - interval '30 hours',
    'UPDATE: an event made older by hand moves its user''s first event time with it');

SET LOCAL ROLE todo_app;
SELECT '# acting as ' || set_config('app.user_id', 'sqltest-alice', true);
SELECT set_config('app.events_retention_hours', '24', true) IS NOT NULL AS quiet \gset
UPDATE public.tasks SET title = 'four';
SELECT pg_temp.is(
    (SELECT array_agg(task ->> 'title' ORDER BY id) FROM public.task_events), ARRAY['three', 'four'],
    'DELETE: alice''s write purges her events past app.events_retention_hours, and only those');
SELECT set_config('app.events_retention_hours', '10', true) IS NOT NULL AS quiet \gset
UPDATE public.tasks SET title = 'five';
SELECT pg_temp.is(
    (SELECT array_agg(task ->> 'title' ORDER BY id) FROM public.task_events), ARRAY['four', 'five'],
    'DELETE: a shorter retention purges the next oldest');
RESET ROLE;
SELECT pg_temp.is(
    (SELECT (events, first_event_at) FROM app.task_event_counts WHERE user_id = 'sqltest-alice'),
    (2, now()),
    'DELETE: after the purges by age, alice''s count and first event time are those of what is kept');

-- A write with nothing to purge neither reads nor removes any event, and writes the counts once.
SET LOCAL ROLE todo_app;
SELECT '# acting as ' || set_config('app.user_id', 'sqltest-alice', true);
SELECT set_config('app.max_tasks_per_user', '10', true) IS NOT NULL AS quiet \gset
SELECT idx_scan + seq_scan AS events_scans, n_tup_del AS events_removed
    FROM pg_stat_xact_user_tables WHERE relid = 'public.task_events'::regclass \gset
SELECT n_tup_upd AS counts_updates FROM pg_stat_xact_user_tables WHERE relid = 'app.task_event_counts'::regclass \gset
UPDATE public.tasks SET title = 'six';
SELECT pg_temp.is(
    (SELECT (idx_scan + seq_scan - :events_scans, n_tup_del - :events_removed)
     FROM pg_stat_xact_user_tables WHERE relid = 'public.task_events'::regclass),
    (0::bigint, 0::bigint),
    'UPDATE: a write with nothing to purge neither scans nor removes events');
SELECT pg_temp.is(
    (SELECT n_tup_upd - :counts_updates FROM pg_stat_xact_user_tables WHERE relid = 'app.task_event_counts'::regclass),
    1::bigint,
    'UPDATE: a write with nothing to purge updates its user''s counts once');
SELECT pg_temp.is(
    (SELECT array_agg(task ->> 'title' ORDER BY id) FROM public.task_events), ARRAY['four', 'five', 'six'],
    'SELECT: and its event is kept beside the others');

-- Every user's expired events are purged by anyone's write, not only by their own next one
-- (sql/migrations/0011_purge_every_users_events.sql): carol, who writes no more, loses hers, her
-- deleted task's content among them, to bob's write.
SELECT '# acting as ' || set_config('app.user_id', 'sqltest-carol', true);
INSERT INTO public.users (id) VALUES ('sqltest-carol');
INSERT INTO public.tasks (user_id, title) VALUES ('sqltest-carol', 'carol''s secret');
DELETE FROM public.tasks WHERE title = 'carol''s secret';
RESET ROLE;
-- As a DBA would make events old by hand (FORCE lifted as above): older than anyone else's, so the
-- drain takes hers first.
ALTER TABLE public.task_events NO FORCE ROW LEVEL SECURITY;
UPDATE public.task_events SET created_at = now() - interval '400 days' WHERE user_id = 'sqltest-carol';
ALTER TABLE public.task_events FORCE ROW LEVEL SECURITY;
SET LOCAL ROLE todo_app;
SELECT '# acting as ' || set_config('app.user_id', 'sqltest-bob', true);
UPDATE public.tasks SET title = 'bob''s, renamed';
SELECT '# acting as ' || set_config('app.user_id', 'sqltest-carol', true);
SELECT pg_temp.is(
    (SELECT count(*) FROM public.task_events), 0::bigint,
    'DELETE: carol''s expired events are purged by bob''s write');
RESET ROLE;
SELECT pg_temp.is(
    (SELECT count(*) FROM app.task_event_counts WHERE user_id = 'sqltest-carol'), 0::bigint,
    'DELETE: carol, left with no event, is no longer counted, so no later write picks her again');
-- Read across users as a DBA would, FORCE lifted as above: the owner's own SELECT policy admits only
-- the trigger.
ALTER TABLE public.task_events NO FORCE ROW LEVEL SECURITY;
SELECT pg_temp.is(
    (SELECT array_agg(task ->> 'title' ORDER BY id) FROM public.task_events
     WHERE user_id IN ('sqltest-alice', 'sqltest-bob')),
    ARRAY['bob''s', 'four', 'five', 'six', 'bob''s, renamed'],
    'DELETE: and nobody else''s events, which have not expired, are touched');
ALTER TABLE public.task_events FORCE ROW LEVEL SECURITY;

-- A delete with nothing to purge clears its task's earlier events and writes the counts once: the
-- clearing changes no event's time, so its user's first event time is not looked for again.
SET LOCAL ROLE todo_app;
SELECT '# acting as ' || set_config('app.user_id', 'sqltest-alice', true);
SELECT n_tup_upd AS counts_updates FROM pg_stat_xact_user_tables WHERE relid = 'app.task_event_counts'::regclass \gset
DELETE FROM public.tasks WHERE title = 'six';
SELECT pg_temp.is(
    (SELECT array_agg(kind || ' ' || coalesce(task ->> 'title', '') ORDER BY id) FROM public.task_events),
    ARRAY['task.updated ', 'task.updated ', 'task.updated ', 'task.deleted '],
    'UPDATE: alice''s delete clears the task from each of its kept events');
SELECT pg_temp.is(
    (SELECT n_tup_upd - :counts_updates FROM pg_stat_xact_user_tables WHERE relid = 'app.task_event_counts'::regclass),
    1::bigint,
    'UPDATE: a delete with nothing to purge updates its user''s counts once');

ROLLBACK;
