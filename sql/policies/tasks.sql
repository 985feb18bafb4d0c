-- Row-level security for public.tasks: a task is visible to, and changeable by, its owner only.
--
-- `(SELECT app.current_user_id())` is evaluated once per statement, and the comparison on user_id
-- lets the planner use the tasks_by_owner_* indexes. With no app.user_id set, nothing matches.
-- Applying this file replaces every policy on the table, and turns row-level security on and forces
-- it, so the file is exactly what is live (a restore of a dump taken while it was lifted, say).

CALL app.drop_all_policies('public.tasks');
ALTER TABLE public.tasks ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.tasks FORCE ROW LEVEL SECURITY;

CREATE POLICY "tasks are visible to their owner" ON public.tasks
    FOR SELECT TO todo_app
    USING (user_id = (SELECT app.current_user_id()));

CREATE POLICY "tasks are created by their owner" ON public.tasks
    FOR INSERT TO todo_app
    WITH CHECK (user_id = (SELECT app.current_user_id()));

CREATE POLICY "tasks are changed by their owner" ON public.tasks
    FOR UPDATE TO todo_app
    USING (user_id = (SELECT app.current_user_id()))
    WITH CHECK (user_id = (SELECT app.current_user_id()));

CREATE POLICY "tasks are deleted by their owner" ON public.tasks
    FOR DELETE TO todo_app
    USING (user_id = (SELECT app.current_user_id()));
