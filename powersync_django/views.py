"""HTTP endpoints: the streaming sync view, write checkpoints and checkpoint requests. Thin: the work is in sync.py/storage.py."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any

from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from . import db, limits, metrics, ratelimit, storage
from .auth import AuthError, TokenClaims, parse_authorization_header, verify_token
from .compression import GzipLines
from .conf import get_config
from .executors import Overloaded
from .protocol import (
    BSON_STREAM,
    ENCODING_KIND,
    NDJSON,
    ProtocolError,
    check_client_id,
    encode_bson,
    encode_ndjson,
    encode_ndjson_nested,
    parse_checkpoint_request,
    parse_json_request,
    prefers_bson,
)
from .sync import SyncSession, aclose_quietly
from .tracking import StreamTracker

logger = logging.getLogger(__name__)

ALLOWED_HEADERS = "Content-Type, Authorization, User-Agent, X-User-Agent"
# Retry-After (seconds) of a 503 for a busy database.
RETRY_AFTER_SECONDS = 1


def error_response(body: dict[str, Any], status: int) -> JsonResponse:
    return JsonResponse(body, status=status)


def server_error(exc: BaseException, where: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Log an exception an endpoint did not handle; return its JSON error body, status and headers.

    A request Django found suspicious (``SuspiciousOperation``: too many query fields, too large a body) is a
    400 (413 for a body) ``PSYNC_S2001``. A busy database (SQLite ``database is locked``, a PostgreSQL
    deadlock...) is a 503 ``PSYNC_S2003`` with ``Retry-After``: the client retries. Anything else is a 500 ``PSYNC_S2001``; details stay in the log.
    """
    if isinstance(exc, SuspiciousOperation):
        # A hostile or broken request Django refused (too many query fields, too large a body...): a 4xx, as
        # Django itself answers it, with the protocol's JSON body.
        logger.warning("powersync: %s: refused a suspicious request: %r", where, exc)
        status = 413 if isinstance(exc, RequestDataTooBig) else 400
        description = "Request body too large" if status == 413 else "Bad request"
        return ProtocolError(description, status=status).as_json(), status, {}
    if db.is_busy_error(exc):
        logger.warning("powersync: %s: the database is busy; answered 503", where, exc_info=exc)
        error = ProtocolError("The database is busy; retry later", code="PSYNC_S2003", status=503)
        return error.as_json(), 503, {"Retry-After": str(RETRY_AFTER_SECONDS)}
    logger.error("powersync: %s failed", where, exc_info=exc)
    return ProtocolError("Something went wrong", code="PSYNC_S2001", status=500).as_json(), 500, {}


def server_error_response(exc: BaseException, where: str) -> JsonResponse:
    body, status, headers = server_error(exc, where)
    return JsonResponse(body, status=status, headers=headers)

def protocol_error_response(exc: ProtocolError) -> JsonResponse:
    """The JSON error of ``exc``; with ``Retry-After`` when the server is overloaded or at its stream cap."""
    return JsonResponse(exc.as_json(), status=exc.status, headers=error_headers(exc))


def error_headers(exc: ProtocolError) -> dict[str, str]:
    """Extra headers of a protocol error: ``Retry-After`` when the error carries one (503, 429)."""
    retry_after = getattr(exc, "retry_after", None)
    return {"Retry-After": str(retry_after)} if retry_after is not None else {}


def cors_headers(origin: str | None) -> dict[str, str]:
    """CORS headers of an answer to a request from ``origin`` (protocol.md §3.4)."""
    allowed = get_config()["CORS_ALLOWED_ORIGINS"]
    headers = {}
    if allowed == "*":
        headers["Access-Control-Allow-Origin"] = "*"
    elif origin and origin in allowed:
        headers["Access-Control-Allow-Origin"] = origin
        headers["Vary"] = "Origin"
    headers["Access-Control-Expose-Headers"] = "Content-Type, Retry-After"
    return headers


def preflight_headers(methods: str) -> dict[str, str]:
    """Headers of the 204 answer to a CORS preflight (CORS origin headers not included)."""
    return {"Access-Control-Allow-Methods": f"{methods}, OPTIONS", "Access-Control-Allow-Headers": ALLOWED_HEADERS,
            "Access-Control-Max-Age": "3600"}


METHOD_NOT_ALLOWED = {"error": {"code": "PSYNC_S2002", "status": 405, "description": "Method not allowed",
                                "name": "RouteNotFound"}}


