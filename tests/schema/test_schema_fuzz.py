"""Fuzz of uploads on the realistic schema: every common field type written with client values of any shape.

Each batch gets a 2xx or a 4xx JSON answer, never a 5xx or an exception escaping the view, and a rejected
batch stores nothing (no outbox entry: every ORM write of a synced model leaves one).
"""

from __future__ import annotations

import functools
import json
import uuid
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db.models import Count, Max
from django.test import Client
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from schema_project.workspace.models import Document, Folder, Team

from powersync_django.auth import make_token
from powersync_django.models import OutboxEntry

pytestmark = pytest.mark.django_db(transaction=True)

FUZZ = {"deadline": None, "suppress_health_check": list(HealthCheck), "database": None}
DOC_ID = uuid.UUID("00000000-0000-4000-8000-0000000000d0")
FOLDER_ID = uuid.UUID("00000000-0000-4000-8000-0000000000f0")

special = st.sampled_from(["", "\x00", "²", "NaN", "Infinity", "-Infinity", "1e400", "9" * 400, "0000-00-00",
                           "2026-02-30", "9999-12-31", "24:00:00", "25:61", "P1D", "-999999999 days", "1 day",
                           "2026-11-26 05:44:47.992823Z", "aGVsbG8=", "not base64!", str(DOC_ID), str(FOLDER_ID),
                           "1", "-1", "true", "[]", "{}", '{"a": 1}'])
scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64) | st.floats() | special
           | st.text(max_size=6))
values = scalars | st.lists(scalars, max_size=2) | st.dictionaries(st.text(max_size=3), scalars, max_size=2)
columns = ["owner_id", "folder_id", "title", "body", "price", "due", "remind_at", "attachment", "created_at",
           "duration", "rating", "pages", "archived", "ref", "tags"]
data = st.fixed_dictionaries({"title": st.just("t") | values}, optional={c: values for c in columns if c != "title"})
operations = st.fixed_dictionaries({
    "op": st.sampled_from(["PUT", "PUT", "PATCH"]),
    "type": st.just("documents"),
    "id": st.sampled_from([str(DOC_ID)]) | st.uuids().map(str),
    "data": data,
})


@functools.lru_cache(maxsize=4)
def token(sub: str) -> str:
    return make_token(sub)


def stored() -> dict[str, Any]:
    return OutboxEntry.objects.aggregate(n=Count("id"), last=Max("id"))


@pytest.fixture
def owner() -> User:
    user = User.objects.create(username="alice")
    Folder.objects.create(id=FOLDER_ID, name="f")
    Team.objects.create(name="t")
    Document.objects.create(id=DOC_ID, owner=user, title="d")
    return user


@hsettings(max_examples=800, **FUZZ)
@given(batch=st.lists(operations, min_size=1, max_size=2))
def test_fuzz_document_uploads(owner: User, batch: list[dict[str, Any]]) -> None:
    for op in batch:
        if "owner_id" not in op["data"]:
            op["data"]["owner_id"] = owner.pk
    raw = json.dumps({"batch": batch}).encode()  # big integers too (NaN/Infinity make it invalid JSON: a 400)
    before = stored()
    response = Client().post("/api/upload", raw, content_type="application/json",
                             HTTP_AUTHORIZATION=f"Token {token(str(owner.pk))}")
    event(f"HTTP {response.status_code}")
    assert response.status_code < 500, response.content[:300]
    if response.status_code != 200:
        error = response.json()["error"]
        assert error["status"] == response.status_code and error["code"]
        assert stored() == before


subs = st.sampled_from(["alice", "1", " 1", "1.0", "-1", "0", "9" * 30, "١", "1e3", "None", "true", "0x1"]) | st.text(
    min_size=1, max_size=8).filter(lambda s: "\x00" not in s)


@hsettings(max_examples=300, **FUZZ)
@given(sub=subs)
def test_fuzz_token_subs(owner: User, sub: str) -> None:
    """Any `sub` the token may carry: uploads answer 200/401/403, the sync stream 200 or a 4xx JSON error."""
    import asyncio

    from django.test import AsyncClient

    before = stored()
    body = json.dumps({"batch": [{"op": "PATCH", "type": "documents", "id": str(DOC_ID), "data": {"title": "x"}}]})
    response = Client().post("/api/upload", body, content_type="application/json",
                             HTTP_AUTHORIZATION=f"Token {make_token(sub)}")
    event(f"upload {response.status_code}")
    assert response.status_code in (200, 401, 403), response.content[:300]
    if response.status_code != 200:
        assert response.json()["error"]["status"] == response.status_code
        assert stored() == before

    async def sync() -> int:
        answer = await AsyncClient().post("/sync/stream", data=b"{}", content_type="application/json",
                                          headers={"Authorization": f"Token {make_token(sub)}"})
        if answer.streaming:
            iterator = answer.streaming_content.__aiter__()
            await asyncio.wait_for(iterator.__anext__(), 10)
            await iterator.aclose()
        return answer.status_code

    status = asyncio.run(sync())
    event(f"sync {status}")
    assert status < 500
