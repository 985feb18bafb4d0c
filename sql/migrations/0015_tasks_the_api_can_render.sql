-- depends: 0014_titles_sort_by_code_point
--
-- Every row of public.tasks is one the API can render. The API answers with a model (TaskPublic,
-- api/tasks/models.py) that refuses a version below 1 and a time Python cannot hold; a row breaking
-- either was stored only by hand (a DBA at psql: todo_app writes neither column), but then the
-- list of its user was a 500, and its event (the trigger copies the row) cut every stream that
-- reached it, for as long as events are kept. The titles' and descriptions' limits are 0002's and
-- 0007's CHECKs; these two were missing. tests/db/test_schema_agreement.py checks both sides agree.
--
-- 1. version: the ETag is "<id>.<version>" and a task's first version is 1 (the column's default);
--    the trigger only ever adds 1.
-- 2. created_at and updated_at: a Python datetime, years 1 to 9999 (in UTC, the TimeZone every API
--    transaction pins), so neither infinity nor a year past 9999, both of which timestamptz stores.
--
-- Rows stored before that break these are repaired once, so the CHECKs can be added: a version
-- below 1 becomes 1 (no client holds its ETag: nothing could render it), a time out of range the
-- nearest one in range, which keeps the task's place in the lists by time. The repair bypasses
-- app.record_change, which would add 1 to the bad version and restamp updated_at; a repaired time
-- is still published to streams as task.updated (tasks_published_on_change). Events stored before
-- keep the row as it was: a stream that meets one tells its client to reset (api/events/stream.py).
--
-- Locks: adding a CHECK scans public.tasks under an ACCESS EXCLUSIVE lock, so reads and writes of
-- tasks wait for the scan and this migration's commit.

-- The owner rewrites rows that FORCEd row-level security would hide from it.
ALTER TABLE public.tasks NO FORCE ROW LEVEL SECURITY;
ALTER TABLE public.tasks DISABLE TRIGGER tasks_record_change;
UPDATE public.tasks
SET version = greatest(version, 1),
    created_at = greatest(least(created_at, '9999-12-31 23:59:59.999999+00'), '0001-01-01 00:00:00+00'),
    updated_at = greatest(least(updated_at, '9999-12-31 23:59:59.999999+00'), '0001-01-01 00:00:00+00')
WHERE version < 1
   OR created_at NOT BETWEEN '0001-01-01 00:00:00+00' AND '9999-12-31 23:59:59.999999+00'
   OR updated_at NOT BETWEEN '0001-01-01 00:00:00+00' AND '9999-12-31 23:59:59.999999+00';
ALTER TABLE public.tasks ENABLE TRIGGER tasks_record_change;
ALTER TABLE public.tasks FORCE ROW LEVEL SECURITY;

ALTER TABLE public.tasks
    ADD CONSTRAINT tasks_version_from_one CHECK (version >= 1),
    ADD CONSTRAINT tasks_times_readable CHECK (
        created_at BETWEEN '0001-01-01 00:00:00+00' AND '9999-12-31 23:59:59.999999+00'
        AND updated_at BETWEEN '0001-01-01 00:00:00+00' AND '9999-12-31 23:59:59.999999+00'
    );
