"""Compiling for a Cloud TPU topology on this host, ahead of time (the `aot` command).

With libtpu installed, JAX describes any TPU slice without one
(`jax.experimental.topologies`). The config's mesh is laid over its chips and the same
jitted, sharded train step `train` runs is lowered and compiled by the TPU compiler; the
report gives per-chip memory against the chip's HBM, compiled FLOPs against the analytic
count, the collectives in the program, and a roofline estimate of step time and MFU from
published chip figures (an estimate, not a measurement).
"""
from __future__ import annotations

import importlib.util
import os
import re

import jax
import jax.numpy as jnp

from transformer_jax import sharding
from transformer_jax.costs import peak_flops, train_flops
from transformer_jax.errors import UserError

# Published per-chip figures: HBM bytes, peak dense bf16 FLOP/s (costs.PEAK_FLOPS), HBM
# bytes/s.
CHIPS = {
    'v4': dict(hbm=32 * 2 ** 30, peak_flops=peak_flops('TPU v4'), hbm_bandwidth=1.2e12),
    'v5e': dict(hbm=16 * 2 ** 30, peak_flops=peak_flops('TPU v5 lite'), hbm_bandwidth=819e9),
    'v5p': dict(hbm=95 * 2 ** 30, peak_flops=peak_flops('TPU v5'), hbm_bandwidth=2.765e12),
    'v6e': dict(hbm=32 * 2 ** 30, peak_flops=peak_flops('TPU v6 lite'), hbm_bandwidth=1.64e12),
}
COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all',
               'collective-permute')


def topology_devices(name: str):
  """The chips of a named TPU slice such as 'v5e:4x4' or 'v4:2x2x1'."""
  if importlib.util.find_spec('libtpu') is None:
    raise UserError("Compiling for TPU needs libtpu: pip install -e '.[tpu]'.")
  chip = name.split(':')[0]
  if chip not in CHIPS or ':' not in name:
    raise UserError(f"--topology={name!r}: expected CHIP:SHAPE with CHIP one of "
                    f"{', '.join(CHIPS)}, e.g. v5e:4x4 or v4:2x2x1.")
  # Compiling takes no TPU, so do not take libtpu's one-process-per-machine lock: aot may
  # run beside training on a TPU VM, or beside another aot.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  from jax.experimental import topologies  # noqa: PLC0415
  try:
    devices = topologies.get_topology_desc(platform='tpu', topology_name=name).devices
  except Exception as e:  # libtpu rejects shapes a chip generation does not come in
    raise UserError(f'--topology={name!r} is not a TPU slice libtpu knows: {e}') from None
  # v4 and v5p describe each TensorCore; JAX runs them as one device per chip (megacore).
  return [d for d in devices if getattr(d, 'core_on_chip', 0) == 0]


def compile_train_step(config, devices):
  """The jitted train step of `train`, lowered and compiled for `devices`."""
  from transformer_jax.steps import abstract_batch, build, compile_steps  # noqa: PLC0415
  mesh = sharding.make_mesh(config.mesh, devices)
  sharding.check_batch(config.data.batch_size, mesh)
  setup = build(config, mesh)
  train_step, _ = compile_steps(setup)
  return train_step.lower(setup.abstract_state, abstract_batch(config, mesh)).compile(), setup


def compile_decode(setup, batch_rows: int, source_len: int, beam_size: int = 4):
  """Beam search (KV cache, the `translate` path) for one source-length bucket."""
  from flax import nnx  # noqa: PLC0415
  from transformer_jax import decode  # noqa: PLC0415

  def search(params, source):
    return decode.beam_search(nnx.merge(setup.graphdef, params), source,
                              beam_size=beam_size, max_len=source_len + 50)

  rows = batch_rows + (-batch_rows) % sharding.data_parallel_size(setup.mesh)
  source = jax.ShapeDtypeStruct((rows, source_len), jnp.int32,
                                sharding=sharding.batch_sharding(setup.mesh))
  return jax.jit(search).lower(setup.abstract_state.params, source).compile()


