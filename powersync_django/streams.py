"""Sync Streams: ``POWERSYNC["STREAMS"]`` declarations and the buckets a sync request subscribes to.

A stream is declared like a bucket definition (``parameters``, ``data``, ``priority``) plus ``auto_subscribe``.
Its parameter references may name ``auth.<claim>`` (``auth.user_id`` is ``sub``; ``token.<claim>`` works too),
``subscription.<key>`` (the parameters the app passed to ``syncStream(name, params)``) and ``connection.<key>``
(the connect ``params``; ``client.<key>`` works too). Streams are parsed into :class:`Stream` objects kept in
``Rules.definitions`` next to the bucket definitions, so replication builds their buckets like any other: one
bucket per (stream, parameter values), shared by every connection and subscription that selects it.

:func:`resolve` turns a sync request (defaults + ``streams.subscriptions``) into buckets, the ``subscriptions``
reasons of each bucket and the ``checkpoint.streams`` descriptions (protocol.md §15).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from django.core.exceptions import ValidationError
from django.db import DataError, models

from . import paths
from .protocol import ProtocolError, SyncRequest
from .rules import (
    DEFAULT_PRIORITY,
    DataQuery,
    Definition,
    ParameterQuery,
    Problem,
    Rules,
    _check_bindings,
    _encode_param,
    _get_model,
    _is_ref,
    _parse_data,
    _resolve,
    bucket_id,
    change_key,
    hint_value,
    to_field_value,
)

TOO_MANY_SUBSCRIPTIONS = "PSYNC_S2305"  # the reference's code for "too many buckets / parameter results"
SOURCES = ("auth", "token", "subscription", "connection", "client")
STREAM_KEYS = {"parameters", "data", "priority", "auto_subscribe"}
LIST_LOOKUPS = {"in", "range"}  # lookups that take a list of values


class SubscriptionError(Exception):
    """A subscription that gets no buckets; the message goes to ``checkpoint.streams[].errors``."""


def is_ref(value: Any) -> bool:
    """Whether a value is a parameter reference of a stream (``auth.x``, ``subscription.x``, ...)."""
    return isinstance(value, str) and value.partition(".")[0] in SOURCES and bool(value.partition(".")[2])


def _as_rule_ref(value: Any) -> Any:
    """A stream reference in the form bucket definitions use (``auth.x`` -> ``token.x``, ``connection.x`` ->
    ``client.x``); subscription references and plain values are returned as they are."""
    if isinstance(value, str):
        source, dot, key = value.partition(".")
        if dot and source == "auth":
            return f"token.{key}"
        if dot and source == "connection":
            return f"client.{key}"
    return value


def _is_target_ref(value: Any) -> bool:
    return _is_ref(value) or (isinstance(value, str) and value.startswith("subscription."))


def subscription_keys(rules: Rules, request: SyncRequest) -> set[str]:
    """Change keys (``label|attname=value``) that concern a connection through its subscriptions' parameters."""
    out: set[str] = set()
    for sub in request.subscriptions:
        if not isinstance(sub, Mapping):
            continue
        d = rules.definitions.get(sub.get("stream")) if isinstance(sub.get("stream"), str) else None
        params = sub.get("parameters")
        if not isinstance(d, Stream) or not isinstance(params, Mapping):
            continue
        for q in d.parameter_queries:
            for t in q.analysis.targets if q.analysis else ():
                source, _, key = t.ref.partition(".")
                if source == "subscription":
                    value = hint_value(t.field, params.get(key))
                    if value is not None:
                        out.add(change_key(t.label, t.field.attname, value))
    return out


def resolve_ref(ref: str, token: Mapping[str, Any], client: Mapping[str, Any], subscription: Mapping[str, Any]) -> Any:
    """The value of a reference for one request and subscription (None if absent or not a scalar)."""
    source, _, key = ref.partition(".")
    if source == "subscription":
        value = subscription.get(key) if isinstance(subscription, Mapping) else None
        return value if isinstance(value, str | int | float | bool) else None
    return _resolve(("token." if source in ("auth", "token") else "client.") + key, token, client)


