"""DRF side of powersync_django: the upload endpoint, JWT authentication for DRF, OpenAPI description.

``upload`` (mounted at ``api/upload`` by ``powersync_django.urls``; mount it anywhere else with
``path("my/path", powersync_django.api.upload)``) authenticates with the same JWTs as sync and hands the
body to :mod:`powersync_django.upload`. ``UploadView`` is the plain DRF view, for projects that want their
own authentication or throttling (subclass it; hooks then get that ``request.user``).
"""

from __future__ import annotations

import functools
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse
from django.urls import NoReverseMatch, get_script_prefix, reverse
from rest_framework import exceptions, serializers
from rest_framework.authentication import BaseAuthentication
from rest_framework.parsers import JSONParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView, set_rollback

from . import executors, metrics, ratelimit
from . import upload as uploads
from .auth import PSYNC_S2106, AuthError, TokenClaims, parse_authorization_header, verify_token
from .conf import get_config
from .executors import Overloaded
from .users import TokenUser, resolve_user  # noqa: F401  (TokenUser: re-exported, was defined here)
from .views import cors, protocol_error_response, server_error

try:
    from drf_spectacular.extensions import OpenApiAuthenticationExtension
    from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
except ImportError:  # drf-spectacular is optional (extra "openapi")
    OpenApiAuthenticationExtension = None

    def extend_schema(*args: Any, **kwargs: Any) -> Any:
        return lambda view: view

    def OpenApiResponse(*args: Any, **kwargs: Any) -> Any:  # noqa: N802
        return None

    def OpenApiExample(*args: Any, **kwargs: Any) -> Any:  # noqa: N802
        return None


SECURITY_SCHEME = "PowerSyncToken"


class TokenAuthenticationFailed(exceptions.AuthenticationFailed):
    """A token that was presented but did not verify; carries the :class:`AuthError` for the 401 body."""

    def __init__(self, error: AuthError) -> None:
        super().__init__(error.description)
        self.error = error


class PowerSyncTokenAuthentication(BaseAuthentication):
    """DRF authentication with the JWTs of ``POWERSYNC['JWT']`` (``Authorization: Token|Bearer <jwt>``).

    ``request.user`` is the Django user named by the token's ``sub`` (:func:`powersync_django.users.resolve_user`,
    looked up once per request), ``request.auth`` the :class:`TokenClaims`. Without such a header it returns
    None, so it combines with other authentication classes.
    """

    def authenticate(self, request: Request) -> tuple[Any, TokenClaims] | None:
        header = request.headers.get("Authorization")
        try:
            token = parse_authorization_header(header)
        except AuthError:
            return None
        try:
            claims = verify_token(token)
            user = resolve_user(claims)
        except AuthError as exc:
            raise TokenAuthenticationFailed(exc) from None
        return user, claims

    def authenticate_header(self, request: Request) -> str:
        return "Token"


# --- documentation serializers (the body is parsed by upload.parse_batch, not by these) ---------------


class PowerSyncCrudEntrySerializer(serializers.Serializer):
    """One operation: a PowerSync ``CrudEntry.toJSON()`` (protocol.md §14.2)."""

    op = serializers.ChoiceField(choices=uploads.OPS)
    type = serializers.CharField(help_text="Client table name.")
    id = serializers.CharField(help_text="Row id.")
    data = serializers.DictField(required=False, help_text="Columns to write (PUT: all non-null, PATCH: changed).")
    op_id = serializers.IntegerField(required=False, help_text="Ignored.")
    tx_id = serializers.IntegerField(required=False, help_text="Ignored.")
    old = serializers.DictField(required=False, help_text="Ignored.")
    metadata = serializers.CharField(required=False, help_text="Ignored.")


class PowerSyncUploadBatchSerializer(serializers.Serializer):
    batch = PowerSyncCrudEntrySerializer(many=True, help_text="One client transaction, applied all or nothing.")


class PowerSyncUploadResultSerializer(serializers.Serializer):
    applied = serializers.IntegerField(help_text="Operations that wrote a row (skipped ones not counted).")


class PowerSyncUploadResponseSerializer(serializers.Serializer):
    data = PowerSyncUploadResultSerializer()


