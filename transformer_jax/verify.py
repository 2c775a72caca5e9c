"""`python -m transformer_jax.verify --workdir=DIR [--quarantine]`: every checkpoint step
of a workdir (its checkpoints/, best/ and averaged/) against its manifest.

Prints one line per step: `ok` (every file matches its manifest), `damaged` with the
proof, or `no manifest` (saved before manifests, or killed before its manifest was
written: training writes it when it next restores the step and its values verify).
Changes nothing unless `--quarantine` is given: then each damaged step is moved to
quarantine/ beside its directory, as a restore would (never while another run holds the
directory's lease). Exits 2 with one line while a damaged step is left in place.
"""
from __future__ import annotations

import os

from absl import flags

from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import cli, distributed, files, manifest
from transformer_jax import config as config_lib
from transformer_jax.errors import UserError


def verdict(directory, step: int) -> tuple[str, list[str]]:
  """('ok (N files)' | 'damaged' | 'no manifest' | 'damaged manifest', the differences)."""
  try:
    recorded = manifest.read(directory, step)
  except manifest.DamagedManifest:
    return 'damaged manifest', []
  if recorded is None:
    return 'no manifest', []
  found = manifest.differences(directory / str(step), recorded)
  return ('damaged' if found else f'ok ({len(recorded)} files)'), found


def check(root: str, quarantine: bool) -> int:
  """Print each step's verdict; the number of damaged steps left in place."""
  checkpoints = checkpoint_lib.Checkpoints(root, config_lib.defaults(), async_save=False)
  left = 0
  try:
    for step in checkpoints.steps():
      what, found = verdict(checkpoints.directory, step)
      name = checkpoints.directory / str(step)
      if what == 'damaged':
        where = checkpoints.quarantine(step) if quarantine else None
        moved = f'; moved to {where}' if where else ''
        distributed.say(f'{name}: damaged: {manifest.proof(found)}{moved}')
        left += where is None
      else:
        distributed.say(f'{name}: {what}')
  finally:
    checkpoints.close()
  return left


def main(argv):
  del argv
  workdir = cli.required_workdir()
  roots = [root for root in (workdir, os.path.join(workdir, 'best'),
                             os.path.join(workdir, checkpoint_lib.AVERAGED_DIR))
           if (files.path(root) / checkpoint_lib.CHECKPOINT_DIR).is_dir()]
  if not roots:
    raise UserError(f'{workdir} holds no checkpoints (point --workdir at a training run).')
  left = sum(check(root, _QUARANTINE.value) for root in roots)
  if left:
    raise UserError(f'{left} damaged step(s) left in place; run again with --quarantine to '
                    'move them aside (a restore skips them either way).')


_QUARANTINE = flags.DEFINE_boolean('quarantine', False, 'Move each damaged step aside.')

if __name__ == '__main__':
  cli.run(main)
