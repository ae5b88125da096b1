"""Client uploads (protocol.md §14): apply one client transaction of CRUD operations to the models.

A batch is what a connector's ``uploadData`` posts: ``{"batch": [{"op", "type", "id", "data"}, ...]}``, one
client transaction. :func:`parse_batch` checks its shape; :func:`apply_batch` applies it in one database
transaction, all or nothing. Each client table maps to the model of the first data query that produces it
(``POWERSYNC['BUCKETS']``); its rows are validated by a DRF serializer (generated over the synced columns, or
``UPLOAD['SERIALIZERS'][table]``), passed through ``UPLOAD['PREPARE'][table]`` and checked by
``UPLOAD['PERMISSIONS'][table]`` (a table without a permission rejects writes). Saves go through the ORM,
so capture records them in the outbox.

Operations:

- ``PUT``: create the row, or replace it when its id exists. The client sends every non-null column and leaves
  null ones out (§14.2), so synced nullable columns missing from ``data`` are written as null.
- ``PATCH``: update the columns in ``data``. A missing row is skipped (``PATCH_MISSING = "ignore"``) or
  rejected with a ``not_found`` operation error (``"error"``).
- ``DELETE``: delete the row; a missing row is skipped.

Every failure raises :class:`UploadError` before anything is committed: 400 (shape, validation, database
constraint), 403 (permission), 413 (too many operations).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import orjson
from django.core.exceptions import ImproperlyConfigured
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError, IntegrityError, models, router
from rest_framework import exceptions as drf_exceptions
from rest_framework import serializers
from rest_framework.utils.field_mapping import ClassLookupDict

from . import sequences
from .conf import get_config, import_setting
from .db import write_transaction
from .encoding import UnsyncableValue
from .upload_fields import UploadModelSerializer

logger = logging.getLogger(__name__)

PUT, PATCH, DELETE = "PUT", "PATCH", "DELETE"
OPS = (PUT, PATCH, DELETE)

# Error codes of the upload endpoint (``error.code``), and of single operations (``operations[].code``).
UPLOAD_INVALID = "UPLOAD_INVALID"  # 400
UPLOAD_FORBIDDEN = "UPLOAD_FORBIDDEN"  # 403
UPLOAD_TOO_LARGE = "UPLOAD_TOO_LARGE"  # 413
OP_INVALID = "invalid"
OP_NOT_FOUND = "not_found"
OP_FORBIDDEN = "forbidden"
OP_INTEGRITY = "integrity"

Permission = Callable[[Any, str, "models.Model | None", Mapping[str, Any]], bool]
Prepare = Callable[[Any, str, dict[str, Any]], dict[str, Any]]


class UploadError(Exception):
    """A rejected batch. ``as_json()`` is the PSYNC-shaped error body; ``operations`` names the failing ops."""

    def __init__(self, status: int, code: str, description: str,
                 operations: list[dict[str, Any]] | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.code = code
        self.description = description
        self.operations = operations or []

    def as_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "code": self.code,
            "status": self.status,
            "description": self.description,
            "name": {400: "ValidationError", 403: "PermissionDenied", 413: "PayloadTooLarge"}.get(
                self.status, "UploadError"),
        }
        if self.operations:
            error["details"] = "; ".join(_summary(o) for o in self.operations)
            error["operations"] = self.operations
        return {"error": error}


def _summary(entry: dict[str, Any]) -> str:
    where = f"operation {entry['index']} ({entry.get('op')} {entry.get('type')} {entry.get('id')})"
    errors = entry.get("errors")
    return f"{where}: {orjson.dumps(errors).decode()}" if errors else f"{where}: {entry['code']}"


@dataclass(frozen=True)
class Operation:
    """One validated entry of a batch. ``pk`` is ``id`` converted by the model's primary key field."""

    index: int
    op: str
    table: str
    id: str
    pk: Any
    data: dict[str, Any]

    def error(self, code: str, errors: Any = None) -> dict[str, Any]:
        """The ``operations[]`` entry of an error response for this operation."""
        return _op_error(self.index, self.op, self.table, self.id, code, errors)


def _op_error(index: int, op: Any, table: Any, id: Any, code: str, errors: Any = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "index": index,
        "op": op if isinstance(op, str) else None,
        "type": table if isinstance(table, str) else None,
        "id": id if isinstance(id, str) else None,
        "code": code,
    }
    if errors is not None:
        entry["errors"] = _plain(errors)
    return entry


