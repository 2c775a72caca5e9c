"""`python -m transformer_jax.info --config=FILE`: parameters, FLOPs per token and the
training state's memory, as JSON (see `costs.py` for how each is counted)."""
from __future__ import annotations

import json

from transformer_jax import cli, costs


def main(argv):
  del argv
  print(json.dumps(costs.summary(cli.resolved_config()), indent=2))


if __name__ == '__main__':
  cli.run(main)
