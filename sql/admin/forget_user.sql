-- Erasure of one user: removes every row the schema holds for them, in one transaction.
--
--     psql "${MIGRATION_DATABASE_URL:-$DATABASE_URL}" -X -v user_id='<Better Auth user id>' -f sql/admin/forget_user.sql
--
-- Run it as the tables' owner (the role that ran the migrations) or a superuser, on a direct URL: the
-- API's login role may not. Then revoke the user at Better Auth: a token of theirs that is still valid
-- stores their user row again on its next write; and run sql/admin/vacuum_erased_tables.sql, so that no
-- planner statistic still quotes their rows (docs/operations.md, "Erasing a user").
--
-- What it removes, where the user id is the owner of the row:
--   public.tasks              their tasks (their titles and descriptions)
--   public.idempotency_keys   their keys, live ones and tombstones
--   public.task_events        their live-changes events (copies of tasks as they were)
--   public.task_event_purges  the newest event id purged for them
--   app.task_event_counts     the bookkeeping of their events
--   app.task_counts           the count of their tasks for the quota
--   public.users              their row (email and name)
-- Other users' rows are not read or changed. Each DELETE prints how many rows it removed. Their open
-- event streams are woken, and told to reset.
--
-- The order matters because of the triggers. Deleting tasks counts each one down in
-- app.task_counts and writes a task.deleted event (sql/migrations/0008_task_events.sql), and its
-- keys' task_id is set to NULL; deleting events records the purge in public.task_event_purges
-- (0010_event_purges.sql). So tasks go first, then what their deletion wrote, then the records of
-- that, and the user row last. No API setting is set here, so the triggers purge nothing else.
--
-- Row-level security is FORCEd on the public tables, so an owner without BYPASSRLS (the embedded
-- database's) sees none of these rows. The script lifts FORCE on those tables inside its own
-- transaction, as the migrations do to rewrite rows, and sets it back before COMMIT: on an error
-- psql stops and the transaction, the lifted FORCE included, is rolled back. The ALTER TABLEs take
-- ACCESS EXCLUSIVE locks (all taken first, by sql/lock_policy_tables.sql), so the API's requests
-- wait for this transaction (a moment), and so does the API's isolation check, which counts a wait
-- past 2 seconds as a finding (503s until its next clean run). So a lock held elsewhere is waited for 1 second at most (lock_timeout): then, or on a
-- deadlock with a request, the script stops and changes nothing; run it again.
-- todo_app never sees any of this: it does not bypass row-level security, FORCE or not.

\set ON_ERROR_STOP on
\if :{?user_id}
\else
    DO $$ BEGIN RAISE EXCEPTION 'no user id: psql ... -v user_id=<id> -f sql/admin/forget_user.sql'; END $$;
\endif

BEGIN;
SET LOCAL lock_timeout = '1s';
-- Every table's lock first, in the order the API's writes take them, as migrate does: taken table by
-- table by the ALTERs below, they could close a cycle with a write (sql/lock_policy_tables.sql).
\ir ../lock_policy_tables.sql

ALTER TABLE public.users NO FORCE ROW LEVEL SECURITY;
ALTER TABLE public.tasks NO FORCE ROW LEVEL SECURITY;
ALTER TABLE public.idempotency_keys NO FORCE ROW LEVEL SECURITY;
ALTER TABLE public.task_events NO FORCE ROW LEVEL SECURITY;
ALTER TABLE public.task_event_purges NO FORCE ROW LEVEL SECURITY;

DELETE FROM public.tasks WHERE user_id = :'user_id';
DELETE FROM public.idempotency_keys WHERE user_id = :'user_id';
DELETE FROM public.task_events WHERE user_id = :'user_id';
DELETE FROM public.task_event_purges WHERE user_id = :'user_id';
DELETE FROM app.task_event_counts WHERE user_id = :'user_id';
DELETE FROM app.task_counts WHERE user_id = :'user_id';
DELETE FROM public.users WHERE id = :'user_id';

-- Wake the user's open streams, as the trigger on tasks does, so that each reads at once and is told
-- to reset (its events are gone) rather than at its token's expiry: the trigger fires only for a task
-- deleted here, and with every task deleted before, nothing else would. Sent at COMMIT, not before.
SELECT pg_catalog.left(pg_catalog.md5(:'user_id'), 8) AS wake_tag \gset
NOTIFY task_events, :'wake_tag';

ALTER TABLE public.users FORCE ROW LEVEL SECURITY;
ALTER TABLE public.tasks FORCE ROW LEVEL SECURITY;
ALTER TABLE public.idempotency_keys FORCE ROW LEVEL SECURITY;
ALTER TABLE public.task_events FORCE ROW LEVEL SECURITY;
ALTER TABLE public.task_event_purges FORCE ROW LEVEL SECURITY;

COMMIT;
