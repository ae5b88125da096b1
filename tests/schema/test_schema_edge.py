"""The edge on a realistic schema: hooks get the Django user, bad subs and parameters are 4xx, integer keys."""

from __future__ import annotations

import asyncio
import copy
import uuid
from typing import Any

import orjson
import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core import checks
from django.test import AsyncClient, Client, override_settings
from schema_project.workspace.models import Document, Folder, Team

from powersync_django.auth import make_token
from powersync_django.models import OutboxEntry

pytestmark = pytest.mark.django_db(transaction=True)


def upload(client: Client, sub: str, *ops: dict[str, Any]):
    return client.post("/api/upload", orjson.dumps({"batch": list(ops)}), content_type="application/json",
                       HTTP_AUTHORIZATION=f"Token {make_token(sub)}")


def error_of(response) -> dict[str, Any]:
    assert response["Content-Type"] == "application/json", response.content
    error = response.json()["error"]
    assert error["status"] == response.status_code and error["code"] and error["description"]
    return error


def sync(sub: str, body: dict[str, Any] | None = None):
    async def run():
        response = await AsyncClient().post("/sync/stream", data=orjson.dumps(body or {}),
                                            content_type="application/json",
                                            headers={"Authorization": f"Token {make_token(sub)}"})
        if response.streaming:
            it = response.streaming_content.__aiter__()
            first = await asyncio.wait_for(it.__anext__(), 10)
            await it.aclose()
            return response, first
        return response, response.content

    return asyncio.run(run())


def powersync(**changes: Any) -> override_settings:
    config = copy.deepcopy(settings.POWERSYNC)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return override_settings(POWERSYNC=config)


# --- hooks get the Django user ---------------------------------------------------------------------


def test_hooks_get_the_django_user_so_integer_keys_compare(client: Client) -> None:
    alice, bob = User.objects.create(username="alice"), User.objects.create(username="bob")
    mine = Document.objects.create(owner=alice, title="mine")
    theirs = Document.objects.create(owner=bob, title="theirs")
    new_id = uuid.uuid4()
    response = upload(client, str(alice.pk),
                      {"op": "PUT", "type": "documents", "id": str(new_id), "data": {"owner_id": alice.pk,
                                                                                    "title": "new"}},
                      {"op": "PATCH", "type": "documents", "id": str(mine.pk), "data": {"title": "renamed"}})
    assert response.status_code == 200, response.content
    assert Document.objects.get(pk=new_id).owner_id == alice.pk
    assert Document.objects.get(pk=mine.pk).title == "renamed"
    response = upload(client, str(alice.pk),
                      {"op": "PATCH", "type": "documents", "id": str(theirs.pk), "data": {"title": "x"}})
    assert response.status_code == 403
    assert Document.objects.get(pk=theirs.pk).title == "theirs"


def test_user_object_offers_claims_and_user_id(client: Client) -> None:
    alice = User.objects.create(username="alice")
    seen: list[Any] = []

    def hook(user: Any, op: str, instance: Any, data: Any) -> bool:
        seen.append(user)
        return True

    with powersync(UPLOAD={"PERMISSIONS": {"documents": hook}}):
        response = upload(client, str(alice.pk), {"op": "PUT", "type": "documents", "id": str(uuid.uuid4()),
                                                  "data": {"owner_id": alice.pk, "title": "t"}})
    assert response.status_code == 200, response.content
    (user,) = seen
    assert isinstance(user, User) and user.pk == alice.pk
    assert user.claims["sub"] == str(alice.pk) and user.user_id == str(alice.pk)


def test_username_field_lookup(client: Client) -> None:
    alice = User.objects.create(username="alice")
    with powersync(UPLOAD={"USER_LOOKUP_FIELD": "username"}):
        response = upload(client, "alice", {"op": "PUT", "type": "documents", "id": str(uuid.uuid4()),
                                            "data": {"owner_id": alice.pk, "title": "t"}})
        assert response.status_code == 200, response.content
        assert not [m for m in checks.run_checks() if m.id == "powersync_django.E017"]
    with powersync(UPLOAD={"USER_LOOKUP_FIELD": "first_name"}):
        assert "powersync_django.E017" in {m.id for m in checks.run_checks()}


@pytest.mark.parametrize("sub", ["alice", "999999", "1.5", "99999999999999999999999", "-"])
def test_unknown_or_mistyped_sub_is_401_json(client: Client, sub: str) -> None:
    User.objects.create(username="alice")
    before = OutboxEntry.objects.count()
    response = upload(client, sub, {"op": "PUT", "type": "documents", "id": str(uuid.uuid4()),
                                    "data": {"title": "t"}})
    assert response.status_code == 401
    assert error_of(response)["code"] == "PSYNC_S2101"
    assert OutboxEntry.objects.count() == before


def test_inactive_user_is_403_json(client: Client) -> None:
    alice = User.objects.create(username="alice", is_active=False)
    response = upload(client, str(alice.pk), {"op": "DELETE", "type": "documents", "id": str(uuid.uuid4())})
    assert response.status_code == 403
    error_of(response)


# --- sync: subs and parameters of the wrong type -------------------------------------------------------


@pytest.mark.parametrize("sub", ["alice", "99999999999999999999999"])
def test_sync_with_a_mistyped_sub_is_not_a_500(sub: str) -> None:
    """A token minted with `powersync_token alice` (a username, not a primary key)."""
    response, content = sync(sub)
    assert response.status_code < 500
    if response.status_code != 200:  # 400 JSON, or (with request-side coercion) a stream without those buckets
        assert orjson.loads(content)["error"]["status"] == response.status_code


