"""Test configuration: SQLite by default, PostgreSQL when DATABASE_URL points at one.

The suite runs twice in CI (see the Makefile): once on SQLite, once on PostgreSQL. Each pass runs the demo
project's tests (``demo_project.settings``) and then the second project's (``tests/schema/`` with
``--ds=schema_project.settings``): a test directory runs only under its own project's settings.
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from django.db import connection

from powersync_django import notify, storage
from powersync_django.replication import replicate_now


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgres: needs PostgreSQL (skipped on SQLite runs)")
    config.addinivalue_line("markers", "e2e: drives the official @powersync/node client against a live server")


SCHEMA_TESTS = Path(__file__).parent / "schema"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    from django.conf import settings

    schema_run = settings.SETTINGS_MODULE == "schema_project.settings"
    if collection_path.suffix != ".py" and collection_path.is_file():
        return None
    in_schema = collection_path == SCHEMA_TESTS or SCHEMA_TESTS in collection_path.parents
    if in_schema and not schema_run:
        return True
    if schema_run and not in_schema and collection_path.name.startswith("test_"):
        return True
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from django.conf import settings

    on_pg = settings.DATABASES["default"]["ENGINE"].endswith("postgresql")
    for item in items:
        if "postgres" in item.keywords and not on_pg:
            item.add_marker(pytest.mark.skip(reason="PostgreSQL-only test; runs in the PostgreSQL pass"))


@pytest.fixture
def vendor() -> str:
    return connection.vendor


@pytest.fixture
def replicate():
    """Replicate everything pending (as the background replicator would)."""
    return replicate_now


@pytest.fixture(autouse=True, scope="session")
def _close_storage_threads(django_db_setup):
    """Storage threads keep database connections: close them before the test database is dropped."""
    yield
    storage.shutdown()


@pytest.fixture(autouse=True)
def _fresh_rate_limits():
    """Each test starts with no requests counted against POWERSYNC['RATE_LIMITS']."""
    from powersync_django import ratelimit

    ratelimit.reset()
    yield


@pytest.fixture(autouse=True)
def _fresh_hubs():
    """Each test gets a fresh checkpoint hub (they are per event loop)."""
    yield
    for hub in list(notify._hubs.values()):
        hub.stop_listener(wait=2)
    notify._hubs.clear()
    # A hub's LISTEN connection cancelled mid-connect is only closed by the garbage collector.
    gc.collect()
