"""What replicated storage must look like: shared by the tests of both projects (no project models here)."""

from __future__ import annotations

import orjson

from powersync_django import checksums
from powersync_django.models import (
    BucketOp,
    BucketState,
    Checkpoint,
    OutboxEntry,
    ReplicationState,
    RowBuckets,
)
from powersync_django.replication import source_key
from powersync_django.rules import get_rules

Rows = dict[tuple[str, str], str]  # (table, object_id) -> data JSON


def reduced_storage(using: str = "default") -> dict[str, Rows]:
    """Each bucket's ops as a client applies them: the latest PUT of a row stays, a REMOVE drops it.

    Also checks that every REMOVE removes a row the bucket holds (a duplicate REMOVE would be a bug).
    """
    out: dict[str, Rows] = {}
    for bucket, op, table, object_id, data in BucketOp.objects.using(using).order_by("op_id").values_list(
        "bucket", "op", "object_type", "object_id", "data"
    ):
        rows = out.setdefault(bucket, {})
        if op == BucketOp.PUT:
            rows[(table, object_id)] = data
        else:
            assert op == BucketOp.REMOVE, op
            assert (table, object_id) in rows, f"REMOVE of {table}/{object_id} not in {bucket}"
            del rows[(table, object_id)]
    return {b: rows for b, rows in out.items() if rows}


def expected_storage(using: str = "default") -> dict[str, Rows]:
    """What the data querysets say each bucket holds now (current definitions and version)."""
    rules = get_rules()
    version = ReplicationState.objects.using(using).get(pk=1).rules_version
    out: dict[str, Rows] = {}
    for model in rules.models:
        label = model._meta.label_lower
        for row in model._base_manager.using(using).values(*[f.attname for f in model._meta.concrete_fields]):
            for bucket, table, object_id, data in rules.row_buckets(label, row, version):
                out.setdefault(bucket, {})[(table, object_id)] = data
    return out


def check_storage(using: str = "default") -> None:
    """Every invariant of replicated storage, against a recomputation from the ops and the querysets."""
    state = ReplicationState.objects.using(using).get(pk=1)
    assert not OutboxEntry.objects.using(using).exclude(op=OutboxEntry.MARKER).exists()
    ops = list(BucketOp.objects.using(using).order_by("op_id"))
    totals: dict[str, list[int]] = {}
    for op in ops:
        if op.op == BucketOp.PUT:
            assert op.checksum == checksums.put_checksum(op.object_type, op.object_id, op.data)
        else:
            assert op.checksum == checksums.remove_checksum(op.object_type, op.object_id)
        t = totals.setdefault(op.bucket, [0, 0, 0])
        t[0] = checksums.add(t[0], op.checksum)
        t[1] += 1
        t[2] = op.op_id
    states = {s.bucket: s for s in BucketState.objects.using(using)}
    assert set(states) == set(totals)
    for bucket, (checksum, count, last) in totals.items():
        s = states[bucket]
        assert (s.checksum, s.count, s.last_op_id, s.stored_ops) == (checksum, count, last, count), bucket
        assert bucket.startswith(f"{state.rules_version}#")
    assert state.last_op_id == (ops[-1].op_id if ops else state.last_op_id)
    assert state.rules_hash == get_rules().hash
    latest = Checkpoint.objects.using(using).order_by("-id").first()
    assert latest is not None and latest.last_op_id == state.last_op_id
    reduced = reduced_storage(using)
    assert reduced == expected_storage(using)
    # Row memberships say exactly which buckets hold each row.
    members: dict[str, set[tuple[str, str, str]]] = {}
    for bucket, rows in reduced.items():
        for table, object_id in rows:
            model = next(q.label for q in get_rules().by_model.values() for q in q if q.table == table)
            members.setdefault(source_key(model, object_id), set()).add((bucket, table, object_id))
    stored = {rb.source: {tuple(x) for x in orjson.loads(rb.buckets)} for rb in RowBuckets.objects.using(using)}
    assert stored == members


