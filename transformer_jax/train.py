"""`python -m transformer_jax.train --config=FILE --workdir=DIR`: train, resuming from DIR.

The loop itself is `loop.train`; this command trains and prints the last metrics as
JSON. On several processes (a pod slice) every process runs it; see `distributed.py`.
A run that reaches `train.num_steps` writes WORKDIR/done.json (`loop.DONE_FILE`;
`launch/tpu.py supervise` stops relaunching then).
"""
from __future__ import annotations

import contextlib
import json
import os
import sys

from transformer_jax import cli, distributed, files, loop
from transformer_jax.errors import UserError


def main(argv):
  del argv
  config = cli.resolved_config()
  workdir = cli.required_workdir()
  existed = files.path(workdir).exists()
  try:
    last = loop.train(config, workdir, set(cli.given_keys(sys.argv)))
  except UserError:
    if not existed and not files.is_bucket(workdir):
      with contextlib.suppress(OSError):  # only if still empty: nothing of value is lost
        os.rmdir(workdir)
    raise
  distributed.say(json.dumps({'final': last}))

if __name__ == '__main__':
  cli.run(main)
