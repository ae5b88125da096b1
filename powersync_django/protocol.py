"""Sync request parsing/validation and sync line encoding (NDJSON and BSON), protocol.md §5-§7."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import bson
import orjson

NDJSON = "application/x-ndjson"
BSON_STREAM = "application/vnd.powersync.bson-stream"
MAX_OP_ID = (1 << 63) - 1
# Bounds of client-supplied strings (longer values are a 400, never a database error).
MAX_CLIENT_ID_LENGTH = 200
MAX_BUCKET_NAME_LENGTH = 500
MAX_PARAMETERS_BYTES = 64 * 1024
MAX_APP_METADATA_BYTES = 16 * 1024
_OP_ID_RE = re.compile(r"\s*-?[0-9]{1,20}\s*", re.ASCII)


class ProtocolError(Exception):
    """A bad request, reported to the client as a JSON error (HTTP 400) before the stream starts."""

    def __init__(self, description: str, code: str = "PSYNC_S2001", status: int = 400, details: str = "") -> None:
        super().__init__(description)
        self.description = description
        self.code = code
        self.status = status
        self.details = details

    def as_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "status": self.status, "description": self.description,
                                 "name": "ValidationError" if self.status == 400 else "ServiceError"}
        if self.details:
            error["details"] = self.details
        return {"error": error}


@dataclass
class SyncRequest:
    """The validated body of a sync request."""

    buckets: dict[str, int] = field(default_factory=dict)
    client_id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    raw_data: bool = True
    # ``streams.include_defaults`` and ``streams.subscriptions`` (items kept as sent: each one is validated on its
    # own when resolved, so a bad subscription gets an error of its own instead of failing the request).
    include_defaults: bool = True
    subscriptions: list[Any] = field(default_factory=list)


def _op_id(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise ProtocolError(f"{where} must be a decimal string")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and _OP_ID_RE.fullmatch(value):
        number = int(value)  # ASCII digits only: "²" and "--5" pass str.isdigit() but not int()
    else:
        raise ProtocolError(f"{where} must be a decimal string", details=f"got {str(value)[:40]!r}")
    if not 0 <= number <= MAX_OP_ID:
        raise ProtocolError(f"{where} is out of range")
    return number


def parse_request(body: Any) -> SyncRequest:
    """Validate a decoded request body (JSON or BSON). Unknown fields and nulls are tolerated."""
    if body is None:
        return SyncRequest()
    if not isinstance(body, Mapping):
        raise ProtocolError("Request body must be a JSON object")
    req = SyncRequest()
    buckets = body.get("buckets")
    if buckets is not None:
        if not isinstance(buckets, list):
            raise ProtocolError("'buckets' must be an array")
        for i, item in enumerate(buckets):
            if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
                raise ProtocolError(f"buckets[{i}] must be an object with a string 'name'")
            if len(item["name"]) > MAX_BUCKET_NAME_LENGTH:
                raise ProtocolError(f"buckets[{i}].name is longer than {MAX_BUCKET_NAME_LENGTH} characters")
            after = item.get("after")
            req.buckets[item["name"]] = 0 if after is None else _op_id(after, f"buckets[{i}].after")
    req.client_id = check_client_id(body.get("client_id"))
    params = body.get("parameters")
    if params is not None:
        if not isinstance(params, Mapping):
            raise ProtocolError("'parameters' must be an object")
        if _json_size(params) > MAX_PARAMETERS_BYTES:
            raise ProtocolError(f"'parameters' is larger than {MAX_PARAMETERS_BYTES} bytes")
        req.parameters = dict(params)
    metadata = body.get("app_metadata")
    if metadata is not None:
        if not isinstance(metadata, Mapping) or not all(isinstance(v, str) for v in metadata.values()):
            raise ProtocolError("'app_metadata' must be an object of strings")
        if _json_size(metadata) > MAX_APP_METADATA_BYTES:
            raise ProtocolError(f"'app_metadata' is larger than {MAX_APP_METADATA_BYTES} bytes")
    raw = body.get("raw_data")
    if raw is not None:
        if not isinstance(raw, bool):
            raise ProtocolError("'raw_data' must be a boolean")
        req.raw_data = raw
    for key in ("include_checksum", "binary_data"):
        if body.get(key) is not None and not isinstance(body.get(key), bool):
            raise ProtocolError(f"'{key}' must be a boolean")
    streams = body.get("streams")
    if streams is not None and not isinstance(streams, Mapping):
        raise ProtocolError("'streams' must be an object")
    if streams:
        include = streams.get("include_defaults")
        if include is not None and not isinstance(include, bool):
            raise ProtocolError("'streams.include_defaults' must be a boolean")
        req.include_defaults = include is not False
        subscriptions = streams.get("subscriptions")
        if subscriptions is not None and not isinstance(subscriptions, list):
            raise ProtocolError("'streams.subscriptions' must be an array")
        req.subscriptions = list(subscriptions or ())
    return req


def check_client_id(value: Any) -> str | None:
    """A client id (sync request or write checkpoint): None, or a string of at most 200 printable characters."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_CLIENT_ID_LENGTH or not value.isprintable():
        raise ProtocolError(f"'client_id' must be a string of at most {MAX_CLIENT_ID_LENGTH} printable characters")
    return value


