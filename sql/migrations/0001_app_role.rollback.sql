REVOKE todo_app FROM CURRENT_USER;

-- todo_app may still hold privileges in another database of this cluster; then it stays.
DO $$
BEGIN
    DROP ROLE IF EXISTS todo_app;
EXCEPTION WHEN dependent_objects_still_exist OR insufficient_privilege THEN
    RAISE NOTICE 'todo_app is still used elsewhere in this cluster and was kept: %', SQLERRM;
END
$$;
