"""Operation checksums and wrapping 32-bit sums, as the PowerSync protocol needs them (protocol.md §9)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

MASK = 0xFFFFFFFF


def _hash32(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "little")


def put_checksum(object_type: str, object_id: str, data: str) -> int:
    """Checksum of a PUT: first 4 bytes (little endian) of SHA-256 of ``put.<type>.<id>.<data>``."""
    return _hash32(f"put.{object_type}.{object_id}.{data}")


def remove_checksum(object_type: str, object_id: str) -> int:
    """Checksum of a REMOVE of a row (deterministic; clients never recompute it)."""
    return _hash32(f"delete.{object_type}.{object_id}")


def add(a: int, b: int) -> int:
    """Wrapping 32-bit sum of two checksums."""
    return (a + b) & MASK


def total(checksums: Iterable[int]) -> int:
    """Wrapping 32-bit sum of many checksums."""
    return sum(checksums) & MASK


def to_signed(value: int) -> int:
    """The signed 32-bit reading of an unsigned checksum (how the reference service prints sums)."""
    value &= MASK
    return value - (1 << 32) if value >= 1 << 31 else value
