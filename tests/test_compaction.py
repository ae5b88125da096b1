"""Compaction (compaction.py, ``manage.py powersync_compact``): fewer ops, same checksums, same client state."""

from __future__ import annotations

import asyncio
import io
import random
import threading
import time
from dataclasses import dataclass, field

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from demo_project.todos.models import Todo, TodoList
from powersync_django import checksums, storage
from powersync_django.compaction import CompactionProgress, compact
from powersync_django.models import BucketOp, BucketState, ReplicationState
from powersync_django.protocol import SyncRequest
from powersync_django.replication import LeaseLost, Replicator, replicate_now
from powersync_django.rules import get_rules
from powersync_django.sync import SyncSession

Op = tuple  # (op_id, op, object_type, object_id, data, checksum), as storage.read_ops returns them


# --- the client, exactly as protocol.md §10.2 describes it -----------------------------------------------


@dataclass
class Client:
    """One bucket on the client: stored PUTs (``ps_oplog``) and ``add_checksum``."""

    oplog: dict[tuple[str, str], tuple[int, str, int]] = field(default_factory=dict)
    add_checksum: int = 0

    def apply(self, ops: list[Op]) -> Client:
        for op_id, op, object_type, object_id, data, checksum in ops:
            key = (object_type, object_id)
            if op == "PUT":
                old = self.oplog.pop(key, None)
                if old:
                    self.add_checksum = checksums.add(self.add_checksum, old[2])
                self.oplog[key] = (op_id, data, checksum)
            elif op == "REMOVE":
                old = self.oplog.pop(key, None)
                if old:
                    self.add_checksum = checksums.add(self.add_checksum, old[2])
                self.add_checksum = checksums.add(self.add_checksum, checksum)
            elif op == "MOVE":
                self.add_checksum = checksums.add(self.add_checksum, checksum)
            elif op == "CLEAR":
                self.oplog.clear()
                self.add_checksum = checksum
            else:
                raise AssertionError(op)
        return self

    @property
    def state(self) -> tuple[dict[tuple[str, str], str], int]:
        """(rows, total checksum): what the client publishes and what it validates."""
        total = checksums.total([self.add_checksum] + [c for _, _, c in self.oplog.values()])
        return {k: data for k, (_, data, _) in self.oplog.items()}, total


def reduce_ops(ops: list[Op]) -> tuple[dict, int]:
    return Client().apply(ops).state


def upto(ops: list[Op], end: int, start: int = -1) -> list[Op]:
    return [o for o in ops if start < o[0] <= end]


# --- helpers writing ops directly -----------------------------------------------------------------------


def clean() -> None:
    BucketOp.objects.all().delete()
    BucketState.objects.all().delete()
    ReplicationState.objects.all().delete()
    ReplicationState.objects.create(pk=1, last_op_id=0)


def append(ops: dict[str, list[Op]]) -> None:
    """Write ops as the replicator would: rows plus bucket totals."""
    for bucket, items in ops.items():
        if not items:
            continue
        BucketOp.objects.bulk_create([
            BucketOp(op_id=i, bucket=bucket, op=op, object_type=t, object_id=o, data=d, checksum=c)
            for i, op, t, o, d, c in items
        ])
        state, _ = BucketState.objects.get_or_create(bucket=bucket)
        state.checksum = checksums.total([state.checksum] + [o[5] for o in items])
        state.count += len(items)
        state.stored_ops += len(items)
        state.ops_since_compaction += len(items)
        state.last_op_id = items[-1][0]
        state.save()


def stored(bucket: str) -> list[Op]:
    return storage.read_ops(bucket, -1, 2**62, 10**9)


def set_checkpoint(op_id: int) -> None:
    ReplicationState.objects.filter(pk=1).update(last_op_id=op_id)


# --- property tests on generated histories ----------------------------------------------------------------

BUCKETS = ["b0", "b1"]

op_spec = st.tuples(
    st.sampled_from(BUCKETS),
    st.sampled_from(["PUT", "PUT", "PUT", "REMOVE"]),
    st.integers(0, 3),  # row
    st.integers(0, 2),  # data variant
    st.integers(0, checksums.MASK),  # checksum (clients never recompute it)
    st.integers(1, 3),  # op id gap (one global sequence)
)
# Each round appends ops, moves the checkpoint (maybe not to the end: later ops model concurrent appends) and
# compacts.
round_spec = st.tuples(st.lists(op_spec, min_size=0, max_size=14), st.integers(0, 14))


