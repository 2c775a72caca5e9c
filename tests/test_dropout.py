"""Hash-based dropout masks: the right keep rate and scale, balanced bits, no correlation
between keys or neighbouring elements, and the same mask on any mesh."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from transformer_jax.dropout import Dropout, uniform_bits

SHAPE = (64, 32, 256)  # one cpu-small activation: 524,288 elements
N = np.prod(SHAPE)


def test_keep_rate_and_scaling():
  x = jnp.ones(SHAPE)
  y = np.asarray(Dropout(0.1)(x, deterministic=False, rngs=nnx.Rngs(dropout=0)))
  kept = y != 0
  sigma = np.sqrt(0.9 * 0.1 / N)
  assert abs(kept.mean() - 0.9) < 5 * sigma
  np.testing.assert_allclose(y[kept], 1 / 0.9, rtol=1e-6)
  assert Dropout(0.1)(x, deterministic=True) is x


def test_every_bit_is_balanced():
  bits = np.asarray(uniform_bits(jax.random.key(3), SHAPE)).reshape(-1)
  ones = np.array([((bits >> b) & 1).mean() for b in range(32)])
  assert np.all(np.abs(ones - 0.5) < 5 * np.sqrt(0.25 / N)), ones


def test_masks_are_uncorrelated_across_keys_and_neighbours():
  """Correlation of keep masks (p = 0.5 here): between two keys, between each element
  and the next one along every axis, and between a key and its fold_in successor (the
  next dropout site in one step)."""
  def mask(key):
    return np.asarray(uniform_bits(key, SHAPE) < jnp.uint32(2 ** 31)).astype(np.float64)

  def corr(a, b):
    return np.corrcoef(a.reshape(-1), b.reshape(-1))[0, 1]

  key = jax.random.key(0)
  a = mask(key)
  bound = 5 / np.sqrt(N)
  assert abs(corr(a, mask(jax.random.key(1)))) < bound
  assert abs(corr(a, mask(jax.random.fold_in(key, 1)))) < bound
  for axis in range(3):
    first = np.take(a, range(a.shape[axis] - 1), axis)
    second = np.take(a, range(1, a.shape[axis]), axis)
    assert abs(corr(first, second)) < 5 / np.sqrt(first.size)


def test_same_mask_on_any_mesh():
  assert len(jax.devices()) == 8
  key = jax.random.key(7)
  single = jax.jit(lambda k: uniform_bits(k, SHAPE))(key)
  mesh = jax.make_mesh((4, 2), ('a', 'b'), devices=jax.devices())
  sharded = jax.jit(lambda k: uniform_bits(k, SHAPE),
                    out_shardings=NamedSharding(mesh, P('a', None, 'b')))(key)
  assert len(sharded.addressable_shards) == 8
  np.testing.assert_array_equal(np.asarray(single), np.asarray(sharded))
