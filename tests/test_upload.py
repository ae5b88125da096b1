"""Tests of the upload endpoint (powersync_django.upload, powersync_django.api) with the demo's permissions."""

from __future__ import annotations

import copy
import time
import uuid
from typing import Any

import jwt
import orjson
import pytest
from django.conf import settings
from django.db import IntegrityError
from django.test import Client, override_settings
from hypothesis import HealthCheck, given
from hypothesis import settings as settings_hypothesis
from hypothesis import strategies as st
from rest_framework import serializers

from demo_project.todos.models import Todo, TodoList
from powersync_django.auth import make_token
from powersync_django.models import OutboxEntry

URL = "/api/upload"


def upload_settings(**upload: Any) -> override_settings:
    """The demo's POWERSYNC with some UPLOAD keys replaced."""
    config = copy.deepcopy(settings.POWERSYNC)
    config["UPLOAD"] = {**config.get("UPLOAD", {}), **upload}
    return override_settings(POWERSYNC=config)


def post(client: Client, body: Any = None, *, user: str = "alice", raw: bytes | None = None,
         authorization: str | None = None, **extra: Any):
    content = raw if raw is not None else orjson.dumps(body)
    if authorization is None:
        authorization = f"Token {make_token(user)}"
    headers = {"HTTP_AUTHORIZATION": authorization} if authorization else {}
    return client.post(URL, content, content_type="application/json", **headers, **extra)


def op(op: str, table: str, id: Any, data: Any = None, **extra: Any) -> dict[str, Any]:
    entry = {"op": op, "type": table, "id": str(id) if isinstance(id, uuid.UUID) else id, **extra}
    if data is not None:
        entry["data"] = data
    return entry


def error_of(response) -> dict[str, Any]:
    assert response["Content-Type"] == "application/json", response.content
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert {"code", "status", "description", "name"} <= set(error)
    assert error["status"] == response.status_code
    return error


def outbox(instance: Any) -> list[str]:
    return list(OutboxEntry.objects.filter(model=instance._meta.label_lower, object_pk=str(instance.pk))
                .order_by("id").values_list("op", flat=True))


def snapshot() -> tuple[list, list, int]:
    """Everything an upload may change."""
    return (list(TodoList.objects.order_by("pk").values()), list(Todo.objects.order_by("pk").values()),
            OutboxEntry.objects.count())


@pytest.fixture
def alice_list(db) -> TodoList:
    return TodoList.objects.create(name="Groceries", owner_id="alice")


@pytest.fixture
def bob_list(db) -> TodoList:
    return TodoList.objects.create(name="Bob's secret plans", owner_id="bob")


@pytest.fixture
def alice_todo(alice_list: TodoList) -> Todo:
    return Todo.objects.create(list=alice_list, description="Milk", created_by="alice")


@pytest.fixture
def bob_todo(bob_list: TodoList) -> Todo:
    return Todo.objects.create(list=bob_list, description="Bob's todo", created_by="bob")


# --- operations ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_put_creates_rows_with_server_side_owner(client: Client) -> None:
    list_id, todo_id = uuid.uuid4(), uuid.uuid4()
    response = post(client, {"batch": [
        op("PUT", "lists", list_id, {"name": "Home", "owner_id": "mallory"}, op_id=1, tx_id=7),
        op("PUT", "todos", todo_id, {"list_id": str(list_id), "description": "Sweep", "completed": 1,
                                     "created_by": "mallory", "completed_at": "2026-11-26 05:44:47.992823Z"},
           op_id=2, tx_id=7, old=None, metadata="m"),
    ]})
    assert response.status_code == 200, response.content
    assert response.json() == {"data": {"applied": 2}}
    todo_list = TodoList.objects.get(pk=list_id)
    assert (todo_list.name, todo_list.owner_id) == ("Home", "alice")
    todo = Todo.objects.get(pk=todo_id)
    assert (todo.list_id, todo.description, todo.completed, todo.created_by) == (list_id, "Sweep", True, "alice")
    assert todo.completed_at.isoformat() == "2026-11-26T05:44:47.992823+00:00"
    # Captured like any ORM write.
    assert outbox(todo_list) == ["S"] and outbox(todo) == ["S"]


