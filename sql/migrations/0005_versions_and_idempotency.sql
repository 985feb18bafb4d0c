-- depends: 0004_isolation_baseline
--
-- What the frontend needs to write safely: a version per task, from which the API derives the
-- task's ETag (If-Match decides in the same UPDATE or DELETE whether the write happens), and a
-- table of idempotency keys, so that a create retried with the same Idempotency-Key is answered
-- with the first response instead of making a second task.

-- The version moves exactly when the task's content does: the trigger fires only when a column
-- really changes, so an idempotent retry leaves version and updated_at alone. todo_app cannot
-- write it (the column grants of 0002_tasks_schema.sql name only the fields a client writes).
ALTER TABLE public.tasks ADD COLUMN version integer NOT NULL DEFAULT 1;

CREATE FUNCTION app.record_change() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = ''
AS $$
BEGIN
    NEW.updated_at := pg_catalog.clock_timestamp();
    NEW.version := OLD.version + 1;
    RETURN NEW;
END
$$;
REVOKE EXECUTE ON FUNCTION app.record_change() FROM PUBLIC;

DROP TRIGGER tasks_touch_updated_at ON public.tasks;
DROP FUNCTION app.touch_updated_at();
CREATE TRIGGER tasks_record_change
    BEFORE UPDATE ON public.tasks
    FOR EACH ROW
    WHEN (OLD.* IS DISTINCT FROM NEW.*)
    EXECUTE FUNCTION app.record_change();

-- An Idempotency-Key belongs to its user: the key is unique per user only, so a key can never
-- tell one user about another's (unique checks see every row). The response is the created task
-- as the database returned it, so that a replay renders exactly the first response.
CREATE TABLE public.idempotency_keys (
    user_id      text        NOT NULL REFERENCES public.users (id) ON DELETE CASCADE,
    key          text        NOT NULL CHECK (key ~ '^[!-~]{1,255}$'),
    request_hash text        NOT NULL CHECK (request_hash ~ '^[0-9a-f]{64}$'),
    response     jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
-- Expired keys are deleted by their own user's next keyed create (no background worker).
CREATE INDEX idempotency_keys_by_owner_age ON public.idempotency_keys (user_id, created_at);

REVOKE ALL ON public.idempotency_keys FROM PUBLIC;
GRANT SELECT, INSERT (user_id, key, request_hash, response), DELETE ON public.idempotency_keys TO todo_app;
ALTER TABLE public.idempotency_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.idempotency_keys FORCE ROW LEVEL SECURITY;
