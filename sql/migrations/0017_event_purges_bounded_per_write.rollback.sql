-- Back to 0016: the purges unbounded in rows, and task_events_by_owner without created_at. The
-- function is 0016's, word for word (its body's md5 is in sql/checks/expected_reach.json at 0016).
LOCK TABLE public.tasks, public.task_events IN ACCESS EXCLUSIVE MODE;

DROP TRIGGER task_events_recount_after_removal_by_hand ON public.task_events;
DROP FUNCTION app.recount_events_removed_by_hand();
DROP TRIGGER task_events_count_additions_by_hand ON public.task_events;
DROP FUNCTION app.count_events_added_by_hand();

CREATE INDEX task_events_by_owner_without_time ON public.task_events (user_id, id);
DROP INDEX public.task_events_by_owner;
ALTER INDEX public.task_events_by_owner_without_time RENAME TO task_events_by_owner;

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

DROP FUNCTION app.purge_events(text, timestamptz, integer, integer, bigint);
