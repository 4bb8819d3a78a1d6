"""Counter-based randomness: every draw is a pure function of (seed, stream, index).

Why not one `random.Random` per worker: the request sequence must not depend on how many workers
share it. Request `i` draws from `(seed, stream, i)` alone, so worker k of n building indices
k, k+n, k+2n, ... gets exactly the requests a single worker would build at those indices. The mix is
SplitMix64 (Steele, Lea & Flood 2014), vectorised over numpy `uint64` arrays, whose arithmetic wraps
modulo 2**64 as the algorithm needs.
"""

from __future__ import annotations

import hashlib

import numpy as np
import numpy.typing as npt

__all__ = ["U64", "stream_key", "uniforms"]

U64 = npt.NDArray[np.uint64]
_MASK = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_2_53 = 1.0 / (1 << 53)


def _mix(x: U64) -> U64:
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def stream_key(seed: int, stream: str) -> int:
    """A 64-bit key for one named stream of draws (input lengths, output lengths, dataset order...)."""
    digest = hashlib.blake2b(f"{seed & _MASK}:{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def uniforms(key: int, index: npt.ArrayLike, draw: int = 0) -> npt.NDArray[np.float64]:
    """Uniform floats in [0, 1), one per index: draw number `draw` of stream `key` at each index."""
    idx = np.asarray(index, dtype=np.uint64)
    h = _mix(_mix(idx ^ np.uint64(key)) + np.uint64(draw & _MASK))
    return (h >> np.uint64(11)).astype(np.float64) * _2_53
