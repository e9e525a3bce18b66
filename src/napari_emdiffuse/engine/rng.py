"""Seeds derived from integer keys, so that every random draw is a function of where and when it
happens (a pixel block, a training step, a rank), never of what ran before it."""

from __future__ import annotations


def splitmix(*keys: int) -> int:
    """A 63-bit hash of integers (splitmix64 steps): a seed for ``torch.Generator.manual_seed``."""
    z = 0x9E3779B97F4A7C15
    for k in keys:
        z = (z ^ (k & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        z ^= z >> 31
    return z & 0x7FFFFFFFFFFFFFFF
