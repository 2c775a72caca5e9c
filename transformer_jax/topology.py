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
# bytes/s; for v5e, whose chip is one TensorCore, the clock the peak implies (4 MXUs of
# 128 x 128 multiply-adds: 197e12 / (4 * 128 * 128 * 2) = 1.5 GHz), which turns the
# compiler's cycle estimate into seconds.
CHIPS = {
    'v4': dict(hbm=32 * 2 ** 30, peak_flops=peak_flops('TPU v4'), hbm_bandwidth=1.2e12),
    'v5e': dict(hbm=16 * 2 ** 30, peak_flops=peak_flops('TPU v5 lite'), hbm_bandwidth=819e9,
                clock_hz=peak_flops('TPU v5 lite') / (4 * 128 * 128 * 2)),
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


_DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 'f8e4m3fn': 1, 'f8e5m2': 1, 's16': 2, 'u16': 2,
                'bf16': 2, 'f16': 2, 's32': 4, 'u32': 4, 'f32': 4, 's64': 8, 'u64': 8,
                'f64': 8}
_ARRAY = re.compile(r'\b(pred|[suf]\d+|bf16|f8e4m3fn|f8e5m2)\[([\d,]*)\](\{[^}]*\})?')
_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%([\w.-]+) = (.*?) ([a-z][\w-]*)\((.*?)\)(?:,|$)')
# What moves no bytes of its own (views, tuples, the ends of async pairs).
_NO_BYTES = {'parameter', 'get-tuple-element', 'tuple', 'bitcast', 'constant', 'copy-done',
             'slice-done', 'after-all', 'opt-barrier', 'all-reduce-done', 'all-gather-done',
             'collective-permute-done'}
_ASYNC_MOVES = ('copy-start', 'slice-start')  # shape ((source), destination, context)


def _arrays(shape: str) -> list[tuple[int, int]]:
  """(bytes, memory space) of every array in an HLO shape ('f32[8,128]{1,0:S(1)}', or a
  tuple of them). Space 0 is HBM; a layout's S(n), n > 0, is on-chip memory (on v5e the
  128 MiB VMEM, where the compiler prefetches operands: memory-space assignment)."""
  out = []
  for dtype, dims, layout in _ARRAY.findall(shape):
    elements = 1
    for d in filter(None, dims.split(',')):
      elements *= int(d)
    space = re.search(r'S\((\d+)\)', layout)
    out.append((elements * _DTYPE_BYTES.get(dtype, 4), int(space.group(1)) if space else 0))
  return out


def array_bytes(shape: str) -> int:
  """Bytes of every array in an HLO shape, in any memory space."""
  return sum(size for size, _ in _arrays(shape))


def _entry(hlo_text: str) -> str:
  entry = hlo_text[hlo_text.index('\nENTRY'):]
  return entry[:entry.index('\n}')]


def _entry_instructions(hlo_text: str):
  """Each top-level instruction of the entry computation that moves bytes, as a dict:
  name, opcode, op_name, estimated_cycles, and the (bytes, space) arrays it reads and
  writes (an async copy or slice reads its destination's size from its source)."""
  shapes = {}
  for line in _entry(hlo_text).splitlines()[1:]:
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    name, shape, opcode, args = m.groups()
    shapes[name] = shape
    if opcode in _NO_BYTES:
      continue
    operands = re.findall(r'%([\w.-]+)', args)
    if opcode in _ASYNC_MOVES:
      _, source = _arrays(shapes[operands[0]])[0]
      size, destination = _arrays(shape)[1]
      reads, writes = [(size, source)], [(size, destination)]
    else:
      reads = [a for o in operands for a in _arrays(shapes.get(o, ''))]
      writes = _arrays(shape)
    op_name = re.search(r'op_name="([^"]*)"', line)
    cycles = re.search(r'"estimated_cycles":"(\d+)"', line)
    yield dict(name=name, opcode=opcode, shape=re.sub(r'\{[^}]*\}', '', shape)[:120],
               op_name=op_name.group(1) if op_name else '',
               estimated_cycles=int(cycles.group(1)) if cycles else 0,
               reads=reads, writes=writes)


def traffic(hlo_text: str) -> dict | None:
  """HBM bytes and the compiler's cycle estimate of the compiled step's entry computation.
  XLA's `bytes accessed` counts every operand and output wherever it lives; here an array
  the compiler placed in on-chip memory (S(1)) costs no HBM traffic, and a prefetch into it
  costs one HBM read. None when the entry loops (gradient accumulation): a loop body's
  instructions are not in the entry, and XLA's own total is the figure to use."""
  if re.search(r' while\(', _entry(hlo_text)):
    return None
  hbm = on_chip = cycles = 0
  for ins in _entry_instructions(hlo_text):
    cycles += ins['estimated_cycles']
    for size, space in ins['reads'] + ins['writes']:
      hbm, on_chip = (hbm + size, on_chip) if space == 0 else (hbm, on_chip + size)
  return {'hbm_bytes': hbm, 'on_chip_bytes': on_chip, 'estimated_cycles': cycles}


