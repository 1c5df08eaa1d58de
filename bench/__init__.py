"""Benchmarks that print figures (run by hand or with ``make bench``); never asserted on time."""
