"""todo-api: a multi-user Todo REST API whose security lives in Postgres row-level security."""
