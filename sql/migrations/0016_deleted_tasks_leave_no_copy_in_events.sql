-- depends: 0015_tasks_the_api_can_render
--
-- Deleted means gone, from the events too. Until now a deleted task's earlier events (task.created,
-- task.updated) kept their copy of it, title and description included, and a stream resuming from
-- before the delete was sent them, until EVENTS_RETENTION_HOURS passed and a write purged them.
--
-- Now the delete's own trigger clears that copy (task := NULL) from each of the task's earlier
-- events, in the delete's transaction, before it writes the task.deleted event. The events keep
-- their place (id, kind, task id, time) and are not sent (api/events/queries.py): a stream resuming
-- from before the delete gets the task.deleted alone, which leaves its client's list as it is now.
-- Clearing rather than removing keeps every promise the purges rest on: a user's events are still
-- removed only as a prefix (0008), so no removal is recorded (0010) and no stream is told to reset
-- for it, and an event id a client holds, one of a task deleted since included, is still one it
-- resumes from.
--
-- A cleared event still counts towards its user's MAX_TASKS_PER_USER events and is purged like any
-- other. The index below serves the clearing: without it a delete would read each of its user's
-- kept events; it holds only events that still carry a task.
--
-- Locks: the CHECK is replaced under an ACCESS EXCLUSIVE lock on public.task_events and the events
-- of tasks deleted before are cleared, reading public.tasks, whose FORCE is lifted: both tables are
-- locked first, in the order an API write takes them (sql/lock_policy_tables.sql), so writes wait for
-- this migration rather than deadlock with it.
LOCK TABLE public.tasks, public.task_events IN ACCESS EXCLUSIVE MODE;

-- A task.deleted event never carries a task; the others carry one until their task is deleted.
ALTER TABLE public.task_events
    DROP CONSTRAINT task_events_check,
    ADD CONSTRAINT task_events_deleted_carries_no_task CHECK (kind <> 'task.deleted' OR task IS NULL);

CREATE INDEX task_events_copies_by_task ON public.task_events (user_id, task_id) WHERE task IS NOT NULL;

-- The clearing is an UPDATE of events, which fires 0009's task_events_keep_first_event_time. Made for a
-- DBA who changes an event's time, it looked for the first event of every user whose events the
-- statement touched and rewrote their counts row: on every delete, the deleting user's, whose first
-- event the planner finds by walking everyone's events in id order. It now looks only where an
-- event's time or user changed, which a clearing never does.
DROP TRIGGER task_events_keep_first_event_time ON public.task_events;

CREATE OR REPLACE FUNCTION app.keep_first_event_time() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = ''
AS $$
BEGIN
    UPDATE app.task_event_counts AS counted
        SET first_event_at = coalesce(
            (SELECT e.created_at FROM public.task_events AS e WHERE e.user_id = counted.user_id
             ORDER BY e.id LIMIT 1),
            '-infinity')
        WHERE counted.user_id IN (
            SELECT changed.user_id FROM changed JOIN before USING (id)
            WHERE (changed.created_at, changed.user_id) IS DISTINCT FROM (before.created_at, before.user_id));
    RETURN NULL;
END
$$;

CREATE TRIGGER task_events_keep_first_event_time
    AFTER UPDATE ON public.task_events
    REFERENCING OLD TABLE AS before NEW TABLE AS changed
    FOR EACH STATEMENT
    EXECUTE FUNCTION app.keep_first_event_time();

