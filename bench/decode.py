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

With `--engines=ours,ctranslate2 [--quantization=float32,int8]`, the same model also
exported to CTranslate2 (serving.py) decodes the same sources, beam 4 and greedy, each
run at the fixed length (CTranslate2: min = max decoding length = the workload's steps;
`intra_threads` = the cores, `inter_threads=1`), the engines alternating within each
repeat: sentences/s per engine and method, and each engine's ratio to ours.

With `--workdir=DIR` (a trained workdir), the user's case instead: real sentences that end,
ours against CTranslate2 at several batch sizes each (bench/decode_real.py). The modes
above are the kernel yardstick: fixed lengths, one batch size.

  python bench/decode.py --workdir=DIR [--quantization=float32,int8] [--repeats=3]
  python bench/decode.py [--repeats=5] [--matmul_dtype=bfloat16] [--ensemble=2]
                         [--engines=ours,ctranslate2 --quantization=float32,int8]
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
import decode_real  # noqa: E402  (the real-sentence mode)

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
  parser.add_argument('--engines', default='',
                      help='ours,ctranslate2: decoding speed side by side (see above)')
  parser.add_argument('--quantization', default='float32',
                      help="CTranslate2's weights: float32, int8 or both (comma list)")
  parser.add_argument('--record', default='', help='also write the JSON here')
  decode_real.add_arguments(parser)
  args = parser.parse_args()
  if args.workdir:
    return emit(decode_real.compare(args), args.record)
  if args.engines:
    return emit(compare_engines(args), args.record)
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

def compare_engines(args) -> dict:
  """Sentences/s of our decoder and of CTranslate2 on the workload's model, alternating."""
  import os
  import tempfile
  import ctranslate2
  from transformer_jax import serving
  w = json.loads(WORKLOAD.read_text())
  config = workload_config(w, 'float32', args.matmul_dtype)
  model = Transformer(config.model, rngs=nnx.Rngs(params=w['seed']))
  source = np.random.default_rng(w['seed']).integers(
      3, w['vocab_size'], (w['decode_batch'], w['decode_src_len']), dtype=np.int32)
  steps, cores = w['decode_steps'], len(os.sched_getaffinity(0))
  runs = {}
  if 'ours' in args.engines.split(','):
    runs['ours'] = {
        'beam': lambda: decode.beam_search(model, source, beam_size=w['beam'], max_len=steps,
                                           eos_id=-1)[0],
        'greedy': lambda: decode.sample(model, source, max_len=steps, eos_id=-1)[0]}
  pieces = ['<pad>', '</s>', '<unk>'] + [f'w{i}' for i in range(3, w['vocab_size'])]
  batch = [[pieces[t] for t in row] + ['</s>'] for row in source.tolist()]
  for quantization in args.quantization.split(',') if 'ctranslate2' in args.engines else ():
    directory = tempfile.mkdtemp(prefix=f'ct2_{quantization}_')
    serving.write_ctranslate2(model, config.model, pieces, directory, quantization,
                              positions=w['decode_src_len'] + steps + 2)
    translator = ctranslate2.Translator(directory, device='cpu', intra_threads=cores,
                                        inter_threads=1)
    translate = lambda beam, t=translator: t.translate_batch(
        batch, beam_size=beam, min_decoding_length=steps, max_decoding_length=steps,
        max_batch_size=len(batch))
    runs[f'ctranslate2_{quantization}'] = {'beam': lambda f=translate: f(w['beam']),
                                           'greedy': lambda f=translate: f(1)}
  for methods in runs.values():  # warm-up: compiles ours, loads theirs
    for run in methods.values():
      jax.block_until_ready(run())
  times = {(engine, method): [] for engine, methods in runs.items() for method in methods}
  for _ in range(args.repeats):
    for (engine, method), measured in times.items():
      start = time.perf_counter()
      jax.block_until_ready(runs[engine][method]())
      measured.append(time.perf_counter() - start)
  result = {'benchmark': 'decode_engines', 'workload': w['name'], 'beam': w['beam'],
            'sources': w['decode_batch'], 'steps': steps, 'threads': cores,
            'repeats': args.repeats, 'ctranslate2': ctranslate2.__version__, 'engines': {}}
  for (engine, method), measured in times.items():
    result['engines'].setdefault(engine, {})[f'{method}_sentences_per_s'] = round(
        w['decode_batch'] / statistics.median(measured), 1)
  ours = result['engines'].get('ours')
  for engine, figures in result['engines'].items():
    if ours and engine != 'ours':
      figures.update({f'{k.split("_")[0]}_vs_ours': round(v / ours[k], 2)
                      for k, v in figures.items()})
  return result


def peak_rss_gib() -> float:
  """This process's peak resident memory (VmHWM)."""
  for line in pathlib.Path('/proc/self/status').read_text().splitlines():
    if line.startswith('VmHWM:'):
      return int(line.split()[1]) / 2**20
  return float('nan')


if __name__ == '__main__':
  main()
