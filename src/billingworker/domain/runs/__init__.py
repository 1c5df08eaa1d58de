"""The daily run: its tasks, their registry and the run's bookkeeping."""
