DROP TRIGGER idempotency_keys_purge_expired ON public.idempotency_keys;
DROP FUNCTION app.forget_expired_idempotency_keys();
-- The purge's policies (sql/policies/idempotency_keys.sql) read expires_at, dropped below. Absent
-- where the policy files were never applied (`yoyo apply --revision` short of the last).
DROP POLICY IF EXISTS "expired keys are visible to the purge" ON public.idempotency_keys;
DROP POLICY IF EXISTS "expired keys are locked by the purge" ON public.idempotency_keys;
DROP POLICY IF EXISTS "expired keys are removed by the purge" ON public.idempotency_keys;

ALTER TABLE public.tasks NO FORCE ROW LEVEL SECURITY;
ALTER TABLE public.idempotency_keys NO FORCE ROW LEVEL SECURITY;

-- 0005 kept the first response: rebuild it from the task as it is; a tombstone has none to give.
DELETE FROM public.idempotency_keys WHERE task_id IS NULL;
ALTER TABLE public.idempotency_keys ADD COLUMN response jsonb;
UPDATE public.idempotency_keys AS k
SET response = pg_catalog.to_jsonb(t)
FROM public.tasks AS t
WHERE t.user_id = k.user_id AND t.id = k.task_id;
DROP INDEX public.idempotency_keys_by_expiry;
CREATE INDEX idempotency_keys_by_owner_age ON public.idempotency_keys (user_id, created_at);
DROP INDEX public.idempotency_keys_by_task;
ALTER TABLE public.idempotency_keys
    DROP CONSTRAINT idempotency_keys_task_fkey,
    DROP CONSTRAINT idempotency_keys_lifetime,
    DROP COLUMN task_id,
    DROP COLUMN expires_at,
    ALTER COLUMN response SET NOT NULL;
GRANT INSERT (response) ON public.idempotency_keys TO todo_app;
ALTER TABLE public.tasks DROP CONSTRAINT tasks_owner_and_id_key;
ALTER TABLE public.tasks DROP CONSTRAINT tasks_title_trimmed;

ALTER TABLE public.idempotency_keys FORCE ROW LEVEL SECURITY;
ALTER TABLE public.tasks FORCE ROW LEVEL SECURITY;
