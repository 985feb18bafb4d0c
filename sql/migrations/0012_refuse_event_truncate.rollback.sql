-- Back to 0011: a TRUNCATE of public.task_events is let through, unrecorded.
DROP TRIGGER task_events_refuse_truncate ON public.task_events;
DROP FUNCTION app.refuse_event_truncate();
