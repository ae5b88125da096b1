"""Test helpers for your application: what a client would hold after its first sync, computed in-process.

Use them in your own tests to check your bucket definitions and streams without a client::

    from powersync_django.testing import sync

    def test_members_see_their_team_projects(django_user_model):
        alice = django_user_model.objects.create(username="alice")
        ...
        result = sync(alice)                      # or sync(sub="42", claims={...}, subscriptions=[...])
        result.assert_can_see("projects", project.pk)
        result.assert_cannot_see("projects", other_project.pk)
        assert [p["name"] for p in result.rows("projects")] == ["Plan"]

:func:`sync` replicates what is pending, then runs a real sync session for a token of that user up to its
first complete checkpoint, on the calling thread's database connection: it works inside Django's
``TestCase`` transactions and pytest-django's ``db`` fixture, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from asgiref.sync import async_to_sync

from . import executors, notify
from .auth import TokenClaims
from .protocol import SyncRequest
from .replication import replicate_now
from .sync import SyncSession, aclose_quietly
from .tokens import token_subject


@dataclass
class SyncResult:
    """The client's view after its first sync: ``tables[table][row id] = row`` (with ``id``)."""

    tables: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    buckets: list[str] = field(default_factory=list)
    streams: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: int = 0

    def rows(self, table: str) -> list[dict[str, Any]]:
        """The rows of a client table, ordered by id."""
        rows = self.tables.get(table, {})
        return [rows[k] for k in sorted(rows)]

    def has_row(self, table: str, row_id: Any) -> bool:
        return str(row_id) in self.tables.get(table, {})

    def assert_can_see(self, table: str, row_id: Any) -> None:
        """Fail unless the client holds this row."""
        assert self.has_row(table, row_id), f"{table} row {row_id} is not synced (buckets: {self.buckets})"

    def assert_cannot_see(self, table: str, row_id: Any) -> None:
        """Fail if the client holds this row."""
        assert not self.has_row(table, row_id), f"{table} row {row_id} is synced (buckets: {self.buckets})"


def sync(user: Any = None, *, sub: str | None = None, claims: dict[str, Any] | None = None,
         parameters: dict[str, Any] | None = None, subscriptions: list[dict[str, Any]] | None = None,
         include_defaults: bool = True, using: str = "default") -> SyncResult:
    """Sync as ``user`` (a Django user: ``sub`` is its primary key, as the token view issues) or ``sub``.

    ``claims``: extra token claims; ``parameters``: the client's connect parameters; ``subscriptions``:
    Sync Streams subscriptions as a client sends them (``{"stream": ..., "parameters": {...}}``).
    """
    if (user is None) == (sub is None):
        raise TypeError("Pass a user or sub=, not both.")
    subject = sub if sub is not None else token_subject(user)
    replicate_now(using)
    expires = time.time() + 3600
    token = TokenClaims(user_id=subject, expires_at=expires, claims={"sub": subject, "exp": int(expires),
                                                                      **(claims or {})})
    request = SyncRequest(parameters=dict(parameters or {}), include_defaults=include_defaults,
                          subscriptions=list(subscriptions or []))
    return async_to_sync(_first_sync)(token, request, using)


async def _first_sync(token: TokenClaims, request: SyncRequest, using: str) -> SyncResult:
    result = SyncResult()
    # bucket -> (table, id) -> (op id, row or None): the last op of each row in each bucket
    held: dict[str, dict[tuple[str, str], tuple[int, dict[str, Any] | None]]] = {}
    # A hub this loop already runs serves other streams (asgiref runs this coroutine on the loop of the thread
    # that called sync_to_async): it stays open. Only a hub started here is closed.
    existing = notify.running_hub()
    with executors.inline():
        session = SyncSession(token, request, keepalive=False, using=using)
        lines = session.lines()
        try:
            async for line in lines:
                if "checkpoint" in line:
                    result.buckets = sorted(b["bucket"] for b in line["checkpoint"]["buckets"])
                    result.streams = line["checkpoint"].get("streams", [])
                elif "data" in line:
                    bucket = held.setdefault(line["data"]["bucket"], {})
                    for op in line["data"]["data"]:
                        if op["op"] in ("PUT", "REMOVE"):
                            row = orjson.loads(op["data"]) if op["op"] == "PUT" else None
                            bucket[(op["object_type"], op["object_id"])] = (int(op["op_id"]), row)
                elif "checkpoint_complete" in line:
                    result.checkpoint = int(line["checkpoint_complete"]["last_op_id"])
                    break
                elif line.get("token_expires_in") == 0:
                    break
        finally:
            await aclose_quietly(lines)
            hub = session.hub
            if hub is not None and hub is not existing:
                hub.stop_listener()
                await hub.close()
                notify.forget_hub(hub)
    # As the client merges buckets: a row is present while any bucket holds a PUT of it; the newest PUT wins.
    newest: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
    for name, rows in held.items():
        if name not in result.buckets:
            continue
        for key, (op_id, row) in rows.items():
            if row is not None and (key not in newest or newest[key][0] < op_id):
                newest[key] = (op_id, row)
    for (table, row_id), (_, row) in newest.items():
        result.tables.setdefault(table, {})[row_id] = row
    return result