@pytest.mark.django_db
def test_put_replaces_an_existing_row(client: Client, alice_todo: Todo) -> None:
    alice_todo.completed = True
    alice_todo.completed_at = alice_todo.created_at
    alice_todo.save()
    # The client sends every non-null column; completed_at is null on the client.
    response = post(client, {"batch": [op("PUT", "todos", alice_todo.pk, {
        "list_id": str(alice_todo.list_id), "description": "Oat milk", "completed": 0})]})
    assert response.status_code == 200, response.content
    alice_todo.refresh_from_db()
    assert (alice_todo.description, alice_todo.completed, alice_todo.completed_at) == ("Oat milk", False, None)
    assert Todo.objects.count() == 1


@pytest.mark.django_db
def test_patch_updates_given_columns_only(client: Client, alice_todo: Todo) -> None:
    response = post(client, {"batch": [op("PATCH", "todos", alice_todo.pk,
                                          {"completed": True, "created_by": "mallory"})]})
    assert response.status_code == 200, response.content
    assert response.json() == {"data": {"applied": 1}}
    alice_todo.refresh_from_db()
    assert (alice_todo.description, alice_todo.completed, alice_todo.created_by) == ("Milk", True, "alice")
    assert outbox(alice_todo)[-1] == "S"


@pytest.mark.django_db
def test_patch_can_set_null(client: Client, alice_todo: Todo) -> None:
    Todo.objects.filter(pk=alice_todo.pk).update(completed_at=alice_todo.created_at)
    response = post(client, {"batch": [op("PATCH", "todos", alice_todo.pk, {"completed_at": None})]})
    assert response.status_code == 200, response.content
    alice_todo.refresh_from_db()
    assert alice_todo.completed_at is None


@pytest.mark.django_db
def test_patch_of_a_missing_row_is_ignored_by_default(client: Client) -> None:
    before = snapshot()
    response = post(client, {"batch": [op("PATCH", "lists", uuid.uuid4(), {"name": "x"})]})
    assert response.status_code == 200, response.content
    assert response.json() == {"data": {"applied": 0}}
    assert snapshot() == before


@pytest.mark.django_db
def test_patch_of_a_missing_row_can_be_an_error(client: Client, alice_list: TodoList) -> None:
    missing = uuid.uuid4()
    with upload_settings(PATCH_MISSING="error"):
        before = snapshot()
        response = post(client, {"batch": [op("PATCH", "lists", alice_list.pk, {"name": "Renamed"}),
                                           op("PATCH", "lists", missing, {"name": "x"})]})
        assert response.status_code == 400
        error = error_of(response)
        assert error["code"] == "UPLOAD_INVALID"
        assert error["operations"] == [{"index": 1, "op": "PATCH", "type": "lists", "id": str(missing),
                                        "code": "not_found", "errors": {"id": ["No row with this id."]}}]
        assert snapshot() == before


@pytest.mark.django_db
def test_delete_and_delete_missing(client: Client, alice_todo: Todo) -> None:
    todo_list = alice_todo.list
    response = post(client, {"batch": [op("DELETE", "todos", alice_todo.pk),
                                       op("DELETE", "todos", uuid.uuid4()),
                                       op("DELETE", "lists", todo_list.pk, {"ignored": "data"})]})
    assert response.status_code == 200, response.content
    assert response.json() == {"data": {"applied": 2}}
    assert not TodoList.objects.exists() and not Todo.objects.exists()
    assert outbox(alice_todo)[-1] == "D" and outbox(todo_list)[-1] == "D"
    # Deleting again: success, nothing to do.
    response = post(client, {"batch": [op("DELETE", "lists", todo_list.pk)]})
    assert response.status_code == 200 and response.json() == {"data": {"applied": 0}}


