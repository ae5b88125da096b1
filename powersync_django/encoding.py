"""Field values: to the column text clients store (README "Value encoding"), and the lossless outbox snapshot.

Client encoding (:func:`encode_value`): strings as is; UUIDs canonical; booleans 0/1; numbers as numbers
(NaN and infinities as null); datetimes UTC with microseconds (`2026-11-26 05:44:47.992823Z` by default, ISO
8601 with `T` when DATETIME_FORMAT is "iso"); dates `YYYY-MM-DD`; times `HH:MM:SS[.ffffff]`; Decimal as text;
durations as seconds; binary as base64; JSON fields, dicts, lists, PostgreSQL arrays, hstore and ranges as
JSON text (elements encoded like columns); None as null.

Snapshots (:func:`snapshot_value` / :func:`snapshot_to_python`) use each field's own conversion API: the
value is normalised with ``field.to_python`` (as the database would store it), written with
``field.value_to_string`` where it is not a plain JSON scalar, and read back with ``field.to_python``. JSON
fields are kept as the JSON text their encoder writes to the database, decoded with their decoder.
"""

from __future__ import annotations

import ast
import base64
import copy
import datetime
import decimal
import functools
import json
import math
import re
import types
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import orjson
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DEFAULT_DB_ALIAS, connections, models, router
from django.utils import timezone

from .conf import get_config

try:  # django.contrib.postgres needs psycopg; projects without it have none of these fields.
    from django.contrib.postgres.fields import ArrayField, HStoreField, RangeField
except ImportError:  # pragma: no cover - psycopg is installed wherever the tests run
    ArrayField = HStoreField = RangeField = None  # type: ignore[assignment,misc]

# orjson refuses to write JSON nested deeper than this (the replicator writes client values with orjson).
MAX_JSON_DEPTH = 254


class UnsyncableValue(ValueError):
    """A value the database accepted but PowerSync cannot send to clients; raised when the row is saved."""

    def __init__(self, field: models.Field, problem: str, hint: str) -> None:
        model = getattr(field, "model", None)
        where = f"{model._meta.label}.{field.name}" if model is not None else field.name
        super().__init__(f"PowerSync cannot sync {where}: {problem}. {hint}")
        self.field = field
        self.problem = problem
        self.hint = hint


def _is(field: Any, cls: Any) -> bool:
    return cls is not None and isinstance(field, cls)


# --- client encoding -----------------------------------------------------------------------------


def format_datetime(value: datetime.datetime, iso: bool) -> str:
    if timezone.is_aware(value):
        value = value.astimezone(datetime.UTC).replace(tzinfo=None)
    sep = "T" if iso else " "
    text = value.isoformat(sep=sep, timespec="microseconds") if value.microsecond else value.isoformat(sep=sep)
    if not iso and value.microsecond:
        # Like the reference service: microseconds without trailing zeros.
        text = text.rstrip("0")
    return text + "Z"


def json_text(value: Any, field: models.Field | None = None) -> str:
    """Canonical JSON text (sorted keys, compact) of a JSON value.

    orjson first; values it cannot write (integers beyond 64 bits, nesting beyond its limit, types a custom
    decoder returns) are written by the standard library with the field's encoder.
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(value, cls=getattr(field, "encoder", None), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False, allow_nan=False)


def encode_value(value: Any, field: models.Field | None = None) -> Any:
    """Encode one Python value for a client's SQLite column (a JSON scalar)."""
    if value is None:
        return value
    if field is not None:
        if isinstance(field, models.JSONField):
            # Any JSON value, a string included, becomes its JSON text.
            return json_text(value, field)
        if _is(field, ArrayField) or _is(field, HStoreField) or _is(field, RangeField):
            return json_text(_element(value, field), field)
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime.datetime):
        return format_datetime(value, get_config()["DATETIME_FORMAT"] == "iso")
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, dict | list | tuple):
        return json_text(value, field)
    return str(value)


def _element(value: Any, field: models.Field) -> Any:
    """A value inside the JSON text of an array, hstore or range: encoded like a column of its field, except
    that nested arrays, hstore and ranges are JSON values (not JSON text inside JSON text)."""
    if value is None:
        return None
    if _is(field, HStoreField):
        return value
    if _is(field, ArrayField):
        return [_element(item, field.base_field) for item in value]
    if _is(field, RangeField):
        if value.isempty:
            return {"empty": True}
        return {"bounds": value._bounds, "lower": _element(value.lower, field.base_field),
                "upper": _element(value.upper, field.base_field)}
    return encode_value(value, field)


# --- snapshots -----------------------------------------------------------------------------------


