-- depends: 0009_wake_after_commit
--
-- A stream resumed with `Last-Event-ID: 0` must start with `event: reset` once any event of its user
-- has been purged. 0 means "before any event": it is the id a stream hands out to a user who has no
-- event yet. A purge removes a prefix of the user's events (0008), so a stream resumed from 0 would
-- replay only what is kept and silently miss what was purged. An id above 0 needs no record: while
-- that event is kept, nothing after it was purged.
--
-- public.task_event_purges keeps, per user, the newest event id ever removed. A stream's start reads
-- its caller's row through the same role switch and row-level security as the events
-- (sql/policies/task_event_purges.sql, api/events/queries.py) and resumes from 0 only while there
-- is none.

CREATE TABLE public.task_event_purges (
    user_id        text   PRIMARY KEY,
    purged_through bigint NOT NULL
);

-- Events purged before this migration left no record, so every user the purge has kept a count for
-- is taken to have had some purged: a client of theirs resuming from 0 gets one reset it may not
-- have needed, and none misses an event. A stream asks only whether the row exists; purged_through
-- is the best bound the migrating role can read: just before the user's first kept event, else the
-- newest event it can see, else 0 (an owner without BYPASSRLS, the embedded database's, sees no
-- event). Written before row-level security is turned on, which such an owner would be held to.
INSERT INTO public.task_event_purges (user_id, purged_through)
SELECT counted.user_id,
       coalesce((SELECT pg_catalog.min(e.id) - 1 FROM public.task_events AS e WHERE e.user_id = counted.user_id),
                (SELECT coalesce(pg_catalog.max(e.id), 0) FROM public.task_events AS e))
FROM app.task_event_counts AS counted;

-- todo_app only reads the record (its own, by policy); only the trigger below writes it.
REVOKE ALL ON public.task_event_purges FROM PUBLIC;
GRANT SELECT ON public.task_event_purges TO todo_app;
ALTER TABLE public.task_event_purges ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.task_event_purges FORCE ROW LEVEL SECURITY;

-- Every removal of events is recorded, whoever removes them: the purges of app.publish_task_event
-- and a DELETE by hand from a role that bypasses row-level security (a DBA on Neon) alike. Runs as
-- its owner, as the purge does; todo_app may not call it (triggers fire without EXECUTE).
CREATE FUNCTION app.record_event_purge() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = ''
AS $$
BEGIN
    INSERT INTO public.task_event_purges AS recorded (user_id, purged_through)
        SELECT removed.user_id, pg_catalog.max(removed.id) FROM removed GROUP BY removed.user_id
        ON CONFLICT (user_id) DO UPDATE
            SET purged_through = GREATEST(recorded.purged_through, excluded.purged_through);
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION app.record_event_purge() FROM PUBLIC;

CREATE TRIGGER task_events_record_purge
    AFTER DELETE ON public.task_events
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT
    EXECUTE FUNCTION app.record_event_purge();
