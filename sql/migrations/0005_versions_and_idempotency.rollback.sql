DROP TABLE public.idempotency_keys;

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
DROP TRIGGER tasks_record_change ON public.tasks;
CREATE TRIGGER tasks_touch_updated_at
    BEFORE UPDATE ON public.tasks
    FOR EACH ROW
    WHEN (OLD.* IS DISTINCT FROM NEW.*)
    EXECUTE FUNCTION app.touch_updated_at();
DROP FUNCTION app.record_change();
ALTER TABLE public.tasks DROP COLUMN version;
