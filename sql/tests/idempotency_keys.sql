-- Row-level security on public.idempotency_keys, proved from SQL: a user's keys are seen, stored
-- and removed by that user only, and nobody changes a stored key. Identities are switched the way
-- the API switches them, inside one transaction that is rolled back at the end:
--
--     psql "$DATABASE_URL" -X -v ON_ERROR_STOP=1 -f sql/tests/idempotency_keys.sql
--
-- Every line of output is `ok - ...`; the first failure stops with `ERROR: not ok - ...` (exit 3).

\set QUIET 1
BEGIN;
\ir lib/assert.sql

SET LOCAL ROLE todo_app;

SELECT '# acting as ' || set_config('app.user_id', 'sqltest-alice', true);
INSERT INTO public.users (id) VALUES ('sqltest-alice');
SELECT pg_temp.is(
    pg_temp.row_count($$INSERT INTO public.idempotency_keys (user_id, key, request_hash, response)
                        VALUES ('sqltest-alice', 'key-1', repeat('a', 64), '{}')$$),
    1::bigint, 'INSERT: alice stores her own key');

SELECT '# acting as ' || set_config('app.user_id', 'sqltest-bob', true);
INSERT INTO public.users (id) VALUES ('sqltest-bob');
INSERT INTO public.idempotency_keys (user_id, key, request_hash, response)
    VALUES ('sqltest-bob', 'key-1', repeat('b', 64), '{}');

-- SELECT
SELECT pg_temp.is(
    (SELECT count(*) FROM public.idempotency_keys WHERE user_id = 'sqltest-alice'), 0::bigint,
    'SELECT: bob cannot see alice''s key');
SELECT pg_temp.is(
    (SELECT array_agg(request_hash) FROM public.idempotency_keys), ARRAY[repeat('b', 64)],
    'SELECT: bob sees his own key, which has the same name as alice''s, and nothing else');

-- INSERT
SELECT pg_temp.throws(
    $$INSERT INTO public.idempotency_keys (user_id, key, request_hash, response)
      VALUES ('sqltest-alice', 'key-2', repeat('c', 64), '{}')$$,
    '42501', 'new row violates row-level security policy',
    'INSERT: bob cannot store a key in alice''s name');
SELECT pg_temp.throws(
    $$INSERT INTO public.idempotency_keys (user_id, key, request_hash, response, created_at)
      VALUES ('sqltest-bob', 'key-3', repeat('c', 64), '{}', now() + interval '1 year')$$,
    '42501', 'permission denied',
    'INSERT: bob cannot choose when his key was made (so when it expires)');

-- UPDATE
SELECT pg_temp.throws(
    $$UPDATE public.idempotency_keys SET response = '{"id": 1}'$$,
    '42501', 'permission denied',
    'UPDATE: nobody, not even its owner, changes a stored key');

-- DELETE
SELECT pg_temp.is(
    pg_temp.row_count($$DELETE FROM public.idempotency_keys WHERE user_id = 'sqltest-alice'$$),
    0::bigint, 'DELETE: bob cannot remove alice''s key by naming her');
SELECT pg_temp.is(
    pg_temp.row_count($$DELETE FROM public.idempotency_keys$$),
    1::bigint, 'DELETE: bob''s delete of every key removes only his own');

-- Nobody sees, stores or removes a key.
SELECT '# acting as nobody' || set_config('app.user_id', '', true);
SELECT pg_temp.is((SELECT count(*) FROM public.idempotency_keys), 0::bigint, 'SELECT: nobody sees no key');
SELECT pg_temp.throws(
    $$INSERT INTO public.idempotency_keys (user_id, key, request_hash, response)
      VALUES ('sqltest-alice', 'key-4', repeat('d', 64), '{}')$$,
    '42501', 'new row violates row-level security policy',
    'INSERT: nobody cannot store a key');
SELECT pg_temp.is(pg_temp.row_count($$DELETE FROM public.idempotency_keys$$), 0::bigint,
    'DELETE: nobody removes no key');

-- Alice's key came through all of that untouched, and she can remove it.
SELECT '# acting as ' || set_config('app.user_id', 'sqltest-alice', true);
SELECT pg_temp.is(
    (SELECT array_agg(key) FROM public.idempotency_keys), ARRAY['key-1'],
    'SELECT: alice sees her key, untouched by bob and nobody');
SELECT pg_temp.is(
    pg_temp.row_count($$DELETE FROM public.idempotency_keys$$),
    1::bigint, 'DELETE: alice removes her own key');

ROLLBACK;
