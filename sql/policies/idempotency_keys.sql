-- Row-level security for public.idempotency_keys: a user's keys are seen, made and removed by that
-- user only. Nobody changes a key once it is stored (todo_app has no UPDATE on the table): a key
-- names its task by id, and the task's deletion sets that to NULL through the foreign key's own
-- action, which needs no policy (nor does the trigger that clears the key's request_hash with it,
-- sql/migrations/0013_tombstones_forget_the_request.sql). Other users' expired keys are removed only by the database itself:
-- the trigger function app.forget_expired_idempotency_keys (sql/migrations/0007_deleted_means_gone.sql)
-- runs as its owner and deletes nothing that has not expired.
-- Applying this file replaces every policy on the table, and turns row-level security on and forces
-- it, so the file is exactly what is live (a restore of a dump taken while it was lifted, say).

CALL app.drop_all_policies('public.idempotency_keys');
ALTER TABLE public.idempotency_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.idempotency_keys FORCE ROW LEVEL SECURITY;

CREATE POLICY "idempotency keys are visible to their owner" ON public.idempotency_keys
    FOR SELECT TO todo_app
    USING (user_id = (SELECT app.current_user_id()));

CREATE POLICY "idempotency keys are stored by their owner" ON public.idempotency_keys
    FOR INSERT TO todo_app
    WITH CHECK (user_id = (SELECT app.current_user_id()));

CREATE POLICY "idempotency keys are removed by their owner" ON public.idempotency_keys
    FOR DELETE TO todo_app
    USING (user_id = (SELECT app.current_user_id()));

-- The purge runs as its owner, the migrating role, which applies this file (hence CURRENT_USER).
-- An owner that bypasses row-level security (Neon's, a superuser) needs none of these; one that
-- does not (the embedded database's) sees, locks (FOR UPDATE asks the UPDATE policy) and deletes
-- expired keys only while a trigger runs, and never changes a key: anywhere else it sees no key.
CREATE POLICY "expired keys are visible to the purge" ON public.idempotency_keys
    FOR SELECT TO CURRENT_USER
    USING (pg_trigger_depth() > 0 AND expires_at <= now());

CREATE POLICY "expired keys are locked by the purge" ON public.idempotency_keys
    FOR UPDATE TO CURRENT_USER
    USING (pg_trigger_depth() > 0 AND expires_at <= now())
    WITH CHECK (false);

CREATE POLICY "expired keys are removed by the purge" ON public.idempotency_keys
    FOR DELETE TO CURRENT_USER
    USING (pg_trigger_depth() > 0 AND expires_at <= now());
