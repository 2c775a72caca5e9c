"""`aot` compiles the real train step for TPU topologies on this CPU host (libtpu comes
with the test extra) and reports memory, FLOPs and collectives; too big is an error."""
import json
import re

import jax
import pytest

from transformer_jax import aot, topology
from transformer_jax import config as config_lib
from transformer_jax.costs import train_flops

SMALL = ['--config.model.d_model=256', '--config.model.d_ff=1024', '--config.model.vocab_size=512',
         '--config.model.num_heads=4', '--config.data.batch_size=16', '--config.data.max_len=32']


def run_aot(command_process, *flags):
  return command_process('aot', '--config=configs/tiny.py', *flags)


@pytest.mark.slow
@pytest.mark.parametrize('topology, chips', [('v5e:2x2', 4), ('v4:2x2x1', 4)])
def test_compiles_for_tpu_topologies_and_counts_flops_like_info(command_process, repo, topology,
                                                                chips):
  result = run_aot(command_process, f'--topology={topology}', '--config.mesh.fsdp=2',
                   '--breakdown', *SMALL)
  assert result.code == 0, result.err[-2000:]
  report = json.loads(result.out)
  assert report['chips'] == chips and report['mesh'] == {'data': 2, 'fsdp': 2, 'tensor': 1}
  config = config_lib.load(str(repo / 'configs' / 'tiny.py'))
  config.model.update(d_model=256, d_ff=1024, vocab_size=512, num_heads=4)
  assert report['flops_per_step_analytic'] == train_flops(config.model, 16, 32, 32)
  # Compiled FLOPs add softmax, LayerNorm and Adam to the matmuls `info` counts.
  assert 0.95 < report['compiled_over_analytic'] < 1.3
  memory = report['memory_per_chip_bytes']
  assert report['fits'] and 0 < memory['total'] < report['hbm_per_chip_bytes']
  assert memory['arguments'] > 0 and report['roofline_estimate']['step_s'] > 0
  assert report['collectives']  # data and FSDP parallelism communicate
  tokens_per_chip = 16 * 32 / chips  # batch x max_len over the chips
  assert report['bytes_accessed_per_target_token'] * tokens_per_chip == pytest.approx(
      report['bytes_accessed_per_chip'])
  assert report['flops_per_target_token'] * tokens_per_chip * chips == pytest.approx(
      report['flops_per_step_compiled_all_chips'])
  breakdown = report['breakdown']  # where the bytes go, largest first
  sizes = [r['bytes'] for r in breakdown['top_by_bytes']]
  assert sizes == sorted(sizes, reverse=True) and sizes[0] > 0
  assert any('dot_general' in o['operation'] for o in breakdown['by_operation'])
  # HBM bytes: the part of what the breakdown counts that does not live on chip.
  assert 0 < report['hbm_bytes_per_chip'] <= breakdown['bytes_counted']
  assert report['roofline_estimate_hbm']['step_s'] <= report['roofline_estimate']['step_s']
  compiler = report['compiler_estimate']  # the TPU compiler's own cycle estimate
  assert compiler['estimated_cycles'] > 0
  assert (compiler['step_s'] > 0) if topology.startswith('v5e') else 'step_s' not in compiler
  decode = report['decode']  # beam search compiled for the same chips
  assert decode['fits'] and decode['memory_per_chip_bytes']['total'] > 0


@pytest.mark.slow
def test_the_loss_gradient_keeps_its_tokens_on_their_devices_under_fsdp(repo):
  """The output layer's backward pass with `fsdp`: each device reduces its own tokens'
  share of the kernel's gradient. Left to itself, XLA's TPU partitioner all-gathered the
  logits' gradient over the fsdp group instead ([tokens of the group, V]: in the big
  preset 606 MB per chip, many times: docs/tpu.md)."""
  config = config_lib.load(str(repo / 'configs' / 'tiny.py'))
  config.model.update(d_model=256, d_ff=1024, vocab_size=512, num_heads=4)
  config.data.update(batch_size=16, max_len=32)
  config.mesh.update(dict(data=2, fsdp=2, tensor=1))
  compiled, _ = topology.compile_train_step(config, topology.topology_devices('v5e:2x2'))
  gathered = set(re.findall(r'= (\w+\[[\d,]+\])\S* all-gather', compiled.as_text()))
  group_tokens = 2 * 16 * 32 // 4  # the fsdp group's 2 devices' tokens
  assert 'bf16[512,256]' in gathered  # the embedding table is gathered, as FSDP does
  assert f'bf16[{group_tokens},512]' not in gathered


@pytest.mark.slow
def test_weight_update_sharding_gathers_each_new_parameter_at_most_once(repo):
  """mesh.shard_update on v5e:2x2: the only all-gathers are of the updated parameters.
  Without train_step pinning the forward pass's parameters to the rules' placement, XLA
  carried the moments' split into the forward pass (128 all-gathers here, for 61
  parameter arrays; on the base preset, loops of collective-permutes)."""
  config = config_lib.load(str(repo / 'configs' / 'tiny.py'))
  config.model.update(d_model=256, d_ff=1024, vocab_size=512, num_heads=4)
  config.data.update(batch_size=16, max_len=32)
  config.mesh.update(dict(data=4, fsdp=1, tensor=1, shard_update=True))
  compiled, setup = topology.compile_train_step(config, topology.topology_devices('v5e:2x2'))
  gathers = topology.collectives(compiled.as_text()).get('all-gather', 0)
  assert 0 < gathers <= len(jax.tree.leaves(setup.abstract_state.params))


@pytest.mark.slow
def test_a_step_that_cannot_fit_is_reported_with_fixes(command_process):
  result = run_aot(command_process, '--topology=v5e:2x2', '--config.model.vocab_size=32000',
                   '--config.data.batch_size=4096', '--config.data.max_len=256')
  assert result.code == 3, result.err[-2000:]
  assert json.loads(result.out)['fits'] is False
  assert 'but a v5e chip has 16 GiB' in result.err
  assert 'mesh.fsdp' in result.err


@pytest.mark.parametrize('flags, message', [
    ([], '--topology is required, e.g. --topology=v5e:4x4.'),
    (['--topology=v9z:2x2'], 'expected CHIP:SHAPE with CHIP one of v4, v5e'),
    (['--topology=v5e:3x7'], 'is not a TPU slice libtpu knows')])
def test_unknown_topology_is_a_clear_error(command, repo, flags, message):
  result = command(aot, f'--config={repo / "configs" / "tiny.py"}', *flags)
  assert result.code == 2 and message in result.err
