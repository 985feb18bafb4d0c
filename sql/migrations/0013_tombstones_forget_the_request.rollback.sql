-- Back to 0012: a key keeps its request hash after its task is deleted, and request_hash is NOT NULL
-- again. A tombstone whose hash was forgotten has none to give back, so it goes, as 0007's rollback
-- drops tombstones: a retry of its key within IDEMPOTENCY_TTL_HOURS then creates the task anew.
DROP TRIGGER idempotency_keys_forget_request_of_deleted_task ON public.idempotency_keys;
DROP FUNCTION app.forget_request_hash();

ALTER TABLE public.idempotency_keys NO FORCE ROW LEVEL SECURITY;
DELETE FROM public.idempotency_keys WHERE request_hash IS NULL;
ALTER TABLE public.idempotency_keys FORCE ROW LEVEL SECURITY;
ALTER TABLE public.idempotency_keys ALTER COLUMN request_hash SET NOT NULL;
