"""Bucket definitions: parsing and validation, row -> buckets, request -> bucket ids.

A definition (``settings.POWERSYNC["BUCKETS"][name]``) has optional ``parameters``, one or more ``data``
queries and an optional ``priority`` (0-3, default 3). See the README for the full format.
"""

from __future__ import annotations

import decimal
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any

import orjson
from django.apps import apps
from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured, ValidationError
from django.db import models

from . import paths
from .conf import get_config
from .encoding import (
    SnapshotRow,
    client_converter,
    encode_value,
    is_plain,
    snapshot_to_python,
    value_converter,
)

ROW_LOOKUPS = {"exact", "iexact", "isnull", "in", "gt", "gte", "lt", "lte", "startswith", "endswith", "contains"}
DEFAULT_PRIORITY = 3
# Snapshot key of the targeted values a row had before a change (see Rules.change_keys).
OLD_VALUES = "__powersync_old__"
# A checkpoint lists at most this many change keys; beyond that, the labels of the changed models.
MAX_CHANGE_KEYS = 500


@dataclass(frozen=True)
class Problem:
    """A configuration problem, reported by the system checks (``powersync_django.<id>``)."""

    id: str
    msg: str
    hint: str = ""


@dataclass
class DataQuery:
    """Rows of one model that belong to the buckets of one definition, as one client table."""

    definition: str
    model: type[models.Model]
    table: str
    static_filter: dict[str, Any]
    # model attname -> bucket parameter name
    bindings: dict[str, str]
    columns: list[models.Field]

    @property
    def label(self) -> str:
        return self.model._meta.label_lower

    def matches(self, row: Mapping[str, Any]) -> bool:
        """Whether a row (attname -> python value) passes the static filter."""
        if not self.static_filter:
            return True
        return all(_row_lookup(row, key, expected) for key, expected in self.static_filter.items())

    def render(self, row: Mapping[str, Any]) -> tuple[str, str]:
        """(object_id, data JSON text) of a row for the client."""
        if type(row) is SnapshotRow:
            return self._render_snapshot(row.raw)
        _, pk_attname, pk_convert, columns, _ = self._value_plan()
        object_id = str(pk_convert(row[pk_attname]))
        out: dict[str, Any] = {"id": object_id}
        for attname, convert in columns:
            out[attname] = convert(row.get(attname))
        return object_id, orjson.dumps(out).decode()

    def _value_plan(self) -> tuple[bool, str, Any, list[tuple[str, Any]], dict[str, Any]]:
        """(iso, pk attname, pk converter, [(attname, converter) of the other columns], {attname: converter}
        of the fields whose client value is ``encode_value(value)`` whatever the field) for Python rows."""
        iso = get_config()["DATETIME_FORMAT"] == "iso"
        cached = self.__dict__.get("_value_plan_cache")
        if cached is None or cached[0] != iso:
            pk = self.model._meta.pk
            converters = {f.attname: value_converter(f, iso) for f in self.model._meta.concrete_fields}
            plain = {f.attname: converters[f.attname] for f in self.model._meta.concrete_fields if is_plain(f)}
            cached = self.__dict__["_value_plan_cache"] = (
                iso, pk.attname, converters[pk.attname],
                [(c.attname, converters.get(c.attname) or value_converter(c, iso)) for c in self.columns if c is not pk],
                plain)
        return cached

    def converters(self) -> dict[str, tuple[Any, bool]]:
        """attname -> :func:`~powersync_django.encoding.client_converter` of the model's concrete fields, for
        the current DATETIME_FORMAT."""
        return self._snapshot_plan()[1]

    def _snapshot_plan(self) -> tuple[bool, dict[str, tuple[Any, bool]], str, Any, list[tuple[str, Any]]]:
        """(iso, converters, pk attname, pk converter, [(attname, converter) of the other columns])."""
        iso = get_config()["DATETIME_FORMAT"] == "iso"
        cached = self.__dict__.get("_snapshot_plan_cache")
        if cached is None or cached[0] != iso:
            converters = {f.attname: client_converter(f, iso) for f in self.model._meta.concrete_fields}
            pk = self.model._meta.pk.attname
            cached = self.__dict__["_snapshot_plan_cache"] = (
                iso, converters, pk, converters[pk][0],
                [(c.attname, converters[c.attname][0]) for c in self.columns if c.attname != pk])
        return cached

    def _render_snapshot(self, raw: dict[str, Any]) -> tuple[str, str]:
        """:meth:`render` of a snapshot row, from its snapshot values (same output)."""
        _, _, pk, pk_convert, columns = self._snapshot_plan()
        get = raw.get
        object_id = str(pk_convert(get(pk)))
        out: dict[str, Any] = {"id": object_id}
        for attname, convert in columns:
            out[attname] = convert(get(attname))
        return object_id, orjson.dumps(out).decode()


