DROP TRIGGER tasks_counted ON public.tasks;
DROP FUNCTION app.count_tasks();
DROP TABLE app.task_counts;
