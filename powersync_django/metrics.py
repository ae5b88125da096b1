"""Prometheus metrics of the sync service (``prometheus_client``, the optional extra ``metrics``).

The serving code reports events through the small functions below (one call per event); without
``prometheus_client`` they only keep this process's open-stream counts (the admin status page shows them).
Replication lag and positions are read from the database at scrape time (:class:`StorageCollector`), so they
are right whichever process replicates. :func:`exposition` renders everything for ``<endpoint>/metrics``.

Several server processes: each process has its own counters. Either scrape every process, or run them with
prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``), where :func:`exposition` merges the
files of all processes of the host (open streams keep a ``pid`` label).
"""

from __future__ import annotations

import logging
import os
from collections import Counter as _Tally
from collections.abc import Iterator
from typing import Any

from django.db import DEFAULT_DB_ALIAS

from . import heartbeat

logger = logging.getLogger(__name__)

try:
    import prometheus_client
    from prometheus_client import Counter, Gauge
    from prometheus_client.core import GaugeMetricFamily
except ImportError:  # the optional extra "metrics" is not installed
    prometheus_client = None

AVAILABLE = prometheus_client is not None
HTTP = "http"
WEBSOCKET = "websocket"

# Open sync streams of this process, by transport (kept with or without prometheus_client).
_open_streams: _Tally[str] = _Tally()

if AVAILABLE:
    STREAMS_OPEN = Gauge("powersync_sync_streams_open", "Sync streams open in this process.", ["transport"],
                         multiprocess_mode="liveall")
    STREAMS_STARTED = Counter("powersync_sync_streams", "Sync streams started.", ["transport"])
    STREAMS_CLOSED = Counter("powersync_sync_streams_closed", "Sync streams ended, by reason.",
                             ["transport", "reason"])
    OPERATIONS_SYNCED = Counter("powersync_operations_synced", "Bucket operations sent to clients.", ["transport"])
    BYTES_SYNCED = Counter("powersync_data_synced_bytes", "Bytes of sync lines sent to clients (after gzip).",
                           ["transport"])
    REPLICATED_ENTRIES = Counter("powersync_replicated_entries", "Outbox entries replicated by this process.")
    REPLICATED_OPS = Counter("powersync_replicated_operations", "Bucket operations written by replication.")
    UPLOAD_BATCHES = Counter("powersync_upload_batches", "Upload batches: applied, rejected (4xx) or failed (5xx).",
                             ["result"])
    UPLOAD_OPERATIONS = Counter("powersync_upload_operations", "Uploaded operations applied.")
    HTTP_ERRORS = Counter("powersync_http_errors", "4xx/5xx answers of the sync endpoints, by PSYNC code.",
                          ["endpoint", "status", "code"])
    WEBSOCKET_ERRORS = Counter("powersync_websocket_errors", "RSocket ERROR frames sent, by PSYNC code.", ["code"])
    COMPACTION_RUNS = Counter("powersync_compaction_runs", "Compaction runs finished.")
    COMPACTION_REMOVED = Counter("powersync_compaction_removed_operations", "Operations removed by compaction.")


# --- events ------------------------------------------------------------------------------------------


def stream_opened(transport: str) -> None:
    _open_streams[transport] += 1
    heartbeat.ensure_started()
    if AVAILABLE:
        STREAMS_OPEN.labels(transport).inc()
        STREAMS_STARTED.labels(transport).inc()


def stream_closed(transport: str, reason: str) -> None:
    _open_streams[transport] -= 1
    if AVAILABLE:
        STREAMS_OPEN.labels(transport).dec()
        STREAMS_CLOSED.labels(transport, reason).inc()


def line_sent(transport: str, ops: int, nbytes: int) -> None:
    if AVAILABLE:
        if ops:
            OPERATIONS_SYNCED.labels(transport).inc(ops)
        BYTES_SYNCED.labels(transport).inc(nbytes)


def replicated(entries: int, ops: int) -> None:
    """A replication batch committed."""
    if AVAILABLE:
        REPLICATED_ENTRIES.inc(entries)
        REPLICATED_OPS.inc(ops)


def upload_batch(status: int, applied: int = 0) -> None:
    """An upload batch was answered with ``status``; ``applied`` operations wrote a row."""
    if AVAILABLE:
        UPLOAD_BATCHES.labels("applied" if status < 400 else "rejected" if status < 500 else "failed").inc()
        if applied:
            UPLOAD_OPERATIONS.inc(applied)


