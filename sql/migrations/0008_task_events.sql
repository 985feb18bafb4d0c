-- depends: 0006_drop_isolation_baseline 0007_deleted_means_gone
--
-- Live changes (issue 33): every real change of a task is also a row of public.task_events, written
-- by a trigger in the change's own transaction, so an event exists exactly when its change was
-- committed. A stream reads its user's events through the same role switch and app.user_id as every
-- request (sql/policies/task_events.sql): the policies decide who sees an event, not Python.
--
-- The event carries the task as the row reads after the change (to_jsonb(NEW)); the API renders it
-- with the same model as GET, so an event is the task exactly as GET returns it. A delete carries
-- only the id.
--
-- NOTIFY task_events only wakes the API's workers: its payload is a short hash of the user id, so
-- a worker wakes only the streams that may have something new, and no task content travels in it.

CREATE TABLE public.task_events (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    text        NOT NULL,
    kind       text        NOT NULL CHECK (kind IN ('task.created', 'task.updated', 'task.deleted')),
    task_id    bigint      NOT NULL,
    task       jsonb       CHECK ((task IS NULL) = (kind = 'task.deleted')),
    created_at timestamptz NOT NULL DEFAULT now()
);
-- A stream reads "the caller's events after id N"; the purge removes a user's oldest.
CREATE INDEX task_events_by_owner ON public.task_events (user_id, id);

-- todo_app only reads events (its own, by policy); only the trigger writes them.
REVOKE ALL ON public.task_events FROM PUBLIC;
GRANT SELECT ON public.task_events TO todo_app;
ALTER TABLE public.task_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.task_events FORCE ROW LEVEL SECURITY;

-- Each user's count of stored events, the trigger's own bookkeeping (todo_app cannot touch it).
-- Its row is also the lock that orders one user's events: the trigger takes it before the event
-- gets its id and holds it to COMMIT, so one user's events are numbered in commit order, and a
-- stream that has read up to id N can never later see a new event of its user below N.
CREATE TABLE app.task_event_counts (
    user_id text    PRIMARY KEY,
    events  integer NOT NULL CHECK (events >= 0)
);
REVOKE ALL ON app.task_event_counts FROM PUBLIC;

-- Runs as its owner (the migrating role, which bypasses row-level security, as for
-- app.count_tasks): todo_app has no INSERT or DELETE on the events, and may not call it (triggers
-- fire without EXECUTE). TimeZone is pinned so that the stored task's times read as GET's do.
--
-- The purge needs no worker of its own: each write of a user first drops that user's events older
-- than app.events_retention_hours, then the oldest beyond app.max_tasks_per_user (the fairness
-- bound: a user who missed more events than they may have tasks refetches the list instead).
-- Both are set by every API transaction (api/db/database.py); without them (a DBA at psql) nothing
-- is purged. The purge removes a prefix of the user's events in id order, so a stream whose last
-- event still exists has missed nothing, and one whose last event is gone is told to reset.
CREATE FUNCTION app.publish_task_event() RETURNS trigger
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
    purged integer;
BEGIN
    owner := CASE WHEN TG_OP = 'DELETE' THEN OLD.user_id ELSE NEW.user_id END;

    INSERT INTO app.task_event_counts AS counted (user_id, events) VALUES (owner, 1)
        ON CONFLICT (user_id) DO UPDATE SET events = counted.events + 1
        RETURNING counted.events INTO held;

    IF TG_OP = 'DELETE' THEN
        INSERT INTO public.task_events (user_id, kind, task_id) VALUES (owner, 'task.deleted', OLD.id);
    ELSE
        INSERT INTO public.task_events (user_id, kind, task_id, task)
            VALUES (owner, CASE TG_OP WHEN 'INSERT' THEN 'task.created' ELSE 'task.updated' END,
                    NEW.id, pg_catalog.to_jsonb(NEW));
    END IF;

    IF kept_hours IS NOT NULL THEN
        DELETE FROM public.task_events AS e
            WHERE e.user_id = owner
              AND e.id < (SELECT kept.id FROM public.task_events AS kept
                          WHERE kept.user_id = owner
                            AND kept.created_at >= pg_catalog.now() - pg_catalog.make_interval(secs => kept_hours * 3600)
                          ORDER BY kept.id LIMIT 1);
        GET DIAGNOSTICS purged = ROW_COUNT;
        held := held - purged;
    END IF;
    IF held > kept_events THEN
        DELETE FROM public.task_events AS e
            WHERE e.user_id = owner
              AND e.id < (SELECT kept.id FROM public.task_events AS kept WHERE kept.user_id = owner
                          ORDER BY kept.id OFFSET held - kept_events LIMIT 1);
        GET DIAGNOSTICS purged = ROW_COUNT;
        held := held - purged;
    END IF;
    UPDATE app.task_event_counts SET events = held WHERE user_id = owner AND events <> held;

    PERFORM pg_catalog.pg_notify('task_events', pg_catalog.left(pg_catalog.md5(owner), 8));
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION app.publish_task_event() FROM PUBLIC;

CREATE TRIGGER tasks_published_on_write
    AFTER INSERT OR DELETE ON public.tasks
    FOR EACH ROW
    EXECUTE FUNCTION app.publish_task_event();

-- Only a real change is an event: an UPDATE that leaves every column but the bookkeeping ones as it
-- was (the same title, `completed` set to what it is, an idempotent replay) publishes nothing.
CREATE TRIGGER tasks_published_on_change
    AFTER UPDATE ON public.tasks
    FOR EACH ROW
    WHEN ((pg_catalog.to_jsonb(OLD) - 'updated_at' - 'version')
          IS DISTINCT FROM (pg_catalog.to_jsonb(NEW) - 'updated_at' - 'version'))
    EXECUTE FUNCTION app.publish_task_event();
