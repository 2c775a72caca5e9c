"""Beam-search decoding speed on the cpu-small workload (bench/workloads/cpu_small.json);
prints JSON.

Beam `beam` over `decode_batch` sources of `decode_src_len` tokens, exactly
`decode_steps` target steps (end-of-sentence ignored), KV cache on. Reports sentences/s
and target tokens/s (median over repeats) and the first call's compile time.

This machine's speed drifts by tens of percent within minutes, so every repeat is paired
with a 2048^3 fp32 `jnp.dot` peak measured right after it, and sentences/s is also given
at the reference machine's peak (`at_reference_peak`: the median of the per-pair
sentences/s x reference peak / this peak), the figure to hold against the Flax WMT
example's 24.7 sentences/s at 187 GFLOP/s (bench/workloads/README.md).

With `--ensemble=N`, N models of the workload's shape (seeds seed..seed+N-1) decode as
one (`decode.Ensemble`): the cost of an ensemble in time and in peak memory (VmHWM).

  python bench/decode.py [--repeats=5] [--matmul_dtype=bfloat16] [--ensemble=2]
                         [--record=FILE]
"""
from __future__ import annotations

import time

START = time.perf_counter()  # before the imports: time to first call counts them too

import argparse  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import statistics  # noqa: E402

import jax
import numpy as np
from flax import nnx

from transformer_jax import cli, decode
from transformer_jax.model import Transformer

ROOT = pathlib.Path(__file__).resolve().parent
import sys  # noqa: E402
sys.path.insert(0, str(ROOT))
from train_step import WORKLOAD, matmul_peak_meter, timed, workload_config  # noqa: E402  (one workload)
from pod_rehearsal import emit  # noqa: E402

# bench/workloads/README.md: the Flax WMT example's decoder on the reference machine.
REFERENCE = dict(matmul_peak_flop_per_s=187e9, sentences_per_s=24.7)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--matmul_dtype', default='', choices=('', 'float32', 'bfloat16'),
                      help='operands of matrix products (model.matmul_dtype)')
  parser.add_argument('--compilation_cache', default='',
                      help="the commands' XLA compilation cache directory; run twice to "
                      'measure a warm start (default: off, a cold compile)')
  parser.add_argument('--ensemble', type=int, default=1,
                      help='decode with this many models as one (decode.Ensemble)')
  parser.add_argument('--record', default='', help='also write the JSON here')
  args = parser.parse_args()
  cli.use_compilation_cache(args.compilation_cache)
  w = json.loads(WORKLOAD.read_text())
  config = workload_config(w, 'float32', args.matmul_dtype)
  models = [Transformer(config.model, rngs=nnx.Rngs(params=w['seed'] + i))
            for i in range(args.ensemble)]
  model = models[0] if args.ensemble == 1 else decode.Ensemble(models)
  rng = np.random.default_rng(w['seed'])
  source = rng.integers(3, w['vocab_size'], (w['decode_batch'], w['decode_src_len']),
                        dtype=np.int32)
  run = lambda: decode.beam_search(model, source, beam_size=w['beam'],
                                   max_len=w['decode_steps'], eos_id=-1)
  start = time.perf_counter()
  tokens, _ = run()
  jax.block_until_ready(tokens)
  first = time.perf_counter() - start
  first_from_start = time.perf_counter() - START
  peak_now = matmul_peak_meter()
  times, peaks = [], []
  for _ in range(args.repeats):
    times.append(timed(lambda: run()[0]))
    peaks.append(peak_now())
  median = statistics.median(times)
  at_reference = statistics.median(
      w['decode_batch'] / t * REFERENCE['matmul_peak_flop_per_s'] / p
      for t, p in zip(times, peaks))
  result = {
      'benchmark': 'decode', 'workload': w['name'], 'beam': w['beam'],
      'ensemble': args.ensemble,
      'matmul_dtype': args.matmul_dtype or 'float32',
      'sources': w['decode_batch'], 'steps': w['decode_steps'],
      'seconds_median': median, 'seconds_min': min(times), 'seconds_max': max(times),
      'sentences_per_s': w['decode_batch'] / median,
      'target_tokens_per_s': w['decode_batch'] * w['decode_steps'] / median,
      'first_call_s_including_compile': first,
      'first_call_s_from_process_start': first_from_start,
      'matmul_peak_flop_per_s_fp32': statistics.median(peaks),
      'sentences_per_s_at_reference_peak': at_reference,
      'speedup_vs_flax_wmt_reference': at_reference / REFERENCE['sentences_per_s'],
      'all_steps_decoded': bool((np.asarray(tokens) != 0).all()),
      'peak_rss_gib': peak_rss_gib(),
  }
  emit(result, args.record)

def peak_rss_gib() -> float:
  """This process's peak resident memory (VmHWM)."""
  for line in pathlib.Path('/proc/self/status').read_text().splitlines():
    if line.startswith('VmHWM:'):
      return int(line.split()[1]) / 2**20
  return float('nan')


if __name__ == '__main__':
  main()