@pytest.mark.django_db
def test_bearer_scheme_and_empty_batch(client: Client) -> None:
    response = post(client, {"batch": []}, authorization=f"Bearer {make_token('alice')}")
    assert response.status_code == 200 and response.json() == {"data": {"applied": 0}}


# --- atomicity and validation errors ---------------------------------------------------------------


@pytest.mark.django_db
def test_batch_is_all_or_nothing(client: Client, alice_todo: Todo) -> None:
    list_id = uuid.uuid4()
    before = snapshot()
    response = post(client, {"batch": [
        op("PUT", "lists", list_id, {"name": "New"}),
        op("PATCH", "todos", alice_todo.pk, {"description": "changed"}),
        op("PUT", "todos", uuid.uuid4(), {"list_id": str(list_id), "completed": "maybe"}),
        op("DELETE", "todos", alice_todo.pk),
    ]})
    assert response.status_code == 400
    error = error_of(response)
    [failed] = error["operations"]
    assert (failed["index"], failed["op"], failed["type"], failed["code"]) == (2, "PUT", "todos", "invalid")
    assert set(failed["errors"]) == {"description", "completed"}
    assert "operation 2" in error["details"]
    assert snapshot() == before


@pytest.mark.django_db
def test_referenced_row_must_exist(client: Client, alice_list: TodoList) -> None:
    with upload_settings(PERMISSIONS={"*": "powersync_django.upload.allow_any"}):
        response = post(client, {"batch": [op("PUT", "todos", uuid.uuid4(),
                                              {"list_id": str(uuid.uuid4()), "description": "x"})]})
    assert response.status_code == 400
    [failed] = error_of(response)["operations"]
    assert failed["errors"] == {"list_id": ["No row with this id."]}
    assert not Todo.objects.exists()


@pytest.mark.django_db
def test_database_errors_are_400(client: Client, alice_list: TodoList, monkeypatch: pytest.MonkeyPatch) -> None:
    def save(self: Any, *args: Any, **kwargs: Any) -> None:
        raise IntegrityError("duplicate key value violates unique constraint")

    before = snapshot()
    monkeypatch.setattr(Todo, "save", save)
    response = post(client, {"batch": [
        op("PATCH", "lists", alice_list.pk, {"name": "Renamed"}),
        op("PUT", "todos", uuid.uuid4(), {"list_id": str(alice_list.pk), "description": "x"}),
    ]})
    assert response.status_code == 400
    [failed] = error_of(response)["operations"]
    assert (failed["index"], failed["code"]) == (1, "integrity")
    assert "duplicate" not in response.content.decode()  # database messages stay in the server log
    assert snapshot() == before


