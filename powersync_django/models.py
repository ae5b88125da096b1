"""Storage of powersync_django: the outbox, bucket operations and replication state.

Only the replicator writes ops, bucket state, row memberships and checkpoints; capture writes outbox
rows; the sync streams only read.
"""

from __future__ import annotations

from django.db import models


class OutboxEntry(models.Model):
    """A captured change, written in the same transaction as the change itself.

    ``op`` is ``S`` (row saved; ``snapshot`` holds its field values), ``D`` (row deleted) or ``W`` (a write
    checkpoint marker: ``object_pk`` is the ``user/client`` key and ``snapshot`` the counter). The replicator
    deletes entries as it turns them into bucket operations, in the same transaction.
    """

    SAVE = "S"
    DELETE = "D"
    MARKER = "W"

    id = models.BigAutoField(primary_key=True)
    model = models.CharField(max_length=100)
    # Text: primary keys of any length (a CharField primary key may be longer than 255).
    object_pk = models.TextField()
    op = models.CharField(max_length=1)
    snapshot = models.TextField(null=True)  # noqa: DJ001  (NULL differs from "")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "outbox entry"
        verbose_name_plural = "outbox"

    def __str__(self) -> str:
        return f"{self.id} {self.op} {self.model}:{self.object_pk}"


class BucketOp(models.Model):
    """One operation of one bucket's history. ``op_id`` comes from one global, increasing sequence."""

    PUT = "PUT"
    REMOVE = "REMOVE"
    MOVE = "MOVE"
    CLEAR = "CLEAR"

    op_id = models.BigIntegerField(primary_key=True)
    bucket = models.CharField(max_length=500)
    op = models.CharField(max_length=6)
    object_type = models.CharField(max_length=200, null=True)  # noqa: DJ001  (NULL differs from "")
    # Text: the client row id is the source primary key, whatever its length.
    object_id = models.TextField(null=True)  # noqa: DJ001  (NULL differs from "")
    # JSON text of the row, exactly as sent to clients (PUT only).
    data = models.TextField(null=True)  # noqa: DJ001  (NULL differs from "")
    # Unsigned 32-bit checksum of this op.
    checksum = models.BigIntegerField()
    # For MOVE/CLEAR written by compaction: the op id current when the op was rewritten.
    target_op = models.BigIntegerField(null=True)  # noqa: DJ001  (NULL differs from "")

    class Meta:
        indexes = [models.Index(fields=["bucket", "op_id"], name="ps_op_bucket_op_id")]
        verbose_name = "bucket operation"

    def __str__(self) -> str:
        return f"{self.op_id} {self.op} {self.bucket}"


class BucketState(models.Model):
    """Running totals of a bucket, updated with every replication batch (O(1) checkpoint reads)."""

    bucket = models.CharField(max_length=500, primary_key=True)
    checksum = models.BigIntegerField(default=0)
    count = models.BigIntegerField(default=0)
    last_op_id = models.BigIntegerField(default=0)
    # Number of ops stored (compaction lowers this, never ``count``'s checksum).
    stored_ops = models.BigIntegerField(default=0)
    # Ops written since the last compaction of this bucket.
    ops_since_compaction = models.BigIntegerField(default=0)
    # Checkpoint (op id) the last compaction of this bucket worked against. A stream serving an older
    # checkpoint that sees a newer value must not report that checkpoint complete (protocol.md §10.5).
    compacted_to = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return self.bucket


class RowBuckets(models.Model):
    """Which buckets (and as which client row) a source row is in, in the bucket storage ``version``.

    A row whose ``version`` is not the one being written to is in no bucket of that version (left over from
    an older version, removed in batches after a rebuild).
    """

    source = models.CharField(max_length=400, primary_key=True)
    # JSON list of [bucket, table, object_id].
    buckets = models.TextField(default="[]")
    version = models.PositiveIntegerField(default=0, db_index=True)

    class Meta:
        verbose_name_plural = "row buckets"

    def __str__(self) -> str:
        return self.source


