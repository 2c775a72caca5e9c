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


def test_the_breakdown_counts_each_instructions_bytes_and_names_its_operation():
  hlo = '\n'.join([
      'HloModule m', '',
      '%fused (p: f32[4,8]) -> f32[4,8] {', '  %p = f32[4,8]{1,0} parameter(0)', '}', '',
      'ENTRY %main (a: f32[4,8], b: bf16[8,16]) -> f32[4,16] {',
      '  %a = f32[4,8]{1,0:T(8,128)} parameter(0)',
      '  %b = bf16[8,16]{1,0} parameter(1)',
      '  %fusion.1 = f32[4,16]{1,0} fusion(%a, %b), kind=kOutput, calls=%fused, '
      'metadata={op_name="jit(train_step)/jvp(nd,dv->nv)/dot_general"}, '
      'backend_config={"estimated_cycles":"900"}',
      '  %copy-start.2 = (bf16[8,16]{1,0}, bf16[8,16]{1,0:S(1)}, u32[]) copy-start(%b)',
      '  %copy-done.2 = bf16[8,16]{1,0:S(1)} copy-done(%copy-start.2)',
      '  ROOT %fusion.3 = f32[4,16]{1,0} fusion(%fusion.1, %copy-done.2), kind=kLoop, '
      'calls=%fused, metadata={op_name="jit(train_step)/transpose(jvp(nd,dv->nv))/mul"}',
      '}'])
  b = topology.breakdown(hlo)
  by_name = {r['name']: r for r in b['top_by_bytes']}
  assert set(by_name) == {'fusion.1', 'copy-start.2', 'fusion.3'}  # no views, no params
  assert by_name['fusion.1']['bytes'] == 4 * 8 * 4 + 8 * 16 * 2 + 4 * 16 * 4
  assert by_name['copy-start.2']['bytes'] == 8 * 16 * 2  # its destination, once
  assert by_name['fusion.3']['bytes'] == 2 * 4 * 16 * 4 + 8 * 16 * 2
  assert b['bytes_counted'] == sum(r['bytes'] for r in by_name.values())
  assert b['top_by_estimated_cycles'][0]['name'] == 'fusion.1'
  operations = {o['operation'] for o in b['by_operation']}
  assert {'forward nd,dv->nv dot_general', 'backward nd,dv->nv mul', 'copy-start'} == operations


def test_traffic_counts_hbm_bytes_apart_from_on_chip_ones_and_sums_the_cycle_estimates():
  hlo = '\n'.join([
      'HloModule m', '',
      'ENTRY %main (a: f32[4,8], b: bf16[8,16]) -> f32[4,16] {',
      '  %a = f32[4,8]{1,0} parameter(0)',
      '  %b = bf16[64,16]{1,0} parameter(1)',
      # A prefetch of one slice into on-chip memory: one HBM read of the slice.
      '  %slice-start.1 = ((bf16[64,16]{1,0}), bf16[8,16]{1,0:S(1)}, s32[]{:S(2)}) '
      'slice-start(%b), slice={[0:8], [0:16]}',
      '  %slice-done.1 = bf16[8,16]{1,0:S(1)} slice-done(%slice-start.1)',
      '  %fusion.1 = f32[4,16]{1,0:T(8,128)S(1)} fusion(%a, %slice-done.1), kind=kOutput, '
      'calls=%f, backend_config={"estimated_cycles":"900"}',
      '  ROOT %fusion.2 = f32[4,16]{1,0} fusion(%fusion.1), kind=kLoop, calls=%g, '
      'backend_config={"estimated_cycles":"100"}',
      '}'])
  hbm = 8 * 16 * 2 + 4 * 8 * 4 + 4 * 16 * 4  # the slice read, a read, fusion.2's output
  on_chip = 8 * 16 * 2 + (8 * 16 * 2 + 4 * 16 * 4) + 4 * 16 * 4
  assert topology.traffic(hlo) == {'hbm_bytes': hbm, 'on_chip_bytes': on_chip,
                                   'estimated_cycles': 1000}
  # A loop's body is not in the entry: no figure rather than a partial one.
  looped = hlo.replace('ROOT %fusion.2 = f32[4,16]{1,0} fusion(%fusion.1)',
                       'ROOT %while.2 = f32[4,16]{1,0} while(%fusion.1)')
  assert topology.traffic(looped) is None
