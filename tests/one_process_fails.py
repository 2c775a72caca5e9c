"""A restore that fails on one process only, for tests/test_local_pod.py: run by
local_pod as `python -m one_process_fails --workdir=DIR` from tests/, each process
restores the newest checkpoint, and process 1 runs out of memory placing the arrays it
read (the error JAX raises, injected at JAX's boundary; process 0 reads normally). Both
must stop with their one line, nothing moved, neither waiting for the other."""
import jax

from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import cli, sharding
from transformer_jax import config as config_lib
from transformer_jax.steps import build


def main(argv):
  del argv
  workdir = cli.required_workdir()
  probe = checkpoint_lib.Checkpoints(workdir, config_lib.defaults(), async_save=False)
  config = config_lib.from_checkpoint(probe.meta(probe.latest_step())['config'])
  probe.close()
  setup = build(config, sharding.make_mesh(config.mesh))
  if jax.process_index() == 1:
    def out_of_memory(*args, **kwargs):
      raise jax.errors.JaxRuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to '
                                       'allocate 1.50GiB.')
    jax.make_array_from_single_device_arrays = out_of_memory
  checkpoints = checkpoint_lib.Checkpoints(workdir, config, async_save=False)
  print('newest verified:', checkpoints.newest_verified(setup.abstract_state.params))


if __name__ == '__main__':
  cli.run(main)
