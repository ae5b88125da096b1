"""Read-only admin for the sync tables: browse replication state, buckets, ops and the outbox.

Everything here is written by capture and the replicator only; editing a row by hand would break checksums
or exactly-once replication, so nothing can be added, changed or deleted from the admin.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from .admin_status import StatusPageMixin
from .models import (
    BucketOp,
    BucketState,
    Checkpoint,
    OutboxEntry,
    ReplicationState,
    RowBuckets,
    WriteCheckpoint,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    """View permission only; no bulk actions. Large tables skip the full count."""

    actions = None
    show_full_result_count = False
    list_per_page = 100

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ReplicationState)
class ReplicationStateAdmin(StatusPageMixin, ReadOnlyAdmin):  # the list is the PowerSync status page
    list_display = ["id", "last_op_id", "outbox_position", "rules_version", "lease_owner", "lease_expires"]


@admin.register(Checkpoint)
class CheckpointAdmin(ReadOnlyAdmin):
    list_display = ["id", "last_op_id", "outbox_position", "created_at", "changed_buckets", "write_checkpoints"]
    ordering = ["-id"]


@admin.register(BucketState)
class BucketStateAdmin(ReadOnlyAdmin):
    list_display = ["bucket", "count", "checksum", "last_op_id", "stored_ops", "ops_since_compaction", "compacted_to"]
    search_fields = ["bucket"]
    ordering = ["bucket"]


@admin.register(BucketOp)
class BucketOpAdmin(ReadOnlyAdmin):
    list_display = ["op_id", "bucket", "op", "object_type", "object_id", "checksum"]
    list_filter = ["op"]
    # Exact bucket match uses the (bucket, op_id) index; a substring search would scan every op.
    search_fields = ["=bucket", "=object_id"]
    ordering = ["-op_id"]


@admin.register(RowBuckets)
class RowBucketsAdmin(ReadOnlyAdmin):
    list_display = ["source", "buckets"]
    search_fields = ["=source"]


@admin.register(OutboxEntry)
class OutboxEntryAdmin(ReadOnlyAdmin):
    list_display = ["id", "op", "model", "object_pk", "created_at"]
    list_filter = ["op", "model"]
    search_fields = ["=object_pk"]
    ordering = ["id"]


@admin.register(WriteCheckpoint)
class WriteCheckpointAdmin(ReadOnlyAdmin):
    list_display = ["key", "user_id", "client_id", "issued", "replicated", "updated_at"]
    search_fields = ["=user_id", "key"]
