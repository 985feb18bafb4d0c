-- A tiny pgTAP-style assertion kit for the files in sql/tests/ (pgTAP itself needs a server-side
-- install). A test file includes it (psql's \ir) right after BEGIN, so the functions live in pg_temp and vanish
-- with the ROLLBACK that ends every test: running a test leaves nothing behind.
--
-- Each assertion prints `ok - <what it proves>`, or raises `not ok - <what> : <why>`, which aborts
-- the transaction and, with ON_ERROR_STOP, makes psql exit with status 3.

\set ON_ERROR_STOP 1
\pset format unaligned
\pset tuples_only on

-- A lock held elsewhere (a pg_dump, a long report, a migration) is waited for 1 second at most, and
-- then the test file stops with `canceling statement due to lock timeout`, having changed nothing: run
-- it again. Queued behind such a lock, a lock the file takes would hold up every request of the API
-- that needs the table, for as long as that lock is held.
SET LOCAL lock_timeout = '1s';

CREATE FUNCTION pg_temp.ok(passed boolean, description text) RETURNS text
    LANGUAGE plpgsql
AS $$
BEGIN
    IF passed IS NOT TRUE THEN
        RAISE EXCEPTION 'not ok - %', description;
    END IF;
    RETURN 'ok - ' || description;
END
$$;

CREATE FUNCTION pg_temp.is(actual anyelement, expected anyelement, description text) RETURNS text
    LANGUAGE plpgsql
AS $$
BEGIN
    IF actual IS DISTINCT FROM expected THEN
        RAISE EXCEPTION 'not ok - % : got %, expected %', description, actual, expected;
    END IF;
    RETURN 'ok - ' || description;
END
$$;

-- How many rows a statement returns or changes, run as the current role (todo_app in a test).
CREATE FUNCTION pg_temp.row_count(statement text) RETURNS bigint
    LANGUAGE plpgsql
AS $$
DECLARE
    affected bigint;
BEGIN
    EXECUTE statement;
    GET DIAGNOSTICS affected = ROW_COUNT;
    RETURN affected;
END
$$;

-- The statement must fail with this SQLSTATE and a message containing message_part; whatever it did
-- is undone (the failure is caught in a subtransaction).
CREATE FUNCTION pg_temp.throws(statement text, expected_state text, message_part text, description text)
    RETURNS text
    LANGUAGE plpgsql
AS $$
DECLARE
    state text;
    message text;
BEGIN
    BEGIN
        EXECUTE statement;
    EXCEPTION WHEN OTHERS THEN
        state := SQLSTATE;
        message := SQLERRM;
    END;
    IF state IS NULL THEN
        RAISE EXCEPTION 'not ok - % : it succeeded, expected error %', description, expected_state;
    END IF;
    IF state <> expected_state OR strpos(message, message_part) = 0 THEN
        RAISE EXCEPTION 'not ok - % : got error % (%), expected % (%)',
            description, state, message, expected_state, message_part;
    END IF;
    RETURN 'ok - ' || description;
END
$$;