@pytest.mark.django_db
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rounds=st.lists(round_spec, min_size=1, max_size=4), batch_size=st.integers(2, 6),
       only_b0=st.booleans())
def test_compaction_keeps_every_client_consistent(rounds, batch_size, only_b0):
    clean()
    history: dict[str, list[Op]] = {b: [] for b in BUCKETS}
    next_id = 1
    for specs, cut in rounds:
        new: dict[str, list[Op]] = {b: [] for b in BUCKETS}
        ids = []
        for bucket, kind, row, variant, checksum, gap in specs:
            next_id += gap
            ids.append(next_id)
            data = f'{{"row":{row},"v":{variant}}}' if kind == "PUT" else None
            new[bucket].append((next_id, kind, "todos", f"r{row}", data, checksum))
        append(new)
        for b in BUCKETS:
            history[b] += new[b]
        previous = ReplicationState.objects.get(pk=1).last_op_id
        checkpoint = max([previous] + ids[:cut])
        set_checkpoint(checkpoint)
        before = {b: stored(b) for b in BUCKETS}
        compact(buckets=["b0"] if only_b0 else None, min_share=0, batch_size=batch_size)
        for b in BUCKETS:
            check_bucket(b, history[b], before[b], checkpoint, compacted=b == "b0" or not only_b0)


def check_bucket(bucket: str, original: list[Op], before: list[Op], checkpoint: int, compacted: bool) -> None:
    ops = stored(bucket)
    if not compacted:
        assert ops == before
    # Ops beyond the checkpoint are untouched.
    assert upto(ops, 2**62, checkpoint) == upto(original, 2**62, checkpoint)
    if original:
        state = BucketState.objects.get(bucket=bucket)
        # (3) Totals: checksum and logical count unchanged, stored ops counted exactly.
        assert state.checksum == checksums.total(o[5] for o in original) == checksums.total(o[5] for o in ops)
        assert state.count == len(original)
        assert state.stored_ops == len(ops)
        assert state.last_op_id == original[-1][0] == ops[-1][0]
        assert state.compacted_to <= checkpoint
        compacted_to = state.compacted_to
    else:
        compacted_to = 0
    for o in ops:
        if o[1] in ("MOVE", "CLEAR"):
            assert o[2] is None and o[3] is None and o[4] is None
    # (1) + (2): a client at any position p of the original history that reads the compacted history from p
    # up to any checkpoint c it may be served (c >= compacted_to, c <= the compaction checkpoint) ends with the
    # rows and checksum of the original history up to c.
    ends = sorted({checkpoint, compacted_to} | {o[0] for o in original if compacted_to <= o[0] <= checkpoint})
    for end in ends:
        expected = reduce_ops(upto(original, end))
        for p in [-1] + [o[0] for o in original if o[0] <= end]:
            client = Client().apply(upto(original, p))
            assert client.apply(upto(ops, end, p)).state == expected, (p, end)
    # Maximal: nothing superseded is left as PUT/REMOVE, and at most one leading non-PUT op.
    if compacted:
        head = upto(ops, checkpoint)
        keys = [(o[2], o[3]) for o in head if o[1] in ("PUT", "REMOVE")]
        assert len(keys) == len(set(keys))
        assert not (len(head) >= 2 and head[0][1] != "PUT" and head[1][1] != "PUT")


