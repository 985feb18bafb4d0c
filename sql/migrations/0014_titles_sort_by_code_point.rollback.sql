-- Back to 0013: tasks_by_owner_title in the database's default collation. The API's list by title,
-- which orders COLLATE "C", then sorts each user's tasks on a database whose default is not C.
-- The lock the drop takes is taken first, as in 0014 (which says why): tasks wait for the build.
LOCK TABLE public.tasks IN ACCESS EXCLUSIVE MODE;
CREATE INDEX tasks_by_owner_title_by_default ON public.tasks (user_id, title, id);
DROP INDEX public.tasks_by_owner_title;
ALTER INDEX public.tasks_by_owner_title_by_default RENAME TO tasks_by_owner_title;
