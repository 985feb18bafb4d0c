-- Back to 0013: tasks_by_owner_title in the database's default collation. The API's list by title,
-- which orders COLLATE "C", then sorts each user's tasks on a database whose default is not C.
-- Built before the other is dropped, as in 0014, so reads of tasks wait only for the commit.
CREATE INDEX tasks_by_owner_title_by_default ON public.tasks (user_id, title, id);
DROP INDEX public.tasks_by_owner_title;
ALTER INDEX public.tasks_by_owner_title_by_default RENAME TO tasks_by_owner_title;
