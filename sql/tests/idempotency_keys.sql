-- Row-level security on public.idempotency_keys, proved from SQL: a user's keys are seen, stored
-- and removed by that user only, nobody changes a stored key, a key names only its owner's task,
-- deleting the task leaves the key naming nothing and holding no hash of it, and the purge that
-- every INSERT of keys sets off removes only other users' expired keys, whether or not the owner it
-- runs as bypasses row-level security. Identities are switched the way the API switches them,
-- inside one transaction that is rolled back at the end. Run it as the migrating role (Neon's
-- owner, or the embedded database's, which does not bypass row-level security):
--
--     psql "${MIGRATION_DATABASE_URL:-$DATABASE_URL}" -X -v ON_ERROR_STOP=1 -f sql/tests/idempotency_keys.sql
--
-- Every line of output is `ok - ...`; the first failure stops with `ERROR: not ok - ...` (exit 3).

\set QUIET 1
BEGIN;
\ir lib/assert.sql

-- A third user's key in use, and an expired one. todo_app cannot choose when a key was made, so the
-- expired key is stored as the owner, with FORCE lifted for that INSERT alone so that an owner
-- without BYPASSRLS may store it too; stored as carol, it is spared by the purge it sets off.
SELECT '# acting as ' || set_config('app.user_id', 'sqltest-carol', true);
SET LOCAL ROLE todo_app;
INSERT INTO public.users (id) VALUES ('sqltest-carol');
INSERT INTO public.idempotency_keys (user_id, key, request_hash, expires_at)
    VALUES ('sqltest-carol', 'in-use', repeat('e', 64), now() + interval '1 day');
RESET ROLE;
ALTER TABLE public.idempotency_keys NO FORCE ROW LEVEL SECURITY;
INSERT INTO public.idempotency_keys (user_id, key, request_hash, created_at, expires_at)
    VALUES ('sqltest-carol', 'old', repeat('e', 64), now() - interval '2 days', now() - interval '1 day');
ALTER TABLE public.idempotency_keys FORCE ROW LEVEL SECURITY;

SET LOCAL ROLE todo_app;

SELECT '# acting as ' || set_config('app.user_id', 'sqltest-alice', true);
INSERT INTO public.users (id) VALUES ('sqltest-alice');
SELECT pg_temp.is(
    pg_temp.row_count($$INSERT INTO public.idempotency_keys (user_id, key, request_hash, expires_at)
                        VALUES ('sqltest-alice', 'key-1', repeat('a', 64), now() + interval '1 day')$$),
    1::bigint, 'INSERT: alice stores her own key');

SELECT '# acting as ' || set_config('app.user_id', 'sqltest-bob', true);
INSERT INTO public.users (id) VALUES ('sqltest-bob');
INSERT INTO public.idempotency_keys (user_id, key, request_hash, expires_at)
    VALUES ('sqltest-bob', 'key-1', repeat('b', 64), now() + interval '1 day');

-- SELECT
SELECT pg_temp.is(
    (SELECT count(*) FROM public.idempotency_keys WHERE user_id = 'sqltest-alice'), 0::bigint,
    'SELECT: bob cannot see alice''s key');
SELECT pg_temp.is(
    (SELECT array_agg(request_hash) FROM public.idempotency_keys), ARRAY[repeat('b', 64)],
    'SELECT: bob sees his own key, which has the same name as alice''s, and nothing else');

-- INSERT
SELECT pg_temp.throws(
    $$INSERT INTO public.idempotency_keys (user_id, key, request_hash, expires_at)
      VALUES ('sqltest-alice', 'key-2', repeat('c', 64), now() + interval '1 day')$$,
    '42501', 'new row violates row-level security policy',
    'INSERT: bob cannot store a key in alice''s name');
SELECT pg_temp.throws(
    $$INSERT INTO public.idempotency_keys (user_id, key, request_hash, expires_at, created_at)
      VALUES ('sqltest-bob', 'key-3', repeat('c', 64), now() + interval '1 day', now() - interval '1 year')$$,
    '42501', 'permission denied',
    'INSERT: bob cannot choose when his key was made');
SELECT pg_temp.throws(
    $$INSERT INTO public.idempotency_keys (user_id, key, request_hash, expires_at)
      VALUES ('sqltest-bob', 'key-3', repeat('c', 64), now() + interval '1 year')$$,
    '23514', 'idempotency_keys_lifetime',
    'INSERT: bob cannot keep a key longer than IDEMPOTENCY_TTL_HOURS may ask (30 days)');
INSERT INTO public.tasks (user_id, title) VALUES ('sqltest-bob', 'bob''s') RETURNING id AS bobs_task \gset
SELECT '# acting as ' || set_config('app.user_id', 'sqltest-alice', true);
SELECT pg_temp.throws(
    pg_catalog.format(
        $$INSERT INTO public.idempotency_keys (user_id, key, request_hash, expires_at, task_id)
          VALUES ('sqltest-alice', 'key-5', repeat('c', 64), now() + interval '1 day', %s)$$,
        :bobs_task),
    '23503', 'idempotency_keys_task_fkey',
    'INSERT: alice''s key cannot name bob''s task');
SELECT '# acting as ' || set_config('app.user_id', 'sqltest-bob', true);

-- UPDATE
SELECT pg_temp.throws(
    $$UPDATE public.idempotency_keys SET task_id = NULL$$,
    '42501', 'permission denied',
    'UPDATE: nobody, not even its owner, changes a stored key');

-- DELETE
SELECT pg_temp.ok(
    NOT has_function_privilege('todo_app', 'app.forget_expired_idempotency_keys()', 'EXECUTE'),
    'DELETE: nobody calls the purge of other users'' expired keys: only its trigger runs it');
INSERT INTO public.idempotency_keys (user_id, key, request_hash, expires_at, task_id)
    VALUES ('sqltest-bob', 'made-it', repeat('f', 64), now() + interval '1 day', :bobs_task);
DELETE FROM public.tasks WHERE id = :bobs_task;
SELECT pg_temp.is(
    (SELECT task_id FROM public.idempotency_keys WHERE key = 'made-it'), NULL::bigint,
    'DELETE: deleting a task leaves its key naming nothing, in the same statement');
SELECT pg_temp.is(
    (SELECT request_hash FROM public.idempotency_keys WHERE key = 'made-it'), NULL::text,
    'DELETE: deleting a task leaves its key without the hash of the request that made it, too');
SELECT pg_temp.is(
    pg_temp.row_count($$DELETE FROM public.idempotency_keys WHERE user_id = 'sqltest-alice'$$),
    0::bigint, 'DELETE: bob cannot remove alice''s key by naming her');
SELECT pg_temp.is(
    pg_temp.row_count($$DELETE FROM public.idempotency_keys$$),
    2::bigint, 'DELETE: bob''s delete of every key removes only his own');

-- Nobody sees, stores or removes a key.
SELECT '# acting as nobody' || set_config('app.user_id', '', true);
SELECT pg_temp.is((SELECT count(*) FROM public.idempotency_keys), 0::bigint, 'SELECT: nobody sees no key');
SELECT pg_temp.throws(
    $$INSERT INTO public.idempotency_keys (user_id, key, request_hash, expires_at)
      VALUES ('sqltest-alice', 'key-4', repeat('d', 64), now() + interval '1 day')$$,
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

-- The keys alice and bob stored purged carol's expired key, and nothing still in use (alice's, above).
SELECT '# acting as ' || set_config('app.user_id', 'sqltest-carol', true);
SELECT pg_temp.is(
    (SELECT array_agg(key) FROM public.idempotency_keys), ARRAY['in-use'],
    'DELETE: carol''s expired key was purged when others stored keys, and her key in use was not');

ROLLBACK;
