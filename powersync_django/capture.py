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

from django.apps import apps as django_apps
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.db import connections, models, router, transaction
from django.db.models.expressions import BaseExpression
from django.db.models.signals import class_prepared, post_delete, post_save

from . import notify
from .encoding import json_text, snapshot_value
from .models import OutboxEntry

logger = logging.getLogger(__name__)

OUTBOX_CHANNEL = "powersync_outbox"


def tracked_labels() -> frozenset[str]:
    from .rules import get_rules

    return frozenset(get_rules().by_model)


def label_of(model: type[models.Model]) -> str:
    """The label rows of a model are recorded under: proxies write the rows of their concrete model."""
    return model._meta.concrete_model._meta.label_lower


def is_tracked(model: type[models.Model]) -> bool:
    return label_of(model) in tracked_labels()


def snapshot(instance: models.Model) -> str:
    """JSON text of all concrete field values of an instance."""
    return json_text(
        {f.attname: snapshot_value(f, getattr(instance, f.attname)) for f in instance._meta.concrete_fields}
    )


def _entry_for(instance: models.Model, using: str, partial: bool = False) -> OutboxEntry:
    """The entry of a saved instance. ``partial``: only some fields were saved (``update_fields``)."""
    values = instance.__dict__
    if partial or any(
        f.attname not in values or isinstance(values[f.attname], BaseExpression) for f in instance._meta.concrete_fields
    ):
        # Fields not saved (update_fields), deferred ones, F() expressions: only the database knows the row.
        instance = type(instance)._base_manager.using(using).get(pk=instance.pk)
    return OutboxEntry(model=label_of(type(instance)), object_pk=str(instance.pk), op=OutboxEntry.SAVE,
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
             update_fields: Any = None, **kwargs: Any) -> None:
    if not is_tracked(sender):
        return
    write_entries([_entry_for(instance, using, partial=update_fields is not None)], using)


def _on_delete(sender: type[models.Model], instance: models.Model, using: str = "default", **kwargs: Any) -> None:
    if not is_tracked(sender):
        return
    write_entries([OutboxEntry(model=label_of(sender), object_pk=str(instance.pk), op=OutboxEntry.DELETE)], using)


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
    """Connect the receivers and make saves of tracked models atomic (called from AppConfig.ready).

    ``post_delete`` is connected per tracked model (proxies included), not for every sender: a receiver for
    all senders would disable Django's fast delete everywhere (``QuerySet.delete()`` of any model, the
    replicator's own tables included, would load every row and signal it one by one).
    """
    post_save.connect(_on_save, dispatch_uid="powersync_django.capture.save")
    class_prepared.connect(_on_class_prepared, dispatch_uid="powersync_django.capture.class_prepared")
    setting_changed.connect(_on_setting_changed, dispatch_uid="powersync_django.capture.setting_changed")
    for model in django_apps.get_models():
        _track(model)


def _track(model: type[models.Model]) -> None:
    """Capture deletes of a model and make its saves atomic, if the bucket definitions use it."""
    try:
        if not is_tracked(model):
            return
    except ImproperlyConfigured:
        return  # reported by the system checks
    post_delete.connect(_on_delete, sender=model, dispatch_uid="powersync_django.capture.delete")
    concrete = model._meta.concrete_model
    if not getattr(concrete.save_base, "_powersync_atomic", False):
        concrete.save_base = _atomic_save_base(concrete.save_base)


def _on_class_prepared(sender: type[models.Model], **kwargs: Any) -> None:
    if django_apps.ready:  # models of installed apps are handled by connect_signals()
        _track(sender)


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "POWERSYNC" and django_apps.ready:
        from .conf import get_config
        from .rules import get_rules

        get_config.cache_clear()
        get_rules.cache_clear()
        for model in django_apps.get_models():
            _track(model)


# --- bulk operations -----------------------------------------------------------------------------


def record_changed(model: type[models.Model], pks: Iterable[Any], using: str | None = None) -> int:
    """Record the current state of rows changed outside the ORM's signals (raw SQL, ``update()``...).

    Rows that exist are recorded as saved, missing ones as deleted. Call it inside the transaction that made
    the change. The rows are read with SELECT ... FOR UPDATE where the database has it: a concurrent writer of
    the same row either commits first (and its entry comes first) or waits for this transaction, so entries
    of a row stay in commit order. Returns the number of entries written.
    """
    using = using or router.db_for_write(model)
    pks = list(dict.fromkeys(pks))
    if not pks or not is_tracked(model):
        return 0
    entries: list[OutboxEntry] = []
    label = label_of(model)
    found: set[str] = set()
    with transaction.atomic(using=using, savepoint=False):
        for start in range(0, len(pks), 500):
            for obj in _locking(model._base_manager.using(using)).filter(pk__in=pks[start:start + 500]):
                found.add(str(obj.pk))
                entries.append(OutboxEntry(model=label, object_pk=str(obj.pk), op=OutboxEntry.SAVE,
                                           snapshot=snapshot(obj)))
        for pk in pks:
            key = str(model._meta.pk.to_python(pk))
            if key not in found:
                entries.append(OutboxEntry(model=label, object_pk=key, op=OutboxEntry.DELETE))
        write_entries(entries, using)
    return len(entries)


def _locking(qs: models.QuerySet) -> models.QuerySet:
    """``qs.select_for_update()`` of the model's own rows, where the database supports it."""
    features = connections[qs.db].features
    if not features.has_select_for_update:
        return qs
    return qs.select_for_update(of=("self",)) if features.has_select_for_update_of else qs.select_for_update()


class PowerSyncQuerySet(models.QuerySet):
    """A QuerySet whose bulk operations are captured. Use ``PowerSyncManager`` or ``as_manager()``."""

    def update(self, **kwargs: Any) -> int:
        # The matching rows are locked, then exactly those are updated: a row that starts to match in a
        # concurrent transaction meanwhile is not touched (it would be updated but not recorded).
        with transaction.atomic(using=self.db, savepoint=False):
            select = self._chain()
            select.query.distinct, select.query.distinct_fields = False, ()  # FOR UPDATE refuses DISTINCT
            pks = list(dict.fromkeys(_locking(select).values_list("pk", flat=True)))
            count = 0
            for start in range(0, len(pks), 500):
                count += models.QuerySet.update(self.filter(pk__in=pks[start:start + 500]), **kwargs)
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
            # A plain QuerySet: Django's bulk_update calls update(), which would record every row again.
            count = models.QuerySet(self.model, using=self.db).bulk_update(objs, fields, *args, **kwargs)
            record_changed(self.model, [o.pk for o in objs], using=self.db)
        return count


PowerSyncManager = models.Manager.from_queryset(PowerSyncQuerySet)
