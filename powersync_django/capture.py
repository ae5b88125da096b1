"""Capture: record changes of tracked models in the outbox, in the same transaction as the change.

Tracked models are those a bucket definition reads: the models of data queries, and every model on the
lookup paths of parameter querysets (ACL tables, many-to-many through tables, the queryset models), since
their rows decide access. ``save()`` and ``delete()`` (cascades included) are captured by signal receivers,
so are many-to-many ``add``/``remove``/``set``/``clear`` (``m2m_changed``), the rows Django changes without
signals for ``on_delete=SET_NULL``/``SET_DEFAULT``/``SET(...)``, and both tables of multi-table inheritance.
Saves of tracked models always run inside a transaction: when a save happens in autocommit mode, it is
wrapped in ``transaction.atomic`` so the row and its outbox entry commit together. Bulk operations do not
send signals; use :class:`PowerSyncQuerySet` (``update``, ``bulk_create``, ``bulk_update``) or
:func:`record_changed` after raw SQL.

Entries of models read by parameter querysets carry a snapshot for deletes too, and, when a save changed a
field that targets re-evaluation (see paths.py), the field's earlier value under ``rules.OLD_VALUES``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from django.apps import apps as django_apps
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.db import connections, models, router, transaction
from django.db.models.expressions import BaseExpression
from django.db.models.signals import class_prepared, m2m_changed, post_delete, post_save, pre_delete, pre_save

from . import outbox_write
from .encoding import snapshot_value
from .models import OutboxEntry
from .outbox_write import OUTBOX_CHANNEL as OUTBOX_CHANNEL  # re-exported: the replicator LISTENs on it
from .outbox_write import Row
from .rules import OLD_VALUES, Rules, get_rules

logger = logging.getLogger(__name__)

def tracked_labels() -> frozenset[str]:
    return get_rules().captured_labels


def label_of(model: type[models.Model]) -> str:
    """The label rows of a model are recorded under: proxies write the rows of their concrete model."""
    return model._meta.concrete_model._meta.label_lower


# Per bucket definitions (a Rules object): model -> ((field, attname, synced), ...), label -> targeted fields.
_model_cache: list[Any] = [None, {}, {}]


def _caches(rules: Rules) -> tuple[dict[type[models.Model], tuple], dict[str, list[models.Field]]]:
    if _model_cache[0] is not rules:
        _model_cache[:] = [rules, {}, {}]
    return _model_cache[1], _model_cache[2]


def _field_plan(model: type[models.Model]) -> tuple[tuple[models.Field, str, bool], ...]:
    """(field, attname, synced) of a model's concrete fields, cached per bucket definitions."""
    plans = _caches(get_rules())[0]
    plan = plans.get(model)
    if plan is None:
        synced = synced_columns(model)
        plan = plans[model] = tuple((f, f.attname, f.attname in synced) for f in model._meta.concrete_fields)
    return plan


def _targeted_fields(label: str) -> list[models.Field]:
    """``Rules.targeted_fields``, cached per bucket definitions."""
    rules = get_rules()
    cache = _caches(rules)[1]
    found = cache.get(label)
    if found is None:
        found = cache[label] = rules.targeted_fields(label)
    return found


def is_tracked(model: type[models.Model]) -> bool:
    return label_of(model) in tracked_labels()


def _values(instance: models.Model, model: type[models.Model] | None = None) -> dict[str, Any]:
    """Snapshot values (attname -> JSON value) of all concrete fields of ``model`` (default: the instance's).

    Raises :class:`~powersync_django.encoding.UnsyncableValue` when a synced column holds a value clients
    cannot receive (NaN, JSON nested too deeply...): the save fails with a clear message rather than the
    replicator later.
    """
    return {attname: snapshot_value(f, getattr(instance, attname), synced=synced)
            for f, attname, synced in _field_plan(model or type(instance))}


def snapshot(instance: models.Model) -> str:
    """JSON text of all concrete field values of an instance (:func:`encoding.snapshot_value`)."""
    return orjson.dumps(_values(instance)).decode()


_synced_cache: tuple[Any, dict[str, frozenset[str]]] | None = None


