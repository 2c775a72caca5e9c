"""Compiling for TPU topologies (topology.py), the parts that need no TPU compile: slices
libtpu knows or not, and the collectives counted in a program's text. (The compiles
themselves: test_aot.py, slow.)"""
import pytest

from transformer_jax import topology
from transformer_jax.errors import UserError


def test_a_slice_has_one_device_per_chip():
  assert len(topology.topology_devices('v5e:2x2')) == 4
  assert len(topology.topology_devices('v4:2x2x1')) == 4  # megacore: 2 cores, one device


@pytest.mark.parametrize('name, message', [
    ('v9z:2x2', 'expected CHIP:SHAPE with CHIP one of v4, v5e'),
    ('v5e', 'expected CHIP:SHAPE'),
    ('v5e:3x7', 'is not a TPU slice libtpu knows')])
def test_unknown_slices_are_named(name, message):
  with pytest.raises(UserError, match=message):
    topology.topology_devices(name)


def test_collectives_are_counted_once_each_with_their_async_starts():
  hlo = '\n'.join([
      '%all-reduce.1 = f32[8]{0} all-reduce(f32[8]{0} %p), replica_groups={}',
      '%ars = (f32[8]{0}) all-reduce-start(f32[8]{0} %q)',
      '%ard = f32[8]{0} all-reduce-done((f32[8]{0}) %ars)',
      '%ag = f32[16]{0} all-gather(f32[8]{0} %r), dimensions={0}',
      '%add = f32[8]{0} add(f32[8]{0} %all-reduce.1, f32[8]{0} %ard)'])
  assert topology.collectives(hlo) == {'all-reduce': 2, 'all-gather': 1}
