"""Read-only admin for the sync tables: browse replication state, buckets, ops and the outbox.

Everything here is written by capture and the replicator only; editing a row by hand would break checksums
or exactly-once replication, so nothing can be added, changed or deleted from the admin. Dead letters have
two actions for superusers: retry and drop (per row, as ``manage.py powersync_deadletters``).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from . import deadletters
from .admin_status import StatusPageMixin
from .models import (
    BucketOp,
    BucketState,
    Checkpoint,
    DeadLetter,
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


@admin.register(DeadLetter)
class DeadLetterAdmin(ReadOnlyAdmin):
    list_display = ["id", "failed_at", "reason", "op", "model", "short_pk", "short_error"]
    list_filter = ["reason", "model"]
    search_fields = ["=object_pk"]
    ordering = ["id"]
    actions = ["retry", "drop"]

    @admin.display(description="object pk")
    def short_pk(self, obj: DeadLetter) -> str:
        return obj.object_pk[:60]

    @admin.display(description="error")
    def short_error(self, obj: DeadLetter) -> str:
        return obj.error[:200]

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        return super().get_actions(request) if request.user.is_superuser else {}

    @admin.action(description="Retry the selected rows' dead letters (back into the outbox, in order)")
    def retry(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        n = deadletters.retry(queryset.values_list("id", flat=True), using=queryset.db)
        self.message_user(request, f"Re-queued {n} dead letters.", messages.SUCCESS)

    @admin.action(description="Drop the selected rows' dead letters")
    def drop(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        n = deadletters.drop(queryset.values_list("id", flat=True), using=queryset.db)
        self.message_user(request, f"Dropped {n} dead letters.", messages.SUCCESS)
