-- depends: 0013_tombstones_forget_the_request
--
-- Titles sort by Unicode code point (README: `Z` before `a`, `e` with an acute accent after `z`),
-- whatever the locale the database was created with. The list now says so itself: it orders by
-- `title COLLATE "C"`, and compares a page's cursor with that too (api/tasks/listing.py, SORT_KEYS).
-- Before, it used the database's default collation: code point order on a database made with the C
-- or C.UTF-8 locale, but on one made with a language's locale (en_US.UTF-8, common on Debian and
-- Amazon RDS) "alpha, Buy MILK, Zebra".
--
-- An index serves an ORDER BY only in its own collation, so tasks_by_owner_title (0002), built in
-- the default one, is rebuilt in "C": without it the list by title would read and sort every one of
-- the user's tasks for each page. It keeps its name and columns; only the collation of title changes.
--
-- Locks: the drop takes an ACCESS EXCLUSIVE lock on public.tasks, so it is taken first, before the
-- build: reads and writes of tasks wait for the build and this migration's commit. Building under
-- CREATE INDEX's SHARE lock alone (reads go on, writes wait) and dropping after deadlocked with a
-- create with an Idempotency-Key: it reads tasks and then inserts into them in one statement, so it
-- held a read lock, waiting for the build, that the drop then waited for; Postgres cancelled the
-- migration, at every try while such creates kept coming (tests/db/test_migration_locks.py).
LOCK TABLE public.tasks IN ACCESS EXCLUSIVE MODE;
CREATE INDEX tasks_by_owner_title_by_code_point ON public.tasks (user_id, title COLLATE "C", id);
DROP INDEX public.tasks_by_owner_title;
ALTER INDEX public.tasks_by_owner_title_by_code_point RENAME TO tasks_by_owner_title;
