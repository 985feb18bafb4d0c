-- Back to 0010: a user's events are purged on that user's next write only. The function is 0009's,
-- word for word (its body's md5 is in sql/checks/expected_reach.json at 0010).
DROP INDEX app.task_event_counts_by_first_event;

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
BEGIN
    owner := CASE WHEN TG_OP = 'DELETE' THEN OLD.user_id ELSE NEW.user_id END;

    INSERT INTO app.task_event_counts AS counted (user_id, events) VALUES (owner, 1)
        ON CONFLICT (user_id) DO UPDATE SET events = counted.events + 1
        RETURNING counted.events, counted.first_event_at INTO held, first_at;

    IF TG_OP = 'DELETE' THEN
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

    IF pg_catalog.current_setting('app.notify_after_commit', true) IS DISTINCT FROM 'on' THEN
        PERFORM pg_catalog.pg_notify('task_events', pg_catalog.left(pg_catalog.md5(owner), 8));
    END IF;
    RETURN NULL;
END
$$;
