"""distributed.py: gathering a sharded array onto every process, placing a value every
process holds, and (as 2 processes) a barrier that times out naming what it waited for,
and a dead process that makes the others exit instead of waiting."""
import time

import numpy as np
import pytest

from transformer_jax import distributed, local_pod, sharding
from transformer_jax import config as config_lib


def test_global_array_and_gather_round_trip_over_eight_devices():
  mesh = sharding.make_mesh(config_lib.defaults().mesh)  # 8 devices on the data axis
  value = np.arange(16 * 5, dtype=np.int32).reshape(16, 5)
  placed = distributed.global_array(value, sharding.batch_sharding(mesh))
  assert len(placed.addressable_shards) == 8
  assert placed.addressable_shards[3].data.shape == (2, 5)
  np.testing.assert_array_equal(distributed.gather(placed * 2), value * 2)


@pytest.mark.parametrize('env, on_tpu, coordinator_flag, plan', [
    ({}, False, False, 'none'),  # a laptop
    ({}, False, True, 'flags'),  # CPU or GPU processes given a coordinator
    ({'JAX_PLATFORMS': 'cpu'}, False, True, 'flags'),  # as local_pod runs them
    ({}, True, False, 'tpu'),  # `gcloud compute tpus tpu-vm create`: no worker variables
    ({'TPU_WORKER_HOSTNAMES': 'w0,w1', 'TPU_WORKER_ID': '1'}, True, False, 'tpu'),  # GKE
    ({'TPU_WORKER_HOSTNAMES': 'w0,w1'}, False, False, 'none'),  # no TPU chips here
    ({'JAX_PLATFORMS': 'cpu'}, True, False, 'none'),  # `prepare` on worker 0 alone
    ({'JAX_PLATFORMS': 'cpu', 'TPU_WORKER_HOSTNAMES': 'w0,w1'}, True, False, 'none'),
], ids=['laptop', 'flags', 'local_pod', 'tpu_vm', 'gke', 'gke_variables_off_tpu',
        'prepare_on_tpu_vm', 'prepare_on_gke'])
def test_how_a_process_joins_its_run(env, on_tpu, coordinator_flag, plan):
  """A TPU VM made by the launcher has no variable naming its workers: JAX finds them
  from the VM's metadata, so its processes must call jax.distributed.initialize() too."""
  assert distributed.join_plan(env, on_tpu, coordinator_flag) == plan


def test_one_process_is_the_writer_and_needs_no_barrier():
  assert distributed.is_writer()
  distributed.barrier('nothing', timeout_s=0.001)  # one process: returns at once
  assert distributed.once('count', lambda first: first, timeout_s=1) is True


PROGRAM = '''
import time
import jax
from transformer_jax import cli, distributed

def main(argv):
  if jax.process_index() == WAITER:
    distributed.barrier('finish the slow job', timeout_s=TIMEOUT)
  else:
    time.sleep(ASLEEP)

cli.run(main)
'''


def start(tmp_path, name, waiter, timeout, asleep):
  """Process `waiter` waits at a barrier for `timeout` s; the other sleeps `asleep` s."""
  program = PROGRAM.replace('WAITER', str(waiter)).replace('TIMEOUT', str(timeout))
  (tmp_path / f'{name}.py').write_text(program.replace('ASLEEP', str(asleep)))
  return local_pod.start([name], processes=2, devices=1, log_dir=str(tmp_path / name),
                         cwd=str(tmp_path), heartbeat_s=5)


@pytest.mark.slow
def test_a_barrier_times_out_naming_what_it_waited_for(tmp_path):
  pod = start(tmp_path, 'barrier_timeout', waiter=1, timeout=3, asleep=8)
  _, process_1 = pod.wait(timeout=300)
  assert process_1.code == 2
  lines = process_1.err.strip().splitlines()
  assert 'waited 3 s for the other processes to finish the slow job' in lines[-1]


@pytest.mark.slow
def test_the_others_exit_when_a_process_dies(tmp_path):
  """Process 0 waits 600 s at a barrier; killing process 1 ends it within the 5 s
  heartbeat timeout (plus JAX's polling), not after 600 s."""
  pod = start(tmp_path, 'dead_peer', waiter=0, timeout=600, asleep=600)
  time.sleep(10)  # both have joined
  assert all(p.poll() is None for p in pod.processes)
  pod.kill(1)
  killed = time.monotonic()
  process_0, _ = pod.wait(timeout=120)
  assert process_0.code != 0
  assert time.monotonic() - killed < 60
