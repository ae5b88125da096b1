"""Replication status: how far behind the replicator is, and what bucket storage holds.

Used by ``manage.py powersync_status``; cheap enough for a monitoring probe (no scan of the op table).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from django.db import DEFAULT_DB_ALIAS, models
from django.utils import timezone

from .models import (
    BucketState,
    Checkpoint,
    DeadLetter,
    OutboxEntry,
    ReplicationState,
    RowBuckets,
    WriteCheckpoint,
)
from .rules import get_rules


@dataclass(frozen=True)
class Status:
    """A snapshot of replication state. Ages are in seconds; None when there is nothing to measure."""

    pending_entries: int
    oldest_pending_age: float | None
    last_checkpoint_id: int
    last_op_id: int
    last_checkpoint_at: str | None
    last_checkpoint_age: float | None
    rules_version: int
    rules_current: bool
    buckets: int
    ops: int
    rows: int
    write_checkpoints_pending: int
    lease_owner: str
    lease_expires_in: float | None
    # Entries moved aside (``manage.py powersync_deadletters``) and when the newest one failed.
    dead_letters: int = 0
    last_dead_letter_at: str | None = None
    # Rebuild under way: the version being built, rows read so far and rows to read (approximate).
    building_version: int = 0
    build_rows_done: int = 0
    build_rows_total: int = 0

    @property
    def lag(self) -> float:
        """Seconds the oldest change not yet replicated has waited (0 when the outbox is empty)."""
        return self.oldest_pending_age or 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "lag": self.lag}


def get_status(using: str = DEFAULT_DB_ALIAS) -> Status:
    """Read the replication status from the database."""
    now = timezone.now()
    outbox = OutboxEntry.objects.using(using).aggregate(n=models.Count("id"), oldest=models.Min("created_at"))
    state = ReplicationState.objects.using(using).filter(pk=1).first()
    checkpoint = Checkpoint.objects.using(using).order_by("-id").first()
    totals = BucketState.objects.using(using).aggregate(n=models.Count("bucket"), ops=models.Sum("stored_ops"))
    lease_live = state is not None and state.lease_owner and state.lease_expires > time.time()
    dead = DeadLetter.objects.using(using).aggregate(n=models.Count("id"), last=models.Max("failed_at"))
    return Status(
        pending_entries=outbox["n"],
        oldest_pending_age=(now - outbox["oldest"]).total_seconds() if outbox["oldest"] else None,
        last_checkpoint_id=checkpoint.id if checkpoint else 0,
        last_op_id=state.last_op_id if state else 0,
        last_checkpoint_at=checkpoint.created_at.isoformat() if checkpoint else None,
        last_checkpoint_age=(now - checkpoint.created_at).total_seconds() if checkpoint else None,
        rules_version=state.rules_version if state else 0,
        rules_current=bool(state and state.rules_hash == _rules_hash()),
        buckets=totals["n"],
        ops=totals["ops"] or 0,
        rows=RowBuckets.objects.using(using).count(),
        write_checkpoints_pending=WriteCheckpoint.objects.using(using).filter(replicated__lt=models.F("issued")).count(),
        lease_owner=state.lease_owner if lease_live and state else "",
        lease_expires_in=round(state.lease_expires - time.time(), 1) if lease_live and state else None,
        dead_letters=dead["n"],
        last_dead_letter_at=dead["last"].isoformat() if dead["last"] else None,
        building_version=state.building_version if state else 0,
        build_rows_done=state.build_rows_done if state and state.building_version else 0,
        build_rows_total=state.build_rows_total if state and state.building_version else 0,
    )


@dataclass(frozen=True)
class Lag:
    """What a metrics scrape reads: replication lag and positions (no count of buckets or rows)."""

    pending_entries: int
    oldest_pending_age: float | None
    last_checkpoint_id: int
    last_checkpoint_age: float | None
    last_op_id: int
    outbox_position: int


def get_lag(using: str = DEFAULT_DB_ALIAS) -> Lag:
    """Replication lag and positions: the outbox count, the newest checkpoint and the replication state."""
    now = timezone.now()
    outbox = OutboxEntry.objects.using(using).aggregate(n=models.Count("id"), oldest=models.Min("created_at"))
    checkpoint = Checkpoint.objects.using(using).order_by("-id").values("id", "created_at").first()
    state = ReplicationState.objects.using(using).filter(pk=1).values("last_op_id", "outbox_position").first()
    return Lag(
        pending_entries=outbox["n"],
        oldest_pending_age=(now - outbox["oldest"]).total_seconds() if outbox["oldest"] else None,
        last_checkpoint_id=checkpoint["id"] if checkpoint else 0,
        last_checkpoint_age=(now - checkpoint["created_at"]).total_seconds() if checkpoint else None,
        last_op_id=state["last_op_id"] if state else 0,
        outbox_position=state["outbox_position"] if state else 0,
    )


def _rules_hash() -> str | None:
    try:
        return get_rules().hash
    except Exception:  # invalid definitions: reported by the system checks
        return None


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def format_status(s: Status) -> list[str]:
    """Human-readable lines, one fact each."""
    if s.rules_version == 0:
        storage = "not built yet (the first replication batch builds it)"
    elif s.rules_current:
        storage = f"version {s.rules_version}"
    else:
        storage = f"version {s.rules_version}, definitions changed: rebuilt on the next batch"
    if s.building_version:
        storage += (f"; building version {s.building_version}: {s.build_rows_done} of ~{s.build_rows_total} rows "
                    "read")
    lines = [
        f"Outbox pending:        {s.pending_entries} entries (oldest {_age(s.oldest_pending_age)} ago)",
        f"Replication lag:       {_age(s.lag) if s.pending_entries else '0 (up to date)'}",
        f"Last checkpoint:       {s.last_checkpoint_id} at op {s.last_op_id}"
        + (f", {_age(s.last_checkpoint_age)} ago ({s.last_checkpoint_at})" if s.last_checkpoint_at else ""),
        f"Bucket storage:        {storage}",
        f"Buckets:               {s.buckets}",
        f"Ops stored:            {s.ops}",
        f"Rows in buckets:       {s.rows}",
        f"Write checkpoints due: {s.write_checkpoints_pending}",
        f"Active replicator:     {s.lease_owner or 'none'}"
        + (f" (lease expires in {s.lease_expires_in} s)" if s.lease_expires_in is not None else ""),
        f"Dead letters:          {s.dead_letters}"
        + (f" (last at {s.last_dead_letter_at}; see manage.py powersync_deadletters)" if s.dead_letters else ""),
    ]
    return lines


# --- the admin status page -----------------------------------------------------------------------------


def largest_buckets(using: str = DEFAULT_DB_ALIAS, limit: int = 10) -> list[dict[str, Any]]:
    """The buckets storing the most ops."""
    return list(
        BucketState.objects.using(using)
        .order_by("-stored_ops", "bucket")
        .values("bucket", "stored_ops", "count", "ops_since_compaction", "last_op_id")[:limit]
    )


def compaction_candidates(
    using: str = DEFAULT_DB_ALIAS, min_share: float | None = None, limit: int = 10
) -> tuple[int, list[dict[str, Any]]]:
    """Buckets whose ops written since their last compaction reach ``min_share`` of their stored ops (what
    ``powersync_compact`` would select): how many, and those with the most such ops, with their share."""
    from .compaction import DEFAULT_MIN_SHARE, _selection

    selection = _selection(using, DEFAULT_MIN_SHARE if min_share is None else min_share)
    rows = list(
        selection.order_by("-ops_since_compaction", "bucket")
        .values("bucket", "stored_ops", "ops_since_compaction")[:limit]
    )
    for row in rows:
        row["share"] = row["ops_since_compaction"] / row["stored_ops"] if row["stored_ops"] else 0.0
    return selection.count(), rows


def dead_letter_count(using: str = DEFAULT_DB_ALIAS) -> int | None:
    """Entries of the dead-letter model, when this version of powersync_django has one (else None)."""
    from django.apps import apps

    try:
        model = apps.get_model("powersync_django", "DeadLetter")
    except LookupError:
        return None
    return model._default_manager.using(using).count()
