"""DRF fields that read the column values clients upload: README "Value encoding", the other way round.

Clients send back what they were sent: JSON columns as JSON text, durations as seconds, binary as base64,
arrays, hstore and ranges as JSON text. :class:`UploadModelSerializer` maps model fields to these fields; the
upload serializers generated for synced tables use it, and custom ``UPLOAD['SERIALIZERS']`` may subclass it.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import math
from typing import Any

import orjson
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models
from rest_framework import serializers

from .encoding import MAX_JSON_DEPTH, ArrayField, HStoreField, RangeField, encode_value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_loads(text: str, decoder: Any = None) -> Any:
    """Strict JSON text (no NaN/Infinity) to a value; ValueError when it is not JSON."""
    try:
        return json.loads(text, cls=decoder, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


class ClientJSONField(serializers.JSONField):
    """A JSON column holds JSON text: a string is parsed (a JSON string arrives quoted, ``'"abc"'``)."""

    # (DRF formats these with str.format: braces doubled)
    default_error_messages = {
        "not_json": "Expected JSON text (this column holds JSON: '{{\"a\": 1}}', '\"text\"').",
        "too_deep": f"JSON nested more than {MAX_JSON_DEPTH} levels deep cannot be synced.",
    }

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, str):
            if len(data) > 2 * MAX_JSON_DEPTH and not _within_depth(data):
                self.fail("too_deep")
            try:
                data = _json_loads(data, self.decoder)
            except ValueError:
                self.fail("not_json")
        return super().to_internal_value(data)


def _within_depth(text: str) -> bool:
    """Whether JSON text is nested at most MAX_JSON_DEPTH levels (orjson's limit; invalid text: True)."""
    try:
        orjson.dumps(orjson.loads(text))
    except orjson.JSONEncodeError:
        return False
    except orjson.JSONDecodeError as exc:
        return "depth" not in str(exc)
    return True


class ClientDurationField(serializers.DurationField):
    """Durations arrive as seconds (a number, or its text); Django and ISO 8601 duration text also work."""

    def to_internal_value(self, value: Any) -> Any:
        seconds: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = value
        elif isinstance(value, str):
            try:
                seconds = float(value)
            except ValueError:
                seconds = None
        if seconds is not None:
            if not math.isfinite(seconds):
                self.fail("invalid", format="seconds")
            try:
                value = datetime.timedelta(seconds=seconds)
            except OverflowError:
                self.fail("overflow", min_days=datetime.timedelta.min.days, max_days=datetime.timedelta.max.days)
        return super().to_internal_value(value)


class ClientBinaryField(serializers.ModelField):
    """Binary columns arrive as base64 text."""

    default_error_messages = {"not_base64": "Expected base64 text."}

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, bytes | bytearray | memoryview):
            return bytes(data)
        if not isinstance(data, str):
            self.fail("not_base64")
        try:
            return base64.b64decode(data.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            self.fail("not_base64")

    def to_representation(self, obj: Any) -> Any:
        return encode_value(self.model_field.value_from_object(obj), self.model_field)


class ClientListField(serializers.ListField):
    """PostgreSQL arrays arrive as JSON text of their elements (nested arrays as JSON arrays)."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, str):
            try:
                data = _json_loads(data)
            except ValueError:
                self.fail("not_a_list", input_type="text that is not JSON")
        return super().to_internal_value(data)


class ClientHStoreField(serializers.HStoreField):
    """hstore columns arrive as the JSON text of an object of strings (kept as sent, not stripped)."""

    child = serializers.CharField(allow_blank=True, allow_null=True, trim_whitespace=False)

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, str):
            try:
                data = _json_loads(data)
            except ValueError:
                self.fail("not_a_dict", input_type="text that is not JSON")
        return super().to_internal_value(data)


class ClientRangeField(serializers.ModelField):
    """Ranges arrive as JSON text: ``{"lower": ..., "upper": ..., "bounds": "[)"}`` or ``{"empty": true}``."""

    default_error_messages = {"not_range": 'Expected JSON text {{"lower": ..., "upper": ..., "bounds": "[)"}} '
                                           'or {{"empty": true}}.'}

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            data = json.dumps(data)
        if not isinstance(data, str):
            self.fail("not_range")
        try:
            parsed = _json_loads(data)
            if not isinstance(parsed, dict) or not set(parsed) <= {"lower", "upper", "bounds", "empty"}:
                self.fail("not_range")
            return self.model_field.to_python(data)
        except (ValueError, TypeError, DjangoValidationError):
            self.fail("not_range")

    def to_representation(self, obj: Any) -> Any:
        return encode_value(self.model_field.value_from_object(obj), self.model_field)


class ClientIPAddressField(serializers.IPAddressField):
    """``IPAddressField`` that unpacks IPv4-mapped IPv6 addresses only where the model field does (DRF's
    unpacks them whenever ``protocol`` is ``both``: ``::ffff:1.2.3.4`` became ``1.2.3.4``)."""

    def __init__(self, *, unpack_ipv4: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.unpack_ipv4 = unpack_ipv4


class UploadModelSerializer(serializers.ModelSerializer):
    """A ModelSerializer whose fields read client column values (JSON text, seconds, base64...)."""

    serializer_field_mapping = {
        **serializers.ModelSerializer.serializer_field_mapping,
        models.JSONField: ClientJSONField,
        models.DurationField: ClientDurationField,
        models.BinaryField: ClientBinaryField,
        models.GenericIPAddressField: ClientIPAddressField,
    }
    if ArrayField is not None:
        serializer_field_mapping[ArrayField] = ClientListField
        serializer_field_mapping[HStoreField] = ClientHStoreField
        serializer_field_mapping[RangeField] = ClientRangeField

    def build_standard_field(self, field_name: str, model_field: models.Field) -> tuple[type, dict[str, Any]]:
        field_class, kwargs = super().build_standard_field(field_name, model_field)
        if issubclass(field_class, serializers.CharField):
            kwargs["trim_whitespace"] = False  # store the text the client has, spaces included
        if issubclass(field_class, ClientIPAddressField):
            kwargs["unpack_ipv4"] = model_field.unpack_ipv4
        return field_class, kwargs
