"""A token store the processes of a run do not share: `data.store_dir` on each host's own
disk. Two processes joined by `jax.distributed`, each in a mount namespace of its own
where the same store path is its own directory (as on a pod slice, one VM per process),
stop at once with one line naming data.store_dir and the fix, whether the store is new
or already prepared on process 0's disk; neither waits for the other, nothing is
damaged. (The shared case, processes of one machine, is tested in test_local_pod.py.)
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

from transformer_jax import local_pod, prepare

pytestmark = pytest.mark.slow  # starts processes (about 5 s a case)


def _private_mounts_work(tmp_path) -> bool:
  if os.geteuid() != 0 or shutil.which('unshare') is None:
    return False
  (tmp_path / 'probe').mkdir()
  probe = subprocess.run(['unshare', '--mount', '--propagation', 'private', 'mount', '-t',
                          'tmpfs', 'tmpfs', str(tmp_path / 'probe')], capture_output=True)
  return probe.returncode == 0


def _start_on_own_disks(flags, store, disks, log_dir, cwd):
  """`prepare FLAGS` as processes 0..N-1 of one run, process i seeing disks[i] at `store`."""
  port = local_pod.free_port()
  started = []
  for i, disk in enumerate(disks):
    joined = [f'--coordinator_address=127.0.0.1:{port}', f'--num_processes={len(disks)}',
              f'--process_id={i}', '--heartbeat_timeout_s=10']
    # "$0" "$@": the command after the mount, unquoted by sh; exec keeps it one process.
    argv = ['unshare', '--mount', '--propagation', 'private', 'sh', '-c',
            f'mount --bind {disk} {store} && exec "$0" "$@"',
            sys.executable, '-m', 'transformer_jax.prepare', *joined, *flags]
    with open(log_dir / f'{i}.err', 'w') as err:
      started.append(subprocess.Popen(argv, cwd=cwd, env=local_pod.environment(2),
                                      stdout=subprocess.PIPE, stderr=err,
                                      stdin=subprocess.DEVNULL))
  return started


@pytest.mark.parametrize('prepared_on_0', [False, True], ids=['new', 'prepared_on_0'])
def test_a_store_dir_on_each_hosts_own_disk_stops_every_process(
    repo, synthetic, command, tmp_path, prepared_on_0):
  # Never skipped: without root the test fails here, saying why (as the fleet tests do).
  assert _private_mounts_work(tmp_path), (
      'needs root and `unshare --mount` (a private mount namespace per process)')
  store, disks = tmp_path / 'store', [tmp_path / 'disk0', tmp_path / 'disk1']
  for d in (store, *disks):
    d.mkdir()
  flags = [f'--config={repo / "configs" / "tiny.py"}', f'--workdir={tmp_path / "run"}',
           f'--config.data.vocab_path={synthetic.vocab}',
           *(f'--config.data.{k}={v}' for k, v in synthetic.data.items())]
  before = {}
  if prepared_on_0:  # process 0's disk holds the whole store (an earlier one-process run)
    result = command(prepare, *flags, f'--config.data.store_dir={disks[0]}')
    assert result.code == 0, result.err
    assert json.loads(result.out.strip().splitlines()[-1])['store'].startswith(str(disks[0]))
    before = {p: p.read_bytes() for p in disks[0].rglob('*') if p.is_file()}
  (tmp_path / 'logs').mkdir()
  processes = _start_on_own_disks([*flags, f'--config.data.store_dir={store}'], store, disks,
                                  tmp_path / 'logs', repo)
  codes = []
  for p in processes:
    try:
      p.communicate(timeout=240)  # a hang guard: today's code waits up to 3,600 s
    except subprocess.TimeoutExpired:
      for q in processes:
        q.kill()
      pytest.fail('the processes did not stop: ' + ' | '.join(
          (tmp_path / 'logs' / f'{i}.err').read_text()[-1000:] for i in range(2)))
    codes.append(p.returncode)
  errs = [(tmp_path / 'logs' / f'{i}.err').read_text() for i in range(2)]
  assert codes[0] != 0 and codes[1] != 0, errs
  for err in errs:
    last = err.strip().splitlines()[-1]
    assert f'data.store_dir={store}' in last, err
    assert 'process 1 ' in last and 'process 0 wrote' in last, last
    assert 'gs://' in last and 'all hosts share' in last, last
  assert not any(disks[1].iterdir())  # process 1 wrote nothing on its own disk
  after = {p: p.read_bytes() for p in disks[0].rglob('*') if p.is_file()}
  assert after == before  # nothing of process 0's changed, and no marker left behind
