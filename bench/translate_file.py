"""Bulk translation of a large file, as a user runs it: peak memory and time to the first
written line; prints JSON.

Writes a file of `--lines` lines (distinct sentences of the synthetic task, cycled: the
decoder caches nothing across sentences, so repeats cost what new lines do), then runs
`python -m transformer_jax.translate --input=F --output=O` on it in a new process and
watches it: the peak resident memory of the process and its children, the time from
start to the first window written to disk, and lines/s, until `--measure_lines` lines are
on disk (then it is killed: the figures are for the first lines of a file of any size).
The reference, measured in the same run: the same command on the file's first 1,000
lines, to its end.

  python bench/translate_file.py --workdir=DIR [--lines=1000000] [--measure_lines=200000]
                                 [--decode=greedy] [--record=FILE]
"""
from __future__ import annotations

import argparse
import itertools
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import psutil

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'bench'))
from pod_rehearsal import emit  # noqa: E402

from transformer_jax.data import synthetic  # noqa: E402


def write_corpus(path: pathlib.Path, lines: int, distinct: int = 20_000) -> None:
  sentences = list(dict.fromkeys(en for en, _ in synthetic.generate_pairs(99, distinct)))
  with path.open('w', encoding='utf-8') as f:
    for line in itertools.islice(itertools.cycle(sentences), lines):
      f.write(line + '\n')


def watch(args, source: pathlib.Path, output: pathlib.Path, stop_after: int | None) -> dict:
  """Run translate on `source`; sample its memory until it ends or `stop_after` lines
  are on disk."""
  command = [sys.executable, '-m', 'transformer_jax.translate', f'--workdir={args.workdir}',
             f'--input={source}', f'--output={output}', f'--decode={args.decode}',
             f'--window={args.window}', '--compilation_cache=']
  start = time.perf_counter()
  process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  parts = pathlib.Path(f'{output}.parts')
  peak, first, written, seconds = 0, None, 0, None
  while process.poll() is None:
    try:
      tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(True)]
      peak = max(peak, sum(p.memory_info().rss for p in tree))
    except psutil.NoSuchProcess:
      break
    windows = len(list(parts.glob('window-*.txt'))) if parts.exists() else 0
    if windows and first is None:
      first = time.perf_counter() - start
    written = windows * args.window
    if stop_after and written >= stop_after:
      seconds = time.perf_counter() - start
      process.kill()
      break
    time.sleep(0.2)
  code = process.wait()
  if not stop_after:
    if code:
      raise SystemExit(process.stderr.read().decode()[-2000:])
    seconds, written = time.perf_counter() - start, sum(1 for _ in output.open())
  return {'peak_rss_mib': round(peak / 2**20), 'first_window_written_s': first and round(first, 1),
          'lines_on_disk': written, 'seconds': round(seconds, 1),
          'lines_per_s': round(written / seconds, 1)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--lines', type=int, default=1_000_000)
  parser.add_argument('--measure_lines', type=int, default=200_000)
  parser.add_argument('--window', type=int, default=10_000)
  parser.add_argument('--decode', default='greedy')
  parser.add_argument('--record', default='')
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as scratch:
    scratch = pathlib.Path(scratch)
    big, small = scratch / 'big.txt', scratch / 'small.txt'
    write_corpus(big, args.lines)
    with big.open() as f, small.open('w') as out:
      out.writelines(itertools.islice(f, 1000))
    reference = watch(args, small, scratch / 'small.out', None)
    large = watch(args, big, scratch / 'big.out', args.measure_lines)
  emit({'benchmark': 'translate_file', 'workdir': args.workdir, 'decode': args.decode,
        'window': args.window, 'file_lines': args.lines,
        'reference_1000_lines': reference, 'large_file': large,
        'peak_rss_ratio': round(large['peak_rss_mib'] / reference['peak_rss_mib'], 2)},
       args.record)


if __name__ == '__main__':
  main()