@dataclass
class ParameterQuery:
    """Yields parameter rows of a request: from the token/client parameters, or from a queryset."""

    # param name -> reference ("token.sub", "token.<claim>", "client.<key>") for static queries
    static: dict[str, str] | None = None
    model: type[models.Model] | None = None
    filter: dict[str, Any] = field(default_factory=dict)
    # param name -> field path in the queryset
    values: dict[str, str] = field(default_factory=dict)
    # model labels this query reads, through tables included (their changes re-evaluate it on open streams)
    reads: frozenset[str] = frozenset()
    # which rows of which models concern which streams (see paths.py)
    analysis: paths.Analysis | None = None
    # filter key -> the field an exact token/client reference is compared with (values are coerced to it)
    compared: dict[str, models.Field] = field(default_factory=dict)

    def rows(self, token: Mapping[str, Any], client: Mapping[str, Any], order: list[str],
             limit: int | None = None) -> list[tuple]:
        """Parameter rows for one request; a queryset reads at most ``limit`` rows when given."""
        if self.static is not None:
            values = tuple(_resolve(ref, token, client) for ref in (self.static[p] for p in order))
            return [] if any(v is None for v in values) else [values]
        assert self.model is not None
        lookups = {}
        for key, ref in self.filter.items():
            value = _resolve(ref, token, client) if _is_ref(ref) else ref
            if value is None and _is_ref(ref):
                return []
            if _is_ref(ref) and key in self.compared:
                value = coerce(self.compared[key], value)
                if value is None:
                    return []  # e.g. sub "abc" compared with an integer key: nothing can match
            lookups[key] = value
        qs = self.model._default_manager.filter(**lookups).values_list(*(self.values[p] for p in order)).distinct()
        if limit is not None:
            qs = qs[:limit]
        return [tuple(r) for r in qs]

    def stream_keys(self, token: Mapping[str, Any], client: Mapping[str, Any]) -> set[str]:
        """Change keys (``label|attname=value``) of the rows this query reads for one stream."""
        out: set[str] = set()
        for t in self.analysis.targets if self.analysis else ():
            value = hint_value(t.field, _resolve(t.ref, token, client))
            if value is not None:
                out.add(change_key(t.label, t.field.attname, value))
        return out


@dataclass
class Definition:
    name: str
    parameter_names: list[str]
    parameter_queries: list[ParameterQuery]
    data: list[DataQuery]
    priority: int = DEFAULT_PRIORITY

    @cached_property
    def parameter_fields(self) -> dict[str, models.Field]:
        """The field each parameter is bound to (by the first data query): request values are coerced to it."""
        out: dict[str, models.Field] = {}
        for q in self.data:
            for attname, pname in q.bindings.items():
                f = _local_field(q.model, attname)
                if f is not None:
                    out.setdefault(pname, f)
        return out

    @property
    def reads(self) -> frozenset[str]:
        out: set[str] = set()
        for q in self.parameter_queries:
            out |= q.reads
        return frozenset(out)


