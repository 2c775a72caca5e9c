"""The training input at WMT scale: prepare once, restart in seconds, stream with bounded
memory. Prints one JSON object (and writes it with --record).

  python bench/input_pipeline.py --pairs=500000 [--root=DIR] [--record=FILE]
  python bench/input_pipeline.py --multi30k_steps=200    # also: input wait in `train`
  python bench/input_pipeline.py --pairs=4500000 --hosts=1,8,64,256 --rows_per_host=128

A corpus of N pairs with WMT-like lengths (Zipf-distributed pseudo-words, ~27 per
sentence: ~30 tokens per side with an 8,192-piece vocabulary; the total is reported) is
generated into ROOT (reused when there). Then, timed:

  prepare_s                  TFDS build + vocabulary + token store, the one-time cost
  restart_to_first_batch_s   a new process (imports included) resuming mid-epoch from a
                             saved stream state, store present, to its first batch
  peak_rss_gib               that process's peak resident memory after 300 batches
  tokens_per_s_one_core      non-padding source+target tokens the stream packs, pinned
                             to one core (median of 5 windows)
  tokens_per_s_all_cores     the same with the prefetch thread, all cores
  subword_sampling_tokens_per_s_one_core   with data.subword_samples=4, one core
  multi30k_input_wait        (--multi30k_steps) the fraction of time `train` waited for
                             input in the Multi30k recipe, from its metrics.jsonl

With --hosts, for each H: one host's share of a slice of H processes, R rows each (the
global batch is H x R rows), resuming from a mid-epoch state of that global batch:
  host_ms_per_step           one core, from `set_state` to the last of --batches batches,
                             the first included, per batch: the worst of processes 0,
                             H/2 and H-1
  host_tokens_per_s_one_core non-padding source+target tokens of the host's rows per
                             second, the same runs (the worst)
  row_fill                   the mean over those batches of the worse of source and
                             target token slots filled
  state_bytes                the saved (global) stream state, JSON
  restart_to_first_batch_s, peak_rss_gib   as above, for process H-1 of H

Batches are the base preset's: 256 rows of 128 tokens (configs/tpu_v5e_8_base.py), with
an 8,192-piece vocabulary (the preset's 37,000 would make most pseudo-words one piece).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'bench'))
from pod_rehearsal import emit  # noqa: E402

WORDS_PER_SENTENCE = 27


def write_corpus(directory: pathlib.Path, pairs: int, seed: int = 0) -> None:
  """train/validation/test .en/.de files of pseudo-words (the validation and test splits
  have 1,000 pairs); kept if already written for this size."""
  marker = directory / f'COMPLETE-{pairs}'
  if marker.exists():
    return
  directory.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  syllables = np.array([c + v for c in 'bdfgklmnprstvwz' for v in ('a', 'e', 'i', 'o', 'u',
                                                                    'ei', 'au')])
  vocab = {lang: np.array([''.join(rng.choice(syllables, rng.integers(1, 4)))
                           for _ in range(50_000)]) for lang in ('en', 'de')}
  zipf = 1.0 / np.arange(1, 50_001) ** 1.1
  zipf /= zipf.sum()
  for split, n in (('train', pairs), ('validation', 1000), ('test', 1000)):
    handles = {lang: open(directory / f'{split}.{lang}', 'w') for lang in ('en', 'de')}
    for start in range(0, n, 100_000):
      count = min(100_000, n - start)
      lengths = np.clip(rng.normal(WORDS_PER_SENTENCE, 8, count), 3, 80).astype(int)
      for lang in ('en', 'de'):
        words = vocab[lang][rng.choice(50_000, lengths.sum(), p=zipf)]
        ends = np.cumsum(lengths)
        handles[lang].write(''.join(' '.join(words[e - k:e]) + '\n'
                                    for e, k in zip(ends.tolist(), lengths.tolist())))
    for h in handles.values():
      h.close()
  marker.write_text('')


def base_config(corpus: pathlib.Path, root: pathlib.Path, **data):
  from transformer_jax import config as config_lib
  c = config_lib.load(str(REPO / 'configs' / 'tpu_v5e_8_base.py'))
  c.data.update(name='parallel_text', data_dir=str(corpus), tfds_dir=str(root / 'tfds'),
                source_lang='en', target_lang='de', **data)
  c.model.vocab_size = 8192
  return config_lib.validate(c)


def prepare(config, workdir: str) -> dict:
  from transformer_jax.data import datasets, pipeline
  times = {}
  start = time.perf_counter()
  datasets.builder(config.data)
  times['tfds_build_s'] = time.perf_counter() - start
  start = time.perf_counter()
  tokenizer = pipeline.get_tokenizer(config, workdir)
  times['vocabulary_s'] = time.perf_counter() - start
  start = time.perf_counter()
  store = pipeline.training_store(config, workdir, tokenizer)
  times['store_s'] = time.perf_counter() - start
  return {**{k: round(v, 1) for k, v in times.items()}, 'prepare_s': round(sum(times.values()), 1),
          'tokens': store.tokens_total(), 'store_bytes': _size(store.directory)}


def throughput(stream, batches: int) -> float:
  """Median of 5 windows of non-padding source+target tokens per second."""
  next(stream)
  rates = []
  for _ in range(5):
    tokens, start = 0, time.perf_counter()
    for _ in range(batches // 5):
      batch = next(stream)
      tokens += int((batch['source_segment_ids'] > 0).sum() +
                    (batch['target_segment_ids'] > 0).sum())
    rates.append(tokens / (time.perf_counter() - start))
  return statistics.median(rates)


RESTART = '''
import json, sys, time
started = float(sys.argv[1])
from transformer_jax.data import pipeline, stream as stream_lib
from transformer_jax import config as config_lib
saved = json.load(open('restart.json'))
config = config_lib.from_checkpoint(saved['config'])
workdir, state = saved['workdir'], saved['state']
tokenizer = pipeline.get_tokenizer(config, workdir)
store = pipeline.training_store(config, workdir, tokenizer)
stream = stream_lib.Prefetch(pipeline.train_stream(config, store, tokenizer,
                                                  **saved['process']), 2)
stream.set_state(state)
next(stream)
first = time.time() - started
for _ in range(300):
  next(stream)
stream.close()
# VmHWM: this process's peak since exec (ru_maxrss would include the parent's at fork).
with open('/proc/self/status') as f:
  peak = next(int(line.split()[1]) for line in f if line.startswith('VmHWM')) / 2 ** 20
print(json.dumps({'restart_to_first_batch_s': first, 'peak_rss_gib': peak}))
'''


def restart(config, workdir: str, state: dict, root: pathlib.Path, **process) -> dict:
  """A new process resuming the stream at `state` (as process `process_index` of
  `process_count` if given): seconds to its first batch, memory."""
  (root / 'restart.json').write_text(json.dumps(
      {'config': json.loads(config.to_json()), 'workdir': workdir, 'state': state,
       'process': process}))
  result = subprocess.run([sys.executable, '-c', RESTART, str(time.time())], cwd=root,
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, JAX_PLATFORMS='cpu'))
  if result.returncode:
    raise RuntimeError(result.stderr[-2000:])
  return {k: round(v, 2) for k, v in json.loads(result.stdout.splitlines()[-1]).items()}


def host_share(config, store, tokenizer, hosts: int, rows: int, batches: int, root,
               workdir: str) -> dict:
  """One host's input work in a slice of `hosts` processes with `rows` rows each."""
  from transformer_jax.data import pipeline
  config = config.copy_and_resolve_references()
  config.data.batch_size = hosts * rows
  whole = pipeline.train_stream(config, store, tokenizer, process_index=0, process_count=1)
  for _ in range(3):  # mid-epoch, windows full
    next(whole)
  state = whole.get_state()
  del whole
  cores = os.sched_getaffinity(0)
  os.sched_setaffinity(0, {min(cores)})
  runs = []
  for index in sorted({0, hosts // 2, hosts - 1}):
    stream = pipeline.train_stream(config, store, tokenizer, process_index=index,
                                   process_count=hosts)
    tokens, fills, start = 0, [], time.perf_counter()
    stream.set_state(state)
    for _ in range(batches):
      batch = next(stream)
      used = [(batch[f'{f}_segment_ids'] > 0) for f in ('source', 'target')]
      tokens += int(sum(u.sum() for u in used))
      fills.append(min(float(u.mean()) for u in used))
    seconds = time.perf_counter() - start
    runs.append({'process': index, 'ms_per_step': 1000 * seconds / batches,
                 'tokens_per_s': tokens / seconds, 'fill': statistics.mean(fills)})
  os.sched_setaffinity(0, cores)
  worst = max(runs, key=lambda r: r['ms_per_step'])
  return {'hosts': hosts, 'rows_per_host': rows, 'batches': batches,
          'host_ms_per_step': round(worst['ms_per_step'], 2),
          'host_tokens_per_s_one_core': round(min(r['tokens_per_s'] for r in runs)),
          'row_fill': round(min(r['fill'] for r in runs), 4),
          'state_bytes': len(json.dumps(state)),
          **restart(config, workdir, state, root, process_index=hosts - 1,
                    process_count=hosts)}


def multi30k_input_wait(steps: int, root: pathlib.Path) -> dict:
  """`train` with configs/multi30k.py for `steps` steps: the input wait it logged."""
  workdir = root / 'multi30k_run'
  flags = [f'--config={REPO / "configs" / "multi30k.py"}', f'--workdir={workdir}',
           f'--config.data.tfds_dir={root / "tfds_multi30k"}',
           f'--config.train.num_steps={steps}', '--config.train.log_every=50',
           '--config.train.eval_every=0', '--config.train.bleu_every=0',
           f'--config.train.checkpoint_every={steps}']
  subprocess.run([sys.executable, '-m', 'transformer_jax.train', *flags], cwd=REPO,
                 check=True, capture_output=True, timeout=3600,
                 env=dict(os.environ, JAX_PLATFORMS='cpu'))
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  waits = [r['input_wait'] for r in records if r['kind'] == 'train'][1:]  # 1st: compiling
  steps_s = [r['step_time'] for r in records if r['kind'] == 'train'][1:]
  return {'multi30k_input_wait': statistics.median(waits), 'multi30k_input_wait_max': max(waits),
          'multi30k_step_s': statistics.median(steps_s), 'multi30k_steps': steps}


def _size(directory: str) -> int:
  return sum(p.stat().st_size for p in pathlib.Path(directory).rglob('*') if p.is_file())


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--pairs', type=int, default=500_000)
  parser.add_argument('--batches', type=int, default=100, help='per throughput figure')
  parser.add_argument('--root', default='', help='corpus, TFDS and store (kept for reuse)')
  parser.add_argument('--multi30k_steps', type=int, default=0)
  parser.add_argument('--hosts', default='', help='e.g. 1,8,64,256: one host\'s share')
  parser.add_argument('--rows_per_host', type=int, default=128)
  parser.add_argument('--record', default='')
  a = parser.parse_args()
  root = pathlib.Path(a.root or tempfile.mkdtemp(prefix='input_bench_'))
  from transformer_jax.data import pipeline
  corpus = root / f'corpus_{a.pairs}'
  started = time.perf_counter()
  write_corpus(corpus, a.pairs)
  generate_s = time.perf_counter() - started
  config = base_config(corpus, root)
  workdir = str(root / f'work_{a.pairs}')
  record = {'benchmark': 'input_pipeline', 'pairs': a.pairs,
            'corpus_generation_s': round(generate_s, 1), **prepare(config, workdir)}
  record['tokens_total'] = sum(record['tokens'].values())
  tokenizer = pipeline.get_tokenizer(config, workdir)
  store = pipeline.training_store(config, workdir, tokenizer)
  stream = pipeline.train_stream(config, store, tokenizer)
  for _ in range(20):
    next(stream)
  state = stream.get_state()  # mid-epoch
  record.update(restart(config, workdir, state, root))
  cores = os.sched_getaffinity(0)
  os.sched_setaffinity(0, {min(cores)})
  record['tokens_per_s_one_core'] = round(throughput(stream, a.batches))
  sampled = base_config(corpus, root, subword_samples=4)
  record['subword_sampling_tokens_per_s_one_core'] = round(throughput(
      pipeline.train_stream(sampled, store, tokenizer), max(10, a.batches // 5)))
  os.sched_setaffinity(0, cores)
  from transformer_jax.data.stream import Prefetch
  ahead = Prefetch(pipeline.train_stream(config, store, tokenizer), config.data.prefetch)
  record['tokens_per_s_all_cores'] = round(throughput(ahead, a.batches))
  ahead.close()
  batch = next(stream)
  record['row_fill'] = round(min(float((batch[f'{f}_segment_ids'] > 0).mean())
                                 for f in ('source', 'target')), 3)
  record['batch_shape'] = list(batch['source'].shape)
  if a.hosts:
    record['per_host'] = [host_share(config, store, tokenizer, int(h), a.rows_per_host,
                                     a.batches, root, workdir) for h in a.hosts.split(',')]
  if a.multi30k_steps:
    record.update(multi30k_input_wait(a.multi30k_steps, root))
  record['cpus'] = len(cores)
  emit(record, a.record, [arg for arg in sys.argv[1:] if not arg.startswith('--root')])


if __name__ == '__main__':
  main()
