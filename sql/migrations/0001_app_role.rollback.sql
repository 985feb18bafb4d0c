-- Roles and their memberships belong to the cluster: another database of this cluster may still
-- use todo_app, and revoking the login role's membership would break it there. So only try to
-- drop the role (which removes its memberships with it), and keep it when it is still in use.
DO $$
BEGIN
    DROP ROLE IF EXISTS todo_app;
EXCEPTION WHEN dependent_objects_still_exist OR insufficient_privilege THEN
    RAISE NOTICE 'todo_app is still used elsewhere in this cluster and was kept: %', SQLERRM;
END
$$;
