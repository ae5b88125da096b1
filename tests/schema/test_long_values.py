"""Values longer than any bounded storage column: a 1,000-character primary key and bucket parameter."""

import pytest
from django.conf import settings
from django.test import override_settings
from schema_project.workspace.models import Label
from storage_checks import check_storage

from powersync_django import storage
from powersync_django.models import BucketOp, DeadLetter, ReplicationState, RowBuckets
from powersync_django.replication import request_resync
from powersync_django.rules import Rules, bucket_id, get_rules

pytestmark = pytest.mark.django_db(transaction=True)

LONG_KEY = "k" * 999 + "1"
LONG_NAME = "n" * 1000
BUCKETS = {
    **settings.POWERSYNC["BUCKETS"],
    "labels": {
        "parameters": {"name": "token.sub"},
        "data": [{"model": "workspace.Label", "table": "labels", "filter": {"name": "bucket.name"}}],
    },
}


@pytest.fixture(autouse=True)
def _labels_synced():
    with override_settings(POWERSYNC={**settings.POWERSYNC, "BUCKETS": BUCKETS}):
        yield


def version() -> int:
    return ReplicationState.objects.get(pk=1).rules_version


def test_long_parameter_gives_a_hashed_bucket_id_both_sides_agree_on(replicate):
    replicate()
    Label.objects.create(key=LONG_KEY, name=LONG_NAME)
    replicate()
    bucket = bucket_id("labels", [LONG_NAME], version())
    assert len(bucket) < 100 and bucket.startswith(f"{version()}#labels#")
    # The request side computes the same id from the token (the other definitions want an integer sub).
    rules = get_rules()
    labels_only = Rules({"labels": rules.definitions["labels"]}, rules.hash)
    assert list(labels_only.request_buckets({"sub": LONG_NAME}, {}, version())) == [bucket]
    [(object_id, op)] = BucketOp.objects.filter(bucket=bucket).values_list("object_id", "op")
    assert (object_id, op) == (LONG_KEY, "PUT")
    assert storage.read_checkpoint([bucket]).buckets[bucket].count == 1
    # Short parameters keep readable ids.
    assert bucket_id("labels", ["short"], 3) == '3#labels["short"]'
    assert not DeadLetter.objects.exists()


def test_long_primary_key_replicates_updates_deletes_and_rebuilds(replicate):
    replicate()
    label = Label.objects.create(key=LONG_KEY, name=LONG_NAME)
    other = Label.objects.create(key=LONG_KEY[:-1] + "2", name=LONG_NAME)  # differs in the last character
    replicate()
    assert RowBuckets.objects.count() == 2
    assert all(len(s) < 400 for s in RowBuckets.objects.values_list("source", flat=True))
    label.name = "short"
    label.save()
    replicate()
    check_storage()
    request_resync()
    replicate()
    check_storage()
    other.delete()
    label.delete()
    replicate()
    check_storage()
    assert not DeadLetter.objects.exists()
    assert list(BucketOp.objects.filter(op="REMOVE").values_list("object_id", flat=True).order_by("object_id")) == \
        sorted([LONG_KEY, LONG_KEY[:-1] + "2"])
