"""A second Django project for the tests: a realistic schema that is not the demo's.

Integer keys to ``auth.User``, an ACL table read only by parameter querysets, sharing through an explicit
``through`` model and through an auto-created many-to-many table, ``SET_NULL`` foreign keys, JSON, Decimal,
date, time, bytes, datetime and duration fields, multi-table inheritance, and on PostgreSQL an ``ArrayField``.
Its tests live in ``tests/schema/`` and run with ``--ds=schema_project.settings`` (see the Makefile).
"""
