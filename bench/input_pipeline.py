"""Input-pipeline throughput on Multi30k, on one CPU core; prints one JSON object.

Measures (1) the one-time preparation: TFDS build (first run only), vocabulary, reading
and tokenizing the training split; (2) the steady state: source+target tokens per second
the Grain pipeline delivers as packed batches. The reference, measured in the same run
on both cores, is what the cpu-small (bench/workloads/cpu_small.json) train step
consumes; the pipeline should deliver at least 10x that.

  python bench/input_pipeline.py [--data_dir=../shared/data/multi30k] [--batches=300]
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / 'shared'  # real corpora, when present beside the clone
WORKLOAD = ROOT / 'bench' / 'workloads' / 'cpu_small.json'


def pipeline_throughput(data_dir: str, batches: int, workdir: str) -> dict:
  from transformer_jax import config as config_lib
  from transformer_jax.data import datasets, pipeline
  workload = json.loads(WORKLOAD.read_text())
  config = config_lib.defaults()
  config.data.update(name='multi30k', data_dir=data_dir, tfds_dir=os.path.join(workdir, 'tfds'),
                     max_len=workload['src_len'], batch_size=workload['batch'])
  config.model.vocab_size = workload['vocab_size']
  phases = {}
  start = time.perf_counter()
  source = datasets.data_source(config.data, 'train')
  phases['tfds_build_s'] = time.perf_counter() - start
  start = time.perf_counter()
  tokenizer = pipeline.get_tokenizer(config, workdir)
  phases['vocabulary_s'] = time.perf_counter() - start
  start = time.perf_counter()
  split = pipeline.TokenizedSplit(source, config.data, tokenizer)
  phases['read_and_tokenize_s'] = time.perf_counter() - start
  iterator = iter(pipeline.train_dataset(config, split))
  next(iterator)
  rates, fill = [], []
  for _ in range(5):  # five timed windows; the median resists a noisy neighbour
    tokens, start = 0, time.perf_counter()
    for _ in range(batches // 5):
      batch = next(iterator)
      real = int((batch['source'] != 0).sum() + (batch['target'] != 0).sum())
      tokens += real
      fill.append(real / (2 * batch['source'].size))
    rates.append(tokens / (time.perf_counter() - start))
  return {'tokens_per_s': statistics.median(rates), 'tokens_per_s_windows': rates,
          'row_fill': float(np.mean(fill)), **{k: round(v, 2) for k, v in phases.items()},
          'batch_shape': list(batch['source'].shape)}


def train_step_consumption(steps: int = 5) -> dict:
  """Source+target tokens/s the real cpu-small train step (fp32) consumes, all cores."""
  import jax
  import train_step as workload  # bench/train_step.py: the cpu-small config and batch
  from transformer_jax import sharding
  from transformer_jax.steps import build, compile_steps, init_state
  w = json.loads(WORKLOAD.read_text())
  config = workload.workload_config(w, 'float32')
  mesh = sharding.make_mesh(config.mesh)
  setup = build(config, mesh)
  step_fn, _ = compile_steps(setup)
  state = init_state(setup)
  batch = sharding.place_batch(workload.workload_batch(w), mesh)
  times = []
  for _ in range(steps + 1):  # the first call compiles
    start = time.perf_counter()
    state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  step = statistics.median(times[1:])
  return {'step_s': step, 'tokens_per_s': w['batch'] * (w['src_len'] + w['tgt_len']) / step}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data_dir', default=str(SHARED / 'data' / 'multi30k'))
  parser.add_argument('--batches', type=int, default=300)
  args = parser.parse_args()
  step = train_step_consumption()  # first: XLA sizes its thread pool when it starts
  os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # the pipeline gets one core
  with tempfile.TemporaryDirectory() as workdir:
    pipe = pipeline_throughput(args.data_dir, args.batches, workdir)
  print(json.dumps({
      'benchmark': 'input_pipeline', 'dataset': 'multi30k train, en->de, packed',
      'pipeline_one_core': pipe,
      'reference_train_step_all_cores': step,
      'pipeline_over_train_step': pipe['tokens_per_s'] / step['tokens_per_s'],
      'target': 'pipeline_over_train_step >= 10 (and >= 33,000 tokens/s)',
  }, indent=2))


if __name__ == '__main__':
  main()