def _cors(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    for name, value in cors_headers(request.headers.get("Origin")).items():
        response[name] = value
    return response


def cors(methods: str) -> Callable:
    """Answer CORS preflights and add CORS headers (protocol.md §3.4).

    An exception the view raises becomes a JSON error (:func:`server_error`), never Django's HTML page.
    """

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        async def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method == "OPTIONS":
                return _cors(request, HttpResponse(status=204, headers=preflight_headers(methods)))
            if request.method not in methods.split(", "):
                return _cors(request, error_response(METHOD_NOT_ALLOWED, 405))
            try:
                response = await view(request, *args, **kwargs)
            except Exception as exc:
                response = server_error_response(exc, f"{request.method} {request.path}")
            metrics.http_response(request, response)
            return _cors(request, response)

        return csrf_exempt(wrapped)

    return decorator


async def authenticate_header(authorization: str | None) -> TokenClaims:
    """The claims of an ``Authorization`` header's token; raises :class:`AuthError`."""
    token = parse_authorization_header(authorization)
    if get_config()["JWT"]["JWKS_URL"]:
        return await asyncio.to_thread(verify_token, token)  # may fetch keys over the network
    return verify_token(token)


async def authenticate(request: HttpRequest) -> TokenClaims:
    return await authenticate_header(request.headers.get("Authorization"))


def check_content_length(value: str | None) -> None:
    """Refuse (413) a request whose announced body is over ``MAX_REQUEST_BYTES``."""
    try:
        announced = int(value or 0)
    except ValueError:
        raise ProtocolError("Invalid Content-Length") from None
    if announced > get_config()["MAX_REQUEST_BYTES"]:
        raise ProtocolError("Request body too large", status=413)


@dataclass
class PreparedStream:
    """A sync session ready to stream, with how its lines are encoded and the response's headers."""

    session: SyncSession
    encode: Callable[[dict[str, Any]], bytes]
    gzip: bool
    headers: dict[str, str]
    slot: limits.StreamSlot

    def chunks(self) -> AsyncIterator[bytes]:
        """The response body; gives the stream slot back when it ends, or when it is dropped unstarted (a
        client that went away before the response was sent)."""
        body = _stream(self.session, self.encode, self.gzip, self.slot)
        weakref.finalize(body, self.slot.release)
        return body


async def prepare_stream(claims: TokenClaims, body: bytes, accept: str, accept_encoding: str) -> PreparedStream:
    """Take a stream slot, parse the sync request and prepare its session; raises :class:`ProtocolError`
    (413, 400, 429 :class:`~powersync_django.limits.TooManyStreams`, 503 ...)."""
    if len(body) > get_config()["MAX_REQUEST_BYTES"]:
        raise ProtocolError("Request body too large", status=413)
    sync_request = parse_json_request(body)
    slot = limits.acquire(claims.user_id)
    try:
        session = SyncSession(claims, sync_request)
        await session.prepare()
    except BaseException:
        slot.release()
        raise

    bson = prefers_bson(accept)
    encode = encode_bson if bson else encode_ndjson if sync_request.raw_data else encode_ndjson_nested

    gzip = "gzip" in accept_encoding.lower()
    # Exactly the BSON MIME type, without a charset: clients compare it literally.
    headers = {"Content-Type": BSON_STREAM if bson else NDJSON, "X-Accel-Buffering": "no", "Cache-Control": "no-cache"}
    if gzip:
        headers["Content-Encoding"] = "gzip"
        headers["Vary"] = "Accept-Encoding"
    return PreparedStream(session, encode, gzip, headers, slot)


@cors("POST")
async def sync_stream(request: HttpRequest) -> HttpResponse:
    """``POST /sync/stream``: the streaming sync session (NDJSON or BSON, optionally gzip).

    :func:`powersync_django.routing.powersync_application` serves this path with the pure-ASGI
    :mod:`~powersync_django.stream_endpoint` instead (no thread per open stream); this view serves projects
    that only include the urls.
    """
    try:
        claims = await authenticate(request)
    except AuthError as exc:
        return error_response(exc.as_json(), exc.status)
    try:
        check_content_length(request.headers.get("Content-Length"))
        limit = get_config()["MAX_REQUEST_BYTES"]
        # Read from the stream: ``request.body`` int()s the raw Content-Length header (a 500 when malformed).
        body = request.read(limit + 1)
        if len(body) > limit:
            raise ProtocolError("Request body too large", status=413)
        prepared = await prepare_stream(claims, body, request.headers.get("Accept", ""),
                                        request.headers.get("Accept-Encoding", ""))
    except ProtocolError as exc:
        return protocol_error_response(exc)
    response = StreamingHttpResponse(prepared.chunks(), content_type=prepared.headers["Content-Type"])
    for name, value in prepared.headers.items():
        response[name] = value
    return response


async def _stream(session: SyncSession, encode: Callable[[dict], bytes], gzip: bool,
                  slot: limits.StreamSlot) -> AsyncIterator[bytes]:
    compressor = GzipLines(get_config()["GZIP_LEVEL"], ENCODING_KIND.get(encode)) if gzip else None
    tracker = StreamTracker(session, metrics.HTTP)
    lines = tracker.lines(session.lines())
    try:
        async for line in lines:
            chunk = encode(line)
            if compressor is not None:
                # Flushed per line: compressed, yet no line waits for the next one.
                chunk = compressor.compress(line, chunk)
            tracker.sent(len(chunk))
            yield chunk
        if compressor is not None:
            yield compressor.finish()
    except asyncio.CancelledError:
        raise
    except ProtocolError as exc:  # raised mid-stream (e.g. re-resolved parameters no longer fit): end the body
        logger.info("powersync: sync stream ended: %s", exc.description)
    except Exception:
        # Headers are sent: all we can do is end the body; the client retries.
        logger.exception("powersync: sync stream failed")
    finally:
        slot.release()
        await aclose_quietly(lines)
        tracker.close()


@cors("GET")
async def write_checkpoint(request: HttpRequest) -> HttpResponse:
    """``GET /write-checkpoint2.json?client_id=…``: the next write checkpoint of this user and client."""
    try:
        claims = await authenticate(request)
    except AuthError as exc:
        return error_response(exc.as_json(), exc.status)
    try:
        client_id = check_client_id(request.GET.get("client_id"))
    except ProtocolError as exc:
        return error_response(exc.as_json(), exc.status)
    return await _write_marker(claims, "write_checkpoint", storage.create_write_checkpoint, claims.user_id, client_id)


async def _write_marker(claims: TokenClaims, answer_key: str, fn: Callable[..., int], *args: Any) -> HttpResponse:
    """Run a write-checkpoint marker write (``fn``) within the user's WRITE_CHECKPOINT rate limit, on the write
    pool: ``{"data": {answer_key: "<value>"}}``, 429 over the limit, 503 when the write pool is full."""
    try:
        await asyncio.to_thread(ratelimit.check, "WRITE_CHECKPOINT", claims.user_id)
    except ratelimit.RateLimited as exc:
        response = error_response(exc.as_json(), exc.status)
        response["Retry-After"] = str(exc.retry_after)
        return response
    try:
        value = await storage.run_write(fn, *args)
    except Overloaded as exc:
        return protocol_error_response(exc)
    return JsonResponse({"data": {answer_key: str(value)}})


# A checkpoint request body is two short fields.
MAX_CHECKPOINT_REQUEST_BYTES = 4096


@cors("POST")
async def checkpoint_request(request: HttpRequest) -> HttpResponse:
    """``POST /sync/checkpoint-request`` ``{"client_id", "checkpoint_request_id"}`` (protocol.md §11.5).

    Answers ``{"data": {"checkpoint_request_id": "<stored>"}}``: the larger of the stored and the supplied id.
    The id shares the write checkpoint counter of this user and client (:func:`storage.request_checkpoint`).
    """
    try:
        claims = await authenticate(request)
    except AuthError as exc:
        return error_response(exc.as_json(), exc.status)
    try:
        if int(request.headers.get("Content-Length") or 0) > MAX_CHECKPOINT_REQUEST_BYTES:
            raise ProtocolError("Request body too large", status=413)
        # Read from the stream: ``request.body`` of a chunked body (no Content-Length) over Django's
        # DATA_UPLOAD_MAX_MEMORY_SIZE raises RequestDataTooBig (a 500 here).
        body = request.read(MAX_CHECKPOINT_REQUEST_BYTES + 1)
        if len(body) > MAX_CHECKPOINT_REQUEST_BYTES:
            raise ProtocolError("Request body too large", status=413)
        client_id, request_id = parse_checkpoint_request(body)
        client_id = check_client_id(client_id)
    except (ProtocolError, ValueError) as exc:
        error = exc if isinstance(exc, ProtocolError) else ProtocolError("Malformed Content-Length header")
        return error_response(error.as_json(), error.status)
    # Same budget as write-checkpoint2.json: both write a marker and wake every stream.
    return await _write_marker(claims, "checkpoint_request_id", storage.request_checkpoint, claims.user_id,
                               client_id, request_id)
