"""Train-step speed on the cpu-small workload (bench/workloads/cpu_small.json); prints JSON.

The real train step (Adam, label smoothing, dropout; `transformer_jax.train`) on a batch
of `batch` pairs of `src_len`/`tgt_len` real tokens. Reports the median steady-state
step time, target tokens/s, model FLOPs per step (the analytic count of `info`, checked
against the workload's), achieved FLOP/s as a fraction of a 2048x2048 fp32 `jnp.dot`
peak measured in the same process, compile time and peak resident memory.

  python bench/train_step.py [--steps=10] [--dtype=float32] [--matmul_dtype=bfloat16]
                             [--dropout_rate=0.1] [--compilation_cache=DIR]
"""
from __future__ import annotations

import time

START = time.perf_counter()  # before the imports: time to first step counts them too

import argparse  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402

import jax
import jax.numpy as jnp
import numpy as np

from pod_rehearsal import emit  # noqa: E402 (bench/ is on the path)
from transformer_jax import cli
from transformer_jax import config as config_lib
from transformer_jax import sharding
from transformer_jax.costs import train_flops
from transformer_jax.steps import (abstract_batch, build, compile_in_background, compile_steps,
                                   init_state)

WORKLOAD = pathlib.Path(__file__).resolve().parent / 'workloads' / 'cpu_small.json'


def workload_config(w: dict, dtype: str, matmul_dtype: str = ''):
  c = config_lib.defaults()
  c.model.update(vocab_size=w['vocab_size'], d_model=w['d_model'], num_heads=w['num_heads'],
                 d_ff=w['d_ff'], num_encoder_layers=w['encoder_layers'],
                 num_decoder_layers=w['decoder_layers'], dropout_rate=w['dropout_rate'],
                 share_embeddings=w['shared_embeddings'], dtype=dtype,
                 matmul_dtype=matmul_dtype)
  c.train.update(label_smoothing=w['label_smoothing'], adam_b1=w['adam']['b1'],
                 adam_b2=w['adam']['b2'], adam_eps=w['adam']['eps'])
  c.data.update(batch_size=w['batch'], max_len=max(w['src_len'], w['tgt_len']))
  c.seed = w['seed']
  return config_lib.validate(c)


def workload_batch(w: dict) -> dict:
  rng = np.random.default_rng(w['seed'])
  batch = {}
  for field, length in (('source', w['src_len']), ('target', w['tgt_len'])):
    shape = (w['batch'], length)
    batch[field] = rng.integers(3, w['vocab_size'], shape, dtype=np.int32)
    batch[f'{field}_segment_ids'] = np.ones(shape, np.int32)
    batch[f'{field}_positions'] = np.broadcast_to(np.arange(length, dtype=np.int32), shape)
  return batch


def matmul_peak_meter(n: int = 2048):
  """A function that measures the FLOP/s of a jitted n x n x n fp32 `jnp.dot` now (best of
  3). The benchmarks pair every timed step with one, since this machine drifts."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  dot(a, a).block_until_ready()
  return lambda: 2 * n ** 3 / min(timed(lambda: dot(a, a)) for _ in range(3))


def timed(fn) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--dtype', default='float32', choices=config_lib.DTYPES)
  parser.add_argument('--matmul_dtype', default='', choices=('', *config_lib.DTYPES),
                      help='operands of matrix products (model.matmul_dtype)')
  parser.add_argument('--dropout_rate', type=float, default=None,
                      help="the workload's dropout rate unless given (0: dropout's cost)")
  parser.add_argument('--rdrop_alpha', type=float, default=0.0,
                      help='R-Drop (train.rdrop_alpha): each batch through the model twice')
  parser.add_argument('--compilation_cache', default='',
                      help="the commands' XLA compilation cache directory; run twice to "
                      'measure a warm start (default: off, a cold compile)')
  parser.add_argument('--record', default='', help='also write the JSON here')
  args = parser.parse_args()
  cli.use_compilation_cache(args.compilation_cache)
  w = json.loads(WORKLOAD.read_text())
  if args.dropout_rate is not None:
    w['dropout_rate'] = args.dropout_rate
  config = workload_config(w, args.dtype, args.matmul_dtype)
  config.train.rdrop_alpha = args.rdrop_alpha
  mesh = sharding.make_mesh(config.mesh)
  start = time.perf_counter()
  setup = build(config, mesh)
  # As `train` does: the step compiles on a thread while the state is created.
  train_step = compile_in_background(compile_steps(setup)[0], setup.abstract_state,
                                     abstract_batch(config, mesh))
  state = init_state(setup)
  batch = sharding.place_batch(workload_batch(w), mesh)
  state, metrics = train_step(state, batch)
  jax.block_until_ready(metrics)
  first_step_s = time.perf_counter() - start
  first_step_from_start = time.perf_counter() - START
  # This machine's speed drifts by tens of percent within minutes, so each step is
  # paired with a peak measurement taken right after it; the fraction is the median of
  # the per-pair ratios.
  flops = train_flops(config.model, w['batch'], w['src_len'], w['tgt_len'])
  peak_now = matmul_peak_meter()
  times, peaks = [], []
  for _ in range(args.steps):
    start = time.perf_counter()
    state, metrics = train_step(state, batch)  # the old state is donated: keep the new
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
    peaks.append(peak_now())
  step, peak = statistics.median(times), statistics.median(peaks)
  fraction = statistics.median(flops / t / p for t, p in zip(times, peaks))
  result = {
      'benchmark': 'train_step', 'workload': w['name'], 'dtype': args.dtype,
      'dropout_rate': w['dropout_rate'], 'rdrop_alpha': args.rdrop_alpha,
      'matmul_dtype': args.matmul_dtype or args.dtype,
      'devices': [str(d) for d in jax.devices()],
      'step_s_median': step, 'step_s_min': min(times), 'step_s_max': max(times),
      'target_tokens_per_s': w['batch'] * w['tgt_len'] / step,
      'model_flops_per_step': flops,
      'model_flops_matches_workload': abs(flops / w['train_flops_per_step'] - 1) < 1e-6,
      'model_flop_per_s': flops / step,
      'matmul_peak_flop_per_s_fp32': peak,
      'fraction_of_matmul_peak': fraction,
      'first_step_s_including_compile': first_step_s,
      'first_step_s_from_process_start': first_step_from_start,
      'peak_rss_gib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
      'first_step_loss': float(metrics['loss'] / metrics['tokens']),
  }
  emit(result, args.record)

if __name__ == '__main__':
  main()