@pytest.mark.django_db
def test_worked_example_and_clear_checksum():
    clean()
    ops = [
        (1, "PUT", "todos", "t1", '{"id":"t1","title":"Buy milk","done":0}', 608351665),
        (2, "PUT", "todos", "t2", '{"id":"t2","title":"Walk dog","done":1}', 3539835192),
        (3, "PUT", "todos", "t1", '{"id":"t1","title":"Buy milk","done":1}', 538466362),
        (4, "REMOVE", "todos", "t2", None, 103154081),
    ]
    append({"global[]": ops})
    set_checkpoint(4)
    result = compact(min_share=0)
    # Ops 1 and 2 become MOVEs; the leading run 1-2 becomes CLEAR at op 2. Op 3 is live; op 4 stays (not leading).
    assert stored("global[]") == [
        (2, "CLEAR", None, None, None, (608351665 + 3539835192) & checksums.MASK),
        ops[2],
        ops[3],
    ]
    assert BucketOp.objects.get(op_id=2).target_op == 4
    assert checksums.total(o[5] for o in stored("global[]")) == 494840004
    state = BucketState.objects.get(bucket="global[]")
    assert (state.checksum, state.count, state.stored_ops, state.compacted_to, state.ops_since_compaction) == (
        494840004, 4, 3, 4, 0)
    assert (result.buckets_compacted, result.ops_before, result.ops_after, result.ops_moved, result.ops_removed) == (
        1, 4, 3, 2, 1)


@pytest.mark.django_db
def test_share_threshold_and_ops_since_compaction():
    clean()
    append({"a": [(i, "PUT", "t", "x", f'{{"v":{i}}}', i) for i in range(1, 11)]})
    append({"b": [(11, "PUT", "t", "y", "{}", 5)]})
    set_checkpoint(11)
    compact(min_share=0.5)
    assert len(stored("a")) == 2 and len(stored("b")) == 1
    # Nothing new: neither bucket is selected again; a few new ops are below the share.
    assert compact(min_share=0.5).buckets_total == 0
    append({"a": [(12, "PUT", "t", "x", '{"v":12}', 12)]})
    assert BucketState.objects.get(bucket="a").ops_since_compaction == 1
    assert compact(min_share=0.5).buckets_total == 0
    assert compact(min_share=0.3).buckets_total == 1  # 1 of 3 stored
    # Ops appended after the checkpoint stay counted as "since compaction".
    assert BucketState.objects.get(bucket="a").ops_since_compaction == 1
    set_checkpoint(12)
    result = compact(min_share=0.3)
    assert (result.buckets_total, result.ops_moved, result.ops_removed) == (1, 1, 1)
    assert [o[1] for o in stored("a")] == ["CLEAR", "PUT"]
    assert BucketState.objects.get(bucket="a").compacted_to == 12


@pytest.mark.django_db
def test_compacted_to_is_the_buckets_last_op_not_a_later_checkpoint():
    """A bucket without ops near the checkpoint does not invalidate streams serving checkpoints after its ops."""
    clean()
    append({"a": [(1, "PUT", "t", "x", "{}", 1), (2, "PUT", "t", "x", "{}", 2)]})
    append({"b": [(3, "PUT", "t", "y", "{}", 3)]})
    set_checkpoint(3)
    compact(min_share=0)
    assert BucketState.objects.get(bucket="a").compacted_to == 2
    assert BucketState.objects.get(bucket="b").compacted_to == 0  # nothing rewritten: no invalidation
    assert BucketOp.objects.get(op_id=2).op == "PUT"


@pytest.mark.django_db
def test_large_bucket_in_many_batches():
    clean()
    rng = random.Random(7)
    ops = []
    for i in range(1, 3001):
        row = rng.randrange(50)
        ops.append((i, "REMOVE" if rng.random() < 0.1 else "PUT", "t", f"r{row}", None, rng.randrange(2**32)))
    ops = [(i, k, t, o, f'{{"i":{i}}}' if k == "PUT" else None, c) for i, k, t, o, _, c in ops]
    append({"big": ops})
    set_checkpoint(3000)
    calls: list[CompactionProgress] = []
    result = compact(min_share=0, batch_size=97, progress=calls.append)
    after = stored("big")
    # One CLEAR up to the oldest latest op, then every later op (superseded ones as MOVE), one PUT/REMOVE per row.
    assert after[0][1] == "CLEAR" and after[1][1] in ("PUT", "REMOVE")
    assert len(after) == 1 + 3000 - after[0][0] < 500
    assert len([o for o in after if o[1] in ("PUT", "REMOVE")]) <= 50
    assert reduce_ops(after) == reduce_ops(ops)
    assert result.ops_after == len(after) and result.ops_before == 3000
    assert calls[-1].phase == "done" and calls[-1].buckets_done == calls[-1].buckets_total == 1
    assert calls[-1].ops_scanned == 3000
    assert sum(1 for c in calls if c.phase != "done") >= 3000 // 97


