"""`python -m transformer_jax.average --workdir=DIR --last=N [--until_step=S]`: checkpoint
averaging.

Writes the mean of the last N checkpoints' parameters (at or before step S, with
`--until_step`) as WORKDIR/averaged/checkpoints/STEP, replacing an earlier average;
`translate --averaged` and `evaluate --averaged` read it. The paper averaged the last 5
(base) or 20 (big). On several processes each holds its devices' share of the sum.
"""
from __future__ import annotations

import os

from absl import flags

from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import cli, distributed
from transformer_jax.errors import UserError


def main(argv):
  del argv
  if _LAST.value < 1:
    raise UserError(f'--last must be at least 1, got {_LAST.value}.')
  workdir = cli.required_workdir()
  step, steps = checkpoint_lib.average(workdir, _LAST.value, _UNTIL.value)
  distributed.say(f'averaged checkpoints {", ".join(map(str, steps))} into '
        f'{os.path.join(workdir, checkpoint_lib.AVERAGED_DIR)} (step {step})')


_LAST = flags.DEFINE_integer('last', 5, 'How many of the latest checkpoints to average.')
_UNTIL = flags.DEFINE_integer('until_step', None, 'Average the last N at or before this step.')

if __name__ == '__main__':
  cli.run(main)
