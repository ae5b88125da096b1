"""Operations: Prometheus metrics, the per-stream log line, health endpoints and the admin status page."""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bson
import orjson
import pytest
from asgi_stream import AsgiRequest, endpoint_app, http_stream
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.core.cache import cache
from django.core.handlers.asgi import ASGIHandler
from django.db import OperationalError
from django.test import AsyncClient, Client, override_settings
from prometheus_client import REGISTRY
from test_consumers import App, request_frame, setup_frame
from test_consumers import Client as RSocketClient
from test_sync import claims, seed

from demo_project.todos.models import Todo, TodoList
from powersync_django import heartbeat, metrics, monitoring, storage, tracking
from powersync_django.auth import make_token
from powersync_django.compaction import compact
from powersync_django.models import BucketOp, Checkpoint, OutboxEntry
from powersync_django.protocol import SyncRequest
from powersync_django.replication import replicate_now
from powersync_django.sync import SyncSession

pytestmark = pytest.mark.django_db(transaction=True)


def value(name: str, **labels: str) -> float:
    """A sample of this process's registry (0 when not present yet)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def metrics_settings(**changes: Any) -> override_settings:
    config = copy.deepcopy(settings.POWERSYNC)
    config["METRICS"] = {**config.get("METRICS", {}), **changes}
    return override_settings(POWERSYNC=config)


# --- streams over HTTP (Django's ASGI handler, the client disconnects) ----------------------------


@pytest.fixture(params=["view", "endpoint"])
def http_app(request: pytest.FixtureRequest) -> Any:
    """Django's view (ASGIHandler) and powersync_application's pure-ASGI endpoint."""
    return ASGIHandler() if request.param == "view" else endpoint_app()


def test_http_stream_metrics_and_log_line(caplog: pytest.LogCaptureFixture, http_app: Any) -> None:
    lst = seed("u1", todos=3)
    open_before = value("powersync_sync_streams_open", transport="http")
    started = value("powersync_sync_streams_total", transport="http")
    ops_before = value("powersync_operations_synced_total", transport="http")
    bytes_before = value("powersync_data_synced_bytes_total", transport="http")
    closed_before = value("powersync_sync_streams_closed_total", transport="http", reason="client_closed")
    during: dict[str, Any] = {}

    def observe() -> None:
        during["open"] = value("powersync_sync_streams_open", transport="http")
        during["process"] = metrics.open_streams().get("http", 0)

    with caplog.at_level(logging.INFO, logger="powersync_django.streams"):
        raw = asyncio.run(http_stream(b'{"client_id": "c9"}', b"checkpoint_complete", observe, app=http_app))

    lines = [orjson.loads(x) for x in raw.splitlines() if x]
    ops = sum(len(line["data"]["data"]) for line in lines if "data" in line)
    assert ops == 4  # 3 todos + 1 list
    assert during == {"open": open_before + 1, "process": 1}
    assert value("powersync_sync_streams_open", transport="http") == open_before
    assert metrics.open_streams().get("http", 0) == 0
    assert value("powersync_sync_streams_total", transport="http") == started + 1
    assert value("powersync_operations_synced_total", transport="http") == ops_before + ops
    assert value("powersync_data_synced_bytes_total", transport="http") == bytes_before + len(raw)
    assert value("powersync_sync_streams_closed_total", transport="http", reason="client_closed") == closed_before + 1

    (record,) = [r for r in caplog.records if r.name == "powersync_django.streams"]
    assert record.levelno == logging.INFO
    assert record.user_id == "u1" and record.client_id == "c9" and record.transport == "http"
    assert record.buckets == 2 and record.operations_synced == 4
    assert record.data_synced_bytes == len(raw) and record.close_reason == "client_closed"
    assert record.duration_ms >= 0
    message = record.getMessage()
    for part in ["user=u1", "client=c9", "transport=http", "buckets=2", "ops=4", f"bytes={len(raw)}",
                 "reason=client_closed"]:
        assert part in message
    assert str(lst.id) not in message  # bucket names (row ids) stay out of the line


def test_token_expiry_and_definition_change_are_close_reasons() -> None:
    seed("u1", todos=1)

    async def run(session: SyncSession) -> tracking.StreamTracker:
        tracker = tracking.StreamTracker(session, "test")
        async for _ in tracker.lines(session.lines()):
            tracker.sent(10)
        tracker.close()
        return tracker

    expired = asyncio.run(run(SyncSession(claims("u1", ttl=-1), SyncRequest())))
    assert expired.reason == "token_expired" and expired.ops == 0 and expired.bytes == 10

    class Ended(SyncSession):
        async def lines(self):
            yield {"checkpoint": {"last_op_id": "1", "buckets": []}}
            yield {"data": {"bucket": "b", "data": [{"op": "PUT"}, {"op": "REMOVE"}, {"op": "PUT"}]}}

    ended = asyncio.run(run(Ended(claims("u1"), SyncRequest())))
    assert ended.reason == "definitions_changed"
    assert ended.ops == 3 and ended.bytes == 20
    assert value("powersync_sync_streams_closed_total", transport="test", reason="token_expired") >= 1


def test_failing_session_is_an_error_close() -> None:
    class Failing(SyncSession):
        async def lines(self):
            yield {"checkpoint": {"last_op_id": "1", "buckets": []}}
            raise RuntimeError("boom")

    async def run() -> tracking.StreamTracker:
        tracker = tracking.StreamTracker(Failing(claims("u1"), SyncRequest()), "test")
        with pytest.raises(RuntimeError):
            async for _ in tracker.lines(tracker.session.lines()):
                pass
        tracker.close()
        return tracker

    assert asyncio.run(run()).reason == "error"


# --- streams over WebSocket --------------------------------------------------------------------------


def test_websocket_stream_metrics_and_log_line(caplog: pytest.LogCaptureFixture) -> None:
    seed("u1", todos=2)
    ops_before = value("powersync_operations_synced_total", transport="websocket")
    bytes_before = value("powersync_data_synced_bytes_total", transport="websocket")
    open_before = value("powersync_sync_streams_open", transport="websocket")
    errors_before = value("powersync_websocket_errors_total", code="PSYNC_S2304")

    async def run() -> tuple[list[dict], int, float]:
        app = App()
        client = RSocketClient(app.asgi())
        await client.connect()
        await client.send(setup_frame(make_token("u1")))
        await client.send(request_frame())
        lines = await client.lines_until("checkpoint_complete")
        await client.sync()  # the last payload's size is counted once it is sent
        open_now = value("powersync_sync_streams_open", transport="websocket")
        await client.send(request_frame(stream_id=3))  # one stream per connection: rejected
        await client.next()
        await client.close()
        return lines, open_now

    with caplog.at_level(logging.INFO, logger="powersync_django.streams"):
        lines, open_now = asyncio.run(run())

    ops = sum(len(line["data"]["data"]) for line in lines if "data" in line)
    assert ops == 3
    assert open_now == open_before + 1
    assert value("powersync_sync_streams_open", transport="websocket") == open_before
    assert value("powersync_operations_synced_total", transport="websocket") == ops_before + ops
    sent = sum(len(bson.encode(line)) for line in lines)
    assert value("powersync_data_synced_bytes_total", transport="websocket") == bytes_before + sent
    assert value("powersync_websocket_errors_total", code="PSYNC_S2304") == errors_before + 1
    (record,) = [r for r in caplog.records if r.name == "powersync_django.streams"]
    assert (record.transport, record.user_id, record.client_id) == ("websocket", "u1", "c1")
    assert record.operations_synced == 3 and record.close_reason == "client_closed"


# --- counters of errors, uploads, replication and compaction ----------------------------------------


def test_http_errors_are_counted_by_psync_code(http_app: Any) -> None:
    bad = value("powersync_http_errors_total", endpoint="sync-stream", status="400", code="PSYNC_S2001")
    unauth = value("powersync_http_errors_total", endpoint="sync-stream", status="401", code="PSYNC_S2106")
    upload = value("powersync_http_errors_total", endpoint="upload", status="401", code="PSYNC_S2106")

    async def run() -> None:
        client = AsyncClient()
        auth = {"Authorization": f"Token {make_token('u1')}"}
        for body, headers, status in [(b"{nope", auth, 400), (b"{}", {}, 401)]:
            request = AsgiRequest(http_app, "POST", "/sync/stream", body,
                                  {"Content-Type": "application/json", **headers})
            await request.task
            assert request.response.status_code == status
        assert (await client.post("/api/upload", data="{}", content_type="application/json")).status_code == 401

    asyncio.run(run())
    assert value("powersync_http_errors_total", endpoint="sync-stream", status="400", code="PSYNC_S2001") == bad + 1
    assert value("powersync_http_errors_total", endpoint="sync-stream", status="401", code="PSYNC_S2106") == unauth + 1
    assert value("powersync_http_errors_total", endpoint="upload", status="401", code="PSYNC_S2106") == upload + 1


def test_upload_batches_and_rejections_are_counted() -> None:
    lst = TodoList.objects.create(name="mine", owner_id="alice")
    applied = value("powersync_upload_batches_total", result="applied")
    rejected = value("powersync_upload_batches_total", result="rejected")
    operations = value("powersync_upload_operations_total")
    client = Client()

    def post(batch: list[dict], user: str) -> int:
        return client.post("/api/upload", orjson.dumps({"batch": batch}), content_type="application/json",
                           HTTP_AUTHORIZATION=f"Token {make_token(user)}").status_code

    todo = {"op": "PUT", "type": "todos", "id": "7f1c1e1e-0000-4000-8000-000000000001",
            "data": {"list_id": str(lst.id), "description": "milk"}}
    assert post([todo, {**todo, "id": "7f1c1e1e-0000-4000-8000-000000000002"}], "alice") == 200
    assert post([{**todo, "id": "7f1c1e1e-0000-4000-8000-000000000003"}], "mallory") == 403
    assert value("powersync_upload_batches_total", result="applied") == applied + 1
    assert value("powersync_upload_operations_total") == operations + 2
    assert value("powersync_upload_batches_total", result="rejected") == rejected + 1


def test_replication_and_compaction_are_counted() -> None:
    entries = value("powersync_replicated_entries_total")
    ops = value("powersync_replicated_operations_total")
    runs = value("powersync_compaction_runs_total")
    replicate_now()  # the first batch builds bucket storage
    ops_stored = BucketOp.objects.count()
    lst = TodoList.objects.create(name="l", owner_id="u1")
    for i in range(3):
        Todo.objects.create(list=lst, description=str(i), created_by="u1")
    pending = OutboxEntry.objects.count()
    replicate_now()
    assert value("powersync_replicated_entries_total") == entries + pending
    assert value("powersync_replicated_operations_total") == ops + BucketOp.objects.count() - ops_stored
    for todo in Todo.objects.filter(list=lst):  # a second PUT of each row: compaction can drop the first
        todo.save()
    replicate_now()
    removed = value("powersync_compaction_removed_operations_total")
    result = compact(min_share=0)
    assert value("powersync_compaction_runs_total") == runs + 1
    assert value("powersync_compaction_removed_operations_total") == removed + result.ops_removed


# --- the metrics endpoint ---------------------------------------------------------------------------


def scrape(**extra: Any):
    return Client().get("/metrics", **extra)


def test_metrics_endpoint_reports_replication_lag_from_the_database() -> None:
    replicate_now()
    lst = TodoList.objects.create(name="l", owner_id="u1")
    Todo.objects.create(list=lst, description="t", created_by="u1")
    response = scrape()
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert "powersync_storage_up 1.0" in text
    pending = OutboxEntry.objects.count()
    assert pending >= 2
    assert f"powersync_outbox_pending_entries {float(pending)}" in text
    lag = next(line for line in text.splitlines() if line.startswith("powersync_replication_lag_seconds "))
    assert float(lag.split()[1]) >= 0
    assert "powersync_sync_streams_open" in text or "# TYPE powersync_sync_streams_open gauge" in text

    replicate_now()
    text = scrape().content.decode()
    assert "powersync_outbox_pending_entries 0.0" in text
    assert "powersync_replication_lag_seconds 0.0" in text
    assert f"powersync_last_checkpoint_id {float(Checkpoint.objects.latest('id').id)}" in text
    assert "powersync_replicated_op_id" in text and "powersync_last_checkpoint_age_seconds" in text


def test_metrics_endpoint_speaks_openmetrics_when_asked() -> None:
    response = scrape(HTTP_ACCEPT="application/openmetrics-text; version=1.0.0")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/openmetrics-text")
    assert response.content.endswith(b"# EOF\n")


@pytest.mark.parametrize(
    ("changes", "extra", "status"),
    [
        ({}, {}, 200),  # loopback
        ({}, {"REMOTE_ADDR": "203.0.113.9"}, 403),
        ({}, {"HTTP_X_FORWARDED_FOR": "203.0.113.9"}, 403),  # through a proxy on this host
        ({"ALLOW_INTERNAL_IPS": False}, {}, 403),
        ({"TOKEN": "s3cret"}, {"REMOTE_ADDR": "203.0.113.9", "HTTP_AUTHORIZATION": "Bearer s3cret"}, 200),
        ({"TOKEN": "s3cret"}, {"REMOTE_ADDR": "203.0.113.9", "HTTP_AUTHORIZATION": "Bearer wrong"}, 403),
        ({"TOKEN": None}, {"REMOTE_ADDR": "203.0.113.9", "HTTP_AUTHORIZATION": "Bearer "}, 403),
    ],
)
def test_metrics_access(changes: dict, extra: dict, status: int) -> None:
    with metrics_settings(**changes):
        response = scrape(**extra)
    assert response.status_code == status
    if status == 403:
        assert response.json()["error"]["code"] == "FORBIDDEN"


@override_settings(INTERNAL_IPS=["10.1.0.0/16", "192.0.2.7"])
def test_metrics_access_from_internal_ips() -> None:
    assert scrape(REMOTE_ADDR="10.1.2.3").status_code == 200
    assert scrape(REMOTE_ADDR="192.0.2.7").status_code == 200
    assert scrape(REMOTE_ADDR="192.0.2.8").status_code == 403
    assert not monitoring.is_internal("not-an-ip")


def test_metrics_without_prometheus_client_is_501(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "AVAILABLE", False)
    response = scrape()
    assert response.status_code == 501
    error = response.json()["error"]
    assert error["code"] == "METRICS_UNAVAILABLE" and "powersync-django[metrics]" in error["hint"]
    metrics.stream_opened("http")  # events still keep this process's stream count
    assert metrics.open_streams()["http"] == 1
    metrics.stream_closed("http", "client_closed")
    assert "http" not in metrics.open_streams()


def test_multiprocess_mode_merges_processes(tmp_path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR, the scrape and the status page see every process's open streams."""
    script = (
        "import django, os; django.setup()\n"
        "from prometheus_client import generate_latest\n"
        "from powersync_django import metrics\n"
        "metrics.stream_opened('http'); metrics.stream_opened('http'); metrics.stream_opened('websocket')\n"
        "print(metrics.streams_by_process()[str(os.getpid())])\n"
        "print(generate_latest(metrics.process_registry()).decode())\n"
    )
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "demo_project.settings",
           "PYTHONPATH": os.pathsep.join([str(root), str(root / "tests"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=root, capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.splitlines()[0] == "{'http': 2, 'websocket': 1}"
    assert 'powersync_sync_streams_open{pid="' in out and 'transport="http"} 2.0' in out


# --- health ------------------------------------------------------------------------------------------


def test_health_live_and_ready() -> None:
    replicate_now()
    seed("u1", todos=1)

    async def run():
        client = AsyncClient()
        return await client.get("/health/live"), await client.get("/health/ready"), await client.head("/health/ready")

    live, ready, head = asyncio.run(run())
    assert live.status_code == 200 and live.json() == {"status": "ok", "pid": os.getpid()}
    assert head.status_code == 200  # load balancers may probe with HEAD
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "checkpoint": Checkpoint.objects.latest("id").id}


def test_health_ready_is_503_when_checkpoints_cannot_be_read(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreadable(using: str = "default") -> int:
        raise OperationalError("connection refused")

    monkeypatch.setattr(storage, "latest_checkpoint_id", unreadable)

    async def run():
        return await AsyncClient().get("/health/ready")

    response = asyncio.run(run())
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "error": "Checkpoints cannot be read",
                               "detail": "OperationalError"}
    assert asyncio.run(AsyncClient().get("/health/live")).status_code == 200


# --- the admin status page ---------------------------------------------------------------------------

STATUS_URL = "/admin/powersync_django/replicationstate/"


def test_status_page_for_staff() -> None:
    lst = seed("u1", todos=2)
    TodoList.objects.create(name="pending", owner_id="u1")  # not replicated yet
    admin = User.objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.force_login(admin)
    response = client.get(STATUS_URL)
    assert response.status_code == 200
    html = response.content.decode()
    assert "PowerSync status" in html
    assert '<th scope="row">Outbox pending</th><td>1 entries' in html
    assert "Largest buckets" in html and f"1#todos_by_list[&quot;{lst.id}&quot;]" in html
    assert "Compaction candidates (2)" in html  # nothing compacted yet: every bucket's share is 1
    assert f"pid {os.getpid()} (this process)" in html
    from powersync_django.status import dead_letter_count

    assert ("Dead letters" in html) == (dead_letter_count() is not None)


def test_status_page_is_forbidden_for_others() -> None:
    client = Client()
    assert client.get(STATUS_URL).status_code == 302  # anonymous: to the login page
    user = User.objects.create_user("joe", password="pw")
    client.force_login(user)
    response = client.get(STATUS_URL)
    assert response.status_code == 302 and "/login/" in response["Location"]  # not staff
    user.is_staff = True
    user.save()
    client.force_login(user)
    assert client.get(STATUS_URL).status_code == 403  # staff without view permission
    user.user_permissions.add(Permission.objects.get(codename="view_replicationstate"))
    user = User.objects.get(pk=user.pk)
    client.force_login(user)
    assert client.get(STATUS_URL).status_code == 200


# --- heartbeats --------------------------------------------------------------------------------------


def heartbeat_settings(**changes: Any) -> override_settings:
    config = copy.deepcopy(settings.POWERSYNC)
    config["HEARTBEAT"] = {**config.get("HEARTBEAT", {}), **changes}
    return override_settings(POWERSYNC=config)


async def until(predicate: Callable[[], bool], seconds: float = 5) -> None:
    async with asyncio.timeout(seconds):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def test_heartbeats_list_every_process_with_its_streams() -> None:
    cache.clear()

    def mine() -> dict | None:
        return next((b for b in heartbeat.processes() or [] if b["pid"] == os.getpid()), None)

    async def run() -> tuple[dict, dict]:
        tracker = tracking.StreamTracker(SyncSession(claims("u1"), SyncRequest()), "http")
        await until(lambda: (mine() or {}).get("streams") == {"http": 1})
        streaming = mine()
        tracker.close()
        await until(lambda: (mine() or {}).get("streams") == {})
        return streaming, mine()

    with heartbeat_settings(CACHE="default", SECONDS=0.01):
        streaming, idle = asyncio.run(run())
    assert streaming["host"] == socket.gethostname()
    assert idle["at"] >= streaming["at"]
    with heartbeat_settings(CACHE="default", SECONDS=60):
        heartbeat.beat()  # a beat that outlives the page's rendering
        admin = User.objects.create_superuser("root", "root@example.com", "pw")
        client = Client()
        client.force_login(admin)
        html = client.get(STATUS_URL).content.decode()
    assert "Heartbeats of all processes" in html and f"<td>{os.getpid()}</td>" in html


def test_heartbeats_are_off_by_default() -> None:
    async def run() -> bool:
        tracker = tracking.StreamTracker(SyncSession(claims("u1"), SyncRequest()), "http")
        started = asyncio.get_running_loop() in heartbeat._tasks
        tracker.close()
        return started

    assert asyncio.run(run()) is False
    assert heartbeat.processes() is None