@pytest.mark.django_db
def test_rebuild_during_compaction_stops_the_run():
    clean()
    append({"a": [(1, "PUT", "t", "x", "{}", 1), (2, "PUT", "t", "x", "{}", 2)]})
    set_checkpoint(2)

    def rebuild(progress: CompactionProgress) -> None:
        ReplicationState.objects.filter(pk=1).update(rules_version=5)

    result = compact(min_share=0, progress=rebuild)
    assert result.rebuilt
    assert [o[1] for o in stored("a")] == ["MOVE", "PUT"]  # first transaction kept, then stopped


@pytest.mark.django_db
def test_bad_arguments():
    with pytest.raises(ValueError):
        compact(batch_size=1)
    with pytest.raises(ValueError):
        compact(min_share=-1)


# --- end to end through capture and replication ------------------------------------------------------------


def all_expected_rows() -> dict[str, dict[tuple[str, str], str]]:
    """Rows every bucket must hold: rendered from the querysets of the bucket definitions."""
    rules = get_rules()
    version = ReplicationState.objects.get(pk=1).rules_version
    out: dict[str, dict[tuple[str, str], str]] = {}
    for model in rules.models:
        attnames = [f.attname for f in model._meta.concrete_fields]
        for row in model._base_manager.values(*attnames):
            for bucket, table, object_id, data in rules.row_buckets(model._meta.label_lower, row, version):
                out.setdefault(bucket, {})[(table, object_id)] = data
    return out


def expected_rows(bucket: str) -> dict[tuple[str, str], str]:
    return all_expected_rows().get(bucket, {})


def check_all_buckets() -> None:
    """Every bucket reduces to exactly its queryset rows, and its totals match the stored ops."""
    checkpoint = ReplicationState.objects.get(pk=1).last_op_id
    expected = all_expected_rows()
    buckets = set(BucketState.objects.values_list("bucket", flat=True))
    assert set(expected) <= buckets
    for bucket in buckets:
        ops = storage.read_ops(bucket, 0, checkpoint, 10**9)
        rows, total = reduce_ops(ops)
        state = BucketState.objects.get(bucket=bucket)
        assert rows == expected.get(bucket, {}), bucket
        assert total == state.checksum == checksums.total(BucketOp.objects.filter(bucket=bucket)
                                                          .values_list("checksum", flat=True)), bucket
        assert state.stored_ops == BucketOp.objects.filter(bucket=bucket).count(), bucket


@pytest.mark.django_db
def test_end_to_end_demo_todos():
    lst = TodoList.objects.create(name="groceries", owner_id="u1")
    replicate_now()
    todo = Todo.objects.create(list=lst, description="milk")
    for i in range(200):
        todo.description = f"milk x{i}"
        todo.save()
    others = [Todo.objects.create(list=lst, description=f"other {i}") for i in range(3)]
    replicate_now()
    others[0].delete()
    replicate_now()
    [bucket] = [b for b in BucketState.objects.values_list("bucket", flat=True) if "todos_by_list" in b]
    checkpoint = ReplicationState.objects.get(pk=1).last_op_id
    state = BucketState.objects.get(bucket=bucket)
    before = BucketOp.objects.filter(bucket=bucket).count()
    assert before == state.stored_ops == 205

    result = compact()

    after = BucketOp.objects.filter(bucket=bucket).count()
    assert before > 200 and after <= 6, (before, after)
    new_state = BucketState.objects.get(bucket=bucket)
    assert (new_state.checksum, new_state.count, new_state.last_op_id) == (state.checksum, state.count,
                                                                            state.last_op_id)
    assert new_state.stored_ops == after and new_state.compacted_to == checkpoint
    rows, total = reduce_ops(storage.read_ops(bucket, 0, checkpoint, 10**9))
    assert total == state.checksum
    assert rows == expected_rows(bucket)
    assert {object_id for _, object_id in rows} == {str(t.id) for t in Todo.objects.filter(list=lst)}
    assert result.ops_before >= 205 and result.ops_after == result.ops_before - result.ops_removed
    check_all_buckets()
    print(f"\nend-to-end: bucket {bucket}: {before} -> {after} stored ops")


# --- a stream serving an older checkpoint (sync.py's invalidation hook) -------------------------------------