def test_client_parameter_that_is_no_uuid_is_400() -> None:
    User.objects.create(username="alice")
    buckets = {**settings.POWERSYNC["BUCKETS"], "by_folder": {
        "parameters": {"queryset": "workspace.Folder", "filter": {"id": "client.folder"},
                       "values": {"folder_id": "id"}},
        "data": [{"model": "workspace.Document", "table": "documents", "filter": {"folder_id": "bucket.folder_id"}}],
    }}
    folder = Folder.objects.create(name="f")
    with powersync(BUCKETS=buckets):
        response, _ = sync("1", {"parameters": {"folder": str(folder.pk)}})
        assert response.status_code == 200
        response, content = sync("1", {"parameters": {"folder": "not-a-uuid"}})
        # Never a 500 and never data: a value that cannot match the field selects no bucket (or is a 400).
        if response.status_code == 200:
            first = orjson.loads(content.splitlines()[0])
            assert not [b for b in first["checkpoint"]["buckets"] if "by_folder" in b["bucket"]]
        else:
            assert response.status_code == 400
            assert orjson.loads(content)["error"]["code"] == "PSYNC_S2001"


# --- integer auto keys of client-writable tables -------------------------------------------------------


TEAMS = {"teams": {"data": [{"model": "workspace.Team", "table": "teams"}]}}


def test_integer_auto_key_table_warns_and_explicit_ids_keep_the_sequence_ahead(client: Client) -> None:
    alice = User.objects.create(username="alice")
    with powersync(BUCKETS={**settings.POWERSYNC["BUCKETS"], **TEAMS},
                   UPLOAD={"PERMISSIONS": {**settings.POWERSYNC["UPLOAD"]["PERMISSIONS"],
                                           "teams": "powersync_django.upload.allow_any"}}):
        warnings = [m for m in checks.run_checks() if m.id == "powersync_django.W016"]
        assert len(warnings) == 1 and "'teams'" in warnings[0].msg and "UUID" in warnings[0].hint
        first = Team.objects.create(name="server")
        client_id = first.pk + 5
        response = upload(client, str(alice.pk), {"op": "PUT", "type": "teams", "id": str(client_id),
                                                  "data": {"name": "from a client"}})
        assert response.status_code == 200, response.content
        # Server-side inserts after it do not collide with the client's id.
        later = [Team.objects.create(name=f"server {i}") for i in range(7)]
        assert client_id not in {t.pk for t in later}
        assert Team.objects.get(pk=client_id).name == "from a client"


def test_upload_keys_naming_no_table_are_check_errors() -> None:
    with powersync(UPLOAD={"PERMISSIONS": {"documents": "powersync_django.upload.allow_any",
                                           "document": "powersync_django.upload.allow_any",
                                           "*": "powersync_django.upload.deny"},
                           "PREPARE": {"projetcs": "schema_project.workspace.permissions.can_write_project"}}):
        errors = [m for m in checks.run_checks() if m.id == "powersync_django.E015"]
    assert sorted(e.msg.split("'")[5] for e in errors) == ["document", "projetcs"]
    assert all("documents" in e.hint and "projects" in e.hint for e in errors)


@pytest.mark.parametrize("sub", ["alice", "99999999999999999999999"])
def test_websocket_with_a_mistyped_sub_gets_a_sync_line_or_an_error_frame(sub: str) -> None:
    from channels.testing import WebsocketCommunicator

    from powersync_django.consumers import SyncConsumer
    from powersync_django.rsocket import Error, Payload, RequestStream, Setup, decode_frame

    async def run() -> Any:
        comm = WebsocketCommunicator(SyncConsumer.as_asgi(), "/sync/stream")
        assert (await comm.connect())[0]
        setup = Setup(20000, 90000, "application/json", "application/json",
                      metadata=orjson.dumps({"token": f"Token {make_token(sub)}"}))
        await comm.send_input({"type": "websocket.receive", "bytes": setup.encode()})
        request = RequestStream(1, 10, metadata=b'{"path": "/sync/stream"}', data=b'{"buckets": []}')
        await comm.send_input({"type": "websocket.receive", "bytes": request.encode()})
        frame = decode_frame((await comm.receive_output(10))["bytes"])
        await comm.disconnect()
        await comm.wait(10)
        return frame

    frame = asyncio.run(run())
    if isinstance(frame, Error):
        assert frame.stream_id == 1 and frame.message.startswith("[PSYNC_S2001]"), frame
    else:
        assert isinstance(frame, Payload)


def test_powersync_token_warns_about_a_sub_that_names_no_user() -> None:
    import io

    from django.core.management import call_command

    alice = User.objects.create(username="alice")
    for sub, warned in (("alice", True), (str(alice.pk), False)):
        out, err = io.StringIO(), io.StringIO()
        call_command("powersync_token", sub, stdout=out, stderr=err)
        assert ("Uploads with this token are rejected" in err.getvalue()) is warned
        assert out.getvalue().strip()  # the token is printed either way


def test_json_values_beyond_64_bit_integers_are_captured_and_uploads_still_work(client: Client, replicate) -> None:
    """Found by the fuzz on PostgreSQL: jsonb reads 2**64 back as a Python int, which orjson cannot write."""
    from powersync_django.models import BucketOp

    alice = User.objects.create(username="alice")
    doc = Document.objects.create(owner=alice, title="big", body={"n": 2**64, "m": [-(2**70)]})
    replicate()
    op = BucketOp.objects.filter(object_id=str(doc.pk)).latest("op_id")
    assert orjson.loads(orjson.loads(op.data)["body"]) == {"n": float(2**64), "m": [float(-(2**70))]}
    response = upload(client, str(alice.pk), {"op": "PATCH", "type": "documents", "id": str(doc.pk),
                                              "data": {"title": "renamed"}})
    assert response.status_code == 200, response.content
    replicate()
    assert Document.objects.get(pk=doc.pk).title == "renamed"
