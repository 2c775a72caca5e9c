"""distributed.py: gathering a sharded array onto every process, placing a value every
process holds, and (as 2 processes) a barrier that times out naming what it waited for,
a dead process that makes the others exit instead of waiting, and a start-up where a
process never comes, which ends in one line naming it."""
import pathlib
import subprocess
import sys
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
  assert process_1.code == 75  # PeersLost: a relaunch may succeed
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


JOIN_ONCE = str(pathlib.Path(__file__).parent / 'join_once.py')


def join(ids, count, timeout_s=5, delay_s=0.0):
  """Start processes `ids` (in that order, `delay_s` apart) of a `count`-process run
  joined by coordinator flags; their (exit code, stdout, stderr) and the seconds until
  all exited. (The TPU VM's path, JAX detecting the peers itself, runs on the emulated
  fleet: tests/test_fleet.py.)"""
  port, started, begun = local_pod.free_port(), [], time.monotonic()
  for n, i in enumerate(ids):
    time.sleep(delay_s if n else 0)
    env = local_pod.environment(devices=1)
    args = [f'--initialization_timeout_s={timeout_s}', f'--coordinator_address=127.0.0.1:{port}',
            f'--num_processes={count}', f'--process_id={i}']
    started.append(subprocess.Popen([sys.executable, JOIN_ONCE, *args], env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE))
  results = []
  for p in started:
    try:
      out, err = p.communicate(timeout=200)  # a hang guard: JAX alone would wait 300 s
    except subprocess.TimeoutExpired:
      for q in started:
        q.kill()
      out, err = p.communicate()
    results.append((p.returncode, out, err))
  return results, time.monotonic() - begun


@pytest.mark.slow
def test_a_process_that_never_starts_is_named_by_the_others():
  """3 processes expected, 2 started: JAX alone would hold both 300 s, then abort each
  with a C++ stack trace. Both end after the 5 s timeout instead, naming process 2."""
  results, seconds = join([0, 1], count=3)
  for i, (code, _, err) in enumerate(results):
    assert code == 75, err
    assert err.strip().splitlines()[-1].startswith(
        f'error: Process {i} waited 5 s (--initialization_timeout_s) for process 2 to join')
    assert 'Check failure' not in err
  assert seconds < 60


@pytest.mark.slow
def test_a_process_that_cannot_reach_process_0_names_it():
  results, seconds = join([1], count=2)
  code, _, err = results[0]
  assert code == 75, err
  assert err.strip().splitlines()[-1].startswith(
      'error: Process 1 could not reach process 0 at 127.0.0.1:')
  assert seconds < 60


@pytest.mark.slow
def test_processes_started_apart_still_join():
  """Process 1 first, process 0 two seconds later: process 1 keeps calling at the roll
  call's door until process 0 opens it."""
  results, _ = join([1, 0], count=2, timeout_s=60, delay_s=2)
  assert [(code, out) for code, out, _ in results] == [(0, 'joined 1 of 2\n'),
                                                       (0, 'joined 0 of 2\n')]