@pytest.mark.django_db
@pytest.mark.parametrize(("entry", "field"), [
    (op("MERGE", "lists", "00000000-0000-0000-0000-000000000001", {}), "op"),
    (op(None, "lists", "00000000-0000-0000-0000-000000000001", {}), "op"),
    (op("PUT", "nope", "00000000-0000-0000-0000-000000000001", {}), "type"),
    (op("PUT", 5, "00000000-0000-0000-0000-000000000001", {}), "type"),
    (op("PUT", "lists", 5, {"name": "x"}), "id"),
    (op("PUT", "lists", None, {"name": "x"}), "id"),
    (op("PUT", "lists", "", {"name": "x"}), "id"),
    (op("PUT", "lists", "not-a-uuid", {"name": "x"}), "id"),
    (op("DELETE", "lists", ["x"]), "id"),
    (op("PUT", "lists", "00000000-0000-0000-0000-000000000001", ["name"]), "data"),
    (op("PATCH", "lists", "00000000-0000-0000-0000-000000000001", "name=x"), "data"),
    (op("PUT", "lists", "00000000-0000-0000-0000-000000000001", {"name": {"a": 1}}), "name"),
    (op("PUT", "lists", "00000000-0000-0000-0000-000000000001", {"name": None}), "name"),
    (op("PUT", "lists", "00000000-0000-0000-0000-000000000001", {"name": "x" * 201}), "name"),
    (op("PUT", "lists", "00000000-0000-0000-0000-000000000001", {"name": "a\x00b"}), "name"),
    (op("PUT", "lists", "00000000-0000-0000-0000-000000000001", {}), "name"),
    (op("PUT", "todos", "00000000-0000-0000-0000-000000000001", {"list_id": [5], "description": "x"}), "list_id"),
    (op("PUT", "todos", "00000000-0000-0000-0000-000000000001", {"list_id": "l1", "description": "x"}),
     "list_id"),
    (op("PUT", "todos", "00000000-0000-0000-0000-000000000001",
        {"list_id": "00000000-0000-0000-0000-000000000002", "description": "x", "completed_at": "yesterday"}),
     "completed_at"),
    (op("PUT", "todos", "00000000-0000-0000-0000-000000000001",
        {"list_id": "00000000-0000-0000-0000-000000000002", "description": ["x"], "completed": 2}),
     "description"),
])
def test_invalid_operations_are_400_with_details(client: Client, entry: dict, field: str) -> None:
    before = snapshot()
    response = post(client, {"batch": [op("PUT", "lists", uuid.uuid4(), {"name": "fine"}), entry]})
    assert response.status_code == 400, response.content
    error = error_of(response)
    assert error["code"] == "UPLOAD_INVALID"
    [failed] = error["operations"]
    assert failed["index"] == 1 and failed["code"] == "invalid"
    assert field in failed["errors"], failed
    assert snapshot() == before


@pytest.mark.django_db
def test_all_malformed_operations_are_reported(client: Client) -> None:
    response = post(client, {"batch": [op("PUT", "lists", "bad", {}), 7, op("PUT", "lists", uuid.uuid4(), {}),
                                       op("FOO", "bar", 1)]})
    assert response.status_code == 400
    failed = error_of(response)["operations"]
    assert [f["index"] for f in failed] == [0, 1, 3]
    assert failed[1] == {"index": 1, "op": None, "type": None, "id": None, "code": "invalid",
                         "errors": {"non_field_errors": ["Expected an object."]}}
    assert set(failed[2]["errors"]) == {"op", "type", "id"}


@pytest.mark.django_db
@pytest.mark.parametrize("raw", [
    b"", b"{", b"not json", b"\xff\xfe", b"null", b"[]", b'"batch"', b"{}", b'{"batch": null}',
    b'{"batch": {}}', b'{"batch": "PUT"}', b'{"batch": 5}', b'{"batch": [' * 2000 + b"]" * 2000,
    b'{"batch": [{"op": "PUT", "type": "lists", "id": "00000000-0000-0000-0000-000000000001", '
    b'"data": {"name": 1e999}}]}',
])
def test_malformed_bodies_are_400(client: Client, raw: bytes) -> None:
    before = snapshot()
    response = post(client, raw=raw)
    assert response.status_code == 400, response.content
    assert error_of(response)["code"] == "UPLOAD_INVALID"
    assert snapshot() == before


