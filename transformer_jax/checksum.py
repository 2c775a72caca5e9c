"""Checksums of the values of a pytree of (sharded) arrays: what a checkpoint stores to
prove, after a restore, that every array came back exactly as it was in memory.

Why values and not files: Orbax writes arrays through TensorStore (OCDBT + zarr), which
checksums no array data, and a checksum of the files re-read after writing would vouch
for whatever the disk returned. This one is computed on the devices from the arrays
themselves, before the save, and again on the restored arrays, whatever mesh or number
of processes either side had: each element's bits are mixed with its global index and
summed modulo 2**32 (integer sums are exact, so the order of the reduction over shards
and processes does not matter). Two lanes, 64 bits in all: h = fmix32(bits ^ index * phi)
summed, and h * (h | 1) summed. h is a bijection of the element's bits, so any change to
one element always changes the first lane; other changes go unseen with a probability of
about 2**-64. Cost on a 2-core CPU: ~50 ms for the 23M elements of the cpu-small train
state (bench/checkpoint_io.py).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

from transformer_jax.dropout import flat_index, fmix32  # its counter hash, reused

ALGORITHM = 'fmix32-index-sum2/1'  # stored beside the checksums: change it with the code
_GOLDEN = np.uint32(0x9E3779B9)  # 2**32 / phi: spreads consecutive indices apart


def _words(x: jax.Array) -> jax.Array:
  """Every element's bits as uint32 words (a 64-bit element gives two)."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  size = x.dtype.itemsize
  if size >= 4:  # a 64-bit element gives a trailing axis of 2
    return lax.bitcast_convert_type(x, jnp.uint32)
  return lax.bitcast_convert_type(x, jnp.dtype(f'uint{8 * size}')).astype(jnp.uint32)


def _lanes(x: jax.Array) -> jax.Array:
  """(2,) uint32: the sums of h and of h * (h | 1), h = fmix32(word ^ index * golden)."""
  words = _words(x)
  h = fmix32(words ^ (flat_index(words.shape) * _GOLDEN))
  return jnp.stack([jnp.sum(h, dtype=jnp.uint32),
                    jnp.sum(h * (h | np.uint32(1)), dtype=jnp.uint32)])


def path_name(path) -> str:
  """'params/encoder/layers/0/kernel': a key path as the same string for any container."""
  parts = []
  for key in path:
    for attr in ('name', 'key', 'idx'):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
  return '/'.join(parts)


@functools.cache
def _all_lanes(replicated: jax.sharding.Sharding):
  """The checksum program whose every output is replicated on `replicated`'s devices:
  `digests` reads one device's copy, so XLA must not choose another layout (on a pod it
  could leave each process a part of the sum)."""
  return jax.jit(lambda tree: jax.tree.map(_lanes, tree), out_shardings=replicated)


def _replicated(tree) -> jax.sharding.Sharding:
  sharding = jax.tree.leaves(tree)[0].sharding
  if isinstance(sharding, NamedSharding):
    return NamedSharding(sharding.mesh, P())
  return sharding  # a single device's


def start(tree):
  """Start computing `tree`'s checksums on its devices; returns at once (`digests` waits).
  A collective: every process of a multi-process run calls it with its shards of the same
  global arrays. Later updates that donate the arrays wait for it to read them."""
  tree = jax.tree.map(lambda x: x if isinstance(x, jax.Array) else jnp.asarray(x), tree)
  return _all_lanes(_replicated(tree))(tree)


def checksums(tree) -> dict[str, str]:
  """{path: 16 hex digits} for every array of `tree` (a collective, as `start`)."""
  return digests(start(tree))


def digests(lanes) -> dict[str, str]:
  """{path: 16 hex digits} of what `start` computes (waits for it)."""
  out = {}
  for path, value in jax.tree_util.tree_flatten_with_path(lanes)[0]:
    assert value.sharding.is_fully_replicated, value.sharding  # pinned by _all_lanes
    a, b = np.asarray(value.addressable_shards[0].data)
    out[path_name(path)] = f'{int(a):08x}{int(b):08x}'
  return out


def mismatches(tree, expected: dict[str, str], prefix: str = '') -> list[str]:
  """The paths of `tree` (under `prefix` in `expected`) whose values do not match."""
  found = checksums(tree)
  return sorted(p for p, digest in found.items()
                if expected.get(prefix + p) != digest)