def _json_size(value: Any) -> int:
    try:
        return len(orjson.dumps(value, default=str))
    except (TypeError, orjson.JSONEncodeError):
        return MAX_PARAMETERS_BYTES + 1


def parse_json_request(raw: bytes) -> SyncRequest:
    if not raw.strip():
        return SyncRequest()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("Request body is not valid JSON", details=str(exc)[:200]) from None
    return parse_request(body)


def parse_checkpoint_request(raw: bytes) -> tuple[str | None, int]:
    """``(client_id, checkpoint_request_id)`` of a ``/sync/checkpoint-request`` body (protocol.md §11.5).

    ``client_id``: a string of at most 200 characters (empty: no client). ``checkpoint_request_id``: 1 to
    2**63-1, as a decimal string or a JSON integer. Unknown fields are ignored.
    """
    try:
        body = orjson.loads(raw) if raw.strip() else None
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("Request body is not valid JSON", details=str(exc)[:200]) from None
    if not isinstance(body, Mapping):
        raise ProtocolError("Request body must be a JSON object")
    client_id = body.get("client_id")
    if not isinstance(client_id, str) or len(client_id) > 200:
        raise ProtocolError("'client_id' must be a string of at most 200 characters")
    value = body.get("checkpoint_request_id")
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raise ProtocolError("'checkpoint_request_id' must be a decimal string or an integer",
                            details=f"got {str(value)[:40]!r}")
    if not 1 <= number <= MAX_OP_ID:
        raise ProtocolError(f"'checkpoint_request_id' must be between 1 and {MAX_OP_ID}")
    return client_id or None, number


def prefers_bson(accept: str) -> bool:
    """Whether an ``Accept`` header prefers the BSON stream over NDJSON."""
    best: tuple[float, str] | None = None
    for part in accept.split(","):
        pieces = [p.strip() for p in part.split(";")]
        mime = pieces[0].lower()
        if mime not in (BSON_STREAM, NDJSON, "application/json", "*/*"):
            continue
        q = 1.0
        for p in pieces[1:]:
            if p.startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        if best is None or q > best[0]:
            best = (q, mime)
    return best is not None and best[1] == BSON_STREAM and best[0] > 0


class SharedLine(dict):
    """A sync line that many streams send unchanged (the shared fan-out path, sync.py): each encoding of it is
    computed once, by the first stream that sends it. Read-only once built."""

    __slots__ = ("_encoded",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._encoded: dict[str, bytes] = {}

    def encoded(self, kind: str, encode: Callable[[dict[str, Any]], bytes]) -> bytes:
        out = self._encoded.get(kind)
        if out is None:
            out = self._encoded[kind] = encode(self)
        return out


def _ndjson(line: dict[str, Any]) -> bytes:
    return orjson.dumps(line) + b"\n"


def _ndjson_nested(line: dict[str, Any]) -> bytes:
    return orjson.dumps(nest_row_data(line)) + b"\n"


def encode_ndjson(line: dict[str, Any]) -> bytes:
    if type(line) is SharedLine:
        return line.encoded("ndjson", _ndjson)
    return orjson.dumps(line) + b"\n"


def encode_ndjson_nested(line: dict[str, Any]) -> bytes:
    """NDJSON for legacy clients (``raw_data: false``): row data as nested objects (:func:`nest_row_data`)."""
    if type(line) is SharedLine:
        return line.encoded("ndjson-nested", _ndjson_nested)
    return _ndjson_nested(line)


def encode_bson(line: dict[str, Any]) -> bytes:
    if type(line) is SharedLine:
        return line.encoded("bson", bson.encode)
    return bson.encode(line)


# The name of each encoding (the key of a shared line's cached bytes).
ENCODING_KIND: dict[Callable[[dict[str, Any]], bytes], str] = {
    encode_ndjson: "ndjson", encode_ndjson_nested: "ndjson-nested", encode_bson: "bson",
}


def nest_row_data(line: dict[str, Any]) -> dict[str, Any]:
    """For legacy clients (``raw_data: false``): row data as nested objects instead of JSON strings.

    Returns a new line when it changes anything; ``line`` itself is left as it is (other streams may send it)."""
    data = line.get("data")
    if not isinstance(data, dict) or not any(isinstance(e.get("data"), str) for e in data.get("data", ())):
        return line
    entries = [{**e, "data": orjson.loads(e["data"])} if isinstance(e.get("data"), str) else e
               for e in data["data"]]
    return {**line, "data": {**data, "data": entries}}
