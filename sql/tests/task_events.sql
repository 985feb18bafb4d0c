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

-- A write removes at most 100 events, its own and others' together
-- (sql/migrations/0017_event_purges_bounded_per_write.sql): dave's 250 expired events and erin's 30
-- go over three of bob's writes, the oldest user's first, so what a write costs does not grow with
-- what others left. Each user's events are made in one statement, as many writes; older than anyone
-- else's, so the drain takes them first.
SET LOCAL ROLE todo_app;
SELECT set_config('app.max_tasks_per_user', '1000', true) IS NOT NULL AS quiet \gset
SELECT '# acting as ' || set_config('app.user_id', 'sqltest-dave', true);
INSERT INTO public.users (id) VALUES ('sqltest-dave');
INSERT INTO public.tasks (user_id, title) SELECT 'sqltest-dave', 'dave''s ' || n FROM generate_series(1, 250) AS n;
SELECT '# acting as ' || set_config('app.user_id', 'sqltest-erin', true);
INSERT INTO public.users (id) VALUES ('sqltest-erin');
INSERT INTO public.tasks (user_id, title) SELECT 'sqltest-erin', 'erin''s ' || n FROM generate_series(1, 30) AS n;
RESET ROLE;
ALTER TABLE public.task_events NO FORCE ROW LEVEL SECURITY;
UPDATE public.task_events SET created_at = now() - interval '4000 days' WHERE user_id = 'sqltest-dave';
UPDATE public.task_events SET created_at = now() - interval '3000 days' WHERE user_id = 'sqltest-erin';
SELECT max(id) AS daves_newest FROM public.task_events WHERE user_id = 'sqltest-dave' \gset
SELECT max(id) AS erins_newest FROM public.task_events WHERE user_id = 'sqltest-erin' \gset
ALTER TABLE public.task_events FORCE ROW LEVEL SECURITY;
-- What each of bob's writes leaves of dave's and erin's events, and their counts, read by the owner
-- with FORCE lifted, as above; bob writes with it in place, as the API's writes do.
CREATE FUNCTION pg_temp.left_of(who text) RETURNS text
    LANGUAGE sql
AS $$
    SELECT count(*) || ' from ' || coalesce((array_agg(task ->> 'title' ORDER BY id))[1], 'none')
        || ', counted ' || coalesce((SELECT events FROM app.task_event_counts WHERE user_id = who)::text, 'none')
    FROM public.task_events WHERE user_id = who
$$;
SET LOCAL ROLE todo_app;
SELECT '# acting as ' || set_config('app.user_id', 'sqltest-bob', true);
UPDATE public.tasks SET title = 'bob''s, once';
RESET ROLE;
ALTER TABLE public.task_events NO FORCE ROW LEVEL SECURITY;
SELECT pg_temp.is(
    ARRAY[pg_temp.left_of('sqltest-dave'), pg_temp.left_of('sqltest-erin')],
    ARRAY['150 from dave''s 101, counted 150', '30 from erin''s 1, counted 30'],
    'DELETE: bob''s write removes the 100 oldest of the oldest user''s expired events, and no more');
ALTER TABLE public.task_events FORCE ROW LEVEL SECURITY;
SET LOCAL ROLE todo_app;
UPDATE public.tasks SET title = 'bob''s, twice';
UPDATE public.tasks SET title = 'bob''s, three times';
RESET ROLE;
ALTER TABLE public.task_events NO FORCE ROW LEVEL SECURITY;
SELECT pg_temp.is(
    ARRAY[pg_temp.left_of('sqltest-dave'), pg_temp.left_of('sqltest-erin')],
    ARRAY['0 from none, counted none', '0 from none, counted none'],
    'DELETE: his next two remove the rest, the next user''s once the first has none left');
ALTER TABLE public.task_events FORCE ROW LEVEL SECURITY;
ALTER TABLE public.task_event_purges NO FORCE ROW LEVEL SECURITY;
SELECT pg_temp.is(
    (SELECT array_agg(purged_through ORDER BY user_id) FROM public.task_event_purges
     WHERE user_id IN ('sqltest-dave', 'sqltest-erin')),
    ARRAY[:daves_newest, :erins_newest]::bigint[],
    'DELETE: and each removal is recorded, up to the newest event it removed');
ALTER TABLE public.task_event_purges FORCE ROW LEVEL SECURITY;

-- The writer's own purge is held to the share too: frank's 150 events, when MAX_TASKS_PER_USER is
-- lowered to 10, go over his next two writes.
SET LOCAL ROLE todo_app;
SELECT '# acting as ' || set_config('app.user_id', 'sqltest-frank', true);
INSERT INTO public.users (id) VALUES ('sqltest-frank');
INSERT INTO public.tasks (user_id, title) SELECT 'sqltest-frank', 'frank''s ' || n FROM generate_series(1, 150) AS n;
SELECT set_config('app.max_tasks_per_user', '10', true) IS NOT NULL AS quiet \gset
UPDATE public.tasks SET title = 'frank''s, once' WHERE title = 'frank''s 150';
SELECT pg_temp.is(
    (SELECT count(*) FROM public.task_events), 51::bigint,
    'DELETE: frank''s write past the lowered bound removes his 100 oldest events, and no more');
UPDATE public.tasks SET title = 'frank''s, twice' WHERE title = 'frank''s, once';
SELECT pg_temp.is(
    (SELECT array_agg(task ->> 'title' ORDER BY id) FROM public.task_events),
    ARRAY['frank''s 143', 'frank''s 144', 'frank''s 145', 'frank''s 146', 'frank''s 147', 'frank''s 148',
          'frank''s 149', 'frank''s 150', 'frank''s, once', 'frank''s, twice'],
    'DELETE: and his next write the rest of those past the bound');

-- A purge reads what it removes, not what it keeps: of gina's 1,000 events, her three oldest have
-- expired, and bob's write removes them reading few of the others (before 0017, all of them, when
-- the owner was held to row-level security). Counted in this transaction's statistics, with the
-- table analysed as it now is, as a database in use would be, so the planner knows she holds most
-- of it.
SELECT set_config('app.max_tasks_per_user', '1000', true) IS NOT NULL AS quiet \gset
SELECT '# acting as ' || set_config('app.user_id', 'sqltest-gina', true);
INSERT INTO public.users (id) VALUES ('sqltest-gina');
INSERT INTO public.tasks (user_id, title) SELECT 'sqltest-gina', 'gina''s ' || n FROM generate_series(1, 1000) AS n;
RESET ROLE;
ALTER TABLE public.task_events NO FORCE ROW LEVEL SECURITY;
UPDATE public.task_events SET created_at = now() - interval '4000 days'
    WHERE id IN (SELECT id FROM public.task_events WHERE user_id = 'sqltest-gina' ORDER BY id LIMIT 3);
ALTER TABLE public.task_events FORCE ROW LEVEL SECURITY;
ANALYZE public.task_events;
SELECT seq_tup_read + idx_tup_fetch AS events_read, n_tup_del AS events_removed
    FROM pg_stat_xact_user_tables WHERE relid = 'public.task_events'::regclass \gset
SET LOCAL ROLE todo_app;
SELECT '# acting as ' || set_config('app.user_id', 'sqltest-bob', true);
UPDATE public.tasks SET title = 'bob''s, four times';
SELECT pg_temp.ok(
    (SELECT seq_tup_read + idx_tup_fetch - :events_read < 100 AND n_tup_del - :events_removed = 3
     FROM pg_stat_xact_user_tables WHERE relid = 'public.task_events'::regclass),
    'DELETE: bob''s write removes gina''s three expired events reading fewer than a tenth of her events');

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
