"""WebSocket sync transport: a Channels consumer speaking RSocket (protocol.md §8, §16.2).

Every binary WebSocket message is one RSocket frame. The client sends SETUP (token in the metadata), then
REQUEST_STREAM; the consumer runs the same :class:`~powersync_django.sync.SyncSession` as the HTTP view and
sends each sync line as a PAYLOAD(N) holding one BSON document. It never sends more payloads than the client
has granted (initial request N plus every REQUEST_N): without credit the session generator is simply not
advanced, so a slow client holds no queued lines. Frames arriving while SETUP is being authenticated are
buffered and handled afterwards, in order. Anything malformed gets an ERROR frame with a ``[PSYNC_Sxxxx]``
code and, at connection level, a close; nothing raises out of the consumer.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Mapping
from typing import Any

import bson
import orjson
from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer

from . import limits, metrics
from .auth import AuthError, TokenClaims, parse_authorization_header, verify_token
from .conf import get_config
from .protocol import ProtocolError, SyncRequest, encode_bson, parse_json_request, parse_request
from .rsocket import (
    APPLICATION_ERROR,
    CONNECTION_ERROR,
    INVALID_SETUP,
    MAX_FRAME_LENGTH,
    REJECTED,
    REJECTED_SETUP,
    UNSUPPORTED_SETUP,
    Cancel,
    Error,
    Frame,
    FrameType,
    Keepalive,
    Payload,
    RequestN,
    RequestStream,
    RSocketProtocolError,
    Setup,
    UnknownFrame,
    decode_frame,
    error_frame,
    keepalive_reply,
    payload_complete,
    payload_next,
)
from .sync import SyncSession, aclose_quietly
from .tracking import StreamTracker

__all__ = ["BSON_MIME", "JSON_MIME", "SYNC_PATH", "SyncConsumer"]

logger = logging.getLogger(__name__)

JSON_MIME = "application/json"
BSON_MIME = "application/bson"  # pre-Rust JS clients: BSON SETUP metadata and request data
SYNC_PATH = "/sync/stream"

INTERNAL_ERROR = "PSYNC_S2001"
ROUTE_NOT_FOUND = "PSYNC_S2002"
UNSUPPORTED_MEDIA_TYPE = "PSYNC_S2004"
TOO_MANY_STREAMS = "PSYNC_S2304"

_MAX_CREDIT = (1 << 63) - 1
_REQUEST_TYPES = frozenset({FrameType.REQUEST_RESPONSE, FrameType.REQUEST_FNF, FrameType.REQUEST_CHANNEL})


def error_text(code: str, description: str, details: str = "") -> str:
    """An RSocket error message as the service writes it: ``[code] description`` (+ an indented detail line)."""
    metrics.websocket_error(code)  # every ERROR frame's text is made here
    return f"[{code}] {description}" + (f"\n  {details}" if details else "")


def _media_type(mime: str) -> str:
    return mime.split(";", 1)[0].strip().lower()


def _json_like(value: Any, depth: int = 0) -> bool:
    """Whether a decoded BSON value holds only JSON types (no ObjectId, datetime, binary, ...)."""
    if depth > 64:
        return False
    if value is None or isinstance(value, str | bool | int | float):
        return True
    if isinstance(value, list):
        return all(_json_like(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_like(v, depth + 1) for k, v in value.items())
    return False


def decode_document(raw: bytes | None, mime: str) -> Any:
    """Decode SETUP/REQUEST_STREAM metadata or request data by MIME type; ``None`` when empty.

    Raises ValueError when the bytes are not one valid JSON value / BSON document of JSON types.
    """
    if not raw:
        return None
    if mime == BSON_MIME:
        try:
            document = bson.decode(raw)
        except Exception as exc:  # InvalidBSON and friends from the C decoder
            raise ValueError(f"not a valid BSON document: {exc}") from None
        if not _json_like(document):
            raise ValueError("the BSON document holds non-JSON types")
        return document
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None


class _Stream:
    """One request stream: its credit (payloads the client still accepts) and the task serving it."""

    __slots__ = ("credit", "session", "stream_id", "task", "waiting", "_granted")

    def __init__(self, stream_id: int, credit: int) -> None:
        self.stream_id = stream_id
        self.credit = credit
        self.task: asyncio.Task[None] | None = None
        self.session: SyncSession | None = None
        #: True while the stream waits for REQUEST_N (the session generator is paused meanwhile).
        self.waiting = False
        self._granted = asyncio.Event()

    def grant(self, n: int) -> None:
        self.credit = min(self.credit + n, _MAX_CREDIT)
        self._granted.set()

    async def wait(self) -> None:
        """Return once the client accepts another payload (credit only grows until that one is sent)."""
        while self.credit <= 0:
            self._granted.clear()
            self.waiting = True
            try:
                await self._granted.wait()
            finally:
                self.waiting = False


class SyncConsumer(AsyncWebsocketConsumer):
    """PowerSync sync over RSocket over WebSocket (protocol.md §8); one connection, usually one stream.

    Subclasses may change ``session_class`` (the sync session run per stream), ``max_streams`` (concurrent
    request streams per connection) and ``max_pending_frames`` (frames buffered while SETUP is processed).
    """

    session_class: type[SyncSession] = SyncSession
    max_streams: int = 1
    max_pending_frames: int = 64
    # No channel layer: new checkpoints reach the sessions through notify's per-process hub, so a
    # per-connection channel would only cost a layer round trip (and fail connections if the layer is down).
    channel_layer_alias = "powersync-django:no-channel-layer"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.claims: TokenClaims | None = None
        self.user_agent = ""
        self.metadata_mime = JSON_MIME
        self.data_mime = JSON_MIME
        self.closed = False
        self._setup_seen = False
        # Set while SETUP is processed; incoming messages then queue up in ``_pending``.
        self._setup_task: asyncio.Task[None] | None = None
        self._pending: deque[tuple[str | None, bytes | None]] = deque()
        self._streams: dict[int, _Stream] = {}

    # --- Channels hooks ---------------------------------------------------------------------------

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Like Channels' dispatch, minus the per-message ``close_old_connections`` thread hop.

        Clients send a REQUEST_N after every payload; the consumer itself never touches the ORM (sessions
        read through ``storage``'s threads), so that hop would only funnel every frame of every connection
        through Django's single sync thread.
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        for name, value in self.scope.get("headers", ()):
            if name == b"user-agent":
                self.user_agent = value.decode("latin-1")[:200]
        await self.accept()

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        await self.receive(text_data=message.get("text"), bytes_data=message.get("bytes"))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.closed:
            return
        if self._setup_task is not None:
            if len(self._pending) >= self.max_pending_frames:
                await self.fail(CONNECTION_ERROR, "Too many frames before SETUP completed")
            else:
                self._pending.append((text_data, bytes_data))
            return
        await self._handle_message(text_data, bytes_data)

    async def disconnect(self, code: int) -> None:
        self.closed = True
        await self._shutdown()

    # --- authentication -----------------------------------------------------------------------------

    async def authenticate(self, authorization: Any) -> TokenClaims:
        """Verify the SETUP ``token`` (``"Token <jwt>"``); raises AuthError. Like ``views.authenticate``."""
        token = parse_authorization_header(authorization if isinstance(authorization, str) else None)
        if get_config()["JWT"]["JWKS_URL"]:
            return await asyncio.to_thread(verify_token, token)  # may fetch keys over the network
        return verify_token(token)

    # --- frames ------------------------------------------------------------------------------------

    async def _handle_message(self, text_data: str | None, bytes_data: bytes | None) -> None:
        """Decode and handle one WebSocket message; never raises (except cancellation)."""
        code = INVALID_SETUP if not self._setup_seen else CONNECTION_ERROR
        if bytes_data is None:
            await self.fail(code, "RSocket frames must be binary WebSocket messages")
            return
        if len(bytes_data) > MAX_FRAME_LENGTH:
            await self.fail(code, "RSocket frame too large")
            return
        try:
            frame = decode_frame(bytes_data)
        except RSocketProtocolError as exc:
            await self.fail(code, f"Invalid RSocket frame: {exc.message}")
            return
        try:
            await self._handle_frame(frame)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("powersync: handling an RSocket frame failed")
            await self.fail(CONNECTION_ERROR, "Something went wrong")

    async def _handle_frame(self, frame: Frame) -> None:
        if not self._setup_seen:
            if isinstance(frame, Setup):
                self._setup_seen = True
                self._setup_task = asyncio.create_task(self._setup(frame), name="powersync-rsocket-setup")
            else:
                await self.fail(INVALID_SETUP, f"Expected SETUP, got {_name(frame)}")
            return
        if isinstance(frame, Keepalive):
            if frame.respond:
                await self.send_frame(keepalive_reply(frame))
        elif isinstance(frame, RequestN):
            stream = self._streams.get(frame.stream_id)
            if stream is not None:
                stream.grant(frame.n)
        elif isinstance(frame, RequestStream):
            await self._open_stream(frame)
        elif isinstance(frame, Cancel):
            await self._cancel_stream(frame.stream_id)
        elif isinstance(frame, Error):
            if frame.stream_id == 0:  # the client gives up on the connection
                logger.info("powersync: client closed the RSocket connection: %s", frame.message[:200])
                await self._close()
            else:  # a requester's ERROR on its stream means the same as CANCEL
                await self._cancel_stream(frame.stream_id)
        elif isinstance(frame, Payload):
            pass  # request streams carry no client payloads; late frames of ended streams are dropped
        elif isinstance(frame, Setup):
            await self.fail(CONNECTION_ERROR, "Duplicate SETUP")
        elif isinstance(frame, UnknownFrame):
            if frame.ignore or (frame.frame_type == FrameType.REQUEST_FNF and frame.stream_id):
                return
            if frame.frame_type in _REQUEST_TYPES and frame.stream_id:
                await self.send_frame(
                    error_frame(
                        frame.stream_id,
                        REJECTED,
                        error_text(
                            ROUTE_NOT_FOUND,
                            f"Unsupported interaction {frame.type_name}: only REQUEST_STREAM is served",
                        ),
                    )
                )
                return
            await self.fail(CONNECTION_ERROR, f"Unsupported frame {frame.type_name}")

    # --- setup -------------------------------------------------------------------------------------

    async def _setup(self, frame: Setup) -> None:
        """Authenticate SETUP, then handle the frames that arrived meanwhile, in order."""
        try:
            if await self._accept_setup(frame):
                while self._pending and not self.closed:
                    text_data, bytes_data = self._pending.popleft()
                    await self._handle_message(text_data, bytes_data)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("powersync: processing RSocket SETUP failed")
            await self.fail(REJECTED_SETUP, "Something went wrong")
        finally:
            # Same step as the last empty-queue check: later messages are handled directly, in order.
            self._setup_task = None

    async def _accept_setup(self, frame: Setup) -> bool:
        if frame.major_version != 1:
            reason = f"Unsupported RSocket version {frame.major_version}.{frame.minor_version}"
            return await self.fail(UNSUPPORTED_SETUP, reason)
        if frame.resume_token is not None or frame.lease:
            reason = "RSocket resumption and leases are not supported"
            return await self.fail(UNSUPPORTED_SETUP, reason)
        mimes = _media_type(frame.metadata_mime), _media_type(frame.data_mime)
        for mime in mimes:
            if mime not in (JSON_MIME, BSON_MIME):
                reason = f"Unsupported media type {mime[:60]!r}: use application/json or application/bson"
                return await self.fail(REJECTED_SETUP, reason, psync=UNSUPPORTED_MEDIA_TYPE)
        self.metadata_mime, self.data_mime = mimes
        try:
            metadata = decode_document(frame.metadata, self.metadata_mime)
        except ValueError as exc:
            return await self.fail(INVALID_SETUP, f"SETUP metadata is {exc}")
        if metadata is None:
            metadata = {}
        if not isinstance(metadata, Mapping):
            return await self.fail(INVALID_SETUP, "SETUP metadata must be an object")
        if isinstance(metadata.get("user_agent"), str):
            self.user_agent = metadata["user_agent"][:200]
        try:
            self.claims = await self.authenticate(metadata.get("token"))
        except AuthError as exc:
            logger.info(
                "powersync: WebSocket authentication failed: %s%s",
                exc,
                f" ({exc.detail})" if exc.detail else "",
            )
            return await self.fail(REJECTED_SETUP, exc.description, psync=exc.code, log=False)
        return True

    # --- streams -----------------------------------------------------------------------------------

    async def _open_stream(self, frame: RequestStream) -> None:
        sid = frame.stream_id
        if sid % 2 == 0:
            await self.fail(CONNECTION_ERROR, f"Client stream ids must be odd, got {sid}")
            return
        if sid in self._streams:
            await self.fail(CONNECTION_ERROR, f"Stream {sid} is already open")
            return
        if len(self._streams) >= self.max_streams:
            reason = f"At most {self.max_streams} concurrent sync stream(s) per connection"
            await self.send_frame(error_frame(sid, REJECTED, error_text(TOO_MANY_STREAMS, reason)))
            return
        stream = self._streams[sid] = _Stream(sid, frame.initial_request_n)
        stream.task = asyncio.create_task(
            self._serve_stream(stream, frame), name=f"powersync-rsocket-stream-{sid}"
        )

    async def _serve_stream(self, stream: _Stream, frame: RequestStream) -> None:
        """Run one sync session on a stream: PAYLOAD(N) per line within credit, PAYLOAD(C) at the end."""
        sid = stream.stream_id
        lines = tracker = slot = None
        try:
            assert self.claims is not None
            try:
                # Over MAX_CONCURRENT_STREAMS or MAX_STREAMS_PER_USER: PSYNC_S2304.
                slot = limits.acquire(self.claims.user_id)
                session = stream.session = self.session_class(
                    self.claims, self.decode_request(frame)
                )
                await session.prepare()
            except ProtocolError as exc:
                await self.send_frame(
                    error_frame(sid, APPLICATION_ERROR, error_text(exc.code, exc.description, exc.details))
                )
                return
            logger.debug(
                "powersync: WebSocket sync stream %s for %s (%s)", sid, self.claims.user_id, self.user_agent
            )
            tracker = StreamTracker(session, metrics.WEBSOCKET)
            lines = tracker.lines(session.lines())
            while not self.closed:
                await stream.wait()  # before advancing the generator: nothing is produced without credit
                try:
                    line = await anext(lines)
                except StopAsyncIteration:
                    await self.send_frame(payload_complete(sid))
                    break
                stream.credit -= 1
                payload = encode_bson(line)
                await self.send_frame(payload_next(sid, payload))
                tracker.sent(len(payload))
        except asyncio.CancelledError:
            raise
        except ProtocolError as exc:  # raised mid-stream, e.g. parameters re-resolved after a change no longer fit
            logger.info("powersync: WebSocket sync stream %s ended: %s", sid, exc.description)
            await self.send_frame(
                error_frame(sid, APPLICATION_ERROR, error_text(exc.code, exc.description, exc.details))
            )
        except Exception:
            logger.exception("powersync: WebSocket sync stream failed")
            await self.send_frame(
                error_frame(sid, APPLICATION_ERROR, error_text(INTERNAL_ERROR, "Something went wrong"))
            )
        finally:
            if slot is not None:
                slot.release()
            if lines is not None:
                await aclose_quietly(lines)
            if tracker is not None:
                tracker.close()
            if self._streams.get(sid) is stream:
                del self._streams[sid]

    def decode_request(self, frame: RequestStream) -> SyncRequest:
        """Validate REQUEST_STREAM metadata (``{"path": "/sync/stream"}``) and decode the sync request body."""
        try:
            metadata = decode_document(frame.metadata, self.metadata_mime)
        except ValueError as exc:
            raise ProtocolError(f"REQUEST_STREAM metadata is {exc}") from None
        if metadata is not None:
            if not isinstance(metadata, Mapping):
                raise ProtocolError("REQUEST_STREAM metadata must be an object")
            path = metadata.get("path")
            if path is not None and path != SYNC_PATH:
                raise ProtocolError(f"Route not found: {str(path)[:100]}", code=ROUTE_NOT_FOUND, status=404)
        if frame.follows:
            raise ProtocolError("Fragmented requests are not supported")
        if len(frame.data) > get_config()["MAX_REQUEST_BYTES"]:
            raise ProtocolError("Request body too large", status=413)
        if self.data_mime == JSON_MIME:
            return parse_json_request(frame.data)
        try:
            return parse_request(decode_document(frame.data, BSON_MIME))
        except ValueError as exc:
            raise ProtocolError(f"Request body is {exc}") from None

    async def _cancel_stream(self, stream_id: int) -> None:
        """Stop a stream (no ERROR is sent) and wait until its session generator is closed."""
        stream = self._streams.pop(stream_id, None)
        if stream is not None and stream.task is not None:
            stream.task.cancel()
            await asyncio.gather(stream.task, return_exceptions=True)

    # --- sending and closing -----------------------------------------------------------------------

    async def send_frame(self, frame: Frame) -> None:
        """Send one frame as one binary message (dropped once the connection is closing)."""
        if not self.closed:
            await self._send_bytes(frame.encode())

    async def _send_bytes(self, data: bytes) -> None:
        try:
            await self.send(bytes_data=data)
        except Exception:  # the server could not send (client gone): stop sending, the disconnect follows
            logger.debug("powersync: sending an RSocket frame failed", exc_info=True)
            self.closed = True

    async def fail(
        self, code: int, description: str, *, psync: str = INTERNAL_ERROR, log: bool = True
    ) -> bool:
        """Send ERROR(0, code, "[psync] description"), close the socket and stop everything.

        Returns False, so that callers can ``return await self.fail(...)``.
        """
        message = error_text(psync, description)
        if not self.closed:
            if log:
                logger.info("powersync: closing RSocket connection (error %#x): %s", code, message)
            self.closed = True  # no stream sends anything after the ERROR
            await self._send_bytes(error_frame(0, code, message).encode())
            await self.close()
        await self._shutdown()
        return False

    async def _close(self) -> None:
        if not self.closed:
            self.closed = True
            await self.close()
        await self._shutdown()

    async def _shutdown(self) -> None:
        """Cancel the setup and stream tasks (except the caller's own) and wait for them to finish."""
        self.closed = True
        self._pending.clear()
        tasks = [s.task for s in self._streams.values() if s.task is not None]
        self._streams.clear()
        if self._setup_task is not None:
            tasks.append(self._setup_task)
        current = asyncio.current_task()
        tasks = [t for t in tasks if t is not current and not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _name(frame: Frame) -> str:
    return frame.type_name if isinstance(frame, UnknownFrame) else frame.TYPE.name