def synced_columns(model: type[models.Model]) -> frozenset[str]:
    """Attnames of a model's fields that some data query sends to clients (cached per bucket definitions)."""
    global _synced_cache
    from .rules import get_rules

    rules = get_rules()
    if _synced_cache is None or _synced_cache[0] is not rules:
        _synced_cache = (rules, {})
    cache = _synced_cache[1]
    label = label_of(model)
    if label not in cache:
        cache[label] = frozenset(c.attname for q in rules.by_model.get(label, ()) for c in q.columns)
    return cache[label]


def _needs_reload(instance: models.Model, model: type[models.Model]) -> bool:
    values = instance.__dict__
    return any(attname not in values or isinstance(values[attname], BaseExpression)
               for _f, attname, _s in _field_plan(model))


def _save_entry(model: type[models.Model], pk: Any, values: dict[str, Any],
                old: Mapping[str, Any] | None | bool = False) -> Row:
    """An S entry. ``old``: targeted values before the change (attname -> python value); None: unknown;
    False: nothing to compare (a new row, or not a model whose earlier values matter)."""
    label = label_of(model)
    fields = _targeted_fields(label)
    if fields and old is None:
        values = {**values, OLD_VALUES: None}
    elif fields and old:
        changed = {f.attname: snapshot_value(f, old[f.attname]) for f in fields
                   if f.attname in old and snapshot_value(f, old[f.attname]) != values.get(f.attname)}
        if changed:
            values = {**values, OLD_VALUES: changed}
    return (label, str(pk), OutboxEntry.SAVE, orjson.dumps(values).decode())


def _entry_for(instance: models.Model, using: str, partial: bool = False, model: type[models.Model] | None = None,
               old: Mapping[str, Any] | None | bool = False) -> Row:
    """The entry of a saved instance (as a row of ``model``, one of its multi-table parents if given).

    ``partial``: only some fields were saved (``update_fields``).
    """
    model = model or type(instance)
    pk = getattr(instance, model._meta.pk.attname)
    if partial or _needs_reload(instance, model):
        # Fields not saved (update_fields), deferred ones, F() expressions: only the database knows the row.
        instance = model._base_manager.using(using).get(pk=pk)
    return _save_entry(model, pk, _values(instance, model), old)


def _delete_entry(model: type[models.Model], instance: models.Model, rules: Rules) -> Row:
    """A D entry; for models read by parameter querysets with the values the deleted row had (those loaded,
    the targeted ones as :func:`_on_tracked_pre_delete` read them from the database)."""
    label = label_of(model)
    text = None
    stored = instance.__dict__.pop(_STORED, None)
    if label in rules.watched:
        loaded = {**instance.__dict__, **(stored or {})}
        text = orjson.dumps({f.attname: snapshot_value(f, loaded[f.attname]) for f in model._meta.concrete_fields
                             if f.attname in loaded and not isinstance(loaded[f.attname], BaseExpression)}).decode()
    return (label, str(instance.pk), OutboxEntry.DELETE, text)


def write_entries(entries: Sequence[OutboxEntry | Row], using: str) -> None:
    """Insert outbox entries (unsaved ``OutboxEntry`` objects or rows) and make sure a replicator hears about
    them once the transaction commits (:mod:`~powersync_django.outbox_write`)."""
    if not entries:
        return
    outbox_write.insert_rows([(e.model, e.object_pk, e.op, e.snapshot) if isinstance(e, OutboxEntry) else e
                              for e in entries], using)


_OLD = "_powersync_old"
_STORED = "_powersync_stored"


def _on_pre_save(sender: type[models.Model], instance: models.Model, raw: bool = False, using: str = "default",
                 **kwargs: Any) -> None:
    """Read the targeted values an existing row has before it is saved (one primary-key query)."""
    fields = _targeted_fields(label_of(sender))
    instance.__dict__.pop(_OLD, None)
    if not fields or instance.pk is None:
        return
    pk = sender._meta.pk
    if instance._state.adding and pk.has_default() and not raw:
        return  # a new row: its key was just generated
    qs = _locking(sender._base_manager.using(using).filter(pk=instance.pk))
    instance.__dict__[_OLD] = qs.values(*(f.attname for f in fields)).first() or False


