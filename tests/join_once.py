"""Joins a multi-process run and says so, for tests/test_distributed.py: started as
`python tests/join_once.py --coordinator_address=... --num_processes=N --process_id=I`,
it runs `distributed.initialize()` as every command does (`cli.run`), then prints
`joined I of N`. On an emulated TPU VM (tests/test_fleet.py) it takes no flags: JAX
finds its peers from the VM's metadata server, as on a real one."""
import jax

from transformer_jax import cli


def main(argv):
  del argv
  print(f'joined {jax.process_index()} of {jax.process_count()}', flush=True)


if __name__ == '__main__':
  cli.run(main)
