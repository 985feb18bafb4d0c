"""What runs beside the server: the CLI, the serving worker, the embedded Postgres, migrations, the audit."""