@dataclass
class Rules:
    """All bucket definitions, indexed for replication and for requests."""

    definitions: dict[str, Definition]
    hash: str

    def __post_init__(self) -> None:
        self.by_model: dict[str, list[DataQuery]] = {}
        for d in self.definitions.values():
            for q in d.data:
                self.by_model.setdefault(q.label, []).append(q)

    @property
    def models(self) -> list[type[models.Model]]:
        seen: dict[str, type[models.Model]] = {}
        for d in self.definitions.values():
            for q in d.data:
                seen[q.label] = q.model
        return list(seen.values())

    @property
    def parameter_models(self) -> frozenset[str]:
        out: set[str] = set()
        for d in self.definitions.values():
            out |= d.reads
        return frozenset(out)

    @cached_property
    def captured_labels(self) -> frozenset[str]:
        """Models whose writes go to the outbox: those synced and those deciding access."""
        return frozenset(self.by_model) | self.parameter_models

    @cached_property
    def watched(self) -> dict[str, LabelWatch]:
        """How changes of each model read by parameter queries concern open streams (see paths.py)."""
        out: dict[str, LabelWatch] = {}
        for d in self.definitions.values():
            for q in d.parameter_queries:
                a = q.analysis
                if a is None:
                    continue
                for lab in a.reads:
                    w = out.setdefault(lab, LabelWatch(apps.get_model(lab)))
                    if lab in a.targeted:
                        for f in a.targeted[lab]:
                            w.fields[f.attname] = f
                    elif lab not in a.quiet:
                        w.untargeted = True
        return out

    def targeted_fields(self, label: str) -> list[models.Field]:
        """Fields whose values before a change decide which streams it concerns (the primary key aside)."""
        w = self.watched.get(label)
        if w is None or w.untargeted:
            return []
        return [f for f in w.fields.values() if not f.primary_key]

    def change_keys(self, label: str, snapshot: str | None) -> list[str]:
        """Checkpoint ``changed_models`` entries for a captured change of a row (op S or D).

        ``snapshot``: the outbox snapshot (a deleted row's too); it may carry the targeted values the row had
        before the change under ``OLD_VALUES`` (null: unknown). ``label`` alone re-evaluates every stream;
        ``label|attname=value`` only the streams with that value.
        """
        w = self.watched.get(label)
        if w is None:
            return []
        if w.untargeted:
            return [label]
        if not w.fields:
            return []
        raw = orjson.loads(snapshot) if snapshot else None
        if not isinstance(raw, dict) or (OLD_VALUES in raw and not isinstance(raw[OLD_VALUES], dict)):
            return [label]  # values unknown: correctness first
        old = raw.get(OLD_VALUES) or {}
        keys = []
        for attname, f in w.fields.items():
            if attname not in raw:
                return [label]
            for source in (raw, old) if attname in old else (raw,):
                value = hint_value(f, snapshot_to_python(f, source[attname]))
                if value is not None:
                    keys.append(change_key(label, attname, value))
        return keys

    @staticmethod
    def bounded_keys(keys: Iterable[str], limit: int = MAX_CHANGE_KEYS) -> set[str]:
        """Change keys for one checkpoint: beyond ``limit``, targeted keys collapse into their model labels."""
        keys = set(keys)
        return keys if len(keys) <= limit else {k.partition("|")[0] for k in keys}

    def stream_keys(self, token: Mapping[str, Any], client: Mapping[str, Any]) -> frozenset[str]:
        """Checkpoint ``changed_models`` entries that make a stream re-evaluate its bucket set."""
        out = set(self.watched)
        for d in self.definitions.values():
            for q in d.parameter_queries:
                out |= q.stream_keys(token, client)
        return frozenset(out)

    def row_buckets(self, label: str, row: Mapping[str, Any] | None, version: int) -> list[tuple[str, str, str, str]]:
        """(bucket id, table, object_id, data JSON) for every bucket a row belongs to; [] for a deleted row."""
        if row is None:
            return []
        out = []
        for q in self.by_model.get(label, ()):
            if not q.matches(row):
                continue
            d = self.definitions[q.definition]
            param_values = [_param_value(q, row, p) for p in d.parameter_names]
            if any(v is None for v in param_values):
                continue  # NULL equals no parameter value (SQL semantics): in no bucket
            object_id, data = q.render(row)
            out.append((self._bucket_id(d.name, param_values, version), q.table, object_id, data))
        return out

    def _bucket_id(self, name: str, values: list[Any], version: int) -> str:
        """:func:`bucket_id`, remembered: replication computes the ids of the same few buckets row after row."""
        cache = self.__dict__.setdefault("_bucket_ids", {})
        try:
            key = (name, version, *values)  # encoded values: 1 and 1.0 or True cannot both occur
            return cache[key]
        except KeyError:
            if len(cache) > 10_000:
                cache.clear()
            value = cache[key] = bucket_id(name, values, version)
            return value
        except TypeError:  # an unhashable value
            return bucket_id(name, values, version)

    def request_buckets(
        self, token: Mapping[str, Any], client: Mapping[str, Any], version: int, limit: int | None = None
    ) -> dict[str, tuple[str, int]]:
        """{bucket id: (definition name, priority)} a request is entitled to. Runs parameter querysets.

        With ``limit``, stops once more than ``limit`` buckets are found (the caller rejects the request):
        no parameter queryset is read past that, however many rows it has.
        """
        out: dict[str, tuple[str, int]] = {}
        for d in self.definitions.values():
            if limit is not None and len(out) > limit:
                break
            if getattr(d, "is_stream", False):
                continue  # streams: see streams.resolve
            if not d.parameter_queries:
                out[bucket_id(d.name, [], version)] = (d.name, d.priority)
                continue
            fields = d.parameter_fields
            for q in d.parameter_queries:
                room = None if limit is None else limit + 1 - len(out)
                if room is not None and room <= 0:
                    break
                for values in q.rows(token, client, d.parameter_names, limit=room):
                    encoded = _request_params(fields, d.parameter_names, values)
                    if encoded is not None:
                        out[bucket_id(d.name, encoded, version)] = (d.name, d.priority)
        return out


