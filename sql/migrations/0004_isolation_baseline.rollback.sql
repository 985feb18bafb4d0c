DROP PROCEDURE app.record_isolation_baseline(jsonb);
DROP TABLE app.policy_file_baseline;
DROP TABLE app.function_baseline;
DROP TABLE app.policy_baseline;
DROP VIEW app.function_catalog;
DROP VIEW app.policy_catalog;