def _on_tracked_pre_delete(sender: type[models.Model], instance: models.Model, using: str = "default",
                           origin: Any = None, **kwargs: Any) -> None:
    """Read the targeted values the row of an instance being deleted has in the database (one primary-key query).

    The instance ``delete()`` was called on (and its multi-table parents, built from it) may be stale (changed
    in memory, or loaded before another transaction moved the row to another user): its D entry must name the
    streams the row concerned. Rows a cascade or ``QuerySet.delete()`` collected were just read from the
    database: no query for them.
    """
    instance.__dict__.pop(_STORED, None)
    if not _is_origin_row(instance, origin):
        return
    fields = _targeted_fields(label_of(sender))
    if not fields or instance.pk is None:
        return
    qs = _locking(sender._base_manager.using(using).filter(pk=instance.pk))
    row = qs.values(*(f.attname for f in fields)).first()
    if row is not None:
        instance.__dict__[_STORED] = row


def _is_origin_row(instance: models.Model, origin: Any) -> bool:
    """Whether ``instance`` is the row ``delete()`` was called on, or a multi-table parent row of it (Django
    builds those instances from the child's fields in memory)."""
    if origin is instance:
        return True
    return (isinstance(origin, models.Model) and isinstance(origin, instance._meta.concrete_model)
            and origin.pk is not None and origin.pk == instance.pk)


def _on_save(sender: type[models.Model], instance: models.Model, raw: bool = False, using: str = "default",
             update_fields: Any = None, created: bool = False, **kwargs: Any) -> None:
    tracked = tracked_labels()
    partial = update_fields is not None
    old = instance.__dict__.pop(_OLD, False)
    entries = []
    if label_of(sender) in tracked:
        entries.append(_entry_for(instance, using, partial, old=old))
    family = _plan().family.get(label_of(sender)) if not raw else None
    if family:
        # Multi-table inheritance: the parents' rows were saved too (without signals), and a child's row
        # holds its parents' fields.
        parents, children = family
        for parent in parents:
            entries.append(_entry_for(instance, using, partial, model=parent, old=None))
        if not created:
            for child in children:
                rows = _locking(child._base_manager.using(using).filter(pk=instance.pk))
                entries.extend(_save_entry(child, row.pk, _values(row), None) for row in rows)
    write_entries(entries, using)


def _family(model: type[models.Model], tracked: frozenset[str]) -> tuple[list, list]:
    """Tracked multi-table inheritance (parents, children and grandchildren) of a concrete model."""
    parents = [p for p in model._meta.get_parent_list() if label_of(p) in tracked]
    children = []
    pending = [model]
    while pending:
        for rel in pending.pop()._meta.related_objects:
            if rel.one_to_one and rel.field.remote_field.parent_link:
                child = rel.related_model._meta.concrete_model
                pending.append(child)
                if label_of(child) in tracked:
                    children.append(child)
    return parents, children


def _on_delete(sender: type[models.Model], instance: models.Model, using: str = "default", **kwargs: Any) -> None:
    if not is_tracked(sender):
        return
    write_entries([_delete_entry(sender, instance, get_rules())], using)


# --- many-to-many ----------------------------------------------------------------------------------

_M2M = "_powersync_m2m"


def _on_m2m_changed(sender: type[models.Model], instance: models.Model, action: str, reverse: bool,
                    pk_set: set[Any] | None, using: str = "default", **kwargs: Any) -> None:
    """``add``/``remove``/``set``/``clear`` write through-table rows without save/delete signals."""
    m2m = _plan().through.get(label_of(sender))
    if m2m is None or not is_tracked(sender):
        return
    if action.endswith(("_remove", "_clear")) and not sender._meta.auto_created:
        return  # an explicit through model's rows are deleted with delete signals
    names = (m2m.m2m_field_name(), m2m.m2m_reverse_field_name())
    source = sender._meta.get_field(names[1] if reverse else names[0])
    target = sender._meta.get_field(names[0] if reverse else names[1])
    rows = sender._base_manager.using(using).filter(**{source.attname: getattr(instance, source.target_field.attname)})
    if action in ("pre_remove", "pre_clear"):
        if action == "pre_remove":
            rows = rows.filter(**{f"{target.attname}__in": pk_set or ()})
        # Which rows go, read (and locked) before they are deleted; written once the delete ran.
        instance.__dict__.setdefault(_M2M, {})[(sender, action[4:])] = list(_locking(rows))
    elif action in ("post_remove", "post_clear"):
        gone = instance.__dict__.get(_M2M, {}).pop((sender, action[5:]), [])
        if gone:  # a related manager with a filtered queryset may have spared some of them
            kept = set(sender._base_manager.using(using).filter(pk__in=[r.pk for r in gone]).values_list("pk", flat=True))
            gone = [r for r in gone if r.pk not in kept]
        rules = get_rules()
        write_entries([_delete_entry(sender, row, rules) for row in gone], using)
    elif action == "post_add" and pk_set:
        pks = list(rows.filter(**{f"{target.attname}__in": pk_set}).values_list("pk", flat=True))
        record_changed(sender, pks, using=using, previous={})


