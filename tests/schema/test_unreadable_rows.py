"""A row the ORM cannot read back (a value stored by another program that its field cannot convert) must not
stop a rebuild, and with it all replication: it becomes a dead letter and the build goes on."""

from __future__ import annotations

import orjson
import pytest
from django.contrib.auth.models import User
from django.db import connection
from schema_project.workspace.models import Document

from powersync_django import replication
from powersync_django.models import BucketOp, DeadLetter, ReplicationState
from powersync_django.replication import replicate_now, request_resync

pytestmark = pytest.mark.django_db(transaction=True)


def make_unreadable(doc: Document) -> None:
    """PostgreSQL's 'infinity' date (Python has none); in SQLite, a date that does not exist."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("UPDATE workspace_document SET due = 'infinity' WHERE id = %s", [doc.pk])
        else:
            cursor.execute("UPDATE workspace_document SET due = '2026-13-45' WHERE id = %s", [doc.pk.hex])
    with pytest.raises(Exception):  # noqa: B017, PT011 (ValueError on SQLite, DataError on PostgreSQL)
        Document.objects.get(pk=doc.pk)


@pytest.mark.parametrize("chunk", [1000, 2])
def test_an_unreadable_row_becomes_a_dead_letter_and_the_rebuild_completes(monkeypatch, chunk):
    monkeypatch.setattr(replication, "BUILD_ROWS", chunk)
    alice = User.objects.create(username="alice")
    docs = [Document.objects.create(owner=alice, title=f"d{i}") for i in range(5)]
    replicate_now()
    bad = docs[2]
    make_unreadable(bad)
    version = request_resync()
    replicate_now()
    state = ReplicationState.objects.get(pk=1)
    assert (state.rules_version, state.building_version) == (version + 1, 0)
    [letter] = DeadLetter.objects.all()
    assert (letter.model, letter.object_pk) == ("workspace.document", str(bad.pk))
    bucket = f"{version + 1}#owned_documents[{alice.pk}]"
    titles = sorted(orjson.loads(op.data)["title"] for op in BucketOp.objects.filter(bucket=bucket, op="PUT"))
    assert titles == sorted(d.title for d in docs if d != bad)
