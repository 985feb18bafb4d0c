"""todo-api: a multi-user Todo REST API whose security lives in Postgres row-level security.

The package is in floors; each imports only the floors below it:

    app.py       assembles the API (ops/ sits beside it: the CLI, the worker, the database tools)
    events/      live changes: a user's event stream, woken by the database
    tasks/       the resource: models, list parameters, queries, routes
    http/        requests in, responses and problem documents out; the authenticated route
    auth/        a bearer token in, a principal out
    db/          the pool and the one transaction helper; the isolation check; the shipped SQL
    telemetry/   logs, metrics and traces
    settings.py  read by all
"""

__version__ = "0.1.0"
