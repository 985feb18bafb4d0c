"""Live changes: the per-user Server-Sent Events stream of task events (issue 33)."""
