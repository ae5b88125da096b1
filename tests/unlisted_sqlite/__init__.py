"""Test support: a SQLite backend for a database alias added at run time (tests/test_snapshot.py)."""