def breakdown(hlo_text: str, top: int = 15) -> dict:
  """Where the compiled step's bytes go: each top-level instruction of the entry
  computation (fusions, copies, collectives) counted as its operands' plus its output's
  bytes in any memory space (an async copy or slice: its destination, once), with the JAX
  operation that made it (`op_name`) and the TPU compiler's own cycle estimate. A ranking
  aid: XLA's `bytes accessed` (the report's total) counts a fusion's operands by what it
  reads."""
  rows = []
  for ins in _entry_instructions(hlo_text):
    moved = ins.pop('writes') + ([] if ins['opcode'] in _ASYNC_MOVES else ins['reads'])
    del ins['reads']
    rows.append({**ins, 'bytes': sum(size for size, _ in moved)})
  by_operation, cycles = {}, {}
  for row in rows:
    key = _operation(row['op_name']) or row['opcode']
    by_operation[key] = by_operation.get(key, 0) + row['bytes']
    cycles[key] = cycles.get(key, 0) + row['estimated_cycles']
  ranked = sorted(by_operation.items(), key=lambda kv: -kv[1])
  return {'instructions': len(rows), 'bytes_counted': sum(r['bytes'] for r in rows),
          'top_by_bytes': sorted(rows, key=lambda r: -r['bytes'])[:top],
          'top_by_estimated_cycles': sorted(rows, key=lambda r: -r['estimated_cycles'])[:top],
          'by_operation': [{'operation': k, 'bytes': v, 'estimated_cycles': cycles[k]}
                           for k, v in ranked[:top]],
          'by_operation_cycles': [{'operation': k, 'estimated_cycles': v} for k, v in sorted(
              cycles.items(), key=lambda kv: -kv[1])[:top]]}


def _operation(op_name: str) -> str:
  """'jit(train_step)/transpose(jvp(bld,dhk->bhlk))/dot_general' -> 'backward
  bld,dhk->bhlk dot_general': which pass and which JAX operation."""
  if not op_name:
    return ''
  parts = op_name.split('/')[1:] or [op_name]
  backward = any(p.startswith('transpose(') for p in parts)
  inner = re.findall(r'\(([^()]*)\)+$', parts[-2]) if len(parts) > 1 else []
  label = ' '.join(filter(None, [inner[0] if inner and '->' in inner[0] else '',
                                 re.sub(r'\.\d+$', '', parts[-1])]))
  return f'{"backward" if backward else "forward"} {label}'


def report(config, topology: str, with_decode: bool = True,
           with_breakdown: bool = False) -> dict:
  """Compile the train step (and, `with_decode`, beam search) for `topology`; per-chip
  memory against HBM, FLOPs, collectives and a roofline estimate, as a dict; with
  `with_breakdown`, where the step's bytes go (`breakdown`)."""
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
  fits = per_chip['total'] <= chip['hbm']
  tokens_per_chip = config.data.batch_size * config.data.max_len / len(devices)
  hlo_text = compiled.as_text()
  moved = traffic(hlo_text)

  def estimate(note, step_s):
    return {'note': note, 'step_s': step_s,
            'mfu': analytic / (len(devices) * chip['peak_flops'] * step_s),
            'target_tokens_per_s': config.data.batch_size * config.data.max_len / step_s}

  def roofline(bytes_per_chip):  # the slower of the FLOPs at peak and the bytes at bandwidth
    return max(compiled_flops / chip['peak_flops'], bytes_per_chip / chip['hbm_bandwidth'])

  result = {
      'topology': topology, 'chips': len(devices), 'mesh': dict(setup.mesh.shape),
      'per_chip_batch_rows': config.data.batch_size / len(devices),
      'memory_per_chip_bytes': per_chip, 'hbm_per_chip_bytes': chip['hbm'],
      'memory_fraction_of_hbm': per_chip['total'] / chip['hbm'], 'fits': fits,
      'flops_per_step_compiled_all_chips': compiled_flops * len(devices),
      'flops_per_step_analytic': analytic,
      'compiled_over_analytic': compiled_flops * len(devices) / analytic,
      # Per chip, over the target token slots each chip holds (batch x max_len / chips).
      'bytes_accessed_per_chip': bytes_accessed,
      'bytes_accessed_per_target_token': bytes_accessed / tokens_per_chip,
      'flops_per_target_token': compiled_flops / tokens_per_chip,
      'collectives': collectives(hlo_text),
      'roofline_estimate': estimate(
          'ESTIMATE from published peak FLOP/s and HBM bandwidth with XLA\'s bytes accessed '
          '(which counts on-chip operands too), not a measurement', roofline(bytes_accessed)),
  }
  if moved:
    result.update({
        'hbm_bytes_per_chip': moved['hbm_bytes'],
        'hbm_bytes_per_target_token': moved['hbm_bytes'] / tokens_per_chip,
        'roofline_estimate_hbm': estimate(
            'ESTIMATE as roofline_estimate with only the bytes that live in HBM '
            '(topology.traffic): an upper bound on speed, not a measurement',
            roofline(moved['hbm_bytes'])),
        'compiler_estimate': {'estimated_cycles': moved['estimated_cycles']}})
    if chip.get('clock_hz'):
      result['compiler_estimate'].update(estimate(
          "ESTIMATE: the sum of the TPU compiler's per-instruction cycle estimates at the "
          'clock the peak implies (collectives and async copies count 0), not a measurement',
          moved['estimated_cycles'] / chip['clock_hz']))
  if with_breakdown:
    result['breakdown'] = breakdown(hlo_text)
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