def _plain(value: Any) -> Any:
    """Serializer errors (``ErrorDetail``, ``ReturnDict``) as plain JSON values."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)


# --- tables --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadTable:
    """How uploads to one client table are applied."""

    table: str
    model: type[models.Model]
    serializer_class: type[serializers.Serializer]
    permission: Permission
    prepare: Prepare | None
    # Writable, nullable serializer fields that are synced columns: a PUT without them writes null.
    nullable: frozenset[str]


def deny(user: Any, op: str, instance: models.Model | None, data: Mapping[str, Any]) -> bool:
    """The permission of tables without an ``UPLOAD['PERMISSIONS']`` entry: nothing is allowed."""
    return False


def allow_any(user: Any, op: str, instance: models.Model | None, data: Mapping[str, Any]) -> bool:
    """A permission that allows every write of any authenticated client (opt in explicitly)."""
    return True


def build_serializer(model: type[models.Model], columns: list[models.Field]) -> type[serializers.ModelSerializer]:
    """An :class:`UploadModelSerializer` over the synced ``columns`` (minus the primary key), named by client
    column; its fields read client values (JSON text, seconds, base64: README "Value encoding").

    Foreign keys are plain value fields named by attname (``list_id``), typed by the target's key, so a hook
    can check a referenced row before anyone learns whether it exists.
    """
    pk = model._meta.pk
    names: list[str] = []
    declared: dict[str, serializers.Field] = {}
    for column in columns:
        if column.primary_key or column is pk:
            continue
        names.append(column.attname)
        if column.is_relation:
            declared[column.attname] = _key_field(column)
    meta = type("Meta", (), {"model": model, "fields": names})
    attrs: dict[str, Any] = {"Meta": meta, "__module__": __name__, **declared}
    return type(f"{model.__name__}UploadSerializer", (UploadModelSerializer,), attrs)


_FIELD_MAPPING = ClassLookupDict(serializers.ModelSerializer.serializer_field_mapping)


def _key_field(fk: models.Field) -> serializers.Field:
    target = fk.target_field
    try:
        field_class = _FIELD_MAPPING[target]
    except KeyError:
        field_class = serializers.CharField
    kwargs: dict[str, Any] = {
        "required": not (fk.null or fk.has_default()),
        "allow_null": fk.null,
        "validators": list(target.validators),
    }
    if issubclass(field_class, serializers.CharField):
        kwargs["max_length"] = getattr(target, "max_length", None)
    if issubclass(field_class, serializers.DecimalField):
        kwargs.update(max_digits=target.max_digits, decimal_places=target.decimal_places)
    if not fk.editable:
        kwargs = {"read_only": True}
    return field_class(**kwargs)


def _hook(value: Any, setting: str) -> Any:
    return import_setting(value, setting) if isinstance(value, str) else value


def _table_models() -> dict[str, tuple[type[models.Model], list[models.Field]]]:
    """Client table -> (model, synced columns), from the first data query producing each table."""
    from .rules import get_rules

    out: dict[str, tuple[type[models.Model], list[models.Field]]] = {}
    for definition in get_rules().definitions.values():
        for query in definition.data:
            out.setdefault(query.table, (query.model, list(query.columns)))
    return out


def _build_tables(config: Mapping[str, Any]) -> dict[str, UploadTable]:
    upload = config["UPLOAD"]
    if upload["PATCH_MISSING"] not in ("ignore", "error"):
        raise ImproperlyConfigured("POWERSYNC['UPLOAD']['PATCH_MISSING'] must be 'ignore' or 'error'.")
    found = _table_models()
    serializer_paths = upload["SERIALIZERS"] or {}
    permissions = upload["PERMISSIONS"] or {}
    prepares = upload["PREPARE"] or {}
    default_permission = permissions.get("*")
    tables: dict[str, UploadTable] = {}
    for table in dict.fromkeys([*found, *serializer_paths]):
        model, columns = found.get(table, (None, []))
        if table in serializer_paths:
            setting = f"POWERSYNC['UPLOAD']['SERIALIZERS'][{table!r}]"
            serializer_class = _hook(serializer_paths[table], setting)
            if not (isinstance(serializer_class, type) and issubclass(serializer_class, serializers.Serializer)):
                raise ImproperlyConfigured(f"{setting} must be a DRF serializer class.")
            model = model or getattr(getattr(serializer_class, "Meta", None), "model", None)
            if model is None:
                raise ImproperlyConfigured(
                    f"{setting}: table {table!r} is not produced by any bucket definition, so the serializer "
                    "must be a ModelSerializer whose Meta.model names the model.")
        else:
            serializer_class = build_serializer(model, columns)
        synced = {c.attname for c in columns}
        nullable = frozenset(
            name for name, f in serializer_class().fields.items()
            if name in synced and not f.read_only and f.allow_null
        )
        permission = permissions.get(table, default_permission)
        tables[table] = UploadTable(
            table=table,
            model=model,
            serializer_class=serializer_class,
            permission=(_hook(permission, f"POWERSYNC['UPLOAD']['PERMISSIONS'][{table!r}]")
                        if permission is not None else deny),
            prepare=(_hook(prepares[table], f"POWERSYNC['UPLOAD']['PREPARE'][{table!r}]")
                     if prepares.get(table) is not None else None),
            nullable=nullable,
        )
    return tables


_cache: tuple[Any, Any, dict[str, UploadTable]] | None = None


def get_tables() -> dict[str, UploadTable]:
    """Every client table that accepts uploads (rebuilt when the settings or bucket definitions change)."""
    global _cache
    from .rules import get_rules

    config, rules = get_config(), get_rules()
    if _cache is None or _cache[0] is not config or _cache[1] is not rules:
        _cache = (config, rules, _build_tables(config))
    return _cache[2]


# --- parsing -------------------------------------------------------------------------------------


def parse_batch(raw: bytes) -> list[Operation]:
    """Parse and check a request body: JSON shape, limits, operations, tables and ids. Touches no rows."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UploadError(400, UPLOAD_INVALID, f"Request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict) or "batch" not in body:
        raise UploadError(400, UPLOAD_INVALID, 'Expected a JSON object {"batch": [operations]}.')
    batch = body["batch"]
    if not isinstance(batch, list):
        raise UploadError(400, UPLOAD_INVALID, '"batch" must be a list of operations.')
    limit = get_config()["UPLOAD"]["MAX_OPERATIONS"]
    if limit is not None and len(batch) > limit:
        raise UploadError(413, UPLOAD_TOO_LARGE,
                          f"The batch has {len(batch)} operations; at most {limit} are accepted per request.")
    tables = get_tables()
    operations: list[Operation] = []
    errors: list[dict[str, Any]] = []
    for index, entry in enumerate(batch):
        result = _parse_operation(index, entry, tables)
        if isinstance(result, Operation):
            operations.append(result)
        else:
            errors.append(result)
    if errors:
        raise UploadError(400, UPLOAD_INVALID, "Invalid operations in the batch.", errors)
    return operations


