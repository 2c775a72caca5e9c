"""Checkpoint save and restore of the cpu-small train state, with and without checksums;
prints JSON.

What verification costs: `transformer_jax.checkpoint.Checkpoints` as training uses it
(checksums of every array's values taken before the save, verified after the restore;
each committed step's manifest written in the background, `manifest_s` alone) against
Orbax doing the same save and restore without them (the reference, measured in the same run on the
same state, each repeat alternating which goes first). Save is timed to completion (the
save and its wait); the part that blocks training is reported too.

  python bench/checkpoint_io.py [--repeats=7] [--dir=DIR] [--record=FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'bench'))

import jax  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

from pod_rehearsal import emit  # noqa: E402
from train_step import WORKLOAD, workload_config  # noqa: E402
from transformer_jax import checkpoint as checkpoint_lib  # noqa: E402
from transformer_jax import checksum, manifest, sharding  # noqa: E402
from transformer_jax.steps import build, init_state  # noqa: E402


def timed(fn) -> float:
  started = time.perf_counter()
  fn()
  return time.perf_counter() - started


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=7)
  parser.add_argument('--dir', default='', help='where to write (default: a temporary one)')
  parser.add_argument('--record', default='', help='also write the JSON here')
  a = parser.parse_args()
  root = pathlib.Path(a.dir or tempfile.mkdtemp(prefix='checkpoint_io-'))
  config = workload_config(json.loads(WORKLOAD.read_text()), 'float32')
  setup = build(config, sharding.make_mesh(config.mesh))
  state = init_state(setup)
  vocab = root / 'vocab.model'
  vocab.write_bytes(os.urandom(300_000))  # the size of an 8k SentencePiece model
  ours = checkpoint_lib.Checkpoints(str(root / 'ours'), config, async_save=True, max_to_keep=2,
                                    writer=True)
  plain = ocp.CheckpointManager(root / 'plain' / 'checkpoints', item_names=('state', 'meta'),
                                options=ocp.CheckpointManagerOptions(max_to_keep=2))
  meta = {'config': config.to_dict(), 'vocab_model': 'x' * 400_000}
  checksum.checksums(state)  # compile once, as a training run does before its first save

  figures = {k: [] for k in ('save_s', 'save_plain_s', 'restore_s', 'restore_plain_s',
                             'save_blocking_s', 'save_blocking_plain_s', 'checksum_s',
                             'manifest_s')}
  def save_ours(step):
    figures['save_blocking_s'].append(timed(
        lambda: ours.save(step, state, None, str(vocab), force=True)))
    figures['save_s'].append(figures['save_blocking_s'][-1] + timed(ours.wait))

  def save_plain(step):
    figures['save_blocking_plain_s'].append(timed(lambda: plain.save(
        step, force=True, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                  meta=ocp.args.JsonSave(meta)))))
    figures['save_plain_s'].append(figures['save_blocking_plain_s'][-1]
                                   + timed(plain.wait_until_finished))

  def restore_ours(step):
    figures['restore_s'].append(timed(lambda: jax.block_until_ready(
        ours.restore(step, setup.abstract_state))))

  def restore_plain(step):
    figures['restore_plain_s'].append(timed(lambda: jax.block_until_ready(plain.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(setup.abstract_state),
                                      meta=ocp.args.JsonRestore()))['state'])))

  for step in range(1, a.repeats + 1):  # alternating which goes first: the machine drifts
    pairs = ((save_ours, save_plain), (restore_ours, restore_plain))
    for first, second in pairs:
      first, second = (first, second) if step % 2 else (second, first)
      first(step)
      second(step)
    figures['checksum_s'].append(timed(lambda: checksum.checksums(state)))
    figures['manifest_s'].append(timed(lambda: manifest.write(ours.directory, step)))
  ours.close()
  plain.close()
  if not a.dir:
    shutil.rmtree(root)

  median = {k: statistics.median(v) for k, v in figures.items()}
  params = sum(x.size for x in jax.tree.leaves(state.params))
  result = {
      'workload': 'cpu-small', 'state_bytes': sum(x.nbytes for x in jax.tree.leaves(state)),
      'parameters': params, 'repeats': a.repeats,
      **{k: round(v, 4) for k, v in median.items()},
      'save_ratio': round(median['save_s'] / median['save_plain_s'], 3),
      'restore_ratio': round(median['restore_s'] / median['restore_plain_s'], 3),
      'save_blocking_ratio': round(median['save_blocking_s'] / median['save_blocking_plain_s'], 3),
      'target_ratio': 1.10,
      'cpus': os.cpu_count(),
  }
  emit(result, a.record)

if __name__ == '__main__':
  main()
