"""`python -m transformer_jax.average --workdir=DIR --last=N [--until_step=S]`: checkpoint
averaging.

The paper averaged the last 5 checkpoints (base) or 20 (big). Parameters are restored
sharded over this machine's devices (FSDP over all of them, so no device holds a whole
model) and summed in place; the result is written as WORKDIR/averaged/checkpoints/STEP
with the latest averaged checkpoint's config and vocabulary (replacing an earlier
average), which `translate --averaged` and `evaluate --averaged` read. `--until_step`
averages the last N at or before step S instead of the latest ones.
"""
from __future__ import annotations

import base64
import os

import jax
import jax.numpy as jnp
from absl import flags

from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import cli, config as config_lib, files, inference, sharding
from transformer_jax.errors import UserError
from transformer_jax.steps import build


def average(workdir: str, last: int, until_step: int | None = None) -> tuple[int, list[int]]:
  """Average the last `last` checkpoints (at or before `until_step`, if given); returns
  (the new checkpoint's step, the steps)."""
  root = inference.checkpoint_root(workdir, averaged=False)
  source = checkpoint_lib.Checkpoints(root, config_lib.defaults(), async_save=False)
  steps = [s for s in source.steps() if until_step is None or s <= until_step]
  if len(steps) < last:
    upto = '' if until_step is None else f' at or before step {until_step}'
    raise UserError(f'--last={last} but {source.directory} holds {len(steps)} checkpoints'
                    f'{upto} ({", ".join(map(str, steps)) or "none"}); raise '
                    'train.keep_checkpoints before training to keep more.')
  steps = steps[-last:]
  meta = source.meta(steps[-1])
  config = config_lib.from_checkpoint(meta['config'])
  config.mesh.update(dict(data=1, fsdp=-1, tensor=1))  # shard parameters over every device
  setup = build(config, sharding.make_mesh(config.mesh))
  total = None
  for step in steps:
    state = source.restore(step, setup.abstract_state)
    total = state.params if total is None else jax.tree.map(jnp.add, total, state.params)
  # The latest state with averaged parameters (its Adam state and step are kept as-is).
  averaged = state.replace(params=jax.tree.map(lambda x: (x / last).astype(x.dtype), total))
  source.close()
  target = checkpoint_lib.Checkpoints(os.path.join(workdir, inference.AVERAGED_DIR), config,
                                      max_to_keep=1, async_save=False)
  for step in target.steps():  # one average at a time: a new one replaces the old
    target.delete(step)
  target.save(steps[-1], averaged, None, _vocab_file(workdir, meta), force=True)
  target.close()
  return steps[-1], steps


def _vocab_file(workdir: str, meta: dict) -> str:
  """The vocabulary to store with the average: the workdir's or, when absent, the copy
  inside the checkpoint (translate checks the workdir's against it)."""
  path = os.path.join(workdir, 'vocab.model')
  if not files.path(path).exists():
    path = os.path.join(workdir, inference.AVERAGED_DIR, 'vocab.model')
    files.write_atomically(path, base64.b64decode(meta['vocab_model']))
  return path


def main(argv):
  del argv
  if _LAST.value < 1:
    raise UserError(f'--last must be at least 1, got {_LAST.value}.')
  step, steps = average(cli.required_workdir(), _LAST.value, _UNTIL.value)
  print(f'averaged checkpoints {", ".join(map(str, steps))} into '
        f'{os.path.join(cli.WORKDIR.value, inference.AVERAGED_DIR)} (step {step})')


_LAST = flags.DEFINE_integer('last', 5, 'How many of the latest checkpoints to average.')
_UNTIL = flags.DEFINE_integer('until_step', None, 'Average the last N at or before this step.')

if __name__ == '__main__':
  cli.run(main)