def _parse_operation(index: int, entry: Any, tables: Mapping[str, UploadTable]) -> Operation | dict[str, Any]:
    if not isinstance(entry, dict):
        return _op_error(index, None, None, None, OP_INVALID, {"non_field_errors": ["Expected an object."]})
    op, table, id, data = entry.get("op"), entry.get("type"), entry.get("id"), entry.get("data")
    problems: dict[str, list[str]] = {}
    if op not in OPS:
        problems["op"] = [f"Unknown operation {op!r}; expected PUT, PATCH or DELETE."]
    upload_table = tables.get(table) if isinstance(table, str) else None
    if upload_table is None:
        problems["type"] = [f"Unknown table {table!r}." if isinstance(table, str) else "Expected a table name."]
    if not isinstance(id, str) or not id:
        problems["id"] = ["Expected a non-empty string."]
    if data is None or op == DELETE:
        data = {}
    elif not isinstance(data, dict):
        problems["data"] = ["Expected an object."]
    pk = None
    if upload_table is not None and "id" not in problems:
        try:
            pk = _convert_pk(upload_table.model, id)
        except DjangoValidationError as exc:
            problems["id"] = [str(m) for m in exc.messages]
    if problems:
        return _op_error(index, op, table, id, OP_INVALID, problems)
    return Operation(index, op, table, id, pk, data)


def _convert_pk(model: type[models.Model], value: str) -> Any:
    pk = model._meta.pk
    target = pk.target_field if pk.is_relation else pk
    converted = target.to_python(value)
    target.run_validators(converted)
    return converted


# --- applying ------------------------------------------------------------------------------------


def apply_batch(user: Any, operations: list[Operation], context: Mapping[str, Any] | None = None) -> int:
    """Apply parsed operations in order in one transaction; return how many wrote a row.

    ``context`` is added to the serializer context (the view passes ``request`` and ``view``).

    Raises :class:`UploadError` (and rolls everything back) at the first operation that fails.
    """
    tables = get_tables()
    databases = dict.fromkeys(router.db_for_write(tables[o.table].model) for o in operations)
    applied = 0
    with ExitStack() as stack:
        for using in databases:
            stack.enter_context(write_transaction(using))
        for operation in operations:
            if _apply(user, operation, tables[operation.table], context or {}):
                applied += 1
    return applied


