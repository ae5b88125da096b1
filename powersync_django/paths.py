"""Lookup paths of parameter querysets: which rows decide access, and which streams a change of them concerns.

A parameter queryset (``Team`` filtered on ``memberships__user_id: token.sub``) reads every model its filter
and values paths walk through, many-to-many through tables included. For each such model, a query is one of:

- *targeted*: every join of the model in the query is constrained by an equality with a token/client
  reference (``Membership.user_id == token.sub``). A row matters only to the streams whose reference value
  equals the row's value (before or after the change), so a change re-evaluates only those streams.
- *quiet*: the query reads nothing of the model's rows but their primary key, in inner joins of such an
  equality path (``Team`` above, joined by its id, values ``id``). A row then matters only through the rows
  that reference it (memberships), which are captured themselves: its own changes re-evaluate nothing.
- *untargeted*: anything else; a change re-evaluates every stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import FieldDoesNotExist
from django.db import models
from django.db.models.manager import BaseManager

# A join position inside one query: the relation names walked so far (the root is ``()``).
Key = tuple


@dataclass(frozen=True)
class Target:
    """A field compared (by equality, through joins) with a token/client reference."""

    label: str
    field: models.Field
    ref: str


@dataclass
class Path:
    """One lookup path walked from the queryset model."""

    positions: list[tuple[Key, type[models.Model]]]
    # (from position, from field, to position, to field) of every single-column join, in order
    joins: list[tuple[Key, models.Field | None, Key, models.Field | None]]
    # fields read at each position
    reads: dict[Key, set[models.Field]]
    # the field the path compares (None when it ends at a multi-column relation) and its position
    final: tuple[Key, models.Field] | None
    lookup: str


@dataclass
class Analysis:
    """What one parameter query reads, per model label."""

    reads: frozenset[str]
    targets: list[Target] = field(default_factory=list)
    quiet: frozenset[str] = frozenset()
    # label -> targeted fields (labels absent here and from ``quiet`` are untargeted)
    targeted: dict[str, list[models.Field]] = field(default_factory=dict)


def label(model: type[models.Model]) -> str:
    return model._meta.concrete_model._meta.label_lower


def walk(model: type[models.Model], path: str) -> Path | None:
    """Walk a lookup path; None if it is not valid."""
    current = model
    key: Key = ()
    out = Path(positions=[(key, model)], joins=[], reads={key: set()}, final=None, lookup="")
    parts = path.split("__")
    last_target: models.Field | None = model._meta.pk
    for index, part in enumerate(parts):
        f = _field(current, part)
        if f is None:
            if part in models.Field.get_lookups() or part in {"in", "isnull"}:
                out.lookup = "__".join(parts[index:])
                break
            return None
        by_column = part == getattr(f, "attname", None) and part != f.name  # ``user_id``: no join
        if f.is_relation and f.related_model is not None and not by_column:
            infos = list(_parent_infos(current, f)) + list(f.path_infos)
            for j, info in enumerate(infos):
                pairs = info.join_field.get_joining_fields()
                src, dst = pairs[0] if len(pairs) == 1 else (None, None)
                new_key = (*key, part, j)
                out.joins.append((key, src, new_key, dst))
                if src is not None:
                    out.reads[key].add(src)
                out.reads.setdefault(new_key, set())
                if dst is not None:
                    out.reads[new_key].add(dst)
                out.positions.append((new_key, info.to_opts.model))
                key = new_key
                last_target = info.target_fields[0] if len(info.target_fields) == 1 else None
            current = infos[-1].to_opts.model if infos else f.related_model
            out.final = (key, last_target) if last_target is not None else None
            continue
        for j, info in enumerate(_parent_infos(current, f)):
            pairs = info.join_field.get_joining_fields()
            src, dst = pairs[0] if len(pairs) == 1 else (None, None)
            new_key = (*key, "<parent>", j)
            out.joins.append((key, src, new_key, dst))
            out.reads[key].update(x for x in (src,) if x is not None)
            out.reads.setdefault(new_key, set()).update(x for x in (dst,) if x is not None)
            out.positions.append((new_key, info.to_opts.model))
            key = new_key
        out.reads[key].add(f)
        out.final = (key, f)
        if index + 1 < len(parts):
            rest = parts[index + 1:]
            if rest[0] not in models.Field.get_lookups() and rest[0] not in {"in", "isnull"}:
                return None
            out.lookup = "__".join(rest)
        break
    return out


def _field(model: type[models.Model], name: str) -> Any:
    if name == "pk":
        return model._meta.pk
    try:
        return model._meta.get_field(name)
    except FieldDoesNotExist:
        return None


def _parent_infos(model: type[models.Model], f: Any) -> list:
    """Joins from a multi-table-inheritance child to the parent that holds ``f`` (none for own fields)."""
    owner = getattr(f, "model", None)
    if owner is None or not isinstance(owner, type) or owner._meta.concrete_model is model._meta.concrete_model:
        return []
    if not issubclass(model, owner):
        return []  # a reverse relation: ``f.model`` is the model pointed at
    return list(model._meta.get_path_to_parent(owner))


def analyse(model: type[models.Model], filters: dict[str, Any], values: list[str],
            is_ref: Any) -> tuple[Analysis | None, list[str]]:
    """Analyse a parameter queryset; returns (analysis, invalid paths)."""
    invalid: list[str] = []
    walked: list[tuple[Path, Any]] = []
    for path, value in [*filters.items(), *((v, None) for v in values)]:
        p = walk(model, path)
        if p is None:
            invalid.append(path)
        else:
            walked.append((p, value))
    if invalid:
        return None, invalid
    positions: dict[Key, type[models.Model]] = {}
    reads_at: dict[Key, set[models.Field]] = {}
    targets_at: dict[Key, set[models.Field]] = {}
    inner: set[Key] = set()
    targets: list[Target] = []
    for p, value in walked:
        positions.update(p.positions)
        for k, fs in p.reads.items():
            reads_at.setdefault(k, set()).update(fs)
        if not (is_ref(value) and p.lookup in ("", "exact") and p.final is not None):
            continue
        if p.joins:
            inner.update(k for k, _ in p.positions)
        cur_key, cur_field = p.final
        found = [(cur_key, cur_field)]
        for src_key, src, dst_key, dst in reversed(p.joins):
            if dst_key != cur_key or dst is None or src is None or not _same(dst, cur_field):
                break
            cur_key, cur_field = src_key, src
            found.append((cur_key, cur_field))
        for k, f in found:
            targets_at.setdefault(k, set()).add(f)
            targets.append(Target(label(positions[k]), f, value))
    by_label: dict[str, list[Key]] = {}
    for k, m in positions.items():
        by_label.setdefault(label(m), []).append(k)
    quiet: set[str] = set()
    targeted: dict[str, list[models.Field]] = {}
    for lab, keys in by_label.items():
        if all(_quiet_at(k, positions[k], reads_at.get(k, set()), inner) for k in keys):
            quiet.add(lab)
        elif all(k in targets_at for k in keys):
            fields = {f.attname: f for k in keys for f in targets_at[k]}
            targeted[lab] = list(fields.values())
    return Analysis(frozenset(by_label), targets, frozenset(quiet), targeted), []


def _same(a: models.Field, b: models.Field) -> bool:
    return a is b or (a.model._meta.concrete_model is b.model._meta.concrete_model and a.attname == b.attname)


def _quiet_at(key: Key, model: type[models.Model], reads: set[models.Field], inner: set[Key]) -> bool:
    if key not in inner or not all(f.primary_key for f in reads):
        return False
    if key == ():
        # The queryset model is read through its default manager, which may filter on other columns.
        return type(model._default_manager).get_queryset is BaseManager.get_queryset
    return True