@dataclass
class LabelWatch:
    """How changes of one model concern open streams: every stream, or those of targeted field values."""

    model: type[models.Model]
    untargeted: bool = False
    fields: dict[str, models.Field] = field(default_factory=dict)



def change_key(label: str, attname: str, value: str) -> str:
    return f"{label}|{attname}={value}"


def to_field_value(f: models.Field, value: Any) -> Any:
    """``value`` as field ``f`` (a foreign key: its target) stores it. Raises if it does not fit.

    Decimals are rounded to the field's decimal places like the database does, so that a request's ``12.5``
    finds the bucket of rows holding ``12.50``.
    """
    target = f.target_field if isinstance(f, models.ForeignKey) else f
    value = target.to_python(value)
    if isinstance(target, models.DecimalField) and isinstance(value, decimal.Decimal):
        context = decimal.Context(prec=target.max_digits)
        value = value.quantize(decimal.Decimal(1).scaleb(-target.decimal_places), context=context)
    return value


def coerce(f: models.Field, value: Any) -> Any:
    """``value`` as the python value of field ``f`` (a foreign key: of its target); None if it does not fit."""
    if value is None:
        return None
    try:
        return to_field_value(f, value)
    except (ValidationError, ValueError, TypeError, ArithmeticError):
        return None


def hint_value(f: models.Field, value: Any) -> str | None:
    """Normalised text of a value of ``f``: an integer user id 5 and a token's sub "5" give the same."""
    value = coerce(f, value)
    return None if value is None else str(value)


def _request_params(fields: Mapping[str, models.Field], names: list[str], values: Iterable[Any]) -> list[Any] | None:
    """Encoded parameter values of a request, coerced to the bound fields; None if one does not fit or is null."""
    out = []
    for name, value in zip(names, values, strict=True):
        f = fields.get(name)
        value = coerce(f, value) if f is not None else value
        if value is None:
            return None  # does not fit the field, or NULL: no row is in such a bucket
        out.append(_encode_param(value))
    return out

# Longest parameter array kept readable in a bucket id; longer ones are hashed (bucket columns are bounded).
MAX_BUCKET_PARAMETERS_LENGTH = 200


def bucket_id(name: str, values: Iterable[Any], version: int) -> str:
    """PowerSync bucket id: ``<version>#<name>["v1","v2"]`` (``name[]`` without parameters).

    Parameter arrays longer than :data:`MAX_BUCKET_PARAMETERS_LENGTH` characters are replaced by their
    SHA-256: ``<version>#<name>#<hex>``. Replication and requests both compute ids here, so they agree; a
    hashed id never equals a readable one (those end with ``]``).
    """
    array = orjson.dumps(list(values)).decode()
    if len(array) > MAX_BUCKET_PARAMETERS_LENGTH:
        array = "#" + hashlib.sha256(array.encode()).hexdigest()
    return f"{version}#{name}{array}" if version else f"{name}{array}"


