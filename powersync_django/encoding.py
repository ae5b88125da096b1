"""Model values to the JSON text clients store in their SQLite tables (README "Value encoding").

strings as is; UUIDs canonical; booleans 0/1; datetimes UTC with microseconds (`2026-11-26 05:44:47.992823Z`
by default, ISO 8601 with `T` when DATETIME_FORMAT is "iso"); dates `YYYY-MM-DD`; times `HH:MM:SS[.ffffff]`;
Decimal as text; JSON fields as JSON text; binary as base64; None as null.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import uuid
from typing import Any

import orjson
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from .conf import get_config


def json_text(value: Any, sort_keys: bool = False) -> str:
    """Compact JSON text of ``value``, integers beyond 64 bits included (a JSON field may hold them: PostgreSQL
    reads a jsonb number like 18446744073709551616 back as a Python int, which orjson refuses)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else None).decode()
    except TypeError:
        return json.dumps(value, separators=(",", ":"), sort_keys=sort_keys, ensure_ascii=False, allow_nan=False)


def format_datetime(value: datetime.datetime, iso: bool) -> str:
    if timezone.is_aware(value):
        value = value.astimezone(datetime.UTC).replace(tzinfo=None)
    sep = "T" if iso else " "
    text = value.isoformat(sep=sep, timespec="microseconds") if value.microsecond else value.isoformat(sep=sep)
    if not iso and value.microsecond:
        # Like the reference service: microseconds without trailing zeros.
        text = text.rstrip("0")
    return text + "Z"


def encode_value(value: Any, field: models.Field | None = None) -> Any:
    """Encode one Python value for a client's SQLite column (a JSON scalar)."""
    if value is None:
        return value
    if isinstance(field, models.JSONField):
        # Any JSON value, a string included, becomes its JSON text.
        return json_text(value, sort_keys=True)
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
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
    if isinstance(value, dict | list):
        return json_text(value, sort_keys=True)
    return str(value)


def snapshot_value(field: models.Field, value: Any) -> Any:
    """Encode a field value for the outbox snapshot, losslessly decodable with ``field.to_python``."""
    if value is None:
        return None
    if isinstance(field, models.JSONField):
        return {"json": value}
    if isinstance(field, models.DecimalField) and field.decimal_places is not None:
        # The database keeps decimal_places digits (1.5 is stored and read back as 1.50).
        try:
            return str(field.to_python(value).quantize(decimal.Decimal(1).scaleb(-field.decimal_places)))
        except (decimal.InvalidOperation, ValidationError):
            return str(value)
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, datetime.timedelta):
        return {"td": value.total_seconds()}
    return str(value)


def snapshot_to_python(field: models.Field, value: Any) -> Any:
    """Inverse of :func:`snapshot_value`."""
    if value is None:
        return None
    if isinstance(field, models.JSONField):
        return value["json"]
    if isinstance(value, dict) and "td" in value:
        return datetime.timedelta(seconds=value["td"])
    if isinstance(field, models.ForeignKey):
        field = field.target_field
    return field.to_python(value)