class PowerSyncOperationErrorSerializer(serializers.Serializer):
    index = serializers.IntegerField(help_text="Position of the operation in the batch.")
    op = serializers.CharField(allow_null=True)
    type = serializers.CharField(allow_null=True)
    id = serializers.CharField(allow_null=True)
    code = serializers.CharField(help_text=f"{uploads.OP_INVALID}, {uploads.OP_NOT_FOUND}, {uploads.OP_FORBIDDEN} "
                                           f"or {uploads.OP_INTEGRITY}.")
    errors = serializers.DictField(required=False, help_text="Field name -> messages.")


class PowerSyncErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField()
    status = serializers.IntegerField()
    description = serializers.CharField()
    name = serializers.CharField()
    details = serializers.CharField(required=False)
    operations = PowerSyncOperationErrorSerializer(many=True, required=False)


class PowerSyncErrorSerializer(serializers.Serializer):
    error = PowerSyncErrorDetailSerializer()


# --- the view -----------------------------------------------------------------------------------


def error_body(code: str, status: int, description: str, name: str) -> dict[str, Any]:
    return {"error": {"code": code, "status": status, "description": description, "name": name}}


class UploadView(APIView):
    """``POST`` one client transaction; see :mod:`powersync_django.upload`."""

    authentication_classes = [PowerSyncTokenAuthentication]
    permission_classes = [IsAuthenticated]
    parser_classes = [JSONParser]  # for the schema only: the body is read raw, with its own size limit
    renderer_classes = [JSONRenderer]

    @extend_schema(
        operation_id="powersync_upload",
        summary="Apply one client transaction (uploadData)",
        description=(
            "Applies the CRUD operations of one PowerSync client transaction in one database transaction: all "
            "or nothing. PUT creates or replaces a row, PATCH updates the given columns, DELETE deletes. "
            "4xx answers are permanent (the connector should complete() the transaction and report); "
            "5xx answers are temporary (throw, the SDK retries)."
        ),
        request=PowerSyncUploadBatchSerializer,
        responses={
            200: PowerSyncUploadResponseSerializer,
            400: OpenApiResponse(PowerSyncErrorSerializer, description="Malformed body, unknown table/operation, invalid "
                                 "data or a database constraint; `operations` names the failing operations."),
            401: OpenApiResponse(PowerSyncErrorSerializer, description="Missing or invalid token."),
            403: OpenApiResponse(PowerSyncErrorSerializer, description="An operation is not permitted."),
            413: OpenApiResponse(PowerSyncErrorSerializer, description="Too many operations or too large a body."),
            500: OpenApiResponse(PowerSyncErrorSerializer, description="Unexpected server error (PSYNC_S2001)."),
            503: OpenApiResponse(PowerSyncErrorSerializer, description="The database is busy (PSYNC_S2003); "
                                 "retry after `Retry-After` seconds."),
            429: OpenApiResponse(PowerSyncErrorSerializer, description="Over RATE_LIMITS['UPLOAD'] for this "
                                 "user; retry after the Retry-After header's seconds."),
        },
        examples=[OpenApiExample("Batch", request_only=True, value={"batch": [
            {"op": "PUT", "type": "todos", "id": "5f4c0c5e-4d9e-4b1a-9a43-0c2d7e0f6d11",
             "data": {"list_id": "0a3e7a0e-8d64-4a36-9c55-8e5b0d0f1c22", "description": "Milk"}},
            {"op": "DELETE", "type": "todos", "id": "1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed"},
        ]})],
        tags=["powersync"],
    )
    def post(self, request: Request) -> Response:
        token = request.auth if isinstance(request.auth, TokenClaims) else None
        ratelimit.check("UPLOAD", token.user_id if token is not None else f"user:{request.user.pk}")
        raw = read_body(request._request, get_config()["UPLOAD"]["MAX_BYTES"])
        operations = uploads.parse_batch(raw)
        applied = uploads.apply_batch(request.user, operations, {"request": request, "view": self})
        metrics.upload_batch(200, applied)
        return Response({"data": {"applied": applied}})

    def handle_exception(self, exc: Exception) -> Response:
        response = exception_response(exc)
        if response is None:
            # Unexpected (a busy database, a bug in a hook): a JSON 503/500, never Django's HTML page.
            body, status, headers = server_error(exc, "upload")
            set_rollback()
            response = Response(body, status=status, headers=headers)
        metrics.upload_batch(response.status_code)
        if response.status_code == 401:
            response["WWW-Authenticate"] = self.get_authenticate_header(self.request) or "Token"
        if isinstance(exc, ratelimit.RateLimited):
            response["Retry-After"] = str(exc.retry_after)
        response.exception = True
        return response


