"""Bucket definitions: parsing and validation, row -> buckets, request -> bucket ids.

A definition (``settings.POWERSYNC["BUCKETS"][name]``) has optional ``parameters``, one or more ``data``
queries and an optional ``priority`` (0-3, default 3). See the README for the full format.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson
from django.apps import apps
from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured
from django.db import models

from .conf import get_config
from .encoding import encode_value

ROW_LOOKUPS = {"exact", "iexact", "isnull", "in", "gt", "gte", "lt", "lte", "startswith", "endswith", "contains"}
DEFAULT_PRIORITY = 3


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
        return all(_row_lookup(row, key, expected) for key, expected in self.static_filter.items())

    def render(self, row: Mapping[str, Any]) -> tuple[str, str]:
        """(object_id, data JSON text) of a row for the client."""
        pk = self.model._meta.pk
        object_id = str(encode_value(row[pk.attname], pk))
        out: dict[str, Any] = {"id": object_id}
        for col in self.columns:
            if col is pk:
                continue
            out[col.attname] = encode_value(row.get(col.attname), col)
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
    # model labels this query reads (a change to these re-evaluates the query on open streams)
    reads: frozenset[str] = frozenset()

    def rows(self, token: Mapping[str, Any], client: Mapping[str, Any], order: list[str]) -> list[tuple]:
        if self.static is not None:
            values = tuple(_resolve(ref, token, client) for ref in (self.static[p] for p in order))
            return [] if any(v is None for v in values) else [values]
        assert self.model is not None
        lookups = {}
        for key, ref in self.filter.items():
            value = _resolve(ref, token, client) if _is_ref(ref) else ref
            if value is None and _is_ref(ref):
                return []
            lookups[key] = value
        qs = self.model._default_manager.filter(**lookups).values_list(*(self.values[p] for p in order))
        return [tuple(r) for r in qs.distinct()]


@dataclass
class Definition:
    name: str
    parameter_names: list[str]
    parameter_queries: list[ParameterQuery]
    data: list[DataQuery]
    priority: int = DEFAULT_PRIORITY

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
            object_id, data = q.render(row)
            out.append((bucket_id(d.name, param_values, version), q.table, object_id, data))
        return out

    def request_buckets(
        self, token: Mapping[str, Any], client: Mapping[str, Any], version: int
    ) -> dict[str, tuple[str, int]]:
        """{bucket id: (definition name, priority)} a request is entitled to. Runs parameter querysets."""
        out: dict[str, tuple[str, int]] = {}
        for d in self.definitions.values():
            if not d.parameter_queries:
                out[bucket_id(d.name, [], version)] = (d.name, d.priority)
                continue
            for q in d.parameter_queries:
                for values in q.rows(token, client, d.parameter_names):
                    encoded = [_encode_param(v) for v in values]
                    out[bucket_id(d.name, encoded, version)] = (d.name, d.priority)
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


def _lookup_models(model: type[models.Model], path: str) -> set[str] | None:
    """Labels of models a lookup path walks through; None if the path is not valid."""
    reads = {model._meta.label_lower}
    current = model
    for part in path.split("__"):
        try:
            f = current._meta.get_field(part)
        except FieldDoesNotExist:
            if _local_field(current, part) is not None:
                continue
            # A lookup/transform name ends the path.
            return reads if part in models.Field.get_lookups() or part in {"in", "isnull"} else None
        if f.is_relation and f.related_model is not None:
            current = f.related_model
            reads.add(current._meta.label_lower)
    return reads


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
            reads: set[str] = set()
            for path in list(item.get("filter") or {}) + list(values.values()):
                walked = _lookup_models(model, path)
                if walked is None:
                    problems.append(Problem("E006", f"{where}: invalid lookup {path!r} on {model._meta.label}."))
                else:
                    reads |= walked
            q = ParameterQuery(model=model, filter=dict(item.get("filter") or {}), values=dict(values),
                               reads=frozenset(reads))
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


def parse(config: Mapping[str, Any]) -> tuple[Rules | None, list[Problem]]:
    """Parse ``BUCKETS``; return the rules (None if unusable) and every problem found."""
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
            missing = set(pnames) - set(q.bindings.values())
            extra = set(q.bindings.values()) - set(pnames)
            if missing:
                problems.append(Problem("E008", f"BUCKETS[{name!r}]: data query on {q.model._meta.label} does not filter on "
                                        f"{sorted('bucket.' + m for m in missing)}.",
                                        "Every bucket parameter must be matched by an equality filter."))
            if extra:
                problems.append(Problem("E008", f"BUCKETS[{name!r}]: data filter uses unknown parameters {sorted(extra)}."))
            cols = [c.attname for c in q.columns]
            seen = tables.get(q.table)
            if seen and (seen[0] != q.model._meta.label_lower or seen[1] != cols):
                problems.append(Problem("E009", f"Client table {q.table!r} is produced by {seen[0]} and "
                                        f"{q.model._meta.label_lower} with different columns.",
                                        "Give each mapping its own 'table' or the same model and columns."))
            tables.setdefault(q.table, (q.model._meta.label_lower, cols))
        definitions[name] = Definition(name, pnames, pqueries, data, priority)
    digest = hashlib.sha256(_canonical(raw_buckets, config.get("DATETIME_FORMAT"))).hexdigest()
    if any(p.id.startswith("E") for p in problems):
        return None, problems
    return Rules(definitions, digest), problems


def _canonical(raw: Any, datetime_format: Any) -> bytes:
    return orjson.dumps({"buckets": raw, "datetime_format": datetime_format},
                        option=orjson.OPT_SORT_KEYS, default=str)


@lru_cache(maxsize=1)
def get_rules() -> Rules:
    """The parsed bucket definitions of the current settings (raises ImproperlyConfigured if invalid)."""
    rules, problems = parse(get_config())
    if rules is None:
        raise ImproperlyConfigured("Invalid POWERSYNC['BUCKETS']: " + "; ".join(p.msg for p in problems))
    return rules
