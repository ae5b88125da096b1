"""Attacks on the fast replication path with the second project's models (text keys, every field type)."""

import os

import orjson
import pytest
from django.conf import settings
from django.test import override_settings
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schema_project.workspace.models import Label, Specimen
from storage_checks import check_storage
from test_values import ROWS, specimen_settings

from powersync_django.checksums import put_checksum
from powersync_django.encoding import encode_value, snapshot_to_python
from powersync_django.models import BucketOp, DeadLetter, OutboxEntry, ReplicationState, RowBuckets
from powersync_django.replication import replicate_now
from powersync_django.rules import get_rules

pytestmark = pytest.mark.django_db(transaction=True)

BUCKETS = {
    **settings.POWERSYNC["BUCKETS"],
    "labels": {
        "parameters": {"name": "token.sub"},
        "data": [{"model": "workspace.Label", "table": "labels", "filter": {"name": "bucket.name"}}],
    },
}
# Keys an array literal or an IN list must quote: the replicator finds their memberships by key.
KEYS = ['a"b', "back\\slash", "{brace}", "comma,x", " lead", "trail ", "NULL", "null", "", "tab\tx", "nl\nx",
        "ü€😀", "'quote'", "\\.", "k" * 1000]


@pytest.fixture(autouse=True)
def _labels_synced():
    with override_settings(POWERSYNC={**settings.POWERSYNC, "BUCKETS": BUCKETS}):
        yield


def test_rows_with_keys_that_need_quoting_move_and_leave_buckets(replicate):
    replicate()
    for key in KEYS:
        Label.objects.create(key=key, name="u1")
    replicate()
    assert RowBuckets.objects.filter(source__startswith="workspace.label").count() == len(KEYS)
    for key in KEYS:
        label = Label.objects.get(key=key)
        label.name = "u2"
        label.save()
    replicate()
    assert not DeadLetter.objects.exists()
    assert BucketOp.objects.filter(op="REMOVE").count() == len(KEYS)
    check_storage()
    Label.objects.all().delete()
    replicate()
    assert not DeadLetter.objects.exists() and not RowBuckets.objects.filter(source__startswith="workspace.label")
    check_storage()


def _old_render(query, row):
    """DataQuery.render before the converters: encode_value of each Python value."""
    pk = query.model._meta.pk
    out = {"id": str(encode_value(row[pk.attname], pk))}
    out.update({c.attname: encode_value(row.get(c.attname), c) for c in query.columns if c is not pk})
    return orjson.dumps(out).decode()


@hypothesis_settings(max_examples=int(os.environ.get("VALUES_EXAMPLES", "10")), deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=st.lists(ROWS, min_size=1, max_size=10))
def test_live_and_rebuild_rendering_equal_the_old_path(rows):
    """Every Specimen value: the op data replication writes from a snapshot is what decode + encode_value gave
    (the path before snapshot rendering), and what a rebuild writes (per-column converters over ORM values) is
    what encode_value of those values gave; checksums match the data."""
    with specimen_settings():
        replicate_now()
        created = [Specimen.objects.create(**row) for row in rows]
        query = get_rules().by_model["workspace.specimen"][0]
        fields = {f.attname: f for f in Specimen._meta.concrete_fields}
        live_expected = {}
        for entry in OutboxEntry.objects.filter(model="workspace.specimen").order_by("id"):
            raw = orjson.loads(entry.snapshot)
            live_expected[entry.object_pk] = _old_render(
                query, {a: snapshot_to_python(f, raw.get(a)) for a, f in fields.items()})
        replicate_now()
        version = ReplicationState.objects.get(pk=1).rules_version

        def ops(v):
            found = {o.object_id: (o.data, o.checksum) for o in BucketOp.objects.filter(
                bucket=f"{v}#specimens[]", object_id__in=[str(s.pk) for s in created])}
            assert all(c == put_checksum("specimens", k, d) for k, (d, c) in found.items())
            return {k: d for k, (d, _) in found.items()}

        assert ops(version) == live_expected
        build_expected = {str(r["id"]): _old_render(query, r) for r in Specimen.objects.values(*fields)}
        ReplicationState.objects.update(rules_hash="")
        replicate_now()
        assert ops(version + 1) == build_expected
        Specimen.objects.all().delete()
        replicate_now()
