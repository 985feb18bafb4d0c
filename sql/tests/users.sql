-- Row-level security on public.users, proved from SQL: a user sees, creates and changes only their
-- own row, and nobody deletes users through todo_app. Identities are switched the way the API
-- switches them, inside one transaction that is rolled back at the end:
--
--     psql "${MIGRATION_DATABASE_URL:-$DATABASE_URL}" -X -v ON_ERROR_STOP=1 -f sql/tests/users.sql
--
-- Every line of output is `ok - ...`; the first failure stops with `ERROR: not ok - ...` (exit 3).

\set QUIET 1
BEGIN;
\ir lib/assert.sql

-- The API does set_config('role', 'todo_app', true), which is SET LOCAL ROLE todo_app.
SET LOCAL ROLE todo_app;

-- INSERT
SELECT '# acting as ' || set_config('app.user_id', 'sqltest-alice', true);
SELECT pg_temp.is(
    pg_temp.row_count($$INSERT INTO public.users (id, email, name) VALUES ('sqltest-alice', 'alice@example.com', 'Alice')$$),
    1::bigint, 'INSERT: alice creates her own user row');
SELECT pg_temp.throws(
    $$INSERT INTO public.users (id, name) VALUES ('sqltest-mallory', 'Mallory')$$,
    '42501', 'new row violates row-level security policy',
    'INSERT: alice cannot create a row for someone else');

SELECT '# acting as ' || set_config('app.user_id', 'sqltest-bob', true);
INSERT INTO public.users (id, name) VALUES ('sqltest-bob', 'Bob');

-- SELECT
SELECT pg_temp.is(
    (SELECT count(*) FROM public.users WHERE id = 'sqltest-alice'), 0::bigint,
    'SELECT: bob cannot see alice''s row');
SELECT pg_temp.is(
    (SELECT array_agg(id) FROM public.users), ARRAY['sqltest-bob'],
    'SELECT: bob sees his own row and nothing else');

-- UPDATE
SELECT pg_temp.is(
    pg_temp.row_count($$UPDATE public.users SET name = 'changed by bob' WHERE id = 'sqltest-alice'$$),
    0::bigint, 'UPDATE: bob cannot change alice''s row by naming her');
SELECT pg_temp.is(
    pg_temp.row_count($$UPDATE public.users SET name = 'Robert'$$),
    1::bigint, 'UPDATE: bob''s update of every row changes only his own');
SELECT pg_temp.throws(
    $$UPDATE public.users SET id = 'sqltest-alice'$$,
    '42501', 'permission denied',
    'UPDATE: bob cannot take another id (id is not writable)');

-- DELETE: no grant and no policy; users are never deleted through the API.
SELECT pg_temp.throws(
    $$DELETE FROM public.users WHERE id = 'sqltest-bob'$$,
    '42501', 'permission denied',
    'DELETE: bob cannot delete even his own row');

-- Nobody sees or changes any row, while Alice's and Bob's are there.
SELECT '# acting as nobody' || set_config('app.user_id', '', true);
SELECT pg_temp.is((SELECT count(*) FROM public.users), 0::bigint, 'SELECT: nobody sees no user');
SELECT pg_temp.is(pg_temp.row_count($$UPDATE public.users SET name = 'anonymous'$$), 0::bigint,
    'UPDATE: nobody changes no user');
SELECT pg_temp.throws(
    $$INSERT INTO public.users (id) VALUES ('')$$,
    '42501', 'new row violates row-level security policy',
    'INSERT: nobody cannot create a user, not even one with the empty id');

-- Alice's row came through all of that untouched, and she can change it.
SELECT '# acting as ' || set_config('app.user_id', 'sqltest-alice', true);
SELECT pg_temp.is(
    (SELECT array_agg(format('%s/%s', id, name)) FROM public.users), ARRAY['sqltest-alice/Alice'],
    'SELECT: alice sees her row, unchanged by bob and nobody');
SELECT pg_temp.is(
    pg_temp.row_count($$UPDATE public.users SET email = 'alice@example.org'$$),
    1::bigint, 'UPDATE: alice changes her own row');

ROLLBACK;
