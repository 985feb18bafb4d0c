-- depends: 0012_refuse_event_truncate
--
-- Deleted means gone, the request hash included. A key whose task was deleted (a tombstone, 0007)
-- kept its request_hash: the sha256, unsalted, of the JSON of the title, description and completed
-- the task was created with. Whoever could read it (a DBA, a backup, a leak) could check a guess at
-- the deleted task's content against it, and so could the user, over HTTP, by retrying the key with
-- guessed bodies. A tombstone needs no hash: its key answers 410 task-deleted whatever the body.
--
-- So the hash goes with the task, in the DELETE's own statement: the foreign key's ON DELETE SET NULL
-- (task_id) from 0007 is carried out as an UPDATE of the key's row (by the table's owner, past
-- row-level security), and that UPDATE fires this table's row triggers like any other; the trigger
-- below clears request_hash as task_id becomes NULL. Nothing else changes for todo_app: it still
-- holds no UPDATE on the table, and may not call the trigger's function.

ALTER TABLE public.idempotency_keys ALTER COLUMN request_hash DROP NOT NULL;

CREATE FUNCTION app.forget_request_hash() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = ''
AS $$
BEGIN
    NEW.request_hash := NULL;
    RETURN NEW;
END
$$;
REVOKE EXECUTE ON FUNCTION app.forget_request_hash() FROM PUBLIC;

CREATE TRIGGER idempotency_keys_forget_request_of_deleted_task
    BEFORE UPDATE OF task_id ON public.idempotency_keys
    FOR EACH ROW
    WHEN (NEW.task_id IS NULL)
    EXECUTE FUNCTION app.forget_request_hash();

-- The tombstones stored before. The owner rewrites rows that FORCEd row-level security would hide
-- from it (the embedded database's owner does not bypass it).
ALTER TABLE public.idempotency_keys NO FORCE ROW LEVEL SECURITY;
UPDATE public.idempotency_keys SET request_hash = NULL WHERE task_id IS NULL;
ALTER TABLE public.idempotency_keys FORCE ROW LEVEL SECURITY;