# --- permissions ---------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("make_op", [
    lambda bl, bt, al: op("PUT", "lists", bl.pk, {"name": "mine now"}),
    lambda bl, bt, al: op("PATCH", "lists", bl.pk, {"name": "mine now"}),
    lambda bl, bt, al: op("DELETE", "lists", bl.pk),
    lambda bl, bt, al: op("PUT", "todos", bt.pk, {"list_id": str(al.pk), "description": "stolen"}),
    lambda bl, bt, al: op("PATCH", "todos", bt.pk, {"completed": True}),
    lambda bl, bt, al: op("DELETE", "todos", bt.pk),
    lambda bl, bt, al: op("PUT", "todos", uuid.uuid4(), {"list_id": str(bl.pk), "description": "spam"}),
])
def test_writing_another_users_rows_is_403(client: Client, bob_list: TodoList, bob_todo: Todo,
                                           alice_list: TodoList, make_op: Any) -> None:
    entry = make_op(bob_list, bob_todo, alice_list)
    before = snapshot()
    response = post(client, {"batch": [op("PATCH", "lists", alice_list.pk, {"name": "ok"}), entry]})
    assert response.status_code == 403, response.content
    error = error_of(response)
    assert error["code"] == "UPLOAD_FORBIDDEN"
    assert error["operations"] == [{"index": 1, "op": entry["op"], "type": entry["type"], "id": entry["id"],
                                    "code": "forbidden"}]
    assert "Bob" not in response.content.decode()
    assert snapshot() == before


@pytest.mark.django_db
def test_moving_a_todo_into_another_users_list_is_403(client: Client, alice_todo: Todo,
                                                      bob_list: TodoList) -> None:
    response = post(client, {"batch": [op("PATCH", "todos", alice_todo.pk, {"list_id": str(bob_list.pk)})]})
    assert response.status_code == 403
    alice_todo.refresh_from_db()
    assert alice_todo.list_id != bob_list.pk


@pytest.mark.django_db
def test_missing_and_foreign_lists_look_the_same(client: Client, bob_list: TodoList) -> None:
    responses = [
        post(client, {"batch": [op("PUT", "todos", "00000000-0000-0000-0000-000000000009",
                                   {"list_id": str(list_id), "description": "x"})]})
        for list_id in (bob_list.pk, uuid.uuid4())
    ]
    assert [r.status_code for r in responses] == [403, 403]
    assert responses[0].content == responses[1].content


@pytest.mark.django_db
def test_tables_without_a_permission_reject_writes(client: Client, alice_list: TodoList) -> None:
    with upload_settings(PERMISSIONS={}):
        response = post(client, {"batch": [op("PATCH", "lists", alice_list.pk, {"name": "x"})]})
    assert response.status_code == 403


def raise_permission_denied(user: Any, op: str, instance: Any, data: Any) -> bool:
    from django.core.exceptions import PermissionDenied

    raise PermissionDenied("no")


def reject_long_names(user: Any, op: str, instance: Any, data: Any) -> bool:
    if len(data.get("name", "")) > 3:
        raise serializers.ValidationError({"name": ["Too long for this user."]})
    return True


@pytest.mark.django_db
def test_permission_hooks_may_raise(client: Client, alice_list: TodoList) -> None:
    with upload_settings(PERMISSIONS={"lists": raise_permission_denied}):
        response = post(client, {"batch": [op("PATCH", "lists", alice_list.pk, {"name": "x"})]})
        assert response.status_code == 403
    with upload_settings(PERMISSIONS={"lists": reject_long_names}):
        response = post(client, {"batch": [op("PATCH", "lists", alice_list.pk, {"name": "long"})]})
        assert response.status_code == 400
        assert error_of(response)["operations"][0]["errors"] == {"name": ["Too long for this user."]}
        response = post(client, {"batch": [op("PATCH", "lists", alice_list.pk, {"name": "ok"})]})
        assert response.status_code == 200


class ShoutingListSerializer(serializers.ModelSerializer):
    class Meta:
        model = TodoList
        fields = ["name"]

    def validate_name(self, value: str) -> str:
        return value.upper()


@pytest.mark.django_db
def test_serializer_can_be_replaced(client: Client, alice_list: TodoList) -> None:
    with upload_settings(SERIALIZERS={"lists": "tests.test_upload.ShoutingListSerializer"},
                         PREPARE={}, PERMISSIONS={"lists": "powersync_django.upload.allow_any"}):
        response = post(client, {"batch": [op("PATCH", "lists", alice_list.pk, {"name": "loud",
                                                                                 "owner_id": "eve"})]})
    assert response.status_code == 200, response.content
    alice_list.refresh_from_db()
    assert (alice_list.name, alice_list.owner_id) == ("LOUD", "alice")


