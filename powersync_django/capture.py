"""Capture: record changes of tracked models in the outbox, in the same transaction as the change.

Tracked models are those used by a data query of a bucket definition. ``save()`` and ``delete()`` (cascades
included) are captured by signal receivers. Saves of tracked models always run inside a transaction: when a
save happens in autocommit mode, it is wrapped in ``transaction.atomic`` so the row and its outbox entry commit
together. Bulk operations do not send signals; use :class:`PowerSyncQuerySet` (``update``, ``bulk_create``,
``bulk_update``) or :func:`record_changed` after raw SQL.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from typing import Any

import orjson
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, models, router, transaction
from django.db.models.expressions import BaseExpression
from django.db.models.signals import post_delete, post_save

from . import notify
from .encoding import snapshot_value
from .models import OutboxEntry

logger = logging.getLogger(__name__)

OUTBOX_CHANNEL = "powersync_outbox"


def tracked_labels() -> frozenset[str]:
    from .rules import get_rules

    return frozenset(get_rules().by_model)


def is_tracked(model: type[models.Model]) -> bool:
    return model._meta.label_lower in tracked_labels()


def snapshot(instance: models.Model) -> str:
    """JSON text of all concrete field values of an instance."""
    return orjson.dumps(
        {f.attname: snapshot_value(f, getattr(instance, f.attname)) for f in instance._meta.concrete_fields}
    ).decode()


def _entry_for(instance: models.Model, using: str) -> OutboxEntry:
    meta = instance._meta
    if any(isinstance(getattr(instance, f.attname), BaseExpression) for f in meta.concrete_fields):
        # F() expressions etc.: the stored values are only known to the database.
        instance = type(instance)._base_manager.using(using).get(pk=instance.pk)
    return OutboxEntry(model=meta.label_lower, object_pk=str(instance.pk), op=OutboxEntry.SAVE,
                       snapshot=snapshot(instance))


def write_entries(entries: list[OutboxEntry], using: str) -> None:
    """Insert outbox entries and make sure a replicator hears about them once the transaction commits."""
    if not entries:
        return
    OutboxEntry.objects.using(using).bulk_create(entries)
    connection = connections[using]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            # Delivered at commit, dropped on rollback; identical notifications in one transaction are merged.
            cursor.execute("SELECT pg_notify(%s, '')", [OUTBOX_CHANNEL])
    transaction.on_commit(notify.outbox_changed, using=using)


def _on_save(sender: type[models.Model], instance: models.Model, raw: bool = False, using: str = "default",
             **kwargs: Any) -> None:
    if sender._meta.label_lower not in tracked_labels():
        return
    write_entries([_entry_for(instance, using)], using)


def _on_delete(sender: type[models.Model], instance: models.Model, using: str = "default", **kwargs: Any) -> None:
    if sender._meta.label_lower not in tracked_labels():
        return
    write_entries([OutboxEntry(model=sender._meta.label_lower, object_pk=str(instance.pk), op=OutboxEntry.DELETE)],
                  using)


def _atomic_save_base(original: Any) -> Any:
    @functools.wraps(original)
    def save_base(self: models.Model, *args: Any, **kwargs: Any) -> Any:
        using = kwargs.get("using") or router.db_for_write(type(self), instance=self)
        if connections[using].in_atomic_block:
            return original(self, *args, **kwargs)
        with transaction.atomic(using=using, savepoint=False):
            return original(self, *args, **kwargs)

    save_base._powersync_atomic = True  # type: ignore[attr-defined]
    return save_base


def connect_signals() -> None:
    """Connect the receivers and make saves of tracked models atomic (called from AppConfig.ready)."""
    post_save.connect(_on_save, dispatch_uid="powersync_django.capture.save")
    post_delete.connect(_on_delete, dispatch_uid="powersync_django.capture.delete")
    try:
        from .rules import get_rules

        tracked = get_rules().models
    except ImproperlyConfigured:
        return  # reported by the system checks
    for model in tracked:
        if not getattr(model.save_base, "_powersync_atomic", False):
            model.save_base = _atomic_save_base(model.save_base)


# --- bulk operations -----------------------------------------------------------------------------


def record_changed(model: type[models.Model], pks: Iterable[Any], using: str | None = None) -> int:
    """Record the current state of rows changed outside the ORM's signals (raw SQL, ``update()``...).

    Rows that exist are recorded as saved, missing ones as deleted. Call it inside the transaction that made
    the change. Returns the number of entries written.
    """
    using = using or router.db_for_write(model)
    pks = list(dict.fromkeys(pks))
    if not pks or not is_tracked(model):
        return 0
    entries: list[OutboxEntry] = []
    label = model._meta.label_lower
    found: set[str] = set()
    for start in range(0, len(pks), 500):
        for obj in model._base_manager.using(using).filter(pk__in=pks[start:start + 500]):
            found.add(str(obj.pk))
            entries.append(OutboxEntry(model=label, object_pk=str(obj.pk), op=OutboxEntry.SAVE, snapshot=snapshot(obj)))
    for pk in pks:
        key = str(model._meta.pk.to_python(pk))
        if key not in found:
            entries.append(OutboxEntry(model=label, object_pk=key, op=OutboxEntry.DELETE))
    write_entries(entries, using)
    return len(entries)


class PowerSyncQuerySet(models.QuerySet):
    """A QuerySet whose bulk operations are captured. Use ``PowerSyncManager`` or ``as_manager()``."""

    def update(self, **kwargs: Any) -> int:
        with transaction.atomic(using=self.db, savepoint=False):
            pks = list(self.values_list("pk", flat=True))
            count = super().update(**kwargs)
            record_changed(self.model, pks, using=self.db)
        return count

    def bulk_create(self, objs: Iterable[models.Model], *args: Any, **kwargs: Any) -> list[models.Model]:
        with transaction.atomic(using=self.db, savepoint=False):
            created = super().bulk_create(objs, *args, **kwargs)
            record_changed(self.model, [o.pk for o in created if o.pk is not None], using=self.db)
        return created

    def bulk_update(self, objs: Iterable[models.Model], fields: Any, *args: Any, **kwargs: Any) -> int:
        objs = list(objs)
        with transaction.atomic(using=self.db, savepoint=False):
            count = super().bulk_update(objs, fields, *args, **kwargs)
            record_changed(self.model, [o.pk for o in objs], using=self.db)
        return count


PowerSyncManager = models.Manager.from_queryset(PowerSyncQuerySet)
