-- depends: 0008_task_events
--
-- Writes that do not queue behind one another (issue 34). Two changes to the trigger of 0008:
--
-- 1. Wake after commit, not inside it. A NOTIFY sent inside a transaction makes Postgres take one
--    database-wide lock at commit and hold it through the commit's WAL flush, so every writing
--    transaction of the database commits one after the other. The API wakes the streams itself: it
--    sets app.notify_after_commit = 'on' in the transaction (api/db/database.py, ACT_AS_USER) and
--    sends the same NOTIFY right after COMMIT, in the same message (`one_message`), where it holds
--    that lock only for an instant. The trigger then sends none. Any other writer (a DBA at psql,
--    another application) does not set it, and the trigger still wakes the streams for it.
--
-- 2. Purge only when there is something to purge. app.task_event_counts also keeps when the user's
--    first kept event (in id order) was created, so the common write is two statements (the
--    counts upsert and the event), and the purges and the bookkeeping UPDATE run only when a purge
--    has something to remove. What is purged is what 0008 purged.

-- When the user's first kept event, in id order, was created: the purge by age removes something
-- exactly when this is older than app.events_retention_hours. A row the trigger inserts is its
-- user's first event, which is created now(). A DBA who changes events by hand keeps it true too:
-- task_events_keep_first_event_time below follows an UPDATE; a DELETE or a missing row only makes
-- it older, which the next write's purge sets right.
ALTER TABLE app.task_event_counts ADD COLUMN first_event_at timestamptz NOT NULL DEFAULT pg_catalog.now();
UPDATE app.task_event_counts AS counted
SET first_event_at = coalesce(
    (SELECT e.created_at FROM public.task_events AS e WHERE e.user_id = counted.user_id ORDER BY e.id LIMIT 1),
    '-infinity');

-- As in 0008, with two gates. The purge by age runs only when the user's first kept event is past
-- app.events_retention_hours; it then removes at least that event, since this write's event, made
-- now, is kept. The purge by count runs only when the count is past app.max_tasks_per_user. The
-- counts row is rewritten only after a purge ran. The counts upsert still comes first: its row lock
-- orders one user's events (0008), and it is under that lock that first_event_at is read and kept.
-- Without the settings (a DBA at psql) neither gate opens and nothing is purged, as in 0008.
--
-- NOTIFY is sent only when the transaction has not said it sends its own after COMMIT.
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

-- A DBA who changes the time of an event by hand (as a test does, to make an event old) keeps its
-- user's first_event_at true. The API never updates an event (todo_app may not), so this never runs
-- on a write of the API. Runs as its owner, as the trigger above does.
CREATE FUNCTION app.keep_first_event_time() RETURNS trigger
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
        WHERE counted.user_id IN (SELECT changed.user_id FROM changed);
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION app.keep_first_event_time() FROM PUBLIC;

CREATE TRIGGER task_events_keep_first_event_time
    AFTER UPDATE ON public.task_events
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT
    EXECUTE FUNCTION app.keep_first_event_time();
