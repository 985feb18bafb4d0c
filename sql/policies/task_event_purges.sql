-- Row-level security for public.task_event_purges: the newest event id purged for a user is seen by
-- that user only, and written by nobody but the trigger on public.task_events
-- (sql/migrations/0010_event_purges.sql; todo_app has SELECT only).
-- Applying this file replaces every policy on the table, and turns row-level security on and forces
-- it, so the file is exactly what is live (a restore of a dump taken while it was lifted, say).

CALL app.drop_all_policies('public.task_event_purges');
ALTER TABLE public.task_event_purges ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.task_event_purges FORCE ROW LEVEL SECURITY;

CREATE POLICY "event purges are visible to their user" ON public.task_event_purges
    FOR SELECT TO todo_app
    USING (user_id = (SELECT app.current_user_id()));

-- The trigger's own writes. Its function runs as the table's owner (the role that applies this
-- file), and under FORCE ROW LEVEL SECURITY an owner without BYPASSRLS (the embedded database's
-- todo_owner) is held to policies too: these let it record a purge from inside a trigger, and
-- nowhere else. They do not apply to todo_app, which has no INSERT or UPDATE on the table. The
-- record is written with ON CONFLICT DO UPDATE, which also asks that the owner may read the row: its
-- writer's own through todo_app's policy above, any other user's (the drain of expired events,
-- sql/migrations/0011_purge_every_users_events.sql, or a DBA's DELETE) through this one.
CREATE POLICY "event purges are read by the trigger on task_events" ON public.task_event_purges
    FOR SELECT TO CURRENT_USER
    USING (pg_catalog.pg_trigger_depth() > 0);
CREATE POLICY "event purges are recorded by the trigger on task_events" ON public.task_event_purges
    FOR INSERT TO CURRENT_USER
    WITH CHECK (pg_catalog.pg_trigger_depth() > 0);

CREATE POLICY "event purges are raised by the trigger on task_events" ON public.task_event_purges
    FOR UPDATE TO CURRENT_USER
    USING (pg_catalog.pg_trigger_depth() > 0)
    WITH CHECK (pg_catalog.pg_trigger_depth() > 0);
