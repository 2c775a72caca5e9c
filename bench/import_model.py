"""Importing an OPUS-MT-size model: `import_model` on a random `MarianMTModel` of
opus-mt-en-de's shape (6+6 layers, d_model 512, 8 heads, d_ff 2048, 58,101 pieces, swish,
attention and logits biases), against Transformers' own load of the same directory (the
reference, measured in the same run). Prints JSON.

The import is a new process each repeat, as a user runs it (`python -m ...`), so its time
includes starting Python, JAX and Transformers; the reference is timed the same way
(`from_pretrained` of model and tokenizer in a new process). Also reported: the sizes
on disk and each process's peak memory (max RSS).

  python bench/import_model.py [--repeats=3] [--record=FILE]
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'tests'))
sys.path.insert(0, str(REPO / 'bench'))

from pod_rehearsal import commit, cpu_model  # noqa: E402 (bench/: standard library only)

OPUS_MT_EN_DE = dict(d_model=512, encoder_layers=6, decoder_layers=6,
                     encoder_attention_heads=8, decoder_attention_heads=8,
                     encoder_ffn_dim=2048, decoder_ffn_dim=2048, vocab_size=58101)
LOAD = ('import sys, transformers; transformers.MarianMTModel.from_pretrained(sys.argv[1]); '
        'transformers.MarianTokenizer.from_pretrained(sys.argv[1])')  # the reference


def build(directory: pathlib.Path) -> None:
  """The directory: tokenizer files as tests/opus_mt.py makes them, vocab.json padded to
  the real model's size (pieces never produced), random weights of the real shape."""
  import torch
  import transformers
  import opus_mt
  opus_mt.build(directory)
  vocab = json.loads((directory / 'vocab.json').read_text())
  vocab.pop('<pad>')  # back at the end, as Marian numbers it
  while len(vocab) < OPUS_MT_EN_DE['vocab_size'] - 1:
    vocab[f'\u2581unused{len(vocab)}'] = len(vocab)
  vocab['<pad>'] = len(vocab)
  (directory / 'vocab.json').write_text(json.dumps(vocab, ensure_ascii=False))
  v = len(vocab)
  config = transformers.MarianConfig(
      **{**OPUS_MT_EN_DE, 'vocab_size': v}, decoder_vocab_size=v, activation_function='swish',
      scale_embedding=True, max_position_embeddings=512, pad_token_id=v - 1,
      decoder_start_token_id=v - 1, eos_token_id=0, forced_eos_token_id=0)
  torch.manual_seed(0)
  model = transformers.MarianMTModel(config)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith('.bias'):
        p.normal_(0, 0.02)
    model.final_logits_bias.normal_(0, 0.02)  # a buffer, not a parameter
  model.save_pretrained(str(directory))


# A child that runs a module (or code) and then prints its own peak RSS in KiB.
_MEASURED = """import resource, runpy, sys
kind, target = sys.argv[1:3]
sys.argv = [target, *sys.argv[3:]]
try:
  runpy.run_module(target, run_name='__main__') if kind == 'module' else exec(target)
except SystemExit as e:
  assert not e.code, e.code
print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def timed(kind: str, target: str, *argv: str) -> tuple[float, float]:
  """(wall seconds, peak RSS GiB) of a new process running `target`."""
  start = time.perf_counter()
  out = subprocess.run([sys.executable, '-c', _MEASURED, kind, target, *argv], check=True,
                       capture_output=True, text=True, cwd=REPO).stdout
  seconds = time.perf_counter() - start
  peak = int(out.rsplit('PEAK_RSS_KIB', 1)[1].split()[0])
  return seconds, peak / 2 ** 20


def size_gib(directory: pathlib.Path) -> float:
  return sum(f.stat().st_size for f in directory.rglob('*') if f.is_file()) / 2 ** 30


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--record', default='')
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    (tmp / 'hf').mkdir()
    build(tmp / 'hf')
    ours, theirs = [], []
    for i in range(args.repeats):  # alternating, reference first
      theirs.append(timed('code', LOAD, str(tmp / 'hf')))
      ours.append(timed('module', 'transformer_jax.import_model', f'--input={tmp / "hf"}',
                        f'--workdir={tmp / f"imported{i}"}'))
    median = lambda runs, i: statistics.median(r[i] for r in runs)
    record = {
        'bench': 'import_model', 'model': 'opus-mt-en-de shape, random weights',
        'machine': cpu_model(), 'commit': commit(), 'date': time.strftime('%Y-%m-%d'),
        'import_s_median': round(median(ours, 0), 2),
        'transformers_load_s_median': round(median(theirs, 0), 2),
        'ratio': round(median(ours, 0) / median(theirs, 0), 2),
        'import_peak_rss_gib': round(median(ours, 1), 2),
        'transformers_load_peak_rss_gib': round(median(theirs, 1), 2),
        'import_s': [round(r[0], 2) for r in ours],
        'transformers_load_s': [round(r[0], 2) for r in theirs],
        'hf_dir_gib': round(size_gib(tmp / 'hf'), 3),
        'workdir_gib': round(size_gib(tmp / 'imported0'), 3), 'repeats': args.repeats}
  print(json.dumps(record))
  if args.record:
    pathlib.Path(args.record).write_text(json.dumps(record, indent=1) + '\n')


if __name__ == '__main__':
  main()