class Checkpoint(models.Model):
    """A committed replication batch. The newest row is the current checkpoint."""

    id = models.BigAutoField(primary_key=True)
    last_op_id = models.BigIntegerField()
    outbox_position = models.BigIntegerField(default=0)
    # JSON list of buckets changed by this batch, or null when too many to list (treat as "any").
    changed_buckets = models.TextField(null=True)  # noqa: DJ001  (NULL differs from "")
    # JSON list of model labels changed by this batch (parameter querysets depend on these).
    changed_models = models.TextField(default="[]")
    # JSON list of write checkpoint keys (`user/client`) that became reportable.
    write_checkpoints = models.TextField(default="[]")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"checkpoint {self.id} (op {self.last_op_id})"


class ReplicationState(models.Model):
    """Single row: replication position, lease of the active replicator, version of the definitions."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    last_op_id = models.BigIntegerField(default=0)
    outbox_position = models.BigIntegerField(default=0)
    lease_owner = models.CharField(max_length=100, blank=True, default="")
    lease_expires = models.FloatField(default=0)
    rules_hash = models.CharField(max_length=64, blank=True, default="")
    rules_version = models.PositiveIntegerField(default=0)
    # A rebuild in progress (see ``replication.Rebuild``): 0 when none. Clients keep ``rules_version``
    # until the build of ``building_version`` is complete and switched to in one short transaction.
    building_version = models.PositiveIntegerField(default=0)
    # Definitions hash the build is for ("" when a resync was requested during it: rebuilt once more).
    building_hash = models.CharField(max_length=64, blank=True, default="")
    # First op id of the build: older ops (and buckets whose last op is older) belong to older versions.
    build_first_op = models.BigIntegerField(default=0)
    # Next op id the build writes (the live ``last_op_id`` does not move while building).
    build_next_op = models.BigIntegerField(default=0)
    # Position: model label being read ("" once every model was read: catching up on the outbox) and the
    # JSON of the last primary key read.
    build_model = models.CharField(max_length=100, blank=True, default="")
    build_after = models.TextField(blank=True, default="")
    build_rows_done = models.BigIntegerField(default=0)
    build_rows_total = models.BigIntegerField(default=0)
    build_started = models.FloatField(default=0)
    # Outbox entries up to this id were committed before the build read any row: the build covers them, they
    # are deleted without being replayed. PostgreSQL: only once no transaction older than the build's start
    # (``build_xmax``, 0 once none is left) is running; after a few seconds of waiting, everything is replayed.
    build_outbox_max = models.BigIntegerField(default=0)
    build_xmax = models.BigIntegerField(default=0)
    # Ops with op_id below this (and their buckets, rows of older versions) are removed in batches.
    cleanup_below = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"replication at op {self.last_op_id}"


class WriteCheckpoint(models.Model):
    """Write checkpoint counter of one ``user/client`` key."""

    key = models.CharField(max_length=500, primary_key=True)
    user_id = models.CharField(max_length=255)
    client_id = models.CharField(max_length=255, blank=True, default="")
    # Last counter handed out by /write-checkpoint2.json.
    issued = models.BigIntegerField(default=0)
    # Highest counter whose marker the replicator has passed: what streams report.
    replicated = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return self.key


class DeadLetter(models.Model):
    """An outbox entry that could not be replicated, moved aside so the rest of the outbox keeps flowing.

    ``reason`` is ``error`` (replicating this entry raised ``error``) or ``held`` (a later entry of a row that
    already has a dead letter: it must not overtake the failed one). ``manage.py powersync_deadletters``
    lists, retries (per row, in order) or drops them.
    """

    ERROR = "error"
    HELD = "held"

    id = models.BigAutoField(primary_key=True)
    entry_id = models.BigIntegerField()
    source = models.CharField(max_length=400, db_index=True)
    model = models.CharField(max_length=100)
    object_pk = models.TextField()
    op = models.CharField(max_length=1)
    snapshot = models.TextField(null=True)  # noqa: DJ001  (NULL differs from "")
    reason = models.CharField(max_length=5, default=ERROR)
    error = models.TextField(blank=True, default="")
    captured_at = models.DateTimeField()
    failed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "dead letter"

    def __str__(self) -> str:
        return f"{self.entry_id} {self.op} {self.model}:{self.object_pk[:50]} ({self.reason})"
