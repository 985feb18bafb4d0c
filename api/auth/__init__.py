"""Who is calling: a bearer token verified into a Principal."""
