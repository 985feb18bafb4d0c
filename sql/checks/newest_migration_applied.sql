-- The newest migration applied, from yoyo's own table: right after a `yoyo rollback` too. Read only
-- by a role that may (sql/checks/newest_migration.sql says when); the schema's owner alone may.
SELECT pg_catalog.max(migration_id) FROM public._yoyo_migration;
