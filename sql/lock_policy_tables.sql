-- The first statement of every transaction that re-applies sql/policies/: `todo-api migrate` (and
-- a plain `yoyo apply`, through sql/migrations/post-apply-policies.py) and the drift check of
-- `todo-api policies` (api/ops/policy_audit.py), which rolls back.
--
-- CREATE POLICY and DROP POLICY take an ACCESS EXCLUSIVE lock on their table. Applied file by file,
-- in name order, they locked idempotency_keys, task_event_purges and task_events before tasks and
-- users. An API write locks tasks when its statement starts, and users (its foreign key),
-- idempotency_keys (a delete's foreign key action), task_events and task_event_purges (its
-- trigger) only later. So the policies held task_events and waited for tasks while a write held
-- tasks and waited for task_events, until Postgres cancelled one of them (deadlock detected).
--
-- Taken here first, in that order, the locks leave no such cycle: while a write holds tasks this
-- waits for it, holding nothing the write needs, and once this holds tasks, writes wait behind it
-- for the few milliseconds the policies take. Two writes start elsewhere: a user's first write
-- (or one with a new email or name) locks users just before tasks, and a create with an
-- Idempotency-Key locks idempotency_keys first. One of those arriving while this waits for tasks
-- can still close a cycle; Postgres then cancels one side after deadlock_timeout, and the API runs
-- a request it cancelled once more.
--
-- Every table with a file in sql/policies/ is named here (tests/db/test_policy_locks.py checks it).
-- LOCK TABLE waits up to lock_timeout for each table, which migrate and the audit set.

LOCK TABLE public.tasks, public.users, public.idempotency_keys, public.task_events, public.task_event_purges
    IN ACCESS EXCLUSIVE MODE;
