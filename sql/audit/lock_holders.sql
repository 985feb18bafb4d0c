-- The sessions that hold an ACCESS EXCLUSIVE lock on a relation of this database: the one lock a
-- catalog read such as pg_get_expr(..., polrelid) waits for (an ALTER TABLE, a LOCK TABLE, a
-- migration in progress). Read when the isolation check or the audit gave up on its lock_timeout,
-- to name who held it; end that session's transaction, or wait for it, and run it again.
--     psql "$DATABASE_URL" -f sql/audit/lock_holders.sql

SELECT a.pid,
       a.usename::text AS user_name,
       a.application_name,
       pg_catalog.format('%I.%I', n.nspname, c.relname) AS relation
FROM pg_catalog.pg_locks l
JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
JOIN pg_catalog.pg_class c ON c.oid = l.relation
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE l.granted
  AND l.locktype = 'relation'
  AND l.mode = 'AccessExclusiveLock'
  AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
  AND l.pid <> pg_catalog.pg_backend_pid()
ORDER BY a.pid, relation;
