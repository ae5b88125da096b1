"""Operations features on the second project's schema: integer user ids, MTI, many buckets per user."""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest
from asgi_stream import endpoint_app, http_stream
from django.contrib.auth.models import User
from django.test import AsyncClient, Client
from prometheus_client import REGISTRY
from schema_project.workspace.models import Document, Membership, Project, Task, Team

from powersync_django.admin_status import status_context
from powersync_django.models import BucketState, Checkpoint, OutboxEntry

pytestmark = pytest.mark.django_db(transaction=True)


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def workspace(replicate) -> User:
    alice = User.objects.create(username="alice")
    team = Team.objects.create(name="t")
    Membership.objects.create(team=team, user=alice)
    Project.objects.create(team=team, name="p")
    Task.objects.create(team=team, name="task", done=True)
    for i in range(3):
        Document.objects.create(owner=alice, title=f"doc {i}", price="1.50", body={"n": i}, attachment=b"\x00\xff")
    replicate()
    return alice


@pytest.mark.parametrize("transport", ["view", "endpoint"])
def test_stream_log_line_and_metrics_for_an_integer_user(replicate, caplog: pytest.LogCaptureFixture,
                                                         transport: str) -> None:
    alice = workspace(replicate)
    ops_before = value("powersync_operations_synced_total", transport="http")
    app = endpoint_app() if transport == "endpoint" else None
    with caplog.at_level(logging.INFO, logger="powersync_django.streams"):
        raw = asyncio.run(http_stream(b"{}", b"checkpoint_complete", user=str(alice.id), app=app))
    lines = [orjson.loads(x) for x in raw.splitlines() if x]
    buckets = lines[0]["checkpoint"]["buckets"]
    ops = sum(len(line["data"]["data"]) for line in lines if "data" in line)
    # The project and the task (MTI: both in projects), the task in tasks, the 3 documents alice owns (an
    # integer key to auth.User matched with the token's string sub).
    assert ops == 2 + 1 + 3
    (record,) = [r for r in caplog.records if r.name == "powersync_django.streams"]
    assert record.user_id == str(alice.id) and record.buckets == len(buckets) == 3
    assert record.operations_synced == ops
    assert record.data_synced_bytes == len(raw) and record.close_reason == "client_closed"
    assert value("powersync_operations_synced_total", transport="http") == ops_before + ops


def test_metrics_health_and_status_on_the_schema(replicate) -> None:
    alice = workspace(replicate)
    Document.objects.create(owner=alice, title="pending")
    text = Client().get("/metrics").content.decode()
    assert f"powersync_outbox_pending_entries {float(OutboxEntry.objects.count())}" in text
    ready = asyncio.run(AsyncClient().get("/health/ready"))
    assert ready.json() == {"status": "ok", "checkpoint": Checkpoint.objects.latest("id").id}

    context = status_context("default")
    assert context["status"].pending_entries == 1
    stored = sorted(BucketState.objects.values_list("stored_ops", flat=True), reverse=True)
    assert [b["stored_ops"] for b in context["largest_buckets"]] == stored[:10]
    assert f"1#owned_documents[{alice.id}]" in {b["bucket"] for b in context["largest_buckets"][:2]}
    assert context["candidates_total"] == BucketState.objects.count() > 3  # nothing compacted yet
    assert {c["share"] for c in context["candidates"]} == {1.0}
