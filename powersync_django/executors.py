"""The database thread pools: one for stream reads, one for writes, each with a bounded queue.

Stream reads (checkpoints, op pages, the checkpoint hub) and write transactions (write checkpoints) run on
separate threads, so a write waiting for a lock (another process, a rebuild) never holds up a read.
Each thread keeps its own Django connection.

New work is admitted only while the pool's queue (jobs waiting for a thread) is below its limit
(``MAX_QUEUED_READS`` / ``MAX_QUEUED_WRITES``); otherwise :class:`Overloaded` is raised, answered as 503
with ``Retry-After``. Reads of streams already running are never refused: each stream has at most two in
flight, so they are bounded by the number of open streams. Uploads run on Django's thread for their
request, capped at ``MAX_CONCURRENT_UPLOADS`` per process (:class:`Slots`), beyond which they get a 503 too.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.db import connections

from .conf import get_config
from .protocol import ProtocolError

T = TypeVar("T")

OVERLOADED = "PSYNC_S2003"


class Overloaded(ProtocolError):
    """Too much work is waiting for database threads: answer 503 with ``Retry-After``."""

    def __init__(self, pool: str, retry_after: int) -> None:
        super().__init__(f"The server is busy ({pool} queue full); retry later", code=OVERLOADED, status=503)
        self.retry_after = retry_after


def drop_broken_connections() -> None:
    """Close this thread's connections that saw an error and are no longer usable.

    Long-lived threads (storage readers, the replicator) keep their connection: CONN_MAX_AGE is for
    request/response cycles and would make them reconnect for every page.
    """
    for conn in connections.all(initialized_only=True):
        if conn.errors_occurred:
            if conn.connection is not None and not conn.is_usable():
                conn.close()
            conn.errors_occurred = False


def _close_connections(barrier: threading.Barrier) -> None:
    connections.close_all()
    try:
        barrier.wait(timeout=1.0)  # hold this thread so each thread runs one of these jobs
    except threading.BrokenBarrierError:
        pass


def _call(fn: Callable[..., T], args: tuple, kwargs: dict) -> T:
    drop_broken_connections()
    return fn(*args, **kwargs)


_inline: contextvars.ContextVar[bool] = contextvars.ContextVar("powersync_inline_storage", default=False)


@contextmanager
def inline() -> Iterator[None]:
    """Within this block, database jobs started by this context run on the calling thread (tests only)."""
    token = _inline.set(True)
    try:
        yield
    finally:
        _inline.reset(token)


class Pool:
    """A lazily started thread pool that counts its waiting jobs."""

    def __init__(self, name: str, threads_setting: str, queue_setting: str) -> None:
        self.name = name
        self.threads_setting = threads_setting
        self.queue_setting = queue_setting
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._pending = 0  # submitted and not finished

    def executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=get_config()[self.threads_setting],
                                                    thread_name_prefix=f"powersync-{self.name}")
            return self._executor

    @property
    def queued(self) -> int:
        """Jobs waiting for a thread (not yet running)."""
        executor = self._executor
        threads = executor._max_workers if executor is not None else get_config()[self.threads_setting]
        return max(0, self._pending - threads)

    def admit(self) -> None:
        """Raise :class:`Overloaded` if the queue is at its limit (call before starting new work)."""
        config = get_config()
        if self.queued >= config[self.queue_setting]:
            raise Overloaded(self.name, config["RETRY_AFTER_SECONDS"])

    def _done(self, _future: Any) -> None:  # finished, failed or cancelled before it ran
        with self._lock:
            self._pending -= 1

    async def run(self, fn: Callable[..., T], *args: Any, admit: bool = False, **kwargs: Any) -> T:
        """Run a blocking database function on this pool; with ``admit``, refuse it when overloaded."""
        if _inline.get():
            # powersync_django.testing: on the thread that started the event loop (asgiref's thread-sensitive
            # context), so reads see that thread's connection and its open test transaction.
            return await sync_to_async(functools.partial(_call, fn, args, kwargs), thread_sensitive=True)()
        if admit:
            self.admit()
        executor = self.executor()
        with self._lock:
            self._pending += 1
        try:
            future = executor.submit(_call, fn, args, kwargs)
        except BaseException:
            with self._lock:
                self._pending -= 1
            raise
        future.add_done_callback(self._done)
        return await asyncio.wrap_future(future)

    def shutdown(self) -> None:
        """Close the database connections of the threads and stop them (tests, shutdown hooks)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            workers = executor._max_workers
            barrier = threading.Barrier(workers)
            for _ in range(workers):
                executor.submit(_close_connections, barrier)
            executor.shutdown(wait=True)


class Slots:
    """A cap on concurrent jobs that run on threads of their own (uploads: Django runs a synchronous view on a
    thread of its request), so that writes piling up behind a lock cannot take ever more threads and
    database connections."""

    def __init__(self, name: str, limit_setting: str) -> None:
        self.name = name
        self.limit_setting = limit_setting
        self.active = 0
        self._lock = threading.Lock()

    @contextmanager
    def take(self) -> Iterator[None]:
        """Hold a slot for the block; raise :class:`Overloaded` if none is free."""
        config = get_config()
        with self._lock:
            if self.active >= config[self.limit_setting]:
                raise Overloaded(self.name, config["RETRY_AFTER_SECONDS"])
            self.active += 1
        try:
            yield
        finally:
            with self._lock:
                self.active -= 1


reads = Pool("reads", "READ_THREADS", "MAX_QUEUED_READS")
writes = Pool("writes", "WRITE_THREADS", "MAX_QUEUED_WRITES")
uploads = Slots("uploads", "MAX_CONCURRENT_UPLOADS")


def shutdown() -> None:
    reads.shutdown()
    writes.shutdown()
