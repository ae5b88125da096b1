"""The pure-ASGI sync endpoint of powersync_application: no thread per open stream; the stream cap (429)."""

from __future__ import annotations

import asyncio
import threading

import orjson
import pytest
from asgi_stream import AsgiRequest, endpoint_app
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.test import override_settings

from demo_project.todos.models import Todo, TodoList
from powersync_django import limits
from powersync_django.auth import make_token
from powersync_django.replication import replicate_now

pytestmark = pytest.mark.django_db(transaction=True)

BODY = b'{"buckets": [], "raw_data": true, "client_id": "c1"}'


def open_stream(application, user: str) -> AsgiRequest:
    return AsgiRequest(application, "POST", "/sync/stream", BODY,
                       {"Content-Type": "application/json", "Authorization": f"Token {make_token(user)}"})


async def until_complete(request: AsgiRequest) -> None:
    await request.read_until(lambda raw: b"checkpoint_complete" in raw)
    assert request.response.status_code == 200, request.response.content


def seed() -> None:
    lst = TodoList.objects.create(name="l", owner_id="u0")
    Todo.objects.create(list=lst, description="t", created_by="u0")
    replicate_now()


@pytest.mark.parametrize("streams", [40])
def test_open_idle_streams_hold_no_thread_each(streams):
    """Django's view behind ASGIHandler pins one thread per open stream; the endpoint pins none."""

    async def run():
        application = endpoint_app()
        # Warm up the shared pools (storage readers, the hub) with one stream.
        first = open_stream(application, "u0")
        await until_complete(first)
        before = threading.active_count()
        requests = [open_stream(application, f"u{i}") for i in range(1, streams + 1)]
        for request in requests:
            await until_complete(request)
        await asyncio.sleep(0.2)
        during = threading.active_count()
        for request in [first, *requests]:
            await request.disconnect()
        return before, during

    seed()
    before, during = asyncio.run(run())
    assert during - before < streams // 4, (before, during)


def test_streams_over_the_cap_get_429_with_retry_after():
    async def run():
        application = endpoint_app()
        with override_settings(POWERSYNC={**settings.POWERSYNC, "MAX_CONCURRENT_STREAMS": 2,
                                          "RETRY_AFTER_SECONDS": 7}):
            held = [open_stream(application, "u1"), open_stream(application, "u2")]
            for request in held:
                await until_complete(request)
            refused = open_stream(application, "u3")
            await refused.task
            await held[0].disconnect()
            assert limits.active() == 1
            accepted = open_stream(application, "u3")
            await until_complete(accepted)
            for request in (held[1], accepted):
                await request.disconnect()
        return refused.response

    response = asyncio.run(run())
    assert response.status_code == 429
    assert response["Retry-After"] == "7"
    assert response["Access-Control-Allow-Origin"] == "*"
    error = orjson.loads(response.content)["error"]
    assert error["code"] == "PSYNC_S2304" and error["status"] == 429
    assert limits.active() == 0


def test_django_view_honours_the_cap_too():
    from django.test import AsyncClient

    async def run():
        with override_settings(POWERSYNC={**settings.POWERSYNC, "MAX_CONCURRENT_STREAMS": 1}):
            held = open_stream(ASGIHandler(), "u1")
            await until_complete(held)
            response = await AsyncClient().post("/sync/stream", data=BODY, content_type="application/json",
                                                headers={"Authorization": f"Token {make_token('u2')}"})
            await held.disconnect()
        return response

    response = asyncio.run(run())
    assert response.status_code == 429 and response["Retry-After"]
    assert orjson.loads(response.content)["error"]["code"] == "PSYNC_S2304"
    assert limits.active() == 0


@pytest.fixture(autouse=True)
def _no_leaked_slots():
    yield
    assert limits.active() == 0




def test_a_stream_dropped_before_its_body_started_gives_its_slot_back():
    """A response Django never iterated (the client went away first) must not keep its slot for ever."""
    import gc

    from powersync_django import views
    from powersync_django.auth import verify_token

    async def run():
        prepared = await views.prepare_stream(verify_token(make_token("u1")), BODY, "", "")
        assert limits.active() == 1
        prepared.chunks()  # created, never iterated, dropped
        del prepared
        gc.collect()

    asyncio.run(run())
    assert limits.active() == 0


def test_one_user_cannot_take_every_stream_slot():
    """MAX_STREAMS_PER_USER: a user opening streams in a loop gets 429 at its own cap while other users are
    still served; the user's slots come back when its streams end."""

    async def run():
        application = endpoint_app()
        with override_settings(POWERSYNC={**settings.POWERSYNC, "MAX_CONCURRENT_STREAMS": 4,
                                          "MAX_STREAMS_PER_USER": 2}):
            held = [open_stream(application, "greedy") for _ in range(2)]
            for request in held:
                await until_complete(request)
            refused = open_stream(application, "greedy")
            await refused.task
            other = open_stream(application, "u2")
            await until_complete(other)
            assert limits.active("greedy") == 2
            await held[0].disconnect()
            assert limits.active("greedy") == 1
            again = open_stream(application, "greedy")
            await until_complete(again)
            for request in (held[1], other, again):
                await request.disconnect()
        return refused.response

    response = asyncio.run(run())
    assert response.status_code == 429
    assert response["Retry-After"] == str(settings.POWERSYNC.get("RETRY_AFTER_SECONDS", 2))
    error = orjson.loads(response.content)["error"]
    assert error["code"] == "PSYNC_S2304" and "this user" in error["description"]
    assert limits.active() == 0 and limits.active("greedy") == 0
