"""Writers, a replicator and many reconnecting sync sessions at once; every checkpoint is validated.

Used by ``tests/test_snapshot.py`` (a bounded run on PostgreSQL) and ``bench/snapshot_stress.py``. Each
session is driven by a :class:`~sync_client.ClientModel` that resumes with its positions after every
reconnection; the result counts checkpoints validated and every mismatch, omitted bucket and regression.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import dataclass, field

from django.db import connections
from sync_client import ClientModel

from demo_project.todos.models import Todo, TodoList
from powersync_django import storage
from powersync_django.auth import TokenClaims
from powersync_django.protocol import SyncRequest
from powersync_django.replication import LeaseLost, Replicator, replicate_now
from powersync_django.sync import SyncSession, aclose_quietly


@dataclass
class StressResult:
    seconds: float = 0.0
    writes: int = 0
    batches: int = 0
    connections: int = 0
    checkpoints_validated: int = 0
    mismatches: list[str] = field(default_factory=list)
    omitted: list[str] = field(default_factory=list)
    regressions: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.seconds:.1f} s: {self.writes} writes, {self.batches} replication batches, "
                f"{self.connections} connections, {self.checkpoints_validated} checkpoints validated, "
                f"{len(self.mismatches)} mismatches, {len(self.omitted)} omitted buckets, "
                f"{len(self.regressions)} regressions")


def seed(users: int, lists_per_user: int) -> dict[str, list[int]]:
    """Lists (each with one todo) per user; replicated."""
    out: dict[str, list[int]] = {}
    for u in range(users):
        owner = f"stress{u}"
        for i in range(lists_per_user):
            lst = TodoList.objects.create(name=f"{owner} list {i}", owner_id=owner)
            Todo.objects.create(list=lst, description="first", created_by=owner)
            out.setdefault(owner, []).append(lst.id)
    replicate_now()
    return out


def _writer(lists: list[int], stop: threading.Event, result: StressResult, seed_value: int) -> None:
    rnd = random.Random(seed_value)
    mine: list[int] = []
    try:
        while not stop.is_set():
            choice = rnd.random()
            if choice < 0.6 or not mine:
                todo = Todo.objects.create(list_id=rnd.choice(lists), description=f"t{rnd.random()}")
                mine.append(todo.id)
            elif choice < 0.9:
                Todo.objects.filter(pk=rnd.choice(mine)).first().save()
            else:
                pk = mine.pop(rnd.randrange(len(mine)))
                Todo.objects.filter(pk=pk).first().delete()
            result.writes += 1
            time.sleep(rnd.uniform(0, 0.004))
    finally:
        connections.close_all()


def _replicator(stop: threading.Event, result: StressResult) -> None:
    """Small batches of random size: many checkpoints, committed while streams read."""
    replicator = Replicator(owner="stress")
    rnd = random.Random(7)
    try:
        while not stop.is_set():
            try:
                n = replicator.run_batch(limit=rnd.randint(1, 20))
            except LeaseLost:
                time.sleep(0.05)
                continue
            if n:
                result.batches += 1
            else:
                time.sleep(0.003)
        replicator.drain()
        replicator.release()
    finally:
        connections.close_all()


async def _client(user: str, client: ClientModel, deadline: float, result: StressResult, rnd: random.Random) -> None:
    while time.monotonic() < deadline:
        claims = TokenClaims(user_id=user, expires_at=time.time() + 3600, claims={"sub": user})
        session = SyncSession(claims, SyncRequest(buckets=client.request_buckets()), keepalive=False)
        await session.prepare()
        gen = session.lines()
        result.connections += 1
        try:
            async with asyncio.timeout(min(rnd.uniform(0.2, 1.5), max(0.01, deadline - time.monotonic()))):
                async for line in gen:
                    if client.apply(line):
                        break  # a failed validation: the client re-syncs from a new connection
        except TimeoutError:
            pass
        finally:
            await aclose_quietly(gen)


def run(seconds: float, sessions: int = 20, writers: int = 2, users: int = 5, lists_per_user: int = 3,
        seed_value: int = 1) -> StressResult:
    """Seed, then run writers, the replicator and ``sessions`` reconnecting streams for ``seconds``."""
    lists = seed(users, lists_per_user)
    all_lists = [i for ids in lists.values() for i in ids]
    result = StressResult()
    stop = threading.Event()
    threads = [threading.Thread(target=_writer, args=(all_lists, stop, result, seed_value + i))
               for i in range(writers)]
    threads.append(threading.Thread(target=_replicator, args=(stop, result)))
    clients = [(f"stress{i % users}", ClientModel()) for i in range(sessions)]
    started = time.monotonic()
    for t in threads:
        t.start()

    async def main() -> None:
        deadline = time.monotonic() + seconds
        rnd = random.Random(seed_value)
        await asyncio.gather(*(_client(user, c, deadline, result, random.Random(rnd.random()))
                               for user, c in clients))

    try:
        asyncio.run(main())
    finally:
        stop.set()
        for t in threads:
            t.join()
    result.seconds = time.monotonic() - started
    for _, c in clients:
        result.checkpoints_validated += c.completed
        result.mismatches += c.mismatches
        result.omitted += c.omitted
        result.regressions += c.regressions
    storage.shutdown()
    return result