# --- on_delete=SET_NULL / SET_DEFAULT / SET(...), cascades into auto-created through tables ----------

_SILENT = "_powersync_silent_on_delete"
_NOT_UPDATING = (models.CASCADE, models.PROTECT, models.RESTRICT, models.DO_NOTHING)


def _on_referenced_pre_delete(sender: type[models.Model], instance: models.Model, using: str = "default",
                              **kwargs: Any) -> None:
    """Rows of tracked models pointing at a row being deleted, which Django changes without signals: updated
    by ``SET_NULL``/``SET_DEFAULT``/``SET(...)``, or deleted rows of auto-created many-to-many tables."""
    found = []
    plan = _plan()
    for model, fk in plan.silent_on_delete.get(label_of(sender), ()):
        if not (is_tracked(model) or label_of(model) in plan.family):
            continue
        rows = model._base_manager.using(using).filter(**{fk.name: instance})
        if model._meta.auto_created:
            gone = list(_locking(rows))
            if gone:
                found.append((model, fk, gone, None))
        else:
            pks = list(rows.values_list("pk", flat=True))
            if pks:
                found.append((model, fk, pks, getattr(instance, fk.target_field.attname)))
    if found:
        instance.__dict__[_SILENT] = found


def _on_referenced_post_delete(sender: type[models.Model], instance: models.Model, using: str = "default",
                               **kwargs: Any) -> None:
    for model, fk, rows, old in instance.__dict__.pop(_SILENT, ()):
        if model._meta.auto_created:
            rules = get_rules()
            write_entries([_delete_entry(model, row, rules) for row in rows], using)
        else:
            record_changed(model, rows, using=using, previous={str(pk): {fk.attname: old} for pk in rows})


@dataclass
class _Plan:
    """Where capture needs receivers beyond save/delete, for one set of bucket definitions."""

    # through model label -> its many-to-many field
    through: dict[str, models.ManyToManyField] = field(default_factory=dict)
    # referenced model label -> (tracked model or multi-table parent of one, its foreign key Django updates, or
    # deletes through, without signals when a referenced row is deleted)
    silent_on_delete: dict[str, list[tuple[type[models.Model], models.ForeignKey]]] = field(default_factory=dict)
    # label -> tracked multi-table inheritance (parents, descendants), for models that have some
    family: dict[str, tuple[list, list]] = field(default_factory=dict)


_plan_cache: list[tuple[Rules, _Plan]] = []