def _normalise(field: models.Field, value: Any) -> Any:
    """The value as the database stores it (``to_python``; naive datetimes in the default time zone)."""
    try:
        value = field.to_python(value)
    except (ValidationError, ValueError, TypeError):
        return value
    if (isinstance(value, datetime.datetime) and isinstance(field, models.DateTimeField) and settings.USE_TZ
            and timezone.is_naive(value)):
        value = timezone.make_aware(value, timezone.get_default_timezone())
    return value


def snapshot_value(field: models.Field, value: Any, *, synced: bool = False) -> Any:
    """Encode a field value for the outbox snapshot, decodable by :func:`snapshot_to_python`.

    ``synced``: the value is a column clients receive; a value they cannot hold raises
    :class:`UnsyncableValue` (the save then fails, instead of the replicator later).
    """
    if value is None:
        return None
    fast = _fast_path(field)
    if fast is not None and type(value) is fast[0]:
        converted = fast[1](value)
        if converted is not None:
            return converted
    if isinstance(field, models.JSONField):
        return _json_snapshot(field, value, synced)
    if _is(field, ArrayField):
        try:
            return [snapshot_value(field.base_field, item, synced=synced) for item in _normalise(field, value)]
        except UnsyncableValue as exc:  # name the array, not its base field
            raise UnsyncableValue(field, f"an element: {exc.problem}", exc.hint) from None
    value = _normalise(field, value)
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        if synced:
            raise UnsyncableValue(field, f"{value} is not a JSON number",
                                  "Store None (or a finite number) instead.")
        return str(value)  # float("nan") reads it back
    if isinstance(field, models.DecimalField) and field.decimal_places is not None:
        # The database keeps decimal_places digits (1.5 is stored and read back as 1.50), rounding as it does.
        try:
            return str(value.quantize(decimal.Decimal(1).scaleb(-field.decimal_places), rounding=_rounding(field)))
        except (decimal.InvalidOperation, AttributeError):
            return str(value)
    if isinstance(value, memoryview | bytearray):
        value = bytes(value)
    if _is(field, RangeField):
        value = _canonical_range(field, value)
    return _value_to_string(field, value)


def _rounding(field: models.DecimalField) -> str:
    """How the database rounds a value with more decimal places than the column keeps: PostgreSQL's numeric
    rounds ties away from zero (0.125 -> 0.13); SQLite keeps the number and Django's converter rounds it
    half-even when reading (0.125 -> 0.12)."""
    model = getattr(field, "model", None)
    alias = router.db_for_write(model) if isinstance(model, type) else DEFAULT_DB_ALIAS
    return decimal.ROUND_HALF_UP if connections[alias].vendor == "postgresql" else decimal.ROUND_HALF_EVEN


# Range element types PostgreSQL canonicalises to [) (int4range, int8range, daterange), by internal type.
_DISCRETE_STEPS: dict[str, Any] = {"IntegerField": 1, "BigIntegerField": 1, "DateField": datetime.timedelta(days=1)}


def _canonical_range(field: Any, value: Any) -> Any:
    """A range as PostgreSQL stores it: discrete ones ``[)``, open ends exclusive, empty when nothing is in it."""
    if not hasattr(value, "isempty") or value.isempty:
        return value
    lower, upper, bounds = value.lower, value.upper, value._bounds
    lower_inc = lower is not None and bounds[0] == "["
    upper_inc = upper is not None and bounds[1] == "]"
    step = _DISCRETE_STEPS.get(field.base_field.get_internal_type())
    if step is not None:
        if lower is not None and not lower_inc:
            lower, lower_inc = lower + step, True
        if upper is not None and upper_inc:
            upper, upper_inc = upper + step, False
    if lower is not None and upper is not None and (
            lower > upper or (lower == upper and not (lower_inc and upper_inc))):
        return field.range_type(empty=True)
    return field.range_type(lower, upper, ("[" if lower_inc else "(") + ("]" if upper_inc else ")"))


def _value_to_string(field: models.Field, value: Any) -> str:
    """``field.value_to_string`` of a bare value (it reads the value from an object by attname)."""
    if not hasattr(field, "attname"):  # a field not bound to a model
        field = copy.copy(field)
        field.set_attributes_from_name("value")
    return field.value_to_string(types.SimpleNamespace(**{field.attname: value}))


def _duration_snapshot(value: datetime.timedelta) -> dict[str, int] | None:
    """Exact microseconds (what the database stores), quicker than ``value_to_string``/``to_python``."""
    us = (value.days * 86400 + value.seconds) * 1_000_000 + value.microseconds
    return {"us": us} if -(2**63) <= us < 2**63 else None  # beyond: value_to_string


def _identity(value: Any) -> Any:
    return value


def _aware_isoformat(value: datetime.datetime) -> str | None:
    return value.isoformat() if value.tzinfo is not None else None  # naive ones are normalised first


_FAST_ATTR = "_powersync_snapshot_fast"