def read_body(request: HttpRequest, limit: int | None) -> bytes:
    """The request body, or a 413 :class:`~powersync_django.upload.UploadError` beyond ``limit`` bytes.

    Read from the stream, so Django's DATA_UPLOAD_MAX_MEMORY_SIZE does not apply: ``MAX_BYTES`` does.
    """
    try:
        declared = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        declared = 0
    too_large = uploads.UploadError(413, uploads.UPLOAD_TOO_LARGE,
                                    f"The request body is larger than {limit} bytes.")
    if limit is not None and declared > limit:
        raise too_large
    raw = request.read(limit + 1) if limit is not None else request.read()
    if limit is not None and len(raw) > limit:
        raise too_large
    return raw


def exception_response(exc: Exception) -> Response | None:
    """The PSYNC-shaped error response of an exception the upload view expects; None for others (500)."""
    if isinstance(exc, uploads.UploadError | ratelimit.RateLimited):
        return Response(exc.as_json(), status=exc.status)
    if isinstance(exc, TokenAuthenticationFailed):
        return Response(exc.error.as_json(), status=exc.error.status)
    if isinstance(exc, exceptions.NotAuthenticated):
        error = AuthError(PSYNC_S2106, "Authentication required")
        return Response(error.as_json(), status=error.status)
    if isinstance(exc, exceptions.APIException):
        body = error_body(f"HTTP_{exc.status_code}", exc.status_code, str(exc.detail), type(exc).__name__)
        return Response(body, status=exc.status_code)
    return None


_upload_view = UploadView.as_view()


