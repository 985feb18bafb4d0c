-- Row-level security for public.idempotency_keys: a user's keys are seen, made and removed by that
-- user only. Nobody changes a key once it is stored (todo_app has no UPDATE on the table).
-- Applying this file replaces every policy on the table, so the file is exactly what is live.

CALL app.drop_all_policies('public.idempotency_keys');

CREATE POLICY "idempotency keys are visible to their owner" ON public.idempotency_keys
    FOR SELECT TO todo_app
    USING (user_id = (SELECT app.current_user_id()));

CREATE POLICY "idempotency keys are stored by their owner" ON public.idempotency_keys
    FOR INSERT TO todo_app
    WITH CHECK (user_id = (SELECT app.current_user_id()));

CREATE POLICY "idempotency keys are removed by their owner" ON public.idempotency_keys
    FOR DELETE TO todo_app
    USING (user_id = (SELECT app.current_user_id()));
