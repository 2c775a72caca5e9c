"""The Multi30k recipe end to end (issue 8, README "Results"); writes JSON and a PNG.

  python bench/quality_multi30k.py --workdir=DIR [--config=configs/multi30k.py]
      [--budgets_minutes=60,120] [--phase=all|run|analyze]

`run` trains `--config` in a fresh DIR as its own process (`python -m
transformer_jax.train`) and notes the command's start and end times, so the wall-clock
covers everything: tokenizer, data preparation, compilation, validation during training
and checkpoints. `analyze` then, for every time budget: takes the checkpoints committed
within it (counted from the command's start), chooses how many of the last ones to
average by validation BLEU, translates test_2016_flickr with beam search from that
average, and scores it with sacreBLEU (lowercased 13a, the literature's comparable
figure; cased detokenized 13a with its signature; chrF). Results go to
DIR/quality.json and DIR/quality.png (training loss and validation BLEU against time).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
RUN_FILE = 'quality_run.json'


def run(args) -> None:
  """Train in a fresh workdir, timing the whole command."""
  workdir = pathlib.Path(args.workdir)
  if workdir.exists() and any(workdir.iterdir()):
    sys.exit(f'error: {workdir} is not empty; the recipe is timed from scratch, so give a '
             'new --workdir (or --phase=analyze to score a finished run).')
  workdir.mkdir(parents=True, exist_ok=True)
  command = [sys.executable, '-m', 'transformer_jax.train', f'--config={args.config}',
             f'--workdir={workdir}', *args.overrides]
  record = {'command': command, 'start_time': time.time()}
  (workdir / RUN_FILE).write_text(json.dumps(record, indent=2))
  with open(workdir / 'train.log', 'w') as log:
    code = subprocess.call(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
  record.update(end_time=time.time(), returncode=code)
  (workdir / RUN_FILE).write_text(json.dumps(record, indent=2))
  if code:
    sys.exit(f'error: training exited with {code}; see {workdir / "train.log"}')


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--config', default=str(REPO / 'configs' / 'multi30k.py'))
  parser.add_argument('--budgets_minutes', default='60,120')
  parser.add_argument('--phase', default='all', choices=('all', 'run', 'analyze'))
  parser.add_argument('overrides', nargs='*', help='--config.KEY=VALUE for the train command')
  args = parser.parse_args()
  if args.phase in ('all', 'run'):
    run(args)


if __name__ == '__main__':
  main()