def _plan() -> _Plan:
    rules = get_rules()
    if _plan_cache and _plan_cache[0][0] is rules:
        return _plan_cache[0][1]
    plan = _Plan()
    for model in django_apps.get_models(include_auto_created=True):
        for m2m in model._meta.local_many_to_many:
            through = m2m.remote_field.through
            if isinstance(through, type):
                plan.through.setdefault(label_of(through), m2m)
        if not model._meta.proxy:
            parents, children = _family(model, rules.captured_labels)
            if parents or children:
                plan.family[label_of(model)] = (parents, children)
        if model._meta.proxy or label_of(model) not in rules.captured_labels:
            continue
        # Fields inherited from multi-table parents too: their rows are updated in the parent's table, which
        # need not be tracked itself (record_changed then records the tracked child rows).
        for f in model._meta.concrete_fields:
            on_delete = getattr(f.remote_field, "on_delete", None)
            if on_delete is None or (on_delete in _NOT_UPDATING and not (model._meta.auto_created
                                                                       and on_delete is models.CASCADE)):
                continue
            owner = f.model._meta.concrete_model
            found = plan.silent_on_delete.setdefault(label_of(f.remote_field.model), [])
            if not any(m is owner and g is f for m, g in found):
                found.append((owner, f))
    _plan_cache[:] = [(rules, plan)]
    return plan


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

    ``post_delete`` (and ``pre_delete``) are connected per model (proxies included), not for every sender: a
    receiver for all senders would disable Django's fast delete everywhere (``QuerySet.delete()`` of any
    model, the replicator's own tables included, would load every row and signal it one by one).
    """
    pre_save.connect(_on_pre_save, dispatch_uid="powersync_django.capture.pre_save")
    post_save.connect(_on_save, dispatch_uid="powersync_django.capture.save")
    class_prepared.connect(_on_class_prepared, dispatch_uid="powersync_django.capture.class_prepared")
    setting_changed.connect(_on_setting_changed, dispatch_uid="powersync_django.capture.setting_changed")
    outbox_write.install()
    for model in django_apps.get_models(include_auto_created=True):
        _track(model)


def _track(model: type[models.Model]) -> None:
    """Connect the receivers a model needs under the bucket definitions and make its saves atomic."""
    try:
        plan = _plan()
        tracked = is_tracked(model)
    except ImproperlyConfigured:
        return  # reported by the system checks
    if label_of(model) in plan.silent_on_delete:
        pre_delete.connect(_on_referenced_pre_delete, sender=model, dispatch_uid="powersync_django.capture.set_pre")
        post_delete.connect(_on_referenced_post_delete, sender=model, dispatch_uid="powersync_django.capture.set_post")
    if not tracked:
        return
    post_delete.connect(_on_delete, sender=model, dispatch_uid="powersync_django.capture.delete")
    pre_delete.connect(_on_tracked_pre_delete, sender=model, dispatch_uid="powersync_django.capture.delete_pre")
    if label_of(model) in plan.through:
        m2m_changed.connect(_on_m2m_changed, sender=model, dispatch_uid="powersync_django.capture.m2m")
    concrete = model._meta.concrete_model
    if not getattr(concrete.save_base, "_powersync_atomic", False):
        concrete.save_base = _atomic_save_base(concrete.save_base)


def _on_class_prepared(sender: type[models.Model], **kwargs: Any) -> None:
    if django_apps.ready:  # models of installed apps are handled by connect_signals()
        _track(sender)


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "POWERSYNC" and django_apps.ready:
        from .conf import get_config

        get_config.cache_clear()
        get_rules.cache_clear()
        for model in django_apps.get_models(include_auto_created=True):
            _track(model)


# --- bulk operations -----------------------------------------------------------------------------


def record_changed(model: type[models.Model], pks: Iterable[Any], using: str | None = None,
                   previous: Mapping[str, Mapping[str, Any]] | None = None) -> int:
    """Record the current state of rows changed outside the ORM's signals (raw SQL, ``update()``...).

    Rows that exist are recorded as saved, missing ones as deleted. Call it inside the transaction that made
    the change. The rows are read with SELECT ... FOR UPDATE where the database has it: a concurrent writer of
    the same row either commits first (and its entry comes first) or waits for this transaction, so entries
    of a row stay in commit order. Returns the number of entries written.

    ``previous``: for models whose rows decide access, the values rows had before the change, by primary key
    text (``{"5": {"user_id": 3}}``; a key that is absent: a new row). Without it, open streams re-evaluate
    their bucket set as if any user's access could have changed. Tracked multi-table inheritance parents and
    children of the rows are recorded too.
    """
    using = using or router.db_for_write(model)
    pks = list(dict.fromkeys(pks))
    family = _plan().family.get(label_of(model), ([], []))
    tracked = is_tracked(model)
    if not pks or not (tracked or family[0] or family[1]):
        return 0
    entries: list[Row] = []
    label = label_of(model)
    found: list[Any] = []
    size = _chunk(using)
    with transaction.atomic(using=using, savepoint=False):
        for start in range(0, len(pks), size):
            for pk, values in _locked_rows(model, pks[start:start + size], using):
                found.append(pk)
                if tracked:
                    old = None if previous is None else previous.get(str(pk), False)
                    entries.append(_save_entry(model, pk, values, old))
        if tracked:
            seen = {str(pk) for pk in found}
            for pk in pks:
                key = str(model._meta.pk.to_python(pk))
                if key not in seen:
                    entries.append((label, key, OutboxEntry.DELETE, None))
        for relative in (*family[0], *family[1]):
            for start in range(0, len(found), size):
                entries.extend(_save_entry(relative, pk, values, None)
                               for pk, values in _locked_rows(relative, found[start:start + size], using))
        write_entries(entries, using)
    return len(entries)


def _chunk(using: str) -> int:
    """Keys per ``pk IN (...)`` query."""
    limit = connections[using].features.max_query_params or 5000
    return max(1, min(5000, limit - 10))


def _locked_rows(model: type[models.Model], pks: list[Any], using: str) -> Iterable[tuple[Any, dict[str, Any]]]:
    """(primary key, snapshot values) of the rows of ``model`` with these keys, locked (no model instances)."""
    plan = _field_plan(model)
    pk_index = next(i for i, (f, _a, _s) in enumerate(plan) if f.primary_key)
    qs = _locking(model._base_manager.using(using)).filter(pk__in=pks).values_list(*(a for _f, a, _s in plan))
    for row in qs:
        yield row[pk_index], {a: snapshot_value(f, v, synced=s) for (f, a, s), v in zip(plan, row, strict=True)}


def _locking(qs: models.QuerySet) -> models.QuerySet:
    """``qs.select_for_update()`` of the model's own rows, where the database supports it."""
    features = connections[qs.db].features
    if not features.has_select_for_update:
        return qs
    return qs.select_for_update(of=("self",)) if features.has_select_for_update_of else qs.select_for_update()