-- The events of tasks deleted before. The owner reads and rewrites rows that FORCEd row-level
-- security would hide from it (the embedded database's owner does not bypass it).
ALTER TABLE public.tasks NO FORCE ROW LEVEL SECURITY;
ALTER TABLE public.task_events NO FORCE ROW LEVEL SECURITY;
UPDATE public.task_events AS e SET task = NULL
WHERE e.task IS NOT NULL
  AND NOT EXISTS (SELECT FROM public.tasks AS t WHERE t.user_id = e.user_id AND t.id = e.task_id);
ALTER TABLE public.task_events FORCE ROW LEVEL SECURITY;
ALTER TABLE public.tasks FORCE ROW LEVEL SECURITY;

-- As in 0011, with a delete clearing its task's earlier events. Under the embedded database's owner,
-- the clearing is let through by the policy for it in sql/policies/task_events.sql, inside a trigger
-- only, as the purges are.
CREATE OR REPLACE FUNCTION app.publish_task_event() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = ''
    SET TimeZone = 'UTC'
AS $$
DECLARE
    kept_events integer := nullif(pg_catalog.current_setting('app.max_tasks_per_user', true), '')::integer;
    kept_hours double precision :=
        nullif(pg_catalog.current_setting('app.events_retention_hours', true), '')::double precision;
    owner text;
    held integer;
    first_at timestamptz;
    kept_since timestamptz;
    purged integer;
    purging boolean := false;
    stale text;
    stale_first_at timestamptz;
BEGIN
    owner := CASE WHEN TG_OP = 'DELETE' THEN OLD.user_id ELSE NEW.user_id END;

    INSERT INTO app.task_event_counts AS counted (user_id, events) VALUES (owner, 1)
        ON CONFLICT (user_id) DO UPDATE SET events = counted.events + 1
        RETURNING counted.events, counted.first_event_at INTO held, first_at;

    IF TG_OP = 'DELETE' THEN
        UPDATE public.task_events SET task = NULL
            WHERE user_id = owner AND task_id = OLD.id AND task IS NOT NULL;
        INSERT INTO public.task_events (user_id, kind, task_id) VALUES (owner, 'task.deleted', OLD.id);
    ELSE
        INSERT INTO public.task_events (user_id, kind, task_id, task)
            VALUES (owner, CASE TG_OP WHEN 'INSERT' THEN 'task.created' ELSE 'task.updated' END,
                    NEW.id, pg_catalog.to_jsonb(NEW));
    END IF;

    kept_since := pg_catalog.now() - pg_catalog.make_interval(secs => kept_hours * 3600);
    IF first_at < kept_since THEN
        purging := true;
        DELETE FROM public.task_events AS e
            WHERE e.user_id = owner
              AND e.id < (SELECT kept.id FROM public.task_events AS kept
                          WHERE kept.user_id = owner AND kept.created_at >= kept_since
                          ORDER BY kept.id LIMIT 1);
        GET DIAGNOSTICS purged = ROW_COUNT;
        held := held - purged;
    END IF;
    IF held > kept_events THEN
        purging := true;
        DELETE FROM public.task_events AS e
            WHERE e.user_id = owner
              AND e.id < (SELECT kept.id FROM public.task_events AS kept WHERE kept.user_id = owner
                          ORDER BY kept.id OFFSET held - kept_events LIMIT 1);
        GET DIAGNOSTICS purged = ROW_COUNT;
        held := held - purged;
    END IF;
    IF purging THEN
        UPDATE app.task_event_counts
            SET events = held,
                first_event_at = coalesce(
                    (SELECT e.created_at FROM public.task_events AS e WHERE e.user_id = owner
                     ORDER BY e.id LIMIT 1),
                    '-infinity')
            WHERE user_id = owner;
    END IF;

    -- Every user's expired events, not only this writer's: the same purge by age for up to ten users
    -- whose first kept event is past the retention, oldest first. A user's counts row is locked
    -- before their events are read, as their own writes lock it, so no event of theirs is written
    -- meanwhile; one that another write holds is skipped, so no write waits on another user's. A
    -- user left with no event loses the row too (their next write makes it again), so no later
    -- write picks them again.
    FOR stale IN
        SELECT counted.user_id FROM app.task_event_counts AS counted
        WHERE counted.first_event_at < kept_since
        ORDER BY counted.first_event_at
        LIMIT 10
        FOR UPDATE SKIP LOCKED
    LOOP
        DELETE FROM public.task_events AS e
            WHERE e.user_id = stale
              AND e.id < coalesce((SELECT kept.id FROM public.task_events AS kept
                                   WHERE kept.user_id = stale AND kept.created_at >= kept_since
                                   ORDER BY kept.id LIMIT 1),
                                  9223372036854775807);
        GET DIAGNOSTICS purged = ROW_COUNT;
        SELECT e.created_at INTO stale_first_at FROM public.task_events AS e
            WHERE e.user_id = stale ORDER BY e.id LIMIT 1;
        IF FOUND THEN
            UPDATE app.task_event_counts
                SET events = events - purged, first_event_at = stale_first_at
                WHERE user_id = stale;
        ELSE
            DELETE FROM app.task_event_counts WHERE user_id = stale;
        END IF;
    END LOOP;

    IF pg_catalog.current_setting('app.notify_after_commit', true) IS DISTINCT FROM 'on' THEN
        PERFORM pg_catalog.pg_notify('task_events', pg_catalog.left(pg_catalog.md5(owner), 8));
    END IF;
    RETURN NULL;
END
$$;
