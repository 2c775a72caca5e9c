"""`python -m transformer_jax.train --config=FILE --workdir=DIR`: train, resuming from DIR.

The loop itself is `loop.train`; this command connects the processes of a multi-host
run, trains, and prints the last metrics as JSON.
"""
from __future__ import annotations

import json
import os

import jax
from absl import flags

from transformer_jax import cli, loop


def initialize_distributed() -> None:
  """Multi-host runs: connect the processes before any other JAX call.

  On a TPU pod slice every worker runs the same command and JAX finds its peers itself;
  elsewhere (e.g. several CPU processes) the coordinator is given by flags or the
  standard JAX environment variables.
  """
  if _COORDINATOR.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  elif len(os.environ.get('TPU_WORKER_HOSTNAMES', '').split(',')) > 1:
    jax.distributed.initialize()


def main(argv):
  del argv
  config = cli.resolved_config()
  workdir = cli.required_workdir()
  initialize_distributed()
  last = loop.train(config, workdir)
  if jax.process_index() == 0:
    print(json.dumps({'final': last}), flush=True)


_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'host:port of process 0, for multi-process runs off TPU.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in a multi-process run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, 0..num_processes-1.')

if __name__ == '__main__':
  cli.run(main)