def _encode_param(value: Any) -> Any:
    encoded = encode_value(value)
    # Equal numbers must give equal bucket ids whatever their type.
    if isinstance(encoded, float) and encoded.is_integer():
        return int(encoded)
    return encoded


def _param_value(q: DataQuery, row: Mapping[str, Any], param: str) -> Any:
    for attname, name in q.bindings.items():
        if name == param:
            if type(row) is SnapshotRow:
                convert, plain = q.converters().get(attname, (None, False))
                if plain:  # its client value is encode_value(python value)
                    return _encode_param(convert(row.raw.get(attname)))
            else:
                convert = q._value_plan()[4].get(attname)
                if convert is not None:
                    return _encode_param(convert(row.get(attname)))
            return _encode_param(row.get(attname))
    raise ImproperlyConfigured(f"Data query of {q.definition!r} does not bind parameter {param!r}.")


def _is_ref(value: Any) -> bool:
    return isinstance(value, str) and (value.startswith("token.") or value.startswith("client."))


def _resolve(ref: str, token: Mapping[str, Any], client: Mapping[str, Any]) -> Any:
    source, _, key = ref.partition(".")
    if source == "token":
        if key == "user_id":
            key = "sub"
        return token.get(key)
    if source == "client":
        value = client.get(key) if isinstance(client, Mapping) else None
        return value if isinstance(value, str | int | float | bool) else None
    raise ImproperlyConfigured(f"Unknown parameter reference {ref!r}")


def _row_lookup(row: Mapping[str, Any], key: str, expected: Any) -> bool:
    attname, _, lookup = key.partition("__")
    lookup = lookup or "exact"
    value = row.get(attname)
    if lookup == "isnull":
        return (value is None) == bool(expected)
    if lookup == "in":
        return value in expected
    if value is None:
        return False
    if lookup == "exact":
        return value == expected
    if lookup == "iexact":
        return str(value).lower() == str(expected).lower()
    if lookup == "gt":
        return value > expected
    if lookup == "gte":
        return value >= expected
    if lookup == "lt":
        return value < expected
    if lookup == "lte":
        return value <= expected
    if lookup == "startswith":
        return str(value).startswith(str(expected))
    if lookup == "endswith":
        return str(value).endswith(str(expected))
    if lookup == "contains":
        return str(expected) in str(value)
    raise ValueError(lookup)


# --- parsing -------------------------------------------------------------------------------------


def _get_model(label: Any, where: str, problems: list[Problem]) -> type[models.Model] | None:
    if not isinstance(label, str) or label.count(".") != 1:
        problems.append(Problem("E002", f"{where}: model must be an 'app_label.ModelName' string, got {label!r}."))
        return None
    try:
        return apps.get_model(label)
    except (LookupError, ValueError):
        problems.append(Problem("E002", f"{where}: unknown model {label!r}.", "Check INSTALLED_APPS and the spelling."))
        return None


def _local_field(model: type[models.Model], name: str) -> models.Field | None:
    try:
        f = model._meta.get_field(name)
    except FieldDoesNotExist:
        for candidate in model._meta.concrete_fields:
            if candidate.attname == name:
                return candidate
        return None
    return f if getattr(f, "concrete", False) else None


def _compared_fields(model: type[models.Model], filters: Mapping[str, Any]) -> dict[str, models.Field]:
    """Filter key -> field, for the keys comparing a field with a token/client reference by equality."""
    out = {}
    for key, value in filters.items():
        walked = paths.walk(model, key) if _is_ref(value) else None
        if walked is not None and walked.final is not None and walked.lookup in ("", "exact"):
            out[key] = walked.final[1]
    return out