def _fast_path(field: models.Field) -> tuple[type, Any] | None:
    """(exact Python type, snapshot function) of values of a field that need no normalisation, cached on it.

    The common case of a save: a value of the type ``to_python`` returns, written as ``value_to_string``
    would (or as the JSON scalar itself), without going through both.
    """
    try:
        return field.__dict__[_FAST_ATTR]
    except KeyError:
        pass
    target = field.target_field if isinstance(field, models.ForeignKey) and hasattr(field, "remote_field") \
        and not isinstance(field.remote_field.model, str) else field
    fast: tuple[type, Any] | None = None
    if isinstance(target, models.BooleanField):
        fast = (bool, _identity)
    elif isinstance(target, models.IntegerField):
        fast = (int, _identity)
    elif isinstance(target, models.CharField | models.TextField):
        fast = (str, _identity)
    elif isinstance(target, models.UUIDField):
        fast = (uuid.UUID, str)
    elif isinstance(target, models.DateTimeField):
        fast = (datetime.datetime, _aware_isoformat)
    elif isinstance(target, models.DateField):
        fast = (datetime.date, datetime.date.isoformat)
    elif isinstance(target, models.TimeField):
        fast = (datetime.time, datetime.time.isoformat)
    elif isinstance(target, models.DurationField):
        fast = (datetime.timedelta, _duration_snapshot)
    field.__dict__[_FAST_ATTR] = fast
    return fast


def _json_snapshot(field: models.JSONField, value: Any, synced: bool) -> str:
    """The JSON text the database stores (the field's encoder; non-string keys become strings)."""
    if field.encoder is None:
        # orjson writes the same JSON as json.dumps (which the database save already ran) in a fraction of the
        # time; it refuses integers beyond 64 bits and nesting beyond MAX_JSON_DEPTH, handled below.
        try:
            return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:  # orjson.JSONEncodeError, or a plain TypeError with OPT_NON_STR_KEYS
            pass
    try:
        text = json.dumps(value, cls=field.encoder, allow_nan=not synced)
    except ValueError:
        raise UnsyncableValue(field, "JSON has no NaN or Infinity",
                              "Store None or a string in their place.") from None
    if synced and len(text) > 2 * MAX_JSON_DEPTH:
        # Only a text this long can be nested too deeply for orjson.
        try:
            orjson.dumps(orjson.loads(text))
        except (orjson.JSONDecodeError, orjson.JSONEncodeError):
            raise UnsyncableValue(field, f"the JSON value is nested more than {MAX_JSON_DEPTH} levels deep",
                                  "Flatten it, or store it in a field that is not synced.") from None
    return text


def snapshot_to_python(field: models.Field, value: Any) -> Any:
    """Inverse of :func:`snapshot_value`: the value as read from the database."""
    if value is None:
        return None
    fast = _fast_path(field)
    if fast is not None and fast[1] is _identity and type(value) is fast[0]:
        return value
    if isinstance(field, models.JSONField):
        if isinstance(value, dict) and "json" in value:  # snapshots written before 0.2
            return value["json"]
        return decode_json(field, value)
    if _is(field, ArrayField):
        if isinstance(value, str):  # before 0.2: the Python repr of the list
            value = ast.literal_eval(value)
        return [snapshot_to_python(field.base_field, item) for item in value]
    if isinstance(value, dict):
        if "us" in value:
            return datetime.timedelta(microseconds=value["us"])
        if "td" in value:  # before 0.2
            return datetime.timedelta(seconds=value["td"])
    if isinstance(field, models.ForeignKey):
        field = field.target_field
    return field.to_python(value)


def decode_json(field: models.JSONField, text: str) -> Any:
    """JSON text of a JSON field to its value, like ``JSONField.from_db_value``.

    orjson when the field has no decoder, unless the text may hold an integer beyond 64 bits (orjson reads
    those as floats).
    """
    if field.decoder is None and not _LONG_NUMBER.search(text):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:  # NaN, which json.dumps writes in columns no client receives
            pass
    return json.loads(text, cls=field.decoder)


_LONG_NUMBER = re.compile(r"\d{19}")


# --- snapshot -> client value, without the Python value in between --------------------------------

_UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# What snapshot_value writes for an aware UTC datetime (microseconds only when not zero).
_UTC_DATETIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.(?!000000)\d{6})?\+00:00")
_DATE = re.compile(r"\d{4}-\d\d-\d\d")