def _previous(qs: models.QuerySet) -> tuple[list[Any], dict[str, dict[str, Any]]]:
    """(primary keys, targeted values by key text) of a queryset's rows, locked."""
    attnames = [f.attname for f in _targeted_fields(label_of(qs.model))]
    rows = list(_locking(qs).values_list("pk", *attnames))
    return [r[0] for r in rows], {str(r[0]): dict(zip(attnames, r[1:], strict=True)) for r in rows}


class PowerSyncQuerySet(models.QuerySet):
    """A QuerySet whose bulk operations are captured. Use ``PowerSyncManager`` or ``as_manager()``."""

    def update(self, **kwargs: Any) -> int:
        # The matching rows are locked, then exactly those are updated: a row that starts to match in a
        # concurrent transaction meanwhile is not touched (it would be updated but not recorded).
        with transaction.atomic(using=self.db, savepoint=False):
            select = self._chain()
            select.query.distinct, select.query.distinct_fields = False, ()  # FOR UPDATE refuses DISTINCT
            found, previous = _previous(select)
            pks = list(dict.fromkeys(found))
            count = 0
            size = _chunk(self.db)
            for start in range(0, len(pks), size):
                count += models.QuerySet.update(self.filter(pk__in=pks[start:start + size]), **kwargs)
            record_changed(self.model, pks, using=self.db, previous=previous)
        return count

    def bulk_create(self, objs: Iterable[models.Model], batch_size: int | None = None, ignore_conflicts: bool = False,
                    update_conflicts: bool = False, update_fields: Any = None, unique_fields: Any = None,
                    ) -> list[models.Model]:
        objs = list(objs)
        with transaction.atomic(using=self.db, savepoint=False):
            previous: dict[str, dict[str, Any]] | None = {}
            if update_conflicts:
                previous = None  # rows updated instead of inserted: their earlier values are unknown
            keyless = ignore_conflicts and any(o.pk is None for o in objs)
            floor = _max_integer_pk(self) if keyless else None
            candidates = _conflict_candidates(self, objs) if keyless and floor is None else []
            created = super().bulk_create(objs, batch_size=batch_size, ignore_conflicts=ignore_conflicts,
                                          update_conflicts=update_conflicts, update_fields=update_fields,
                                          unique_fields=unique_fields)
            if not (ignore_conflicts or update_conflicts):
                # Every object is a new row of this transaction (locked by its insert): its values are those in
                # memory, unless some come from the database (expressions, database defaults).
                created_pks = _record_inserted(self.model, created, self.db)
                record_changed(self.model, created_pks, using=self.db, previous=previous)
                return created
            pks = [o.pk for o in created if o.pk is not None]
            if keyless and floor is not None:
                # Keys given by the database, not returned with ON CONFLICT DO NOTHING: they are above the
                # floor read before the insert (rows of other transactions in between are recorded as well).
                pks += list(self.model._base_manager.using(self.db).filter(pk__gt=floor).values_list("pk", flat=True))
            elif keyless:
                pks += list(candidates.values_list("pk", flat=True)) if candidates is not None else []
            record_changed(self.model, pks, using=self.db, previous=previous)
        return created

    def bulk_update(self, objs: Iterable[models.Model], fields: Any, *args: Any, **kwargs: Any) -> int:
        objs = list(objs)
        with transaction.atomic(using=self.db, savepoint=False):
            keys = [o.pk for o in objs]
            previous: dict[str, dict[str, Any]] = {}
            base = models.QuerySet(self.model, using=self.db)
            for start in range(0, len(keys), 500):
                previous.update(_previous(base.filter(pk__in=keys[start:start + 500]))[1])
            # A plain QuerySet: Django's bulk_update calls update(), which would record every row again.
            count = base.bulk_update(objs, fields, *args, **kwargs)
            record_changed(self.model, keys, using=self.db, previous=previous)
        return count