def _parse_data(name: str, raw: Any, index: int, problems: list[Problem]) -> DataQuery | None:
    where = f"BUCKETS[{name!r}]['data'][{index}]"
    if isinstance(raw, str):
        raw = {"model": raw}
    if not isinstance(raw, dict):
        problems.append(Problem("E003", f"{where} must be a model label or a dict."))
        return None
    unknown = set(raw) - {"model", "table", "filter", "fields", "exclude"}
    if unknown:
        problems.append(Problem("E003", f"{where}: unknown keys {sorted(unknown)}.", "Use model, table, filter, fields, exclude."))
    model = _get_model(raw.get("model"), where, problems)
    if model is None:
        return None
    table = raw.get("table") or model._meta.model_name
    static: dict[str, Any] = {}
    bindings: dict[str, str] = {}
    for key, value in (raw.get("filter") or {}).items():
        attname, _, lookup = key.partition("__")
        f = _local_field(model, attname)
        if f is None or "__" in lookup or (lookup and lookup not in ROW_LOOKUPS):
            problems.append(
                Problem(
                    "E004",
                    f"{where}: filter {key!r} is not decidable from the {model._meta.label} row alone.",
                    "Data filters may only use the model's own columns with exact/isnull/in/gt/gte/lt/lte/"
                    "startswith/endswith/contains lookups; move joins into the parameter queryset.",
                )
            )
            continue
        if isinstance(value, str) and value.startswith("bucket."):
            if lookup not in ("", "exact"):
                problems.append(Problem("E004", f"{where}: bucket parameters can only be matched with equality ({key!r})."))
                continue
            bindings[f.attname] = value.removeprefix("bucket.")
        elif _is_ref(value):
            problems.append(
                Problem("E004", f"{where}: filter {key!r} uses {value!r}; data filters cannot read the token or client.",
                        "Declare it as a bucket parameter and filter on 'bucket.<name>'.")
            )
        else:
            static[f.attname + ("__" + lookup if lookup else "")] = _coerce_static(f, lookup, value)
    fields = raw.get("fields")
    exclude = set(raw.get("exclude") or ())
    concrete = list(model._meta.concrete_fields)
    if fields is not None:
        columns = []
        for fname in fields:
            f = _local_field(model, fname)
            if f is None:
                problems.append(Problem("E005", f"{where}: unknown field {fname!r} of {model._meta.label}."))
            else:
                columns.append(f)
    else:
        columns = [f for f in concrete if f.name not in exclude and f.attname not in exclude]
    for fname in exclude:
        if _local_field(model, fname) is None:
            problems.append(Problem("E005", f"{where}: unknown field {fname!r} in exclude of {model._meta.label}."))
    return DataQuery(name, model, table, static, bindings, columns)


def _coerce_static(f: models.Field, lookup: str, value: Any) -> Any:
    if lookup == "isnull":
        return bool(value)
    target = f.target_field if isinstance(f, models.ForeignKey) else f
    if lookup == "in":
        return [target.to_python(v) for v in value]
    if lookup in ("startswith", "endswith", "contains", "iexact"):
        return value
    return target.to_python(value)


def _parse_parameters(name: str, raw: Any, problems: list[Problem]) -> tuple[list[str], list[ParameterQuery]]:
    where = f"BUCKETS[{name!r}]['parameters']"
    if raw is None:
        return [], []
    items = raw if isinstance(raw, list) else [raw]
    names: list[str] | None = None
    queries = []
    for item in items:
        if not isinstance(item, dict):
            problems.append(Problem("E006", f"{where} must be a dict or a list of dicts."))
            continue
        if "queryset" in item:
            model = _get_model(item["queryset"], where, problems)
            values = item.get("values") or {}
            if not isinstance(values, dict) or not values:
                problems.append(Problem("E006", f"{where}: a parameter queryset needs 'values': {{param: field}}."))
                continue
            if model is None:
                continue
            filters = dict(item.get("filter") or {})
            analysis, invalid = paths.analyse(model, filters, list(values.values()), _is_ref)
            for path in invalid:
                problems.append(Problem("E006", f"{where}: invalid lookup {path!r} on {model._meta.label}."))
            if analysis is None:
                continue
            q = ParameterQuery(model=model, filter=filters, values=dict(values), reads=analysis.reads,
                               analysis=analysis, compared=_compared_fields(model, filters))
            these = list(values)
        else:
            for pname, ref in item.items():
                if not _is_ref(ref):
                    problems.append(
                        Problem("E006", f"{where}: {pname!r} must reference 'token.<claim>' or 'client.<key>', got {ref!r}.")
                    )
            q = ParameterQuery(static=dict(item))
            these = list(item)
        if names is None:
            names = these
        elif sorted(names) != sorted(these):
            problems.append(Problem("E006", f"{where}: every parameter query must yield the same parameters."))
        queries.append(q)
    return names or [], queries