def _memory(compiled) -> dict:
  m = compiled.memory_analysis()
  out = {'arguments': m.argument_size_in_bytes, 'outputs': m.output_size_in_bytes,
         'temporaries': m.temp_size_in_bytes, 'aliased': m.alias_size_in_bytes,
         'generated_code': m.generated_code_size_in_bytes}
  # Donated state aliases its outputs: count those bytes once.
  out['total'] = (out['arguments'] + out['outputs'] - out['aliased'] + out['temporaries']
                  + out['generated_code'])
  return out


def collectives(hlo_text: str) -> dict[str, int]:
  counts = {}
  for op in COLLECTIVES:
    n = len(re.findall(rf'= [^=]*?\b{op}(?:-start)?\(', hlo_text))
    if n:
      counts[op] = n
  return counts


SUGGESTIONS = [
    'shard parameters and Adam state over more chips: raise --config.mesh.fsdp',
    'lower the per-chip batch: --config.data.batch_size, or accumulate gradients with '
    '--config.train.grad_accum_steps',
    'compute in bfloat16: --config.model.dtype=bfloat16']


def report(config, topology: str, with_decode: bool = True) -> dict:
  """Compile the train step (and, `with_decode`, beam search) for `topology`; per-chip
  memory against HBM, FLOPs, collectives and a roofline estimate, as a dict."""
  devices = topology_devices(topology)
  chip = CHIPS[topology.split(':')[0]]
  try:
    compiled, setup = compile_train_step(config, devices)
  except jax.errors.JaxRuntimeError as e:
    if 'RESOURCE_EXHAUSTED' not in str(e):
      raise
    # The TPU compiler itself refuses a program that cannot fit in HBM.
    return {'topology': topology, 'chips': len(devices), 'fits': False,
            'hbm_per_chip_bytes': chip['hbm'], 'compiler': str(e).splitlines()[0],
            'suggestions': SUGGESTIONS}
  per_chip = _memory(compiled)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  compiled_flops = float(cost.get('flops', 0.0))  # per chip
  analytic = train_flops(config.model, config.data.batch_size, config.data.max_len,
                         config.data.max_len)
  bytes_accessed = float(cost.get('bytes accessed', 0.0))
  step_s = max(compiled_flops / chip['peak_flops'], bytes_accessed / chip['hbm_bandwidth'])
  fits = per_chip['total'] <= chip['hbm']
  result = {
      'topology': topology, 'chips': len(devices), 'mesh': dict(setup.mesh.shape),
      'per_chip_batch_rows': config.data.batch_size / len(devices),
      'memory_per_chip_bytes': per_chip, 'hbm_per_chip_bytes': chip['hbm'],
      'memory_fraction_of_hbm': per_chip['total'] / chip['hbm'], 'fits': fits,
      'flops_per_step_compiled_all_chips': compiled_flops * len(devices),
      'flops_per_step_analytic': analytic,
      'compiled_over_analytic': compiled_flops * len(devices) / analytic,
      'collectives': collectives(compiled.as_text()),
      'roofline_estimate': {
          'note': 'ESTIMATE from published peak FLOP/s and HBM bandwidth, not a measurement',
          'step_s': step_s, 'mfu': analytic / (len(devices) * chip['peak_flops'] * step_s),
          'target_tokens_per_s': config.data.batch_size * config.data.max_len / step_s},
  }
  if with_decode:
    decode_memory = _memory(compile_decode(setup, config.train.eval_batch_size,
                                           config.data.max_len))
    result['decode'] = {'beam_size': 4, 'batch_rows': config.train.eval_batch_size,
                        'source_len': config.data.max_len,
                        'memory_per_chip_bytes': decode_memory,
                        'fits': decode_memory['total'] <= chip['hbm']}
    fits = fits and result['decode']['fits']
    result['fits'] = fits
  if not fits:
    result['suggestions'] = SUGGESTIONS
  return result
