-- Back to 0009: resuming from Last-Event-ID 0 no longer knows whether events were purged.
DROP TRIGGER task_events_record_purge ON public.task_events;
DROP FUNCTION app.record_event_purge();
DROP TABLE public.task_event_purges;
