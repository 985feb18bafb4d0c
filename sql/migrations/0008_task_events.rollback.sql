DROP TRIGGER tasks_published_on_change ON public.tasks;
DROP TRIGGER tasks_published_on_write ON public.tasks;
DROP FUNCTION app.publish_task_event();
DROP TABLE app.task_event_counts;
DROP TABLE public.task_events;
