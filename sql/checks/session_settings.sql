-- The settings that change how row-level security applies or what names mean, as the session that
-- runs this has them, against what the API's statements and the migrations need. Each row is one
-- finding: the setting's name, then the finding in words; no rows: the session is as they need it.
-- The API runs it with sql/checks/isolation.sql, as its login role (a finding refuses `serve`, and
-- a running API's task requests); `todo-api migrate` runs it on the session it would migrate over,
-- and refuses on any finding but `role` (with which a superuser acts as the owner). A DBA can run it
-- by hand with the API's URL and PGOPTIONS:
--     psql "$DATABASE_URL" -f sql/checks/session_settings.sql
-- The setting todo_api.url_setting names the variable the URL came from (default DATABASE_URL).

WITH url_setting(url_setting) AS (
    SELECT COALESCE(NULLIF(pg_catalog.current_setting('todo_api.url_setting', true), ''), 'DATABASE_URL')
),
-- The settings ALTER ROLE ... SET and ALTER DATABASE ... SET give every new session of the login role
-- (the role that logged in: a `role` setting changes current_user), of every role, or of every
-- database, by name. The API runs this with the session's own search_path, which may hold a schema
-- other roles create in: each comparison here is of two values of one type (0 cast to oid for an
-- oid), which only pg_catalog's operator matches exactly, so no operator made elsewhere is picked.
login_role_settings AS (
    SELECT s.setrole = 0::pg_catalog.oid AS every_role, s.setdatabase = 0::pg_catalog.oid AS every_database,
           setting, pg_catalog.split_part(setting, '=', 1) AS name, r.rolname, d.datname
    FROM pg_catalog.pg_db_role_setting s
    CROSS JOIN pg_catalog.unnest(s.setconfig) AS setting
    LEFT JOIN pg_catalog.pg_roles r ON r.oid = s.setrole
    LEFT JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase
    WHERE (s.setrole = 0::pg_catalog.oid OR r.rolname = session_user)
      AND (s.setdatabase = 0::pg_catalog.oid OR d.datname = pg_catalog.current_database())
),
-- The value each setting that changes how row-level security applies, or what names mean, must have
-- in the API's sessions, and what another value does. session_authorization is not here: Postgres
-- applies it to no session from where it is set (ALTER ROLE ... SET, the connection's options), so
-- only its ALTER ROLE/DATABASE SET row, below, can show a mistake.
needed_settings(name, value, otherwise) AS (
    VALUES ('row_security', 'on', 'every query the policies would filter is refused with an error'),
           ('session_replication_role', 'origin',
            'no trigger or foreign-key action fires: the task quota is not kept, no event is written, '
            'and a deleted task''s stored answer stays'),
           -- Requests set their own (empty) and name their tables with their schema; yoyo does not.
           ('search_path', '"$user", public',
            'the migrations'' bookkeeping (yoyo''s), which names its tables unqualified, may reach other '
            'tables or fail'),
           ('role', 'none', 'statements sent outside the switch to todo_app run as that role'),
           -- A superuser's: large objects have no policy, only their grants (sql/checks/reach.sql).
           ('lo_compat_privileges', 'off',
            'every role, todo_app included, may read and write every large object, whatever its grants'),
           -- Every statement of the API sets it, scoped to its transaction; one that did not would
           -- see that user's rows rather than none.
           ('app.user_id', '', 'a transaction as todo_app that does not set it acts as that user '
            'instead of seeing no rows')
),
-- What this session has: a DBA's psql gets the same with the API's DATABASE_URL and environment.
-- pg_settings names where each value came from; role is not in pg_settings (nor is its source), and
-- no configuration file may set it.
session_settings(name, value, source) AS (
    SELECT name, setting, CASE WHEN sourcefile IS NULL THEN source ELSE source || ' ' || sourcefile END
    FROM pg_catalog.pg_settings
    WHERE name IN ('row_security', 'session_replication_role', 'search_path', 'lo_compat_privileges')
    UNION ALL
    SELECT 'role', pg_catalog.current_setting('role'), 'client'
    -- Not in pg_settings either, as no module defines it: Postgres keeps no source for it.
    UNION ALL
    SELECT 'app.user_id', COALESCE(pg_catalog.current_setting('app.user_id', true), ''), 'unknown'
)
-- row_security = off turns every query the policies would filter into an error,
-- session_replication_role = replica silences the triggers that keep events and counts, and
-- search_path, role and session_authorization change which object or which role a name means,
-- lo_compat_privileges = on opens every large object to every role, and
-- app.user_id makes a transaction that forgot to set it act as that user. Any
-- value given to the login role's sessions this way is a finding, even one that is harmless today.
SELECT name AS setting,
       pg_catalog.format('setting %s applies to the login role %s through %s: it changes how row-level '
                         'security applies or what names mean (%s)',
                         setting, session_user,
                         CASE WHEN every_role AND every_database THEN 'ALTER ROLE ALL SET'
                              WHEN every_role THEN pg_catalog.format('ALTER DATABASE %I SET', datname)
                              WHEN every_database THEN pg_catalog.format('ALTER ROLE %I SET', rolname)
                              ELSE pg_catalog.format('ALTER ROLE %I IN DATABASE %I SET', rolname, datname) END,
                         CASE WHEN every_role AND every_database THEN 'ALTER ROLE ALL RESET '
                              WHEN every_role THEN pg_catalog.format('ALTER DATABASE %I RESET ', datname)
                              WHEN every_database THEN pg_catalog.format('ALTER ROLE %I RESET ', rolname)
                              ELSE pg_catalog.format('ALTER ROLE %I IN DATABASE %I RESET ', rolname, datname) END
                         || name)
FROM login_role_settings
WHERE name IN ('row_security', 'session_replication_role', 'search_path', 'role', 'session_authorization',
               'app.user_id', 'lo_compat_privileges')

-- The same settings, as this session has them, from wherever they came: postgresql.conf or ALTER
-- SYSTEM (`configuration file`), the connection's options or PGOPTIONS (`client`), the server's
-- command line. A value set by ALTER ROLE/DATABASE is reported above, once, by the row that sets it.
UNION ALL
SELECT s.name,
       pg_catalog.format('setting %s=%s is in force in the login role %s''s sessions (source: %s): the API '
                         'needs %s=%s, or %s (%s)',
                         s.name, s.value, session_user, s.source, n.name, n.value, n.otherwise,
                         CASE WHEN pg_catalog.starts_with(s.source, 'configuration file')
                              THEN pg_catalog.format('ALTER SYSTEM RESET %s, or remove it from '
                                                     'postgresql.conf, then SELECT pg_reload_conf()', s.name)
                              WHEN s.source = 'client'
                              THEN pg_catalog.format('remove -c %s from the options of %s and from PGOPTIONS',
                                                     s.name, url_setting)
                              WHEN s.source IN ('user', 'database', 'database user')
                              THEN 'it was reset after this session began: restart the API for new sessions'
                              ELSE pg_catalog.format('reset %s where it is set', s.name) END)
FROM session_settings s
CROSS JOIN url_setting
JOIN needed_settings n ON n.name = s.name
WHERE s.value IS DISTINCT FROM n.value
  AND NOT EXISTS (SELECT FROM login_role_settings l WHERE l.name = s.name);
