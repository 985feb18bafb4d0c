-- depends: 0011_purge_every_users_events
--
-- A TRUNCATE of public.task_events would remove events without a record: no row trigger fires, so
-- neither 0010's record of purges nor 0008's counts would hear of it, and a stream resumed from 0
-- (or from where a purge stopped) would then miss what was removed, without a reset. It is refused,
-- with the DELETE that does the same and is recorded.
CREATE FUNCTION app.refuse_event_truncate() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = ''
AS $$
BEGIN
    RAISE EXCEPTION 'TRUNCATE of public.task_events is refused: what it removes would not be recorded'
        USING ERRCODE = 'feature_not_supported',
              HINT = 'DELETE FROM public.task_events removes the same, and records it for the streams'
                     ' that resume (sql/migrations/0010_event_purges.sql).';
END
$$;
REVOKE EXECUTE ON FUNCTION app.refuse_event_truncate() FROM PUBLIC;

CREATE TRIGGER task_events_refuse_truncate
    BEFORE TRUNCATE ON public.task_events
    FOR EACH STATEMENT
    EXECUTE FUNCTION app.refuse_event_truncate();
