-- Back to 0014: a version below 1 and times Python cannot hold may be stored again (by hand only;
-- todo_app writes neither column). Rows 0015 repaired keep their repaired values: the ones they
-- had could not be rendered, and are not known any more.
ALTER TABLE public.tasks
    DROP CONSTRAINT tasks_version_from_one,
    DROP CONSTRAINT tasks_times_readable;
