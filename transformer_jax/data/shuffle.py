"""Each epoch's order of the training pairs: a seeded permutation of [0, n), evaluated at
any positions at once, with no array of n.

A Feistel network over the smallest even number of bits that holds n, walked through
its cycle until it lands below n (a permutation of [0, 2^bits) restricted to [0, n) is a
permutation of [0, n)). Grain's `index_shuffle` computes the same kind of permutation,
but one Python call per index; a host packing 10^5 pairs a second cannot afford that.
"""
from __future__ import annotations

import hashlib

import numpy as np

ROUNDS = 6
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def keys(seed: int, epoch: int) -> np.ndarray:
  """The round keys of epoch `epoch`'s permutation."""
  digest = hashlib.sha512(f'{seed}/{epoch}'.encode()).digest()
  return np.frombuffer(digest[:8 * ROUNDS], '<u8').astype(np.uint64)


def _mix(x: np.ndarray) -> np.ndarray:
  """splitmix64's finalizer: every output bit depends on every input bit."""
  x = (x ^ (x >> np.uint64(30))) * _M1
  x = (x ^ (x >> np.uint64(27))) * _M2
  return x ^ (x >> np.uint64(31))


def permute(positions: np.ndarray, n: int, round_keys: np.ndarray) -> np.ndarray:
  """The elements at `positions` (each in [0, n)) of the permutation of [0, n) that
  `round_keys` choose."""
  half = max(1, (int(n - 1).bit_length() + 1) // 2)
  mask = np.uint64((1 << half) - 1)
  x = np.asarray(positions, np.uint64).copy()
  todo = np.arange(len(x))
  with np.errstate(over='ignore'):  # multiplication modulo 2^64 is the point
    while len(todo):
      y = x[todo]
      for key in round_keys:
        left, right = y >> np.uint64(half), y & mask
        y = (right << np.uint64(half)) | (left ^ (_mix(right ^ key) & mask))
      x[todo] = y
      todo = todo[y >= np.uint64(n)]
  return x.astype(np.int64)
