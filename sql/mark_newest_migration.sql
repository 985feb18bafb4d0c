-- The last statement of every `todo-api migrate` and plain `yoyo apply` (through
-- sql/migrations/post-apply-policies.py): the id of the newest migration applied, written where a role
-- that owns nothing can read it, as the comment on yoyo's own table (the catalog is readable by every
-- role; the table is the owner's alone).
--
-- `todo-api serve` reads it (sql/checks/newest_migration.sql) when it refuses a schema that is not the
-- one its release ships, to say in one line which it is: a release behind (run `todo-api migrate`), or
-- migrated by a newer release (serve that release). It never decides whether to serve.
--
-- A `yoyo rollback` leaves it naming the migration rolled back (yoyo runs no hook after a rollback),
-- until the release before's `todo-api migrate` (the next step docs/operations.md gives after a
-- rollback) writes it again; a role that may read yoyo's table reads that instead
-- (sql/checks/newest_migration.sql).
DO $$
BEGIN
    EXECUTE pg_catalog.format(
        'COMMENT ON TABLE public._yoyo_migration IS %L',
        (SELECT pg_catalog.max(migration_id) FROM public._yoyo_migration));
END
$$;