def http_response(request: Any, response: Any) -> None:
    """Count an error answer (status >= 400) of a sync endpoint by its PSYNC code."""
    if AVAILABLE and response.status_code >= 400:
        match = getattr(request, "resolver_match", None)
        endpoint = (match.url_name if match else None) or "other"
        http_error(endpoint, response.status_code, error_code(response))


def http_error(endpoint: str, status: int, code: str) -> None:
    """Count an error answer (status >= 400) of the named endpoint."""
    if AVAILABLE and status >= 400:
        HTTP_ERRORS.labels(endpoint, str(status), code[:40]).inc()


def websocket_error(code: str) -> None:
    if AVAILABLE:
        WEBSOCKET_ERRORS.labels(code).inc()


def compaction_run(removed: int) -> None:
    if AVAILABLE:
        COMPACTION_RUNS.inc()
        COMPACTION_REMOVED.inc(removed)


def open_streams() -> dict[str, int]:
    """Open sync streams of this process, by transport."""
    return {t: n for t, n in sorted(_open_streams.items()) if n}


def error_code_of(body: Any) -> str:
    """The ``error.code`` of a JSON error body; ``""`` when it has none."""
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code[:40] if isinstance(code, str) else ""


def error_code(response: Any) -> str:
    """The ``error.code`` of a JSON error response (a plain or a DRF response); ``""`` when it has none."""
    body = getattr(response, "data", None)
    if body is None and not getattr(response, "streaming", False):
        try:
            import orjson

            body = orjson.loads(response.content)
        except Exception:
            return ""
    return error_code_of(body)


# --- scrape ------------------------------------------------------------------------------------------


class StorageCollector:
    """Replication lag and positions, read from the database at each scrape (a few indexed queries)."""

    def __init__(self, using: str = DEFAULT_DB_ALIAS) -> None:
        self.using = using

    def describe(self) -> list[Any]:
        return []  # not registered globally: no names to reserve

    def collect(self) -> Iterator[Any]:
        from .status import get_lag

        up = GaugeMetricFamily("powersync_storage_up", "1 when the replication state could be read.")
        try:
            lag = get_lag(self.using)
        except Exception:
            logger.warning("powersync: metrics: reading the replication state failed", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        values = [
            ("powersync_outbox_pending_entries", "Captured changes not replicated yet.", lag.pending_entries),
            ("powersync_replication_lag_seconds", "Age of the oldest outbox entry not replicated (0: none).",
             lag.oldest_pending_age or 0.0),
            ("powersync_last_checkpoint_id", "Id of the newest checkpoint.", lag.last_checkpoint_id),
            ("powersync_last_checkpoint_age_seconds", "Seconds since the newest checkpoint was written.",
             lag.last_checkpoint_age),
            ("powersync_replicated_op_id", "Last bucket operation id written (rate(): ops replicated per second).",
             lag.last_op_id),
            ("powersync_replicated_outbox_position", "Highest outbox id replicated (rate(): entries per second).",
             lag.outbox_position),
        ]
        for name, documentation, value in values:
            if value is not None:
                yield GaugeMetricFamily(name, documentation, value=value)


class _Combined:
    """Collectors as one registry-like object for prometheus_client's encoders."""

    def __init__(self, *collectors: Any) -> None:
        self.collectors = collectors

    def collect(self) -> Iterator[Any]:
        for collector in self.collectors:
            yield from collector.collect()


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")


def process_registry() -> Any:
    """This process's metrics, or every process's of this host in multiprocess mode."""
    if multiprocess_dir():
        from prometheus_client import CollectorRegistry, multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return prometheus_client.REGISTRY


def exposition(accept: str, using: str = DEFAULT_DB_ALIAS) -> tuple[bytes, str]:
    """The metrics text (OpenMetrics when ``accept`` asks for it, else Prometheus text) and its content type."""
    from prometheus_client.exposition import choose_encoder

    encoder, content_type = choose_encoder(accept)
    return encoder(_Combined(process_registry(), StorageCollector(using))), content_type


def streams_by_process() -> dict[str, dict[str, int]] | None:
    """Open streams of every process of this host ({pid: {transport: n}}), in multiprocess mode only."""
    if not (AVAILABLE and multiprocess_dir()):
        return None
    out: dict[str, dict[str, int]] = {}
    for family in process_registry().collect():
        if family.name != "powersync_sync_streams_open":
            continue
        for sample in family.samples:
            if sample.value:
                out.setdefault(sample.labels.get("pid", "?"), {})[sample.labels["transport"]] = int(sample.value)
    return out
