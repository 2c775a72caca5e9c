"""Joins a multi-process run and says so, for tests/test_distributed.py: started as
`python tests/join_once.py --coordinator_address=... --num_processes=N --process_id=I`,
it runs `distributed.initialize()` as every command does (`cli.run`), then prints
`joined I of N`. With JOIN_ONCE_AS_TPU=1 it joins as on a TPU VM instead: no flags, JAX
detects coordinator, count and id itself (from Slurm's variables, as the test sets them
in place of a TPU VM's metadata server)."""
import os

import jax

from transformer_jax import cli, distributed

if os.environ.get('JOIN_ONCE_AS_TPU'):
  distributed.join_plan = lambda *args: 'tpu'


def main(argv):
  del argv
  print(f'joined {jax.process_index()} of {jax.process_count()}', flush=True)


if __name__ == '__main__':
  cli.run(main)
