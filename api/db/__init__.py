"""The database: the pool, the one transaction helper, the isolation check and the shipped SQL."""
