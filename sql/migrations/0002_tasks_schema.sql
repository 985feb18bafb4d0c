-- depends: 0001_app_role
--
-- The schema the API serves: users and their tasks, plus the private `app` schema holding the
-- helpers that the row-level security policies (sql/policies/) are written with.
--
-- Nothing here decides who sees a row; that is the policies' job. This file creates the tables,
-- grants todo_app exactly the privileges the API needs, and turns row-level security on and FORCEs
-- it, so a table without policies shows todo_app nothing at all.

CREATE SCHEMA app;
REVOKE ALL ON SCHEMA app FROM PUBLIC;
GRANT USAGE ON SCHEMA app TO todo_app;
-- Functions are executable by PUBLIC by default; in this schema only explicit grants count.
ALTER DEFAULT PRIVILEGES IN SCHEMA app REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

-- The caller the API vouches for, set per transaction with set_config('app.user_id', ..., true).
-- After such a transaction ends the setting reads as '' (not NULL) on that connection, so '' means
-- "nobody": no policy can match it.
CREATE FUNCTION app.current_user_id() RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    SET search_path = ''
AS $$
    SELECT nullif(pg_catalog.current_setting('app.user_id', true), '')
$$;
REVOKE EXECUTE ON FUNCTION app.current_user_id() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.current_user_id() TO todo_app;

-- updated_at moves only when a row's content really changes, so an idempotent retry leaves it alone.
-- clock_timestamp(), not now(): a transaction that waited for the row lock must not stamp the row
-- with its earlier start time, or the last write could look older than the one before it.
CREATE FUNCTION app.touch_updated_at() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = ''
AS $$
BEGIN
    NEW.updated_at := pg_catalog.clock_timestamp();
    RETURN NEW;
END
$$;
REVOKE EXECUTE ON FUNCTION app.touch_updated_at() FROM PUBLIC;

-- Called by the files in sql/policies/ so that applying a file replaces every policy on its table:
-- the files are always exactly what is live. Only the migrating role may run it.
CREATE PROCEDURE app.drop_all_policies(target regclass)
    LANGUAGE plpgsql
    SET search_path = ''
AS $$
DECLARE
    policy_name name;
BEGIN
    FOR policy_name IN
        SELECT polname FROM pg_catalog.pg_policy WHERE polrelid = target
    LOOP
        EXECUTE pg_catalog.format('DROP POLICY %I ON %s', policy_name, target);
    END LOOP;
END
$$;
REVOKE EXECUTE ON PROCEDURE app.drop_all_policies(regclass) FROM PUBLIC;

-- Better Auth user ids are opaque strings (32 base62 characters by default), not UUIDs.
CREATE TABLE public.users (
    id         text        PRIMARY KEY CHECK (char_length(id) BETWEEN 1 AND 255),
    email      text        CHECK (char_length(email) <= 320),
    name       text        CHECK (char_length(name) <= 200),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE public.tasks (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     text        NOT NULL REFERENCES public.users (id) ON DELETE CASCADE,
    title       text        NOT NULL CHECK (char_length(title) BETWEEN 1 AND 200),
    description text        CHECK (char_length(description) <= 1000),
    completed   boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Every policy filters on user_id first; each index then serves one list order, scanned forwards or
-- backwards, with id as the tie-breaker that makes keyset paging exact.
CREATE INDEX tasks_by_owner_created ON public.tasks (user_id, created_at, id);
CREATE INDEX tasks_by_owner_updated ON public.tasks (user_id, updated_at, id);
CREATE INDEX tasks_by_owner_title   ON public.tasks (user_id, title, id);

CREATE TRIGGER tasks_touch_updated_at
    BEFORE UPDATE ON public.tasks
    FOR EACH ROW
    WHEN (OLD.* IS DISTINCT FROM NEW.*)
    EXECUTE FUNCTION app.touch_updated_at();

-- Privileges: nothing by default, then exactly what the API does. Ids, owners and timestamps are
-- the database's to set, so todo_app may not write those columns at all.
REVOKE ALL ON public.users, public.tasks FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO todo_app;
GRANT SELECT, INSERT (id, email, name), UPDATE (email, name) ON public.users TO todo_app;
GRANT SELECT, INSERT (user_id, title, description, completed), UPDATE (title, description, completed), DELETE
    ON public.tasks TO todo_app;

-- FORCE makes the policies apply to the tables' owner too; BYPASSRLS roles (every Neon console role)
-- still skip them, which is why the API always switches to todo_app.
ALTER TABLE public.users ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.users FORCE ROW LEVEL SECURITY;
ALTER TABLE public.tasks ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.tasks FORCE ROW LEVEL SECURITY;
