-- After an erasure (forget_user.sql): the tables it deleted from, vacuumed and their statistics
-- sampled again, so that no planner statistic quotes the erased user's rows.
--
--     psql "${MIGRATION_DATABASE_URL:-$DATABASE_URL}" -X -f sql/admin/vacuum_erased_tables.sql
--
-- Run it as the tables' owner or a superuser, once forget_user.sql has committed. It takes no lock the
-- API's requests wait for (VACUUM and ANALYZE take SHARE UPDATE EXCLUSIVE), so it may run while the
-- API serves; it is worth running after a batch of erasures rather than after each.
--
-- ANALYZE keeps a sample of each column in pg_statistic: its most common values and histogram quote
-- rows verbatim (titles, descriptions, emails, events). A new ANALYZE replaces them with a sample of
-- the rows left, but only when it finds any: a table left with no row (the erased user was the last
-- to have rows in it) keeps the old sample, the erased rows included. So the statistics of every such
-- table are cleared instead: by pg_clear_attribute_stats (PostgreSQL 18 on, for the tables' owner), or,
-- before 18, by a superuser deleting them from pg_statistic; as anyone else there, the script stops
-- with an error naming the table (where no one is a superuser, Neon before 18, they stay until an
-- ANALYZE finds rows in the table again). The planner has no statistics for an empty table to lose.
--
-- What else outlives the rows (data files and WAL until reused, backups, Neon's history) is in
-- docs/security.md, "What leaves the database".

\set ON_ERROR_STOP on

VACUUM (ANALYZE) public.users, public.tasks, public.idempotency_keys, public.task_events,
    public.task_event_purges, app.task_counts, app.task_event_counts;

-- pg_class.reltuples is what the ANALYZE above counted: 0 for a table it found empty.
DO $$
DECLARE
    emptied record;
BEGIN
    FOR emptied IN
        SELECT c.oid::regclass AS name, n.nspname AS schema_name, c.relname AS table_name
        FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE c.oid IN ('public.users'::regclass, 'public.tasks'::regclass, 'public.idempotency_keys'::regclass,
                        'public.task_events'::regclass, 'public.task_event_purges'::regclass,
                        'app.task_counts'::regclass, 'app.task_event_counts'::regclass)
          AND c.reltuples = 0
        ORDER BY 1
    LOOP
        IF pg_catalog.current_setting('server_version_num')::int >= 180000 THEN
            PERFORM pg_catalog.pg_clear_attribute_stats(emptied.schema_name, emptied.table_name, a.attname, false)
            FROM pg_catalog.pg_attribute a
            WHERE a.attrelid = emptied.name AND a.attnum > 0 AND NOT a.attisdropped;
        ELSIF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
            DELETE FROM pg_catalog.pg_statistic WHERE starelid = emptied.name;
        ELSE
            RAISE EXCEPTION 'table % has no row left, and its statistics may still quote its deleted rows: before PostgreSQL 18 only a superuser can clear them; run this script as one', emptied.name;
        END IF;
        RAISE NOTICE 'table % has no row left: its statistics were cleared', emptied.name;
    END LOOP;
END
$$;