def _record_inserted(model: type[models.Model], objs: list[models.Model], using: str) -> list[Any]:
    """Write the S entries of rows just inserted from ``objs`` as saved (no read back); returns the keys of
    those it could not (values only the database knows, multi-table inheritance) for :func:`record_changed`."""
    label = label_of(model)
    plan = _plan()
    if label not in tracked_labels() or label in plan.family:
        return [o.pk for o in objs if o.pk is not None]
    rows, rest = [], []
    for obj in objs:
        if obj.pk is None:
            continue
        if _needs_reload(obj, model):
            rest.append(obj.pk)
        else:
            rows.append(_save_entry(model, obj.pk, _values(obj, model)))
    write_entries(rows, using)
    return rest


def _max_integer_pk(qs: models.QuerySet) -> int | None:
    """A key below every key the database can generate next, for models with database-generated integer keys
    (None for other keys): the largest key, or on PostgreSQL the key sequence's last value when that is lower
    (a row was created with an explicit key above the sequence: new keys are below it)."""
    pk = qs.model._meta.pk
    if not isinstance(pk, models.AutoField | models.BigAutoField | models.SmallAutoField):
        return None
    floor = qs.model._base_manager.using(qs.db).aggregate(m=models.Max("pk"))["m"] or 0
    connection = connections[qs.db]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_get_serial_sequence(%s, %s)",
                           [connection.ops.quote_name(qs.model._meta.db_table), pk.column])
            sequence = cursor.fetchone()[0]
            if sequence:  # as quoted by PostgreSQL
                cursor.execute(f"SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM {sequence}")  # noqa: S608
                floor = min(floor, int(cursor.fetchone()[0]))
    return floor


def _conflict_candidates(qs: models.QuerySet, objs: list[models.Model]) -> models.QuerySet | None:
    """Rows an insert of ``objs`` can have created or met as a conflict, by their unique fields."""
    opts = qs.model._meta
    sets = [[f] for f in opts.local_concrete_fields if f.unique and not f.primary_key]
    sets += [[opts.get_field(n) for n in names] for names in opts.unique_together]
    sets += [[opts.get_field(n) for n in c.fields] for c in opts.total_unique_constraints]
    if not sets:
        raise TypeError(
            f"PowerSyncQuerySet.bulk_create(ignore_conflicts=True) cannot tell which {opts.label} rows it inserted: "
            "the database assigns their keys and the model has no other unique fields. Give the objects keys."
        )
    condition = models.Q()
    for obj in objs:
        for fields in sets:
            condition |= models.Q(**{f.attname: getattr(obj, f.attname) for f in fields})
    return qs.model._base_manager.using(qs.db).filter(condition)


PowerSyncManager = models.Manager.from_queryset(PowerSyncQuerySet)
