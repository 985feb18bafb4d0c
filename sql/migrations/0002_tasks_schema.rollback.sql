DROP TABLE public.tasks;
DROP TABLE public.users;
REVOKE USAGE ON SCHEMA public FROM todo_app;
DROP SCHEMA app CASCADE;
