"""Load benchmarks: the API against pgbench running the same SQL on the same Postgres."""