@dataclass
class StreamParameterQuery(ParameterQuery):
    """A parameter query whose references may also read the subscription's parameters."""

    def rows(self, token: Mapping[str, Any], client: Mapping[str, Any], order: list[str],
             subscription: Mapping[str, Any] | None = None, limit: int | None = None) -> list[tuple]:
        subscription = subscription or {}
        if self.static is not None:
            values = tuple(resolve_ref(self.static[p], token, client, subscription) for p in order)
            return [] if any(v is None for v in values) else [values]
        assert self.model is not None
        lookups = {}
        for key, ref in self.filter.items():
            value = resolve_ref(ref, token, client, subscription) if is_ref(ref) else ref
            if value is None and is_ref(ref):
                return []
            lookups[key] = value
        qs = self.model._default_manager.filter(**lookups).values_list(*(self.values[p] for p in order)).distinct()
        if limit is not None:
            qs = qs[:limit + 1]
        return [tuple(r) for r in qs]


    def stream_keys(self, token: Mapping[str, Any], client: Mapping[str, Any]) -> set[str]:
        """Keys of the token and connection references (subscription ones: :func:`subscription_keys`)."""
        out: set[str] = set()
        for t in self.analysis.targets if self.analysis else ():
            if not t.ref.startswith("subscription."):
                value = hint_value(t.field, _resolve(t.ref, token, client))
                if value is not None:
                    out.add(change_key(t.label, t.field.attname, value))
        return out


@dataclass
class Stream(Definition):
    """A named stream: a bucket definition that connections subscribe to (or get by default)."""

    is_stream: ClassVar[bool] = True
    auto_subscribe: bool = False
    # subscription.<key> the parameter queries read
    subscription_keys: tuple[str, ...] = ()
    # bucket parameter -> model field it is matched with (request-side values are coerced like row values)
    param_fields: dict[str, models.Field] = field(default_factory=dict)
    # Name in the bucket ids: another definition's when this stream selects exactly the same rows per parameter
    # values (then it reuses that definition's buckets and replication writes no ops for it: ``data`` is empty).
    bucket_name: str = ""

    def buckets(self, token: Mapping[str, Any], client: Mapping[str, Any], subscription: Mapping[str, Any],
                version: int, limit: int | None = None) -> list[str]:
        """Bucket ids of one subscription to this stream. Raises SubscriptionError for unusable parameters."""
        name = self.bucket_name or self.name
        if not self.parameter_queries:
            return [bucket_id(name, [], version)]
        out: dict[str, None] = {}
        for q in self.parameter_queries:
            try:
                rows = q.rows(token, client, self.parameter_names, subscription, limit)
                for values in rows:
                    pairs = zip(self.parameter_names, values, strict=True)
                    encoded = [self._encode(p, v, q.static is not None) for p, v in pairs]
                    if any(v is None for v in encoded):
                        continue  # NULL equals no value (as for bucket definitions): no row is in such a bucket
                    out[bucket_id(name, encoded, version)] = None
            except (ValidationError, ValueError, TypeError, DataError) as exc:
                raise SubscriptionError(f"Invalid parameters: {_describe(exc)}") from None
        return list(out)

    def _encode(self, param: str, value: Any, from_request: bool) -> Any:
        f = self.param_fields.get(param)
        if from_request and f is not None:
            try:
                value = to_field_value(f, value)
            except ArithmeticError:
                raise ValueError(f"{value!r} does not fit {f.name}") from None
        return _encode_param(value)


