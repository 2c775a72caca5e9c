"""Checksums of array values (checksum.py): any change to an element is seen, in every
dtype a checkpoint holds, and the result does not depend on how arrays are sharded."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from transformer_jax import checksum


def _tree():
  rng = np.random.default_rng(0)
  return {'f32': jnp.asarray(rng.normal(size=(16, 24)), jnp.float32),
          'bf16': jnp.asarray(rng.normal(size=(16, 8)), jnp.bfloat16),
          'i32': jnp.int32(7), 'u8': jnp.asarray(rng.integers(0, 255, 40), jnp.uint8),
          'flags': jnp.asarray([True, False, True]),
          'rng': jax.random.key(3)}


@pytest.mark.parametrize('leaf', ['f32', 'bf16', 'i32', 'u8', 'flags'])
def test_every_single_bit_flip_is_seen(leaf):
  tree = _tree()
  saved = checksum.checksums(tree)
  value = np.asarray(tree[leaf])
  bits = value.view(np.dtype(f'uint{8 * value.dtype.itemsize}')).reshape(-1)
  for i in np.random.default_rng(1).choice(bits.size, min(bits.size, 8), replace=False):
    for bit in (0, 8 * value.dtype.itemsize - 1):
      if value.dtype == np.bool_ and bit:
        continue  # a bool holds one bit that counts
      damaged = bits.copy()
      damaged[i] ^= damaged.dtype.type(1) << damaged.dtype.type(bit)
      other = dict(tree, **{leaf: jnp.asarray(damaged.view(value.dtype).reshape(value.shape))})
      assert checksum.mismatches(other, saved) == [leaf]


def test_swapped_elements_and_keys_are_seen():
  tree = _tree()
  saved = checksum.checksums(tree)
  swapped = dict(tree, f32=tree['f32'][::-1])
  assert checksum.mismatches(swapped, saved) == ['f32']
  assert checksum.mismatches(dict(tree, rng=jax.random.key(4)), saved) == ['rng']
  assert checksum.mismatches(tree, saved) == []


def test_the_same_values_give_the_same_checksum_on_any_sharding():
  tree = {'w': jnp.arange(64 * 32, dtype=jnp.float32).reshape(64, 32) / 7}
  single = checksum.checksums(tree)
  mesh = jax.make_mesh((4, 2), ('a', 'b'))
  for spec in (P('a', 'b'), P(None, ('a', 'b')), P()):
    placed = jax.device_put(tree['w'], NamedSharding(mesh, spec))
    assert checksum.checksums({'w': placed}) == single


def test_path_names_are_the_same_for_any_container():
  from transformer_jax.steps import TrainState
  state = TrainState(step=jnp.int32(0), params={'a': [jnp.ones(2)]}, opt_state=(),
                     rng=jax.random.key(0))
  names = set(checksum.checksums(state))
  assert 'params/a/0' in names and 'step' in names
  assert set(checksum.checksums({'params': state.params})) == {'params/a/0'}


def test_the_checksums_are_replicated_whatever_the_layout_of_the_arrays():
  """`digests` reads one device's copy: the program's outputs must be whole on each."""
  mesh = jax.make_mesh((1, 4, 2), ('data', 'fsdp', 'tensor'))
  tree = {'w': jax.device_put(jnp.arange(64 * 32, dtype=jnp.float32).reshape(64, 32),
                              NamedSharding(mesh, P('fsdp', 'tensor'))),
          'v': jax.device_put(jnp.arange(8, dtype=jnp.int32), NamedSharding(mesh, P('fsdp')))}
  for lanes in jax.tree.leaves(checksum.start(tree)):
    assert lanes.sharding.is_fully_replicated and lanes.sharding.mesh == mesh
  assert checksum.checksums(tree) == checksum.checksums(jax.device_get(tree))
