-- depends: 0010_event_purges
--
-- Every user's expired events are purged, not only a writer's own. Until now a user's events were
-- purged on that user's next write only (0008, 0009), so a user who never wrote again kept their
-- last events with no time bound, copies of deleted and edited tasks' content among them. As for
-- expired idempotency keys (0007), everyone's writes now drain them: after its own purges, the
-- trigger of 0009 purges the expired events of up to ten more users whose first kept event is past
-- app.events_retention_hours, the same prefix their own next write would purge. Each purge is
-- recorded by 0010's trigger, as any other. Without the setting (a DBA at psql) nothing is purged,
-- as in 0008.
--
-- The function runs as its owner, as before: row-level security shows todo_app its own events only.
-- An owner that bypasses row-level security (Neon's, a superuser) sees every row; one that does not
-- (the embedded database's) reads other users' events and purge records only while a trigger runs,
-- by the policies for it in sql/policies/task_events.sql and sql/policies/task_event_purges.sql.

-- The drain finds the users with something to purge in the index, without reading anyone's counts:
-- a write with nothing to drain costs one index probe (bench/RESULTS.md, "Purging idle users' events").
CREATE INDEX task_event_counts_by_first_event ON app.task_event_counts (first_event_at);

-- As in 0009, with the drain before the NOTIFY.
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
