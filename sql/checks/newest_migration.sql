-- The newest migration applied to this database, as its last migrate recorded it
-- (sql/mark_newest_migration.sql), or no row: not recorded (migrated by a release before the record,
-- or not migrated at all). Read from the catalog, which a login role that owns nothing may read.
SELECT d.description
FROM pg_catalog.pg_description AS d
JOIN pg_catalog.pg_class AS c ON c.oid = d.objoid
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
WHERE d.classoid = 'pg_catalog.pg_class'::pg_catalog.regclass
  AND d.objsubid = 0
  AND n.nspname = 'public'
  AND c.relname = '_yoyo_migration';
