"""`python -m transformer_jax.train --config=FILE --workdir=DIR`: train, resuming from DIR.

The loop itself is `loop.train`; this command trains and prints the last metrics as
JSON. On several processes (a pod slice) every process runs it; see `distributed.py`.
"""
from __future__ import annotations

import json

from transformer_jax import cli, distributed, loop


def main(argv):
  del argv
  config = cli.resolved_config()
  workdir = cli.required_workdir()
  last = loop.train(config, workdir)
  distributed.say(json.dumps({'final': last}))

if __name__ == '__main__':
  cli.run(main)
