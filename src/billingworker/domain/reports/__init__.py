"""Reports: a client's statement and summary."""
