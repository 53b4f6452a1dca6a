"""Benchmarks behind ``gradaccum bench``: each returns a JSON-ready dict and a table."""