def _describe(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(exc.messages)
    return str(exc)[:200]


# --- request -> buckets ---------------------------------------------------------------------------


@dataclass
class Resolution:
    """What one sync request subscribes to."""

    # bucket -> (definition or stream name, priority)
    buckets: dict[str, tuple[str, int]]
    # bucket -> [{"default": index in streams} | {"sub": index in request subscriptions}]
    reasons: dict[str, list[dict[str, int]]]
    # checkpoint.streams: [{"name", "is_default", "errors"}]
    streams: list[dict[str, Any]]


def is_default(d: Definition) -> bool:
    """Bucket definitions are default streams; streams are when ``auto_subscribe`` is set."""
    return not getattr(d, "is_stream", False) or bool(getattr(d, "auto_subscribe", False))


def check_subscription_count(request: SyncRequest, limit: int) -> None:
    if len(request.subscriptions) > limit:
        raise ProtocolError(f"Too many stream subscriptions: {len(request.subscriptions)} (limit {limit})",
                            code=TOO_MANY_SUBSCRIPTIONS)


def resolve(rules: Rules, token: Mapping[str, Any], client: Mapping[str, Any], request: SyncRequest,
            version: int, limit: int | None = None) -> Resolution:
    """Buckets, reasons and stream descriptions of a request. Runs parameter querysets.

    With ``limit``, bucket definitions stop being read once more than ``limit`` buckets are found (the caller
    rejects the request), and each stream parameter queryset reads at most ``limit + 1`` rows.

    Bad subscriptions (unknown stream, bad or forbidden parameters) become errors of their stream entry, never
    an exception.
    """
    requested = {sub["stream"] for sub in request.subscriptions
                 if isinstance(sub, Mapping) and isinstance(sub.get("stream"), str)}
    index: dict[str, int] = {}
    streams: list[dict[str, Any]] = []

    def entry(name: str, default: bool) -> dict[str, Any]:
        if name not in index:
            index[name] = len(streams)
            streams.append({"name": name, "is_default": default, "errors": []})
        return streams[index[name]]

    for d in rules.definitions.values():
        if (is_default(d) and request.include_defaults) or d.name in requested:
            entry(d.name, is_default(d))
    buckets: dict[str, tuple[str, int]] = {}
    reasons: dict[str, list[dict[str, int]]] = {}

    def add(bucket: str, d: Definition, reason: dict[str, int], override: int | None = None) -> None:
        # Each reason has its priority (a subscription's override_priority, else its stream's); a bucket
        # included for several reasons gets the highest of them (an override never demotes another reason).
        this = d.priority if override is None else override
        name, priority = buckets.get(bucket, (d.name, this))
        buckets[bucket] = (name, min(priority, this))
        reasons.setdefault(bucket, []).append(reason)

    legacy: dict[str, tuple[str, int]] | None = None
    if request.include_defaults:
        legacy = rules.request_buckets(token, client, version, limit)
        for bucket, (name, _) in legacy.items():
            add(bucket, rules.definitions[name], {"default": index[name]})
        for d in rules.definitions.values():
            if isinstance(d, Stream) and d.auto_subscribe:
                try:
                    for bucket in d.buckets(token, client, {}, version, limit):
                        add(bucket, d, {"default": index[d.name]})
                except SubscriptionError as exc:
                    streams[index[d.name]]["errors"].append({"subscription": "default", "message": str(exc)})

    for i, sub in enumerate(request.subscriptions):
        name = sub.get("stream") if isinstance(sub, Mapping) else None
        stream_entry = entry(name if isinstance(name, str) else "", False)
        try:
            d, params, override = _validate(rules, sub)
            if isinstance(d, Stream):
                found = _stream_subscription(d, token, client, params, version, limit)
            else:
                if legacy is None:
                    legacy = rules.request_buckets(token, client, version, limit)
                found = [b for b, (n, _) in legacy.items() if n == d.name]
        except SubscriptionError as exc:
            stream_entry["errors"].append({"subscription": i, "message": str(exc)})
            continue
        for bucket in found:
            add(bucket, d, {"sub": i}, override)
    return Resolution(buckets, reasons, streams)


def _validate(rules: Rules, sub: Any) -> tuple[Definition, Mapping[str, Any], int | None]:
    if not isinstance(sub, Mapping) or not isinstance(sub.get("stream"), str):
        raise SubscriptionError("A subscription needs a 'stream' name")
    d = rules.definitions.get(sub["stream"])
    if d is None:
        raise SubscriptionError(f"Unknown stream {sub['stream']!r}")
    params = sub.get("parameters")
    if params is not None and not isinstance(params, Mapping):
        raise SubscriptionError("Subscription parameters must be an object")
    override = sub.get("override_priority")
    if override is not None and (isinstance(override, bool) or not isinstance(override, int) or not 0 <= override <= 3):
        raise SubscriptionError(f"override_priority must be an integer from 0 to 3, got {override!r}")
    return d, params or {}, override


def _stream_subscription(d: Stream, token: Mapping[str, Any], client: Mapping[str, Any],
                         params: Mapping[str, Any], version: int, limit: int | None = None) -> list[str]:
    missing = [k for k in d.subscription_keys if not isinstance(params.get(k), str | int | float | bool)]
    if missing:
        raise SubscriptionError(f"Missing or invalid subscription parameters: {', '.join(missing)}")
    found = d.buckets(token, client, params, version, limit)
    if not found and d.subscription_keys:
        # One message for "does not exist" and "not yours": the difference is not disclosed.
        raise SubscriptionError(f"No access to stream {d.name!r} with these parameters")
    return found


# --- parsing ---------------------------------------------------------------------------------------


def parse_streams(raw: Any, definitions: Mapping[str, Definition], tables: dict[str, tuple[str, list[str]]],
                  problems: list[Problem]) -> dict[str, Stream]:
    """Parse ``STREAMS`` (problems are appended); ``tables`` is shared with the bucket definitions' check."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append(Problem("E020", "POWERSYNC['STREAMS'] must be a dict of streams."))
        return {}
    out: dict[str, Stream] = {}
    shapes = {_shape(d): d for d in definitions.values() if d.data}
    for name, spec in raw.items():
        local: list[Problem] = []
        stream = _parse_stream(name, spec, local, tables)
        if stream is not None and stream.data:
            same = shapes.setdefault(_shape(stream), stream)
            if same is not stream:
                stream.bucket_name = getattr(same, "bucket_name", "") or same.name
                stream.parameter_names = list(same.parameter_names)
                stream.data = []
        if name in definitions:
            local.append(Problem("E021", f"STREAMS[{name!r}] has the name of a bucket definition.",
                                 "Clients match subscriptions by name: rename one of them."))
        # Shared parsers word their messages for BUCKETS.
        problems.extend(Problem(p.id, p.msg.replace(f"BUCKETS[{name!r}]", f"STREAMS[{name!r}]"), p.hint) for p in local)
        if stream is not None:
            out[name] = stream
    return out


def _shape(d: Definition) -> str:
    """What decides a definition's buckets and their rows: equal shapes can share buckets."""
    queries = sorted(repr((q.label, q.table, sorted(q.static_filter.items(), key=repr), sorted(q.bindings.items()),
                           [c.attname for c in q.columns])) for q in d.data)
    return repr((sorted(d.parameter_names), queries))


def _parse_stream(name: Any, spec: Any, problems: list[Problem], tables: dict[str, tuple[str, list[str]]]) -> Stream | None:
    where = f"STREAMS[{name!r}]"
    if not isinstance(name, str) or not name:
        problems.append(Problem("E020", f"{where}: stream names must be non-empty strings."))
        return None
    if not isinstance(spec, dict):
        problems.append(Problem("E020", f"{where} must be a dict."))
        return None
    unknown = set(spec) - STREAM_KEYS
    if unknown:
        problems.append(Problem("E020", f"{where}: unknown keys {sorted(unknown)}.",
                                "Use parameters, data, priority and auto_subscribe."))
    auto = spec.get("auto_subscribe", False)
    if not isinstance(auto, bool):
        problems.append(Problem("E020", f"{where}: auto_subscribe must be True or False, got {auto!r}."))
        auto = False
    priority = spec.get("priority", DEFAULT_PRIORITY)
    if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 3:
        problems.append(Problem("E007", f"{where}: priority must be an integer from 0 to 3, got {priority!r}."))
        priority = DEFAULT_PRIORITY
    pnames, pqueries, keys = _parse_parameters(where, spec.get("parameters"), problems)
    if auto and keys:
        problems.append(Problem("W021", f"{where} is auto_subscribe but reads subscription parameters "
                                f"{sorted(keys)}: its default subscription has none and gets no buckets."))
    data_raw = spec.get("data") or []
    if not isinstance(data_raw, list) or not data_raw:
        problems.append(Problem("E003", f"{where} needs a non-empty 'data' list."))
        data_raw = []
    data: list[DataQuery] = []
    for i, r in enumerate(data_raw):
        refs = [k for k, v in ((r.get("filter") or {}).items() if isinstance(r, dict) else ()) if is_ref(v)]
        if refs:
            problems.append(Problem("E004", f"{where}['data'][{i}]: filter {refs} reads the request; data filters "
                                    "can only use 'bucket.<parameter>' and constants.",
                                    "Declare a parameter and filter on 'bucket.<name>'."))
            continue
        if (q := _parse_data(name, r, i, problems)) is not None:
            data.append(q)
    param_fields: dict[str, models.Field] = {}
    for q in data:
        _check_bindings(where, q, pnames, problems, tables)
        for attname, pname in q.bindings.items():
            param_fields.setdefault(pname, next(f for f in q.model._meta.concrete_fields if f.attname == attname))
    return Stream(name, pnames, pqueries, data, priority, auto_subscribe=auto, subscription_keys=tuple(sorted(keys)),
                  param_fields=param_fields)




def _parse_parameters(where: str, raw: Any, problems: list[Problem]) -> tuple[list[str], list[ParameterQuery], set[str]]:
    """(parameter names, queries, subscription keys read) of a stream's ``parameters``."""
    if raw is None:
        return [], [], set()
    items = raw if isinstance(raw, list) else [raw]
    names: list[str] | None = None
    queries: list[ParameterQuery] = []
    keys: set[str] = set()
    for item in items:
        if not isinstance(item, dict):
            problems.append(Problem("E006", f"{where}['parameters'] must be a dict or a list of dicts."))
            continue
        if "queryset" in item:
            unknown = set(item) - {"queryset", "filter", "values"}
            if unknown:
                problems.append(Problem("E006", f"{where}['parameters']: unknown keys {sorted(unknown)}."))
            model = _get_model(item["queryset"], f"{where}['parameters']", problems)
            values = item.get("values") or {}
            filters = item.get("filter") or {}
            if not isinstance(values, dict) or not values or not isinstance(filters, dict):
                problems.append(Problem("E006", f"{where}['parameters']: a parameter queryset needs 'values': "
                                        "{param: field} and an optional 'filter' dict."))
                continue
            if model is None:
                continue
            iterating = [k for k, v in filters.items() if is_ref(v) and v.startswith("subscription.")
                         and k.rpartition("__")[2] in LIST_LOOKUPS]
            if iterating:
                # Subscription parameters are scalars: a string would be iterated character by character.
                problems.append(Problem("E006", f"{where}['parameters']: {sorted(iterating)} compare a list lookup "
                                        "with a subscription parameter, which is a single value.",
                                        "Use an equality filter, one subscription per value."))
                continue
            # Which streams a change concerns (paths.analyse): token, connection and subscription references
            # are targeted; a stream's keys for subscription references come from its subscriptions
            # (subscription_keys).
            analysis, invalid = paths.analyse(model, {k: _as_rule_ref(v) for k, v in filters.items()},
                                              list(values.values()), _is_target_ref)
            for path in invalid:
                problems.append(Problem("E006", f"{where}['parameters']: invalid lookup {path!r} on {model._meta.label}."))
            if analysis is None:
                continue
            keys |= {v.partition(".")[2] for v in filters.values() if is_ref(v) and v.startswith("subscription.")}
            queries.append(StreamParameterQuery(model=model, filter=dict(filters), values=dict(values),
                                                reads=analysis.reads, analysis=analysis))
            these = list(values)
        else:
            for pname, ref in item.items():
                if not is_ref(ref):
                    problems.append(Problem("E006", f"{where}['parameters']: {pname!r} must reference 'auth.<claim>', "
                                            f"'subscription.<key>' or 'connection.<key>', got {ref!r}."))
                elif ref.startswith("subscription."):
                    keys.add(ref.partition(".")[2])
            queries.append(StreamParameterQuery(static=dict(item)))
            these = list(item)
        if names is None:
            names = these
        elif sorted(names) != sorted(these):
            problems.append(Problem("E006", f"{where}['parameters']: every parameter query must yield the same parameters."))
    return names or [], queries, keys