class DraftSerializer(serializers.ModelSerializer):
    class Meta:
        model = TodoList
        fields = ["name", "owner_id"]


@pytest.mark.django_db
def test_upload_only_table_through_a_serializer(client: Client) -> None:
    """A client table no bucket definition produces (an insertOnly table) is writable via SERIALIZERS."""
    draft_id = uuid.uuid4()
    with upload_settings(SERIALIZERS={"drafts": DraftSerializer},
                         PERMISSIONS={"drafts": "powersync_django.upload.allow_any"}):
        response = post(client, {"batch": [op("PUT", "drafts", draft_id, {"name": "d", "owner_id": "alice"})]})
    assert response.status_code == 200, response.content
    assert TodoList.objects.get(pk=draft_id).name == "d"


@pytest.mark.django_db(transaction=True)
def test_real_commit_and_rollback(client: Client) -> None:
    """Outside a test transaction: a good batch commits (deferred constraints included), a bad one leaves
    nothing behind."""
    list_id, todo_id = uuid.uuid4(), uuid.uuid4()
    response = post(client, {"batch": [op("PUT", "lists", list_id, {"name": "Home"}),
                                       op("PUT", "todos", todo_id, {"list_id": str(list_id), "description": "a"})]})
    assert response.status_code == 200, response.content
    assert Todo.objects.get(pk=todo_id).list_id == list_id
    entries = OutboxEntry.objects.count()
    response = post(client, {"batch": [op("PATCH", "lists", list_id, {"name": "Renamed"}),
                                       op("DELETE", "todos", todo_id),
                                       op("PUT", "todos", uuid.uuid4(), {"list_id": str(list_id)})]})
    assert response.status_code == 400
    assert TodoList.objects.get(pk=list_id).name == "Home"
    assert Todo.objects.filter(pk=todo_id).exists()
    assert OutboxEntry.objects.count() == entries


# --- authentication, limits, HTTP ------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(("authorization", "code"), [
    ("", "PSYNC_S2106"),
    ("Basic YWxpY2U6c2VjcmV0", "PSYNC_S2106"),
    ("Token not.a.jwt", "PSYNC_S2101"),
    ("Token " + jwt.encode({"sub": "alice", "iat": int(time.time()), "exp": int(time.time()) + 60,
                            "aud": "powersync"}, "wrong-secret-0123456789-abcdefghijkl"), "PSYNC_S2101"),
    ("Bearer " + jwt.encode({"sub": "alice", "iat": int(time.time()) - 4000, "exp": int(time.time()) - 3000,
                             "aud": "powersync"}, settings.POWERSYNC["JWT"]["SECRET"]), "PSYNC_S2103"),
])
def test_bad_tokens_are_401(client: Client, alice_list: TodoList, authorization: str, code: str) -> None:
    before = snapshot()
    response = post(client, {"batch": [op("DELETE", "lists", alice_list.pk)]}, authorization=authorization)
    assert response.status_code == 401
    assert error_of(response)["code"] == code
    assert response["WWW-Authenticate"] == "Token"
    assert snapshot() == before


@pytest.mark.django_db
def test_too_many_operations_is_413(client: Client) -> None:
    batch = [op("PUT", "lists", uuid.uuid4(), {"name": str(i)}) for i in range(3)]
    with upload_settings(MAX_OPERATIONS=2):
        response = post(client, {"batch": batch})
        assert response.status_code == 413
        assert error_of(response)["code"] == "UPLOAD_TOO_LARGE"
        assert post(client, {"batch": batch[:2]}).status_code == 200
    assert TodoList.objects.count() == 2


