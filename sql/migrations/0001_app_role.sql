-- The per-request role. The API logs in as an ordinary role (Neon: neondb_owner) and, inside every
-- transaction, switches to todo_app with set_config('role', 'todo_app', true). todo_app cannot log in
-- and cannot bypass row-level security, so the policies in sql/policies/ always apply to it.
--
-- Roles belong to the cluster, not the database: another database on the same cluster may have
-- created todo_app already, so create it only when it is missing.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'todo_app') THEN
        CREATE ROLE todo_app NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOINHERIT;
    END IF;
END
$$;

-- The migrating login role must be able to switch to todo_app. On PostgreSQL 16 and later a
-- CREATEROLE role that creates a role holds it WITH ADMIN but without SET, so grant it explicitly.
GRANT todo_app TO CURRENT_USER;