@cors("POST")
@functools.wraps(_upload_view)
async def upload(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    """``POST api/upload`` with CORS; the DRF view runs in a thread (DRF is synchronous), at most
    ``MAX_CONCURRENT_UPLOADS`` at a time per process (then 503 with ``Retry-After``)."""
    try:
        with executors.uploads.take():
            return await sync_to_async(_upload_view)(request, *args, **kwargs)
    except Overloaded as exc:
        return protocol_error_response(exc)


# --- OpenAPI ------------------------------------------------------------------------------------

if OpenApiAuthenticationExtension is not None:

    class PowerSyncTokenScheme(OpenApiAuthenticationExtension):
        target_class = PowerSyncTokenAuthentication
        name = SECURITY_SCHEME

        def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
            return security_scheme()


def security_scheme() -> dict[str, Any]:
    return {"type": "apiKey", "in": "header", "name": "Authorization",
            "description": "`Token <jwt>` or `Bearer <jwt>`: the same JWT as for sync (POWERSYNC['JWT'])."}


def _mounted_path(name: str, default: str) -> str:
    try:
        path = reverse(name)
    except NoReverseMatch:
        return default
    prefix = get_script_prefix()
    return "/" + path[len(prefix):] if path.startswith(prefix) else path


def write_checkpoint_schema_hook(result: dict[str, Any], generator: Any, request: Any, public: bool,
                                 **kwargs: Any) -> dict[str, Any]:
    """drf-spectacular POSTPROCESSING_HOOKS entry that describes ``GET write-checkpoint2.json``.

    That endpoint is a plain async Django view (not DRF), so the generator does not see it by itself.
    """
    path = _mounted_path("powersync:write-checkpoint", "/write-checkpoint2.json")
    components = result.setdefault("components", {})
    components.setdefault("securitySchemes", {}).setdefault(SECURITY_SCHEME, security_scheme())
    schemas = components.setdefault("schemas", {})
    schemas.setdefault("PowerSyncWriteCheckpoint", {
        "type": "object", "required": ["data"],
        "properties": {"data": {"type": "object", "required": ["write_checkpoint"], "properties": {
            "write_checkpoint": {"type": "string", "description": "Decimal string; increases per user/client."},
        }}},
    })
    schemas.setdefault("PowerSyncError", {
        "type": "object", "required": ["error"],
        "properties": {"error": {"type": "object", "required": ["code", "status", "description", "name"],
                                 "properties": {"code": {"type": "string"}, "status": {"type": "integer"},
                                                "description": {"type": "string"}, "name": {"type": "string"},
                                                "details": {"type": "string"}}}},
    })
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/PowerSyncError"}}}
    result.setdefault("paths", {})[path] = {"get": {
        "operationId": "powersync_write_checkpoint",
        "summary": "Create a write checkpoint",
        "description": (
            "Issues the next write checkpoint of this user and client. A sync stream reports it in "
            "`write_checkpoint` once the checkpoint contains every change committed before this call "
            "(PowerSync protocol: write checkpoints). The PowerSync SDK calls it after its upload queue is empty."
        ),
        "tags": ["powersync"],
        "parameters": [{"name": "client_id", "in": "query", "required": False,
                        "schema": {"type": "string", "maxLength": 200}, "description": "The client's id."}],
        "security": [{SECURITY_SCHEME: []}],
        "responses": {
            "200": {"description": "", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/PowerSyncWriteCheckpoint"}}}},
            "400": {"description": "client_id is longer than 200 characters or not printable.", "content": error},
            "401": {"description": "Missing or invalid token.", "content": error},
            "500": {"description": "Unexpected server error (PSYNC_S2001).", "content": error},
            "503": {"description": "The database is busy (PSYNC_S2003); retry after `Retry-After` seconds.",
                    "content": error},
            "429": {"description": "Over RATE_LIMITS['WRITE_CHECKPOINT'] for this user; see Retry-After.",
                    "content": error},
        },
    }}
    _describe_checkpoint_request(result, error)
    return result


def _describe_checkpoint_request(result: dict[str, Any], error: dict[str, Any]) -> None:
    """``POST sync/checkpoint-request`` (checkpoint requests, the SDK's ``checkpointMode: 'requests'``)."""
    from .protocol import MAX_OP_ID

    path = _mounted_path("powersync:checkpoint-request", "/sync/checkpoint-request")
    request_id = {"oneOf": [{"type": "string", "pattern": "^[0-9]{1,19}$"},
                            {"type": "integer", "minimum": 1, "maximum": MAX_OP_ID}]}
    result["components"]["schemas"].setdefault("PowerSyncCheckpointRequest", {
        "type": "object", "required": ["client_id", "checkpoint_request_id"],
        "properties": {"client_id": {"type": "string", "maxLength": 200},
                       "checkpoint_request_id": {**request_id, "description": f"1 to {MAX_OP_ID}."}},
    })
    result["components"]["schemas"].setdefault("PowerSyncCheckpointRequestAck", {
        "type": "object", "required": ["data"],
        "properties": {"data": {"type": "object", "required": ["checkpoint_request_id"], "properties": {
            "checkpoint_request_id": {"type": "string", "description": "The stored id: max(stored, supplied)."},
        }}},
    })
    result["paths"][path] = {"post": {
        "operationId": "powersync_checkpoint_request",
        "summary": "Request a checkpoint",
        "description": (
            "Stores the client's checkpoint request id (the larger of the stored and the supplied one). A sync "
            "stream reports it in `write_checkpoint` once the checkpoint contains every change committed before "
            "this call. Ids share the counter of write-checkpoint2.json for the same user and client."
        ),
        "tags": ["powersync"],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/PowerSyncCheckpointRequest"}}}},
        "security": [{SECURITY_SCHEME: []}],
        "responses": {
            "200": {"description": "", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/PowerSyncCheckpointRequestAck"}}}},
            "400": {"description": "Invalid body.", "content": error},
            "401": {"description": "Missing or invalid token.", "content": error},
            "413": {"description": "Body too large.", "content": error},
            "500": {"description": "Unexpected server error (PSYNC_S2001).", "content": error},
            "503": {"description": "The database is busy (PSYNC_S2003); retry after `Retry-After` seconds.",
                    "content": error},
        },
    }}
