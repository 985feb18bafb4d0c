-- Row-level security for public.task_events: a user's events are seen by that user only. Nobody
-- writes an event directly (todo_app has SELECT only); the trigger on public.tasks writes them
-- (sql/migrations/0008_task_events.sql), and removes a user's oldest when it purges, and on each
-- write the expired events of a few other users too (sql/migrations/0011_purge_every_users_events.sql);
-- a task's delete clears its copy from the task's earlier events
-- (sql/migrations/0016_deleted_tasks_leave_no_copy_in_events.sql).
-- Applying this file replaces every policy on the table, and turns row-level security on and forces
-- it, so the file is exactly what is live (a restore of a dump taken while it was lifted, say).

CALL app.drop_all_policies('public.task_events');
ALTER TABLE public.task_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.task_events FORCE ROW LEVEL SECURITY;

CREATE POLICY "task events are visible to their owner" ON public.task_events
    FOR SELECT TO todo_app
    USING (user_id = (SELECT app.current_user_id()));

-- The trigger's own reads and writes. Its function runs as the table's owner (the role that
-- applies this file), and under FORCE ROW LEVEL SECURITY an owner without BYPASSRLS (the embedded
-- database's todo_owner) is held to policies too: these let it read, write, clear and purge events
-- from inside a trigger, and nowhere else; it reads other users' events only to purge those that
-- expired. They do not apply to todo_app, which has no INSERT, UPDATE or DELETE on the table.
CREATE POLICY "task events are read by the trigger on tasks" ON public.task_events
    FOR SELECT TO CURRENT_USER
    USING (pg_catalog.pg_trigger_depth() > 0);

CREATE POLICY "task events are written by the trigger on tasks" ON public.task_events
    FOR INSERT TO CURRENT_USER
    WITH CHECK (pg_catalog.pg_trigger_depth() > 0);

CREATE POLICY "task events are purged by the trigger on tasks" ON public.task_events
    FOR DELETE TO CURRENT_USER
    USING (pg_catalog.pg_trigger_depth() > 0);

CREATE POLICY "task events are cleared by the trigger on tasks" ON public.task_events
    FOR UPDATE TO CURRENT_USER
    USING (pg_catalog.pg_trigger_depth() > 0)
    WITH CHECK (pg_catalog.pg_trigger_depth() > 0);
