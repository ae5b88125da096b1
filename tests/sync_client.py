"""A model of a PowerSync client's bucket bookkeeping, for tests and benchmarks that validate sync streams.

It applies sync lines as the client does (protocol.md §6.9): data ops accumulate per bucket, a full
``checkpoint`` drops the buckets it does not list, ``checkpoint_complete`` validates every bucket of the
checkpoint (checksum and count of the ops received against the checkpoint's) and then moves every bucket's
position to the checkpoint id. A CLEAR op (compaction) replaces the bucket's checksum; its count is then no
longer comparable (compaction keeps ``count``), so only checksums are validated for it. Positions survive
reconnections (``request_buckets``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from powersync_django import checksums


@dataclass
class ClientModel:
    """One client's buckets; records every failed validation instead of raising."""

    positions: dict[str, int] = field(default_factory=dict)
    received: dict[str, tuple[int, int]] = field(default_factory=dict)  # bucket -> (checksum, count)
    cleared: set[str] = field(default_factory=set)  # buckets that received a CLEAR
    target: dict[str, tuple[int, int]] = field(default_factory=dict)
    last_op_id: int = 0
    completed: int = 0
    mismatches: list[str] = field(default_factory=list)
    omitted: list[str] = field(default_factory=list)
    regressions: list[str] = field(default_factory=list)

    def request_buckets(self) -> dict[str, int]:
        return dict(self.positions)

    def apply(self, line: dict[str, Any]) -> bool:
        """Apply one line; True when a validation failed (the client would re-sync: reconnect)."""
        if "checkpoint" in line:
            cp = line["checkpoint"]
            self.last_op_id = int(cp["last_op_id"])
            self.target = {b["bucket"]: (b["checksum"] & checksums.MASK, b["count"]) for b in cp["buckets"]}
            for bucket in set(self.received) - set(self.target):
                self._drop(bucket)
            for bucket, (_, count) in self.target.items():
                if count == 0 and self.received.get(bucket, (0, 0))[1] > 0:
                    self.omitted.append(f"{bucket} at {self.last_op_id}")
        elif "checkpoint_diff" in line:
            diff = line["checkpoint_diff"]
            op_id = int(diff["last_op_id"])
            if op_id < self.last_op_id:
                self.regressions.append(f"diff to {op_id} after {self.last_op_id}")
            self.last_op_id = op_id
            for b in diff["updated_buckets"]:
                self.target[b["bucket"]] = (b["checksum"] & checksums.MASK, b["count"])
            for bucket in diff["removed_buckets"]:
                self.target.pop(bucket, None)
                self._drop(bucket)
        elif "data" in line:
            data = line["data"]
            bucket = data["bucket"]
            checksum, count = self.received.get(bucket, (0, 0))
            for op in data["data"]:
                op_id = int(op["op_id"])
                if op_id <= self.positions.get(bucket, 0) or op_id > self.last_op_id:
                    self.mismatches.append(f"{bucket}: op {op_id} outside ({self.positions.get(bucket, 0)}, "
                                           f"{self.last_op_id}]")
                if op["op"] == "CLEAR":
                    checksum, count = op["checksum"] & checksums.MASK, 0
                    self.cleared.add(bucket)
                else:
                    checksum = checksums.total([checksum, op["checksum"]])
                count += 1
                self.positions[bucket] = op_id
            self.received[bucket] = (checksum, count)
        elif "checkpoint_complete" in line:
            failed = False
            for bucket, expected in self.target.items():
                got = self.received.get(bucket, (0, 0))
                if bucket in self.cleared:
                    got, expected = got[0], expected[0]
                if got != expected:
                    self.mismatches.append(f"{bucket} at {self.last_op_id}: received {got}, checkpoint {expected}")
                    self._drop(bucket)
                    failed = True
            if failed:
                return True
            self.completed += 1
            for bucket in self.target:
                self.positions[bucket] = self.last_op_id
        return False

    def _drop(self, bucket: str) -> None:
        self.received.pop(bucket, None)
        self.cleared.discard(bucket)
        self.positions.pop(bucket, None)
