-- depends: 0005_versions_and_idempotency
--
-- Deleted means gone, and the database holds a title to the API's rules.
--
-- 1. An Idempotency-Key names its task instead of keeping a copy of the first response. A replay
--    re-reads the task as it is now (its current ETag too); deleting the task sets the key's task_id
--    to NULL in the DELETE's own statement (the foreign key's action), so no copy of the task's
--    content outlives it, and the key stays as a tombstone that answers 410 task-deleted.
-- 2. What a user stores stays bounded by the task quota: a live key names one of the user's tasks
--    (at most one key per task), and the API's keyed create keeps at most MAX_TASKS_PER_USER
--    tombstones per user, dropping the oldest (api/tasks/queries.py, `_create_task_once`).
-- 3. A key's expiry is fixed when it is stored (expires_at), so an expired key is a fact of its row
--    and every user's expired keys can be purged by the database itself, with todo_app given no
--    choice of whose keys go and nothing to call: a trigger on every INSERT of keys
--    (app.forget_expired_idempotency_keys), so each keyed create drains a batch.
-- 4. A title is stored trimmed: the API strips it as pydantic's strip_whitespace does (Rust's
--    str::trim: the characters with Unicode's White_Space property), then refuses an empty result.
--    Postgres's btrim() strips only spaces, and Python's str.strip() strips \x1c-\x1f as well, so
--    the CHECK spells out that set (tests/db/test_schema_agreement.py tries every character).

-- The owner reads and rewrites rows that FORCEd row-level security would hide from it.
ALTER TABLE public.tasks NO FORCE ROW LEVEL SECURITY;
ALTER TABLE public.idempotency_keys NO FORCE ROW LEVEL SECURITY;

-- 4. Titles. A title stored by hand untrimmed is trimmed once; one that was only whitespace gets a
-- placeholder rather than being lost.
UPDATE public.tasks
SET title = coalesce(
    nullif(regexp_replace(title,
                          '^[\u0009-\u000d\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+'
                          '|[\u0009-\u000d\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$',
                          '', 'g'), ''),
    'Untitled')
WHERE title ~ '^[\u0009-\u000d\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]'
           '|[\u0009-\u000d\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]$';

-- A title neither starts nor ends with White_Space (its length CHECK, from 0002, refuses '').
ALTER TABLE public.tasks ADD CONSTRAINT tasks_title_trimmed CHECK (
    title !~ '^[\u0009-\u000d\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]'
             '|[\u0009-\u000d\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]$'
);

-- 1. A key names a task of the same user: the foreign key takes the owner with the id, so a key can
-- name no other user's task (foreign-key checks see every row), and the unique index keeps a task
-- to one key. The index also serves the foreign key's action on every task delete.
ALTER TABLE public.tasks ADD CONSTRAINT tasks_owner_and_id_key UNIQUE (user_id, id);
ALTER TABLE public.idempotency_keys
    ADD COLUMN task_id bigint,
    ADD COLUMN expires_at timestamptz;
UPDATE public.idempotency_keys AS k
SET task_id = t.id
FROM public.tasks AS t
WHERE t.user_id = k.user_id AND t.id = (k.response ->> 'id')::bigint;
-- Keys stored before: the default IDEMPOTENCY_TTL_HOURS.
UPDATE public.idempotency_keys SET expires_at = created_at + interval '24 hours';
ALTER TABLE public.idempotency_keys
    DROP COLUMN response,
    ALTER COLUMN expires_at SET NOT NULL,
    -- IDEMPOTENCY_TTL_HOURS is at most 30 days: no key, however stored, outlives that.
    ADD CONSTRAINT idempotency_keys_lifetime
        CHECK (expires_at > created_at AND expires_at <= created_at + interval '30 days'),
    ADD CONSTRAINT idempotency_keys_task_fkey FOREIGN KEY (user_id, task_id)
        REFERENCES public.tasks (user_id, id) ON DELETE SET NULL (task_id);
CREATE UNIQUE INDEX idempotency_keys_by_task ON public.idempotency_keys (user_id, task_id);
-- 3. Expired keys are found by age across users now, not per user.
DROP INDEX public.idempotency_keys_by_owner_age;
CREATE INDEX idempotency_keys_by_expiry ON public.idempotency_keys (expires_at);

GRANT INSERT (task_id, expires_at) ON public.idempotency_keys TO todo_app;

ALTER TABLE public.idempotency_keys FORCE ROW LEVEL SECURITY;
ALTER TABLE public.tasks FORCE ROW LEVEL SECURITY;

-- 3. Every user's expired keys, a batch at a time, without a worker of its own: after each statement
-- that stores keys, a trigger deletes up to its argument's number of other users' expired keys (the
-- caller's own the keyed create removes itself, under its own policy). The API's statements name
-- nothing in schema app, which its login role cannot even look up (it prepares statements before
-- switching to todo_app), and todo_app may not call the function: a trigger's function is checked
-- for EXECUTE when the trigger is made, not when it fires.
-- It runs as its owner, the migrating role, because row-level security shows todo_app its own keys
-- only. An owner that bypasses row-level security (Neon's, a superuser) sees every row; one that
-- does not (the embedded database's) is let see, lock and delete expired keys, only while a trigger
-- runs, by the policies for it in sql/policies/idempotency_keys.sql. It deletes only rows whose own
-- expires_at has passed, skipping rows a concurrent purge or their owner holds, so no request waits
-- on another user's, and todo_app gains no way to remove a key that is still in use.
CREATE FUNCTION app.forget_expired_idempotency_keys() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = ''
AS $$
BEGIN
    DELETE FROM public.idempotency_keys
    WHERE ctid IN (
        SELECT ctid FROM public.idempotency_keys
        WHERE expires_at <= pg_catalog.now()
          AND user_id IS DISTINCT FROM app.current_user_id()
        ORDER BY expires_at
        LIMIT TG_ARGV[0]::integer
        FOR UPDATE SKIP LOCKED
    );
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION app.forget_expired_idempotency_keys() FROM PUBLIC;

-- More than one key per statement, so expired keys drain faster than keyed creates can add them.
CREATE TRIGGER idempotency_keys_purge_expired
    AFTER INSERT ON public.idempotency_keys
    FOR EACH STATEMENT
    EXECUTE FUNCTION app.forget_expired_idempotency_keys('100');