def _apply(user: Any, operation: Operation, table: UploadTable, context: Mapping[str, Any]) -> bool:
    model = table.model
    using = router.db_for_write(model)
    instance = model._base_manager.db_manager(using).select_for_update().filter(pk=operation.pk).first()

    if operation.op == DELETE:
        if instance is None:
            return False
        _check_permission(user, operation, table, instance, {})
        _write(operation, instance.delete)
        return True

    if operation.op == PATCH and instance is None:
        if get_config()["UPLOAD"]["PATCH_MISSING"] == "error":
            raise UploadError(400, UPLOAD_INVALID, "PATCH of a row that does not exist.",
                              [operation.error(OP_NOT_FOUND, {"id": ["No row with this id."]})])
        return False

    data = dict(operation.data)
    if operation.op == PUT:
        for name in table.nullable:
            data.setdefault(name, None)
    if table.prepare is not None:
        data = table.prepare(user, operation.op, data)
        if not isinstance(data, dict):
            raise ImproperlyConfigured(
                f"POWERSYNC['UPLOAD']['PREPARE'][{table.table!r}] must return a dict, not {type(data).__name__}.")

    serializer = table.serializer_class(
        instance, data=data, partial=operation.op == PATCH,
        context={**context, "user": user, "operation": operation},
    )
    try:
        valid = serializer.is_valid()
    except DjangoValidationError as exc:  # raised by model/field validators that a serializer may call
        raise _invalid(operation, exc.message_dict if hasattr(exc, "error_dict") else exc.messages) from None
    if not valid:
        raise _invalid(operation, serializer.errors)
    validated = serializer.validated_data
    _check_permission(user, operation, table, instance, validated)
    _check_references(operation, model, validated, using)
    if instance is None:
        _write(operation, lambda: serializer.save(**{model._meta.pk.attname: operation.pk}))
        sequences.advance_past(model, operation.pk, using)  # a client-chosen integer id: keep the sequence ahead
    else:
        _write(operation, serializer.save)
    return True


def _invalid(operation: Operation, errors: Any) -> UploadError:
    if not isinstance(errors, Mapping):
        errors = {"non_field_errors": errors}
    return UploadError(400, UPLOAD_INVALID, "Invalid data.", [operation.error(OP_INVALID, errors)])


def _check_permission(user: Any, operation: Operation, table: UploadTable, instance: models.Model | None,
                      data: Mapping[str, Any]) -> None:
    try:
        allowed = table.permission(user, operation.op, instance, data)
    except (DjangoPermissionDenied, drf_exceptions.PermissionDenied):
        allowed = False
    except drf_exceptions.ValidationError as exc:
        raise _invalid(operation, exc.detail) from None
    except DjangoValidationError as exc:
        raise _invalid(operation, exc.message_dict if hasattr(exc, "error_dict") else exc.messages) from None
    if not allowed:
        logger.info("powersync upload: %s denied %s %s %s", getattr(user, "user_id", user), operation.op,
                    operation.table, operation.id)
        raise UploadError(403, UPLOAD_FORBIDDEN, "You may not make this change.",
                          [operation.error(OP_FORBIDDEN)])


def _check_references(operation: Operation, model: type[models.Model], data: Mapping[str, Any],
                      using: str) -> None:
    """Foreign keys given by value (``list_id``) must name existing rows (checked after the permission)."""
    errors: dict[str, list[str]] = {}
    for field in model._meta.concrete_fields:
        if not field.is_relation or field.attname not in data or data[field.attname] is None:
            continue
        target = field.target_field
        if not field.related_model._base_manager.using(using).filter(
                **{target.attname: data[field.attname]}).exists():
            errors[field.attname] = ["No row with this id."]
    if errors:
        raise _invalid(operation, errors)


def _write(operation: Operation, action: Callable[[], Any]) -> None:
    """Run a save/delete; a database constraint failure becomes a 400 (the batch is rolled back anyway)."""
    try:
        action()
    except UnsyncableValue as exc:  # a value the database takes but clients could not receive
        raise UploadError(400, UPLOAD_INVALID, "Invalid data.", [operation.error(
            OP_INVALID, {getattr(exc.field, "attname", "non_field_errors"): [str(exc)]})]) from None
    except (IntegrityError, DataError) as exc:
        logger.info("powersync upload: database rejected %s %s %s: %s", operation.op, operation.table,
                    operation.id, exc)
        raise UploadError(400, UPLOAD_INVALID, "The database rejected the change.", [operation.error(
            OP_INTEGRITY, {"non_field_errors": [f"The database rejected this operation ({type(exc).__name__})."]},
        )]) from None
