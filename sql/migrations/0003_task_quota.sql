-- depends: 0002_tasks_schema
--
-- A task quota, enforced by the database in the INSERT's own transaction, so that one user cannot
-- fill the table (or make every list and search of theirs ever longer).
--
-- Each user's count of tasks is kept in app.task_counts by a trigger; the INSERT that would pass
-- the limit fails with the check violation "tasks_per_user_limit" and nothing is created.
-- Concurrent creates of one user queue on their counter row, so none can slip past the limit, and
-- the check costs the same whether the user has ten tasks or ten thousand. The limit is the API's
-- MAX_TASKS_PER_USER, which every transaction sets as app.max_tasks_per_user; without it (a DBA at
-- psql) there is none.

-- The counts are the database's own bookkeeping: todo_app cannot read or write them at all. The
-- trigger function runs as its owner (the migrating role) for that reason; it touches nothing but
-- this table, and todo_app may not call it (triggers fire without EXECUTE).
CREATE TABLE app.task_counts (
    user_id text    PRIMARY KEY,
    tasks   integer NOT NULL CHECK (tasks >= 0)
);
REVOKE ALL ON app.task_counts FROM PUBLIC;

-- Tasks that exist already are counted once; the owner reads them past row-level security.
ALTER TABLE public.tasks NO FORCE ROW LEVEL SECURITY;
INSERT INTO app.task_counts (user_id, tasks)
    SELECT user_id, count(*) FROM public.tasks GROUP BY user_id;
ALTER TABLE public.tasks FORCE ROW LEVEL SECURITY;

CREATE FUNCTION app.count_tasks() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = ''
AS $$
DECLARE
    task_limit integer := nullif(pg_catalog.current_setting('app.max_tasks_per_user', true), '')::integer;
    held integer;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO app.task_counts AS counted (user_id, tasks) VALUES (NEW.user_id, 1)
            ON CONFLICT (user_id) DO UPDATE SET tasks = counted.tasks + 1
            RETURNING counted.tasks INTO held;
        IF held > task_limit THEN
            RAISE EXCEPTION 'user % already has the % tasks allowed', NEW.user_id, task_limit
                USING ERRCODE = 'check_violation', CONSTRAINT = 'tasks_per_user_limit';
        END IF;
    ELSE
        UPDATE app.task_counts SET tasks = tasks - 1 WHERE user_id = OLD.user_id;
    END IF;
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION app.count_tasks() FROM PUBLIC;

CREATE TRIGGER tasks_counted
    AFTER INSERT OR DELETE ON public.tasks
    FOR EACH ROW
    EXECUTE FUNCTION app.count_tasks();