def _check_bindings(where: str, q: DataQuery, pnames: list[str], problems: list[Problem],
                    tables: dict[str, tuple[str, list[str]]]) -> None:
    """E008 (every parameter matched by one equality filter) and E009 (one client table, one shape)."""
    missing = set(pnames) - set(q.bindings.values())
    extra = set(q.bindings.values()) - set(pnames)
    if missing:
        problems.append(Problem("E008", f"{where}: data query on {q.model._meta.label} does not filter on "
                                f"{sorted('bucket.' + m for m in missing)}.",
                                "Every parameter must be matched by an equality filter."))
    if extra:
        problems.append(Problem("E008", f"{where}: data filter uses unknown parameters {sorted(extra)}."))
    cols = [c.attname for c in q.columns]
    seen = tables.get(q.table)
    if seen and (seen[0] != q.model._meta.label_lower or seen[1] != cols):
        problems.append(Problem("E009", f"Client table {q.table!r} is produced by {seen[0]} and "
                                f"{q.model._meta.label_lower} with different columns.",
                                "Give each mapping its own 'table' or the same model and columns."))
    tables.setdefault(q.table, (q.model._meta.label_lower, cols))


def parse(config: Mapping[str, Any]) -> tuple[Rules | None, list[Problem]]:
    """Parse ``BUCKETS`` and ``STREAMS``; return the rules (None if unusable) and every problem found."""
    problems: list[Problem] = []
    raw_buckets = config.get("BUCKETS") or {}
    if not isinstance(raw_buckets, dict):
        return None, [Problem("E001", "POWERSYNC['BUCKETS'] must be a dict of definitions.")]
    definitions: dict[str, Definition] = {}
    tables: dict[str, tuple[str, list[str]]] = {}
    for name, raw in raw_buckets.items():
        if not isinstance(raw, dict):
            problems.append(Problem("E001", f"BUCKETS[{name!r}] must be a dict."))
            continue
        unknown = set(raw) - {"parameters", "data", "priority"}
        if unknown:
            problems.append(Problem("E001", f"BUCKETS[{name!r}]: unknown keys {sorted(unknown)}.",
                                    "Use parameters, data and priority."))
        priority = raw.get("priority", DEFAULT_PRIORITY)
        if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 3:
            problems.append(Problem("E007", f"BUCKETS[{name!r}]: priority must be an integer from 0 to 3, got {priority!r}."))
            priority = DEFAULT_PRIORITY
        pnames, pqueries = _parse_parameters(name, raw.get("parameters"), problems)
        data_raw = raw.get("data") or []
        if not isinstance(data_raw, list) or not data_raw:
            problems.append(Problem("E003", f"BUCKETS[{name!r}] needs a non-empty 'data' list."))
            data_raw = []
        data = [q for i, r in enumerate(data_raw) if (q := _parse_data(name, r, i, problems))]
        for q in data:
            _check_bindings(f"BUCKETS[{name!r}]", q, pnames, problems, tables)
        definitions[name] = Definition(name, pnames, pqueries, data, priority)
    from .streams import parse_streams

    definitions.update(parse_streams(config.get("STREAMS"), definitions, tables, problems))
    digest = hashlib.sha256(_canonical(raw_buckets, config.get("DATETIME_FORMAT"), config.get("STREAMS"))).hexdigest()
    if any(p.id.startswith("E") for p in problems):
        return None, problems
    return Rules(definitions, digest), problems


def _canonical(raw: Any, datetime_format: Any, streams: Any = None) -> bytes:
    doc = {"buckets": raw, "datetime_format": datetime_format}
    if streams:  # absent without streams: the hash of existing configurations does not change
        doc["streams"] = streams
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS, default=str)


@lru_cache(maxsize=1)
def get_rules() -> Rules:
    """The parsed bucket definitions of the current settings (raises ImproperlyConfigured if invalid)."""
    rules, problems = parse(get_config())
    if rules is None:
        raise ImproperlyConfigured("Invalid POWERSYNC['BUCKETS'] or ['STREAMS']: " + "; ".join(p.msg for p in problems))
    return rules
