"""Dead letters: outbox entries moved aside because they could not be replicated (see replication.py).

Retrying and dropping them (``manage.py powersync_deadletters``, the admin actions) works per row: all dead
letters of a row go back to the outbox in their original order, followed by the row's entries still in the
outbox, so no change of the row overtakes another; or they are all dropped.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.apps import apps
from django.db import DEFAULT_DB_ALIAS, models

from .capture import snapshot, write_entries
from .db import write_transaction
from .models import DeadLetter, OutboxEntry, ReplicationState


def _selection(using: str, ids: Iterable[int] | None) -> models.QuerySet[DeadLetter]:
    qs = DeadLetter.objects.using(using)
    return qs if ids is None else qs.filter(id__in=list(ids))


def retry(ids: Iterable[int] | None = None, using: str = DEFAULT_DB_ALIAS) -> int:
    """Put the dead letters of the rows of ``ids`` (every row when None) back into the outbox; return how many.

    Runs with the replication state row locked (replication batches wait) and the source rows locked
    (their writers wait), so each row's re-queued entries keep their order against new changes.
    """
    with write_transaction(using):
        ReplicationState.objects.using(using).get_or_create(pk=1)
        list(ReplicationState.objects.using(using).select_for_update().filter(pk=1))
        sources = sorted(set(_selection(using, ids).values_list("source", flat=True)))
        letters = list(DeadLetter.objects.using(using).filter(source__in=sources).order_by("entry_id", "id"))
        if not letters:
            return 0
        by_model: dict[str, set[str]] = {}
        for letter in letters:
            by_model.setdefault(letter.model, set()).add(letter.object_pk)
        queued: list[OutboxEntry] = []
        for label, pks in by_model.items():
            _lock_rows(label, pks, using)
            queued += OutboxEntry.objects.using(using).filter(model=label, object_pk__in=pks).order_by("id")
        OutboxEntry.objects.using(using).filter(id__in=[e.id for e in queued]).delete()
        DeadLetter.objects.using(using).filter(id__in=[x.id for x in letters]).delete()
        write_entries([_entry(x, using) for x in letters]
                      + [OutboxEntry(model=e.model, object_pk=e.object_pk, op=e.op, snapshot=e.snapshot) for e in queued],
                      using)
    return len(letters)


def _entry(letter: DeadLetter, using: str) -> OutboxEntry:
    """The outbox entry of a dead letter; a row the build could not render (no snapshot) is captured again."""
    if letter.op == OutboxEntry.SAVE and letter.snapshot is None:
        try:
            model = apps.get_model(letter.model)
            instance = model._base_manager.using(using).get(pk=model._meta.pk.to_python(letter.object_pk))
        except Exception:  # gone (or no longer a model): the row is deleted for the clients
            return OutboxEntry(model=letter.model, object_pk=letter.object_pk, op=OutboxEntry.DELETE)
        return OutboxEntry(model=letter.model, object_pk=letter.object_pk, op=OutboxEntry.SAVE,
                           snapshot=snapshot(instance))
    return OutboxEntry(model=letter.model, object_pk=letter.object_pk, op=letter.op, snapshot=letter.snapshot)


def _lock_rows(label: str, pks: set[str], using: str) -> None:
    try:
        model = apps.get_model(label)
    except (LookupError, ValueError):
        return
    pk = model._meta.pk
    values = []
    for value in pks:
        try:
            values.append(pk.to_python(value))
        except Exception:  # noqa: S112  (a pk that is not valid for the model any more: nothing to lock)
            continue
    list(model._base_manager.using(using).select_for_update().filter(pk__in=values).values_list("pk", flat=True))


def drop(ids: Iterable[int] | None = None, using: str = DEFAULT_DB_ALIAS) -> int:
    """Delete the dead letters of the rows of ``ids`` (every one when None); return how many.

    Their changes are not synced: the row's next change replicates it again (its entries are no longer held),
    or ``manage.py powersync_resync`` re-reads every row.
    """
    with write_transaction(using):
        sources = set(_selection(using, ids).values_list("source", flat=True))
        deleted, _ = DeadLetter.objects.using(using).filter(source__in=sources).delete()
    return deleted