def client_converter(field: models.Field, iso: bool) -> tuple[Any, bool]:
    """(function, plain) turning a snapshot value of ``field`` into the value clients get.

    The function returns exactly ``encode_value(snapshot_to_python(field, v), field)`` (with DATETIME_FORMAT
    "iso" when ``iso``): values in the form capture writes for the common field types are converted as text
    (a canonical UUID is its own client value, an aware UTC datetime is reformatted), anything else takes the
    general path (which also raises for a value the field rejects). ``plain``: the client value does not
    depend on the field (not a JSON, array, hstore or range field), so it is also ``encode_value(python)``.
    """
    def general(value: Any) -> Any:
        return encode_value(snapshot_to_python(field, value), field)

    if not is_plain(field):
        return general, False
    target = field.target_field if isinstance(field, models.ForeignKey) else field
    fast = _fast_path(field)
    own = type(target).to_python

    def fast_type(kind: type, convert: Any) -> Any:
        def f(value: Any) -> Any:
            if type(value) is kind:
                return convert(value)
            return None if value is None else general(value)
        return f

    if fast is not None and fast[1] is _identity:  # bool, int, str: snapshot_to_python keeps them as they are
        return fast_type(fast[0], int if fast[0] is bool else _identity), True
    if isinstance(target, models.UUIDField) and own is models.UUIDField.to_python:
        return _checked_text(_UUID_TEXT, None, general), True
    if isinstance(target, models.DateTimeField) and own is models.DateTimeField.to_python:
        return _checked_text(_UTC_DATETIME, _client_datetime_text(iso), general), True
    if isinstance(target, models.DateField) and own is models.DateField.to_python:
        return _checked_text(_DATE, _valid_date, general), True
    if isinstance(target, models.FloatField) and own is models.FloatField.to_python:
        return fast_type(float, lambda v: v if math.isfinite(v) else None), True
    return general, True


def is_plain(field: models.Field) -> bool:
    """Whether :func:`encode_value` encodes the field's values by their type alone (not a JSON, array, hstore
    or range field)."""
    return not (isinstance(field, models.JSONField) or _is(field, ArrayField) or _is(field, HStoreField)
                or _is(field, RangeField))


def value_converter(field: models.Field, iso: bool) -> Any:
    """A function equal to ``encode_value(value, field)`` (DATETIME_FORMAT "iso" when ``iso``) for the Python
    values of ``field`` as read from the database, quicker for the common types (builds render every row)."""
    def general(value: Any) -> Any:
        return encode_value(value, field)

    if not is_plain(field):
        return general
    sep = "T" if iso else " "

    def utc_text(value: datetime.datetime) -> str:
        if value.tzinfo is not datetime.UTC:
            return format_datetime(value, iso)
        text = value.replace(tzinfo=None).isoformat(sep)  # microseconds when not zero, like format_datetime
        return (text if iso or not value.microsecond else text.rstrip("0")) + "Z"

    conversions: dict[type, Any] = {str: _identity, int: _identity, bool: int, uuid.UUID: _uuid_text,
                                    datetime.datetime: utc_text}

    def f(value: Any) -> Any:
        convert = conversions.get(type(value))
        return general(value) if convert is None else convert(value)
    return f


# Foreign keys repeat the same few UUIDs row after row; UUID.__str__ is Python code.
_uuid_text = functools.lru_cache(maxsize=4096)(uuid.UUID.__str__)


def _checked_text(pattern: re.Pattern[str], convert: Any, general: Any) -> Any:
    """Text matching ``pattern`` -> ``convert(text)`` (the text itself without one); else the general path."""
    match = pattern.fullmatch

    def f(value: Any) -> Any:
        if type(value) is str and match(value):
            return value if convert is None else convert(value, general)
        return None if value is None else general(value)
    return f


def _valid_date(text: str, general: Any) -> Any:
    try:
        datetime.date.fromisoformat(text)
    except ValueError:  # 2026-02-30: the field's own error
        return general(text)
    return text


def _client_datetime_text(iso: bool) -> Any:
    """An aware UTC datetime's snapshot text as :func:`format_datetime` writes it."""
    def convert(text: str, general: Any) -> Any:
        try:
            datetime.datetime.fromisoformat(text)
        except ValueError:
            return general(text)
        body = text[:-6]
        if iso:
            return body + "Z"
        body = body[:10] + " " + body[11:]
        return (body.rstrip("0") if len(body) > 19 else body) + "Z"
    return convert


class SnapshotRow(Mapping):
    """The row of an outbox snapshot: Python values decoded on first use (``snapshot_to_python``).

    ``raw`` is the decoded JSON (attname -> snapshot value); renderers read client values from it directly
    (:func:`client_converter`) instead of going through the Python value.
    """

    __slots__ = ("fields", "raw", "_values")

    def __init__(self, fields: Mapping[str, models.Field], raw: dict[str, Any]) -> None:
        if not isinstance(raw, dict):
            raise TypeError(f"a snapshot is a JSON object, not {type(raw).__name__}")
        self.fields, self.raw, self._values = fields, raw, {}

    def __getitem__(self, attname: str) -> Any:
        try:
            return self._values[attname]
        except KeyError:
            value = self._values[attname] = snapshot_to_python(self.fields[attname], self.raw.get(attname))
            return value

    def __iter__(self) -> Iterator[str]:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)
