-- depends: 0005_versions_and_idempotency
--
-- The isolation check no longer trusts a baseline recorded in the database: whoever can write those
-- tables (the login role, on most deployments) could loosen a policy and rewrite the baseline to
-- match, and a lock held on them kept the check from running at all. What the database should look
-- like now ships inside the package (sql/checks/expected_reach.json, compared with
-- sql/checks/reach.sql), where no database role can change it.

DROP PROCEDURE app.record_isolation_baseline(jsonb);
DROP TABLE app.policy_file_baseline;
DROP TABLE app.function_baseline;
DROP TABLE app.policy_baseline;
DROP VIEW app.function_catalog;
DROP VIEW app.policy_catalog;
