"""The task resource: its models, list parameters, statements and routes."""
