"""The mesh and the logical-axis rules (sharding.py): axis sizes from config, the specs of
parameters and batches, and the clear errors of a mesh or batch that cannot fit."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from transformer_jax import sharding
from transformer_jax.errors import UserError


def mesh_config(data, fsdp, tensor):
  return ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))


@pytest.mark.parametrize('sizes, devices, expected', [
    ((-1, 1, 1), 8, (8, 1, 1)), ((1, -1, 2), 8, (1, 4, 2)), ((2, 2, 2), 8, (2, 2, 2)),
    ((1, 1, -1), 1, (1, 1, 1))])
def test_mesh_shape_fills_the_minus_one_axis(sizes, devices, expected):
  assert sharding.mesh_shape(mesh_config(*sizes), devices) == expected


@pytest.mark.parametrize('sizes, message', [
    ((-1, -1, 1), 'At most one mesh axis may be -1'),
    ((3, -1, 1), 'not divisible by 3'),
    ((2, 2, 1), 'multiply to 4 but there are 8 devices')])
def test_mesh_that_cannot_cover_the_devices(sizes, message):
  with pytest.raises(UserError, match=message):
    sharding.mesh_shape(mesh_config(*sizes), 8)


def test_rules_map_logical_axes_to_mesh_axes():
  assert sharding.logical_to_spec(('embed', 'mlp')) == P('fsdp', 'tensor')
  assert sharding.logical_to_spec(('vocab', 'embed')) == P('tensor', 'fsdp')
  assert sharding.logical_to_spec(('batch', 'length')) == P(('data', 'fsdp'), None)
  assert sharding.logical_to_spec(('embed', 'heads', 'kv')) == P('fsdp', 'tensor', None)


def test_batches_split_over_data_and_fsdp():
  mesh = sharding.make_mesh(mesh_config(2, 2, 2))
  assert sharding.data_parallel_size(mesh) == 4
  rows = np.arange(8 * 3, dtype=np.int32).reshape(8, 3)
  placed = sharding.place_batch({'source': rows}, mesh)['source']
  np.testing.assert_array_equal(np.asarray(placed), rows)
  assert placed.sharding.spec == P(('data', 'fsdp'), None)
  assert {s.data.shape for s in placed.addressable_shards} == {(2, 3)}  # 4 row groups
  sharding.check_batch(8, mesh)
  with pytest.raises(UserError, match='batch_size=6 is not divisible by the data-parallel '
                                      r'size 4 .*use a multiple of 4'):
    sharding.check_batch(6, mesh)


def test_mesh_over_chosen_devices():
  mesh = sharding.make_mesh(mesh_config(1, -1, 1), jax.devices()[:2])
  assert dict(mesh.shape) == {'data': 1, 'fsdp': 2, 'tensor': 1}


def test_weight_update_sharding_adds_data_to_the_largest_dimension_that_divides():
  mesh = sharding.make_mesh(mesh_config(4, 2, 1))
  shape = lambda *dims: jax.ShapeDtypeStruct(dims, np.float32)
  specs = {'w': P('fsdp', 'tensor'), 'table': P('tensor', 'fsdp'), 'scale': P('fsdp'),
           'odd': P(None, 'fsdp'), 'bias': P()}
  shapes = {'w': shape(32, 64), 'table': shape(100, 32), 'scale': shape(8),
            'odd': shape(3, 6), 'bias': shape(6)}
  assert sharding.update_specs(specs, shapes, mesh) == {
      'w': P('fsdp', ('tensor', 'data')),  # 64 per shard beats 16
      'table': P(('tensor', 'data'), 'fsdp'),  # 100 divides by 4; 32 / 2 = 16 is smaller
      'scale': P(('fsdp', 'data')),  # 8 / 2 = 4 still divides by 4
      'odd': P(None, 'fsdp'),  # neither 3 nor 6 / 2 divides by 4: left as it was
      'bias': P()}  # 6 does not divide either
  one = sharding.make_mesh(mesh_config(1, 8, 1))
  assert sharding.update_specs(specs, shapes, one) == specs  # no data axis to split over