@pytest.mark.django_db(transaction=True)
def test_stream_on_older_checkpoint_withholds_it_and_completes_the_next():
    lst = TodoList.objects.create(name="l", owner_id="u1")
    todo = Todo.objects.create(list=lst, description="v0")
    replicate_now()
    bucket = next(b for b in BucketState.objects.values_list("bucket", flat=True) if "todos_by_list" in b)

    def change_and_compact() -> None:
        for i in range(1, 6):
            todo.description = f"v{i}"
            todo.save()
        replicate_now()
        compact(min_share=0)
        connection.close()

    async def run() -> list[dict]:
        session = SyncSession(claims_for("u1"), SyncRequest())
        await session.prepare()
        gen = session.lines()
        lines = [await gen.__anext__()]  # the checkpoint; no data read yet
        await asyncio.to_thread(change_and_compact)
        async with asyncio.timeout(10):
            async for line in gen:
                lines.append(line)
                if "checkpoint_complete" in line:
                    break
        await gen.aclose()
        return lines

    lines = asyncio.run(run())
    first = lines[0]["checkpoint"]["last_op_id"]
    completes = [line["checkpoint_complete"]["last_op_id"] for line in lines if "checkpoint_complete" in line]
    assert completes and completes[0] != first  # the old checkpoint was never reported complete
    # What the client applied validates against the checkpoint it was told complete.
    ops: list[Op] = []
    expected = {}
    for line in lines:
        for key in ("checkpoint", "checkpoint_diff"):
            if key in line:
                for b in line[key].get("buckets", line[key].get("updated_buckets", [])):
                    expected[b["bucket"]] = b["checksum"] & checksums.MASK
        if "data" in line and line["data"]["bucket"] == bucket:
            ops += [(int(o["op_id"]), o["op"], o.get("object_type"), o.get("object_id"), o.get("data"),
                     o["checksum"]) for o in line["data"]["data"]]
    rows, total = reduce_ops(ops)
    assert total == expected[bucket]
    assert rows == expected_rows(bucket)
    assert BucketState.objects.get(bucket=bucket).compacted_to > int(first)


def claims_for(user: str):
    from powersync_django.auth import TokenClaims

    return TokenClaims(user_id=user, expires_at=time.time() + 3600, claims={"sub": user})


# --- concurrency (PostgreSQL) ------------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_replicator_and_compaction():
    lists = [TodoList.objects.create(name=f"l{i}", owner_id=f"u{i % 2}") for i in range(3)]
    todos = [Todo.objects.create(list=lists[i % 3], description=f"t{i}") for i in range(12)]
    replicate_now()
    # Each writer owns some todos (concurrent delete + save of one row would re-insert it twice).
    owned = {w: [t.id for t in todos[w::3]] for w in range(3)}
    list_ids = [lst.id for lst in lists]
    stop = threading.Event()
    errors: list[BaseException] = []
    compactions = [0, 0, 0]  # runs, ops moved, ops removed

    def guarded(fn):
        def run():
            try:
                fn()
            except BaseException as exc:  # surfaced by the assertion below
                errors.append(exc)
                stop.set()
            finally:
                connection.close()
        return run

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        until = time.monotonic() + 4
        for n in range(1500):
            if stop.is_set() or time.monotonic() > until:
                return
            todo = Todo.objects.filter(pk=rng.choice(owned[seed])).first()
            if todo is None:
                continue
            action = rng.random()
            if action < 0.08:
                todo.delete()
                owned[seed].append(Todo.objects.create(list_id=rng.choice(list_ids), description=f"new {seed}-{n}").id)
            elif action < 0.16:
                todo.list_id = rng.choice(list_ids)  # moves between buckets: PUT + REMOVE
                todo.save()
            else:
                todo.description = f"{seed}-{n}"
                todo.completed = not todo.completed
                todo.save()

    def replicator() -> None:
        rep = Replicator(owner="test-replicator")
        while not stop.is_set():
            try:
                rep.drain(max_batches=5)
            except LeaseLost:
                pass
            time.sleep(0.005)
        rep.release()

    def compactor() -> None:
        rng_batch = random.Random(threading.get_ident())
        while not stop.is_set():
            result = compact(min_share=0, batch_size=rng_batch.choice([2, 7, 50, 1000]))
            compactions[0] += 1
            compactions[1] += result.ops_moved
            compactions[2] += result.ops_removed

    writers = [threading.Thread(target=guarded(lambda s=s: writer(s))) for s in range(3)]
    # Two compactors: overlapping runs (a slow cron job and the next one) must be safe too.
    others = [threading.Thread(target=guarded(replicator))] + [threading.Thread(target=guarded(compactor))
                                                               for _ in range(2)]
    for t in writers + others:
        t.start()
    for t in writers:
        t.join(30)
    deadline = time.monotonic() + 20  # a few compaction runs also overlap the replicator catching up
    runs = compactions[0]
    while compactions[0] < max(3, runs + 1) and time.monotonic() < deadline and not errors:
        time.sleep(0.05)
    stop.set()
    for t in writers + others:
        t.join(30)
    assert not errors, errors
    assert compactions[0] >= 2 and compactions[2] > 0
    print(f"\nconcurrent: {compactions[0]} compaction runs, {compactions[1]} ops moved, {compactions[2]} removed")
    replicate_now()
    check_all_buckets()
    compact(min_share=0)
    check_all_buckets()


