-- depends: 0013_tombstones_forget_the_request
--
-- Titles sort by Unicode code point (README: `Z` before `a`, `é` after `z`), whatever the locale the
-- database was created with. The list now says so itself: it orders by `title COLLATE "C"`, and
-- compares a page's cursor with that too (api/tasks/listing.py, SORT_KEYS). Before, it used the
-- database's default collation: code point order on a database made with the C or C.UTF-8 locale,
-- but on one made with a language's locale (en_US.UTF-8, common on Debian and Amazon RDS) "alpha,
-- Buy MILK, Zebra".
--
-- An index serves an ORDER BY only in its own collation, so tasks_by_owner_title (0002), built in
-- the default one, is rebuilt in "C": without it the list by title would read and sort every one of
-- the user's tasks for each page. It keeps its name and columns; only the collation of title changes.
--
-- Locks: building the index holds a SHARE lock on public.tasks (reads go on, writes wait) until this
-- migration commits. The old index is dropped only after the new one is built, so the ACCESS
-- EXCLUSIVE lock the drop takes (which stops reads too) is taken last and held only until the
-- commit that follows it.
CREATE INDEX tasks_by_owner_title_by_code_point ON public.tasks (user_id, title COLLATE "C", id);
DROP INDEX public.tasks_by_owner_title;
ALTER INDEX public.tasks_by_owner_title_by_code_point RENAME TO tasks_by_owner_title;
