-- The newest migration applied to this database, as its last migrate recorded it
-- (sql/mark_newest_migration.sql), or NULL: not recorded (migrated by a release before the record,
-- or not migrated at all). Read from the catalog, which a login role that owns nothing may read.
--
-- And whether this role may read yoyo's own table of applied migrations, which a `yoyo rollback`
-- keeps right where it leaves the record naming the migration it undid: when it may (the schema's
-- owner, as the embedded database and many Neon deployments log in), the newest there is read
-- instead (sql/checks/newest_migration_applied.sql).
SELECT (SELECT d.description
        FROM pg_catalog.pg_description AS d
        JOIN pg_catalog.pg_class AS c ON c.oid = d.objoid
        JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
        WHERE d.classoid = 'pg_catalog.pg_class'::pg_catalog.regclass
          AND d.objsubid = 0
          AND n.nspname = 'public'
          AND c.relname = '_yoyo_migration') AS recorded,
       pg_catalog.to_regclass('public._yoyo_migration') IS NOT NULL
       AND pg_catalog.has_table_privilege('public._yoyo_migration', 'SELECT') AS may_read_applied;