# --- the command -------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_command_options_and_output():
    clean()
    append({"a": [(i, "PUT", "t", "x", f'{{"v":{i}}}', i) for i in range(1, 21)]})
    append({"b": [(i, "PUT", "t", "y", f'{{"v":{i}}}', i) for i in range(21, 31)]})
    set_checkpoint(30)
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError, match="No such bucket: 'missing'"):
        call_command("powersync_compact", "--bucket", "a", "--bucket", "missing", "--min-changed-share", "0")
    assert len(stored("a")) == 20  # an unknown name compacts nothing
    call_command("powersync_compact", "--bucket", "a", "--min-changed-share", "0",
                 "--batch-size", "5", "-v", "2", stdout=out, stderr=err)
    text = out.getvalue()
    assert "[1/1 buckets] 20 ops scanned, 19 moved, 18 removed" in text
    assert "Compacted 1 of 1 buckets (1 changed): 20 -> 2 ops (19 rewritten as MOVE, 18 removed by CLEAR)" in text
    assert len(stored("a")) == 2 and len(stored("b")) == 10
    out = io.StringIO()
    call_command("powersync_compact", stdout=out)
    assert "Compacted 1 of 1 buckets" in out.getvalue() and len(stored("b")) == 2
    out = io.StringIO()
    call_command("powersync_compact", stdout=out)
    assert out.getvalue().strip() == "No bucket needs compaction."
    with pytest.raises(CommandError):
        call_command("powersync_compact", "--batch-size", "1")
    with pytest.raises(CommandError):
        call_command("powersync_compact", "--min-changed-share", "-0.5")


@pytest.mark.django_db
def test_command_unknown_bucket_names_the_stored_form():
    clean()
    append({"3#list_todos[\"x\"]": [(1, "PUT", "t", "x", "{}", 1)]})
    set_checkpoint(1)
    with pytest.raises(CommandError, match=r"'list_todos\[\"x\"\]' \(did you mean '3#list_todos\[\"x\"\]'\?\)"):
        call_command("powersync_compact", "--bucket", 'list_todos["x"]')


@pytest.mark.django_db
def test_command_interrupted(monkeypatch):
    clean()
    append({"a": [(i, "PUT", "t", "x", "{}", i) for i in range(1, 21)]})
    set_checkpoint(20)
    from powersync_django.compaction import _Run

    original = _Run._clears

    def interrupted(self, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(_Run, "_clears", interrupted)
    with pytest.raises(CommandError, match="Interrupted") as info:
        call_command("powersync_compact", "--batch-size", "5", stdout=io.StringIO())
    assert info.value.returncode == 130
    # The MOVE pass committed; the history is consistent and the next run finishes the work.
    assert [o[1] for o in stored("a")].count("MOVE") == 19
    monkeypatch.setattr(_Run, "_clears", original)
    call_command("powersync_compact", "--min-changed-share", "0", stdout=io.StringIO())
    assert [o[1] for o in stored("a")] == ["CLEAR", "PUT"]
    state = BucketState.objects.get(bucket="a")
    assert state.stored_ops == 2 and state.checksum == checksums.total(range(1, 21))
