-- depends: 0016_deleted_tasks_leave_no_copy_in_events
--
-- What a write's event purges cost is bounded in rows, and they read only what they remove. Found on
-- a database of 100,000 users and 1.15 million events, read plan by plan with auto_explain:
--
-- 1. The drain of other users' expired events (0011) was bounded in users (ten), not in rows: up to
--    ten times MAX_TASKS_PER_USER events removed inside an unrelated user's write. With twenty-five
--    quiet users whose 10,000 events had expired, every create of anyone took 290-380 ms, and with
--    DB_STATEMENT_TIMEOUT_MS at 150 nearly every write was a 503 statement-timeout; as each rolled
--    back, the next picked the same users, so the backlog never shrank. A write now removes at most
--    100 events in all, its writer's own first, then other users', the oldest first; a backlog goes
--    over the next writes. Nothing waits on that: an event older than app.events_retention_hours is
--    never sent, stored or not (api/events/queries.py).
-- 2. The drain compared ids with coalesce(...), which under row-level security (the embedded
--    database's owner is held to it) kept the comparison out of the index: it read every kept event
--    of a user to remove the expired few (9,217 heap pages for 81 rows). Each purge now finds the
--    events that go first, and removes them by id.
-- 3. A user's first kept event was looked for with `user_id = $1 ... ORDER BY id LIMIT 1`, which the
--    planner may serve by walking the primary key, everyone's events in id order, expecting to meet
--    the user's soon (287 ms on a small database where one user held a large share of the events).
--    Each purge now walks the user's events in task_events_by_owner, oldest first, and stops at the
--    first that stays.
-- 4. task_events_by_owner carries created_at too, so that walk, and a stream's start
--    (api/events/queries.py, `_START`), read the index instead of one heap page per event.
-- 5. Events added or removed by hand are counted (app.count_events_added_by_hand and
--    app.recount_events_removed_by_hand, below), and every user's count is made right once, here.
--
-- Locks: the index is rebuilt and the counts made right under an ACCESS EXCLUSIVE lock on
-- public.task_events, taken after the one on public.tasks, in the order an API write takes them
-- (sql/lock_policy_tables.sql), so writes wait for this migration rather than deadlock with it
-- (3.2 s for 1.15 million events: docs/operations.md, "Upgrading a fleet, and rolling back").
LOCK TABLE public.tasks, public.task_events IN ACCESS EXCLUSIVE MODE;

CREATE INDEX task_events_by_owner_with_time ON public.task_events (user_id, id) INCLUDE (created_at);
DROP INDEX public.task_events_by_owner;
ALTER INDEX public.task_events_by_owner_with_time RENAME TO task_events_by_owner;

-- Every user's count made right once. Nothing counted events a DBA added or removed by hand before
-- (the triggers below count them from now on), and a count left above what a user holds would have
-- the purge by count remove events they are entitled to keep. The owner reads every user's events, which
-- FORCEd row-level security would hide from it (the embedded database's owner does not bypass it).
ALTER TABLE public.task_events NO FORCE ROW LEVEL SECURITY;
WITH held AS (
    SELECT e.user_id, pg_catalog.count(*)::integer AS events FROM public.task_events AS e GROUP BY e.user_id
), first AS (
    SELECT DISTINCT ON (e.user_id) e.user_id, e.created_at FROM public.task_events AS e ORDER BY e.user_id, e.id
)
INSERT INTO app.task_event_counts AS counted (user_id, events, first_event_at)
    SELECT held.user_id, held.events, first.created_at FROM held JOIN first USING (user_id)
    ON CONFLICT (user_id) DO UPDATE SET events = excluded.events, first_event_at = excluded.first_event_at
    WHERE (counted.events, counted.first_event_at) IS DISTINCT FROM (excluded.events, excluded.first_event_at);
DELETE FROM app.task_event_counts AS counted
    WHERE NOT EXISTS (SELECT FROM public.task_events AS e WHERE e.user_id = counted.user_id);
ALTER TABLE public.task_events FORCE ROW LEVEL SECURITY;

-- Removes the oldest of a user's events that are due to go, at most `most` of them, keeps the user's
-- counts row right, and says how many went. Due: the `excess` oldest (the count over
-- MAX_TASKS_PER_USER), and every event before the user's first at or after `kept_since` (none
-- without app.events_retention_hours, as at psql). The event `written` by the write that purges (none
-- for another user's) stays whatever the count says: a count a DBA's change by hand left high would
-- otherwise have it removed, and every event before it. What goes is a prefix of the user's events, as
-- every purge removes (0008), and 0010's trigger records it. The caller holds the user's counts row,
-- as the user's own writes lock it, so no event of theirs is written meanwhile. A user left with no
-- event loses the row too (their next write makes it again), so no later write picks them again.
CREATE FUNCTION app.purge_events(who text, kept_since timestamptz, excess integer, most integer, written bigint)
    RETURNS integer
    LANGUAGE plpgsql
    SET search_path = ''
AS $$
DECLARE
    event record;
    due bigint[] := '{}';
    first_kept bigint;
    first_kept_at timestamptz;
    purged integer := 0;
BEGIN
    -- The user's events oldest first, up to the first that stays: what is read is what goes, and one
    -- more. `user_id BETWEEN who AND who ... ORDER BY user_id, id LIMIT` is served by
    -- task_events_by_owner alone: with `user_id = who ... ORDER BY id` the planner may walk the
    -- primary key instead (3 above), and without the LIMIT read and sort every event of a user who
    -- holds most of them.
    FOR event IN
        SELECT e.id, e.created_at FROM public.task_events AS e
        WHERE e.user_id BETWEEN who AND who
        ORDER BY e.user_id, e.id
        LIMIT most + 1
    LOOP
        IF event.id >= written
           OR pg_catalog.cardinality(due) >= most
           OR pg_catalog.cardinality(due) >= coalesce(excess, 0)
              AND (kept_since IS NULL OR event.created_at >= kept_since) THEN
            first_kept := event.id;
            first_kept_at := event.created_at;
            EXIT;
        END IF;
        due := due || event.id;
    END LOOP;

    -- By id, each one: a range of ids may be read through the primary key, everyone's events in it.
    IF pg_catalog.cardinality(due) > 0 THEN
        DELETE FROM public.task_events AS e WHERE e.user_id = who AND e.id = ANY (due);
        GET DIAGNOSTICS purged = ROW_COUNT;
    END IF;
    IF first_kept_at IS NULL THEN
        DELETE FROM app.task_event_counts WHERE user_id = who;
    ELSE
        -- Never below none: a count a DBA's change by hand left short (an event moved to this user)
        -- must not make every write that drains this user fail its CHECK. And when the event written
        -- is the first kept, the newest is the only one left, whatever the count said.
        UPDATE app.task_event_counts
            SET events = CASE WHEN first_kept = written THEN 1 ELSE greatest(events - purged, 0) END,
                first_event_at = first_kept_at
            WHERE user_id = who;
    END IF;
    RETURN purged;
END
$$;
REVOKE EXECUTE ON FUNCTION app.purge_events(text, timestamptz, integer, integer, bigint) FROM PUBLIC;

-- Events added or removed by hand (docs/operations.md shows a DBA's DELETE) left the user's counts row
-- as it was. A removal left it counting events that were gone, for good, so the user's own purge by
-- count then removed events they were entitled to keep; an insertion left it short, and a later
-- removal or purge of those events took it below none, which its CHECK refuses: every write that
-- drained that user failed. Both are now counted, as 0016's app.keep_first_event_time follows an
-- event's time changed by hand. Only for a statement of the caller's own (the WHEN clauses): the
-- trigger on tasks writes and purges events within its own bookkeeping, and pays nothing for these.
-- A user left with no event keeps a row of none until a write's drain finds them (its first event
-- time is -infinity) and removes it.
CREATE FUNCTION app.count_events_added_by_hand() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = ''
AS $$
BEGIN
    INSERT INTO app.task_event_counts AS counted (user_id, events, first_event_at)
        VALUES (NEW.user_id, 1, NEW.created_at)
        ON CONFLICT (user_id) DO UPDATE
            SET events = counted.events + 1,
                first_event_at = CASE WHEN counted.events = 0 THEN excluded.first_event_at
                                      ELSE counted.first_event_at END;
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION app.count_events_added_by_hand() FROM PUBLIC;

-- A row trigger, whose WHEN is tested as each row is written: a statement trigger with the rows it
-- wrote would have every API write keep a copy of its event for it.
CREATE TRIGGER task_events_count_additions_by_hand
    AFTER INSERT ON public.task_events
    FOR EACH ROW
    WHEN (pg_catalog.pg_trigger_depth() = 0)
    EXECUTE FUNCTION app.count_events_added_by_hand();

-- A DBA's DELETE locks the events it removes and then, here, the users' counts rows; a write's drain
-- locks a user's counts row and then removes their events. The two can deadlock: Postgres then cancels
-- one, the API runs its write once more, and a DBA runs the DELETE again (docs/operations.md).
CREATE FUNCTION app.recount_events_removed_by_hand() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = ''
AS $$
BEGIN
    UPDATE app.task_event_counts AS counted
        SET events = greatest(counted.events - gone.events, 0),
            first_event_at = coalesce(
                (SELECT e.created_at FROM public.task_events AS e
                 WHERE e.user_id BETWEEN counted.user_id AND counted.user_id
                 ORDER BY e.user_id, e.id LIMIT 1),
                '-infinity')
        FROM (SELECT removed.user_id, pg_catalog.count(*)::integer AS events
              FROM removed GROUP BY removed.user_id) AS gone
        WHERE counted.user_id = gone.user_id;
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION app.recount_events_removed_by_hand() FROM PUBLIC;

CREATE TRIGGER task_events_recount_after_removal_by_hand
    AFTER DELETE ON public.task_events
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT
    WHEN (pg_catalog.pg_trigger_depth() = 0)
    EXECUTE FUNCTION app.recount_events_removed_by_hand();

-- As in 0016, with both purges made by app.purge_events, within one share of 100 events a write.
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
    -- The most events one write removes, its own and other users' together.
    share integer := 100;
    owner text;
    written bigint;
    held integer;
    first_at timestamptz;
    kept_since timestamptz;
    stale text;
BEGIN
    owner := CASE WHEN TG_OP = 'DELETE' THEN OLD.user_id ELSE NEW.user_id END;

    INSERT INTO app.task_event_counts AS counted (user_id, events) VALUES (owner, 1)
        ON CONFLICT (user_id) DO UPDATE SET events = counted.events + 1
        RETURNING counted.events, counted.first_event_at INTO held, first_at;

    IF TG_OP = 'DELETE' THEN
        UPDATE public.task_events SET task = NULL
            WHERE user_id = owner AND task_id = OLD.id AND task IS NOT NULL;
        INSERT INTO public.task_events (user_id, kind, task_id) VALUES (owner, 'task.deleted', OLD.id)
            RETURNING id INTO written;
    ELSE
        INSERT INTO public.task_events (user_id, kind, task_id, task)
            VALUES (owner, CASE TG_OP WHEN 'INSERT' THEN 'task.created' ELSE 'task.updated' END,
                    NEW.id, pg_catalog.to_jsonb(NEW))
            RETURNING id INTO written;
    END IF;

    kept_since := pg_catalog.now() - pg_catalog.make_interval(secs => kept_hours * 3600);
    IF first_at < kept_since OR held > kept_events THEN
        share := share - app.purge_events(owner, kept_since, held - kept_events, share, written);
    END IF;

    -- Every user's expired events, not only this writer's: the same purge by age for up to ten users
    -- whose first kept event is past the retention, oldest first, while the share lasts. A user's
    -- counts row is locked before their events are read; one that another write holds is skipped,
    -- so no write waits on another user's.
    IF share > 0 THEN
        FOR stale IN
            SELECT counted.user_id FROM app.task_event_counts AS counted
            WHERE counted.first_event_at < kept_since
            ORDER BY counted.first_event_at
            LIMIT 10
            FOR UPDATE SKIP LOCKED
        LOOP
            share := share - app.purge_events(stale, kept_since, 0, share, NULL);
            EXIT WHEN share <= 0;
        END LOOP;
    END IF;

    IF pg_catalog.current_setting('app.notify_after_commit', true) IS DISTINCT FROM 'on' THEN
        PERFORM pg_catalog.pg_notify('task_events', pg_catalog.left(pg_catalog.md5(owner), 8));
    END IF;
    RETURN NULL;
END
$$;
