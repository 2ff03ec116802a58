"""Seed derivation shared by every stage: one generator seed per (run seed, what, item, draw, ...).

A seed is a hash of the parts' text forms, so a sample's noise, an estimator's draws or a fold assignment never
depend on batch size, shard size, order or device. Stages import this module, never each other, for their seeds.
"""
from __future__ import annotations

import hashlib


def derive_seed(*parts) -> int:
    """A 63-bit generator seed from the parts' text forms joined by a unit separator (SHA-256)."""
    key = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & (2 ** 63 - 1)