@pytest.mark.django_db
def test_too_large_body_is_413(client: Client) -> None:
    body = orjson.dumps({"batch": [op("PUT", "lists", uuid.uuid4(), {"name": "x" * 150})]})
    with upload_settings(MAX_BYTES=len(body) - 1):
        response = post(client, raw=body)
        assert response.status_code == 413
        assert error_of(response)["code"] == "UPLOAD_TOO_LARGE"
        # A lying Content-Length does not get more through.
        response = post(client, raw=body, CONTENT_LENGTH="10")
        assert response.status_code in (400, 413)
    assert not TodoList.objects.exists()


@pytest.mark.django_db
def test_body_above_djangos_memory_limit_is_accepted(client: Client) -> None:
    body = orjson.dumps({"batch": [op("PUT", "lists", uuid.uuid4(), {"name": "x", "pad": "y" * 3_000_000})]})
    with override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1000):
        response = post(client, raw=body)
    assert response.status_code == 200, response.content


@pytest.mark.django_db
def test_cors_and_methods(client: Client) -> None:
    response = client.options(URL, HTTP_ORIGIN="http://localhost:5173",
                              HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST")
    assert response.status_code == 204
    assert "POST" in response["Access-Control-Allow-Methods"]
    assert "Authorization" in response["Access-Control-Allow-Headers"]
    response = client.get(URL, HTTP_AUTHORIZATION=f"Token {make_token('alice')}")
    assert response.status_code == 405
    response = post(client, {"batch": []}, HTTP_ORIGIN="http://localhost:5173")
    assert response["Access-Control-Allow-Origin"] == "*"


# --- OpenAPI -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_openapi_schema_describes_upload_and_write_checkpoint(client: Client) -> None:
    from drf_spectacular.validation import validate_schema

    response = client.get("/api/schema", {"format": "json"})
    assert response.status_code == 200
    schema = orjson.loads(response.content)
    validate_schema(schema)
    upload = schema["paths"]["/api/upload"]["post"]
    assert set(upload["responses"]) >= {"200", "400", "401", "403", "413"}
    assert upload["security"] == [{"PowerSyncToken": []}]
    write_checkpoint = schema["paths"]["/write-checkpoint2.json"]["get"]
    assert write_checkpoint["parameters"][0]["name"] == "client_id"
    assert "PowerSyncToken" in schema["components"]["securitySchemes"]
    assert client.get("/api/schema").status_code == 200  # YAML


# --- fuzzing: nothing a client sends is a 500 ---------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)
columns = st.sampled_from(["name", "owner_id", "list_id", "description", "completed", "created_by", "created_at",
                           "completed_at", "id", "other"])
known_ids = st.sampled_from(["00000000-0000-0000-0000-00000000000a", "00000000-0000-0000-0000-00000000000b"])
entries = st.fixed_dictionaries(
    {"op": st.sampled_from(["PUT", "PATCH", "DELETE"]) | json_scalars,
     "type": st.sampled_from(["lists", "todos"]) | json_scalars,
     "id": known_ids | st.uuids().map(str) | json_scalars},
    optional={"data": st.dictionaries(columns, known_ids | json_values, max_size=5) | json_values,
              "op_id": json_values, "old": json_values},
) | json_values


@pytest.mark.django_db
@settings_hypothesis(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.fixed_dictionaries({"batch": st.lists(entries, max_size=5)}) | json_values)
def test_no_request_body_is_a_server_error(client: Client, body: Any) -> None:
    TodoList.objects.get_or_create(pk="00000000-0000-0000-0000-00000000000a", defaults={"name": "a",
                                                                                       "owner_id": "alice"})
    TodoList.objects.get_or_create(pk="00000000-0000-0000-0000-00000000000b", defaults={"name": "b",
                                                                                       "owner_id": "bob"})
    response = post(client, body)
    assert response.status_code in (200, 400, 403), response.content
    if response.status_code != 200:
        error_of(response)
