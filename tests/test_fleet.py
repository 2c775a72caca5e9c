"""The Cloud TPU launcher on the emulated fleet (tests/emulated_tpu), through the real
gcloud CLI: it talks to an emulated Cloud TPU API and reaches the workers with ssh, each
worker's own OpenSSH server. Workers are namespaced sandboxes that run the launcher's
real shell commands, join as one JAX run through the metadata server as on a TPU VM,
and fail as VMs do. `install` ships the run's code archive (this checkout, with
--ship_dirty its uncommitted changes), as to a real VM."""
import argparse
import json
import pathlib
import subprocess
import sys
import threading
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / 'launch'), str(REPO / 'tests' / 'emulated_tpu')]
import fleet  # noqa: E402
import gcs_emulator  # noqa: E402
import tpu  # noqa: E402 (launch/tpu.py)

BUCKET = 'fleet-test'
pytestmark = pytest.mark.slow
TRAIN = ['--config.data.name=synthetic', '--config.train.num_steps=6',
         '--config.train.log_every=1', '--config.train.checkpoint_every=2',
         '--config.train.eval_every=1000',
         '--heartbeat_timeout_s=10', '--initialization_timeout_s=60']


@pytest.fixture
def emulated(tmp_path, monkeypatch):
  """A GCS emulator and an empty fleet; the variables that point the launcher at them."""
  server, gcs = gcs_emulator.start(BUCKET)
  for key, value in gcs.items():
    monkeypatch.setenv(key, value)
  for key, value in fleet.setup(tmp_path / 'fleet', gcs, venv=sys.prefix).items():
    monkeypatch.setenv(key, value)
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')  # this process only reads results
  yield
  fleet.teardown()
  server.terminate()


def create_slice(name='mt'):
  """A 2-worker slice (v4-16), created as a user would: `gcloud ... tpu-vm create`."""
  subprocess.run(['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', name, '--zone=emulated-a',
                  '--accelerator-type=v4-16', '--version=tpu-ubuntu2204-base'], check=True,
                 capture_output=True, timeout=300)


def launcher(action, *args, timeout=900):
  """`launch/tpu.py ACTION` on a 2-worker slice (v4-16); returns its exit code and output."""
  result = subprocess.run(
      [sys.executable, 'launch/tpu.py', action, '--name=mt', '--zone=emulated-a',
       '--type=v4-16', '--config=configs/tiny.py', '--ship_dirty', *args], cwd=REPO,
      capture_output=True, text=True, timeout=timeout)
  return result.returncode, result.stdout + result.stderr


def options(**kwargs):
  return argparse.Namespace(**{'name': 'mt', 'zone': 'emulated-a', 'dry_run': False,
                               'queued': False, **kwargs})


def on_workers(command, worker='all'):
  result = subprocess.run(['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'mt',
                           '--zone=emulated-a', f'--worker={worker}', f'--command={command}'],
                          capture_output=True, text=True, timeout=300)
  return result.returncode, result.stdout


def until(condition, what, timeout_s=300):
  """Wait for `condition()` (a hang guard, not a speed claim)."""
  deadline = time.monotonic() + timeout_s
  while not condition():
    assert time.monotonic() < deadline, f'{what}: not within {timeout_s} s'
    time.sleep(0.5)


def test_the_workers_of_a_slice_join_as_one_run_as_on_a_tpu_vm(emulated):
  """No variable names the workers of a `tpu-vm create` slice: each process must call
  jax.distributed.initialize() and JAX asks the VM's metadata server. Before, only GKE's
  TPU_WORKER_HOSTNAMES made a process join, so here each ran alone ("joined 0 of 1")."""
  create_slice()
  join = f'cd {REPO} && %s {sys.executable} tests/join_once.py 2>> $HOME/join.log'
  code, out = on_workers(join % '')
  joined = sorted(line for line in out.splitlines() if line.startswith('joined'))
  assert code == 0 and joined == ['joined 0 of 2', 'joined 1 of 2'], out
  # `prepare` on worker 0 alone, as the launcher runs it: told to use the CPU only, it
  # stays out of the slice instead of waiting for the others.
  code, out = on_workers(join % 'JAX_PLATFORMS=cpu', worker='0')
  assert code == 0 and out.strip() == 'joined 0 of 1', out


def test_a_worker_that_never_starts_is_named_within_the_timeout(emulated):
  """Worker 1 of the slice never runs the command (say it was preempted while starting):
  worker 0 exits within --initialization_timeout_s with one line naming it. Before, it
  waited JAX's 300 s in the join and then aborted with a C++ `Check failure` trace."""
  create_slice()
  code, out = on_workers(f'cd {REPO} && {sys.executable} tests/join_once.py '
                         '--initialization_timeout_s=5 2>&1', worker='0')
  last = out.strip().splitlines()[-1]
  assert code == 75 and 'process 1 to join the run' in last, out  # PeersLost
  assert 'Check failure' not in out


def test_supervise_sees_training_die_and_the_log_shipper_stops_with_it(emulated, tmp_path):
  """Liveness from each worker's own pid and exit files. Before, `pgrep -f` of the
  training's name matched the log shipper's own shell, so a dead run looked alive."""
  create_slice()
  workdir = f'gs://{BUCKET}/run'
  assert launcher('install', f'--workdir={workdir}')[0] == 0
  code, out = launcher('train', f'--workdir={workdir}', '--', '--config.train.no_such_key=1')
  assert code == 0, out
  a = options(workdir=workdir)
  until(lambda: tpu.running(a) is False, 'a run that failed at once seen as stopped')
  n = fleet.node('mt')
  # Only the shipper's last `sleep 60` may outlive the run, never a shell that loops.
  until(lambda: all(not shells(w['init']) for w in n['workers']), 'the shipper ended', 20)
  code, exits = on_workers('cat $HOME/train.exit')
  assert code == 0 and exits.split() == ['2', '2']
  shipped = tmp_path / 'shipped.log'
  subprocess.run(['gcloud', 'storage', 'cp',
                  f'{workdir}/logs/{n["workers"][1]["hostname"]}.log', str(shipped)],
                 check=True, timeout=60)
  assert 'no_such_key' in shipped.read_text()  # the log shipped when training ended


def shells(init: int) -> list[int]:
  """The worker's processes other than `sleep` and its sshd."""
  return [pid for pid in fleet.processes(init)
          if pathlib.Path(f'/proc/{pid}/comm').read_text().strip() not in ('sleep', 'sshd')]


def test_supervise_retries_unreachable_vms_and_adopts_a_live_run(emulated):
  """A new VM refuses ssh for a while (its key propagates) and the zone has no capacity
  at first: supervise retries (before, the first failed ssh of `install` ended it). Then `train`, its ssh
  command run twice (a dropped connection, retried), and supervise on a slice where
  `train` already runs, each adopt that run: one training process per worker throughout
  (before, a second launch started a second one, which truncated the first's log)."""
  fleet.set_faults(create_failures=1, ssh_key_delay_s=8)
  first = f'gs://{BUCKET}/first'
  code, out = launcher('supervise', f'--workdir={first}', '--poll_s=1', '--', *TRAIN)
  assert code == 0 and 'training finished' in out, out
  faults = fleet.settings()
  assert faults['create_failures'] == 0 and out.count('tpu-vm create') == 2  # retried
  # supervise's own record and process 0's, read as a user would: the launch timed from
  # the slice found missing until the first step.
  result = subprocess.run([sys.executable, '-m', 'transformer_jax.goodput',
                           f'--workdir={first}'], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr
  summary = json.loads(result.stdout)
  assert summary['exits'] == ['done'] and summary['last_step'] == 6
  [launch] = summary['launches']
  assert launch['capacity_s'] > 0 and launch['install_s'] > 0  # a create was refused first
  assert launch['launch_to_first_step_s'] > launch['install_s']
  cached = subprocess.run(['gcloud', 'storage', 'ls', f'{first}/compilation_cache/'],
                          capture_output=True, text=True, timeout=60)
  assert cached.returncode == 0 and cached.stdout.split(), cached.stderr  # kept with the run
  second = f'gs://{BUCKET}/second'
  n = fleet.node('mt')
  # The first run's processes may outlive its done.json by a moment (closing down):
  # counted beside the second run's, they would look like a second launch.
  until(lambda: not any(fleet.training(w['init']) for w in n['workers']), 'first run gone')
  # Both workers' sshd drop the launch's session after it ran: gcloud runs it again.
  fleet.set_faults(ssh_key_delay_s=0, ssh_drops_after_start=2)
  code, out = launcher('train', f'--workdir={second}', '--', *TRAIN)
  adopted = [line for line in out.splitlines() if line.startswith('training already runs on')]
  assert code == 0 and out.count('closed by remote host') == 2, out
  assert len(adopted) == 2, out  # each worker's second launch
  until(lambda: all(fleet.training(w['init']) for w in n['workers']), 'train started')
  most, done = [0], threading.Event()

  def count():
    while not done.is_set():
      most[0] = max([most[0], *(len(fleet.training(w['init'])) for w in n['workers'])])
      time.sleep(0.2)
  counter = threading.Thread(target=count)
  counter.start()
  try:
    code, out = launcher('supervise', f'--workdir={second}', '--poll_s=1', '--', *TRAIN)
  finally:
    done.set()
    counter.join()
  assert code == 0 and 'restart' not in out, out
  assert most[0] == 1
  # Worker 0 (process 0) prints the steps: once per run, the first run's lines kept
  # (before, a second launch truncated the log and trained twice).
  code, steps = on_workers('grep -c "^step 1/" $HOME/train.log', worker='0')
  assert steps.split() == ['2']


def test_supervise_stops_on_a_user_error_after_one_launch(emulated):
  """Training that fails as any launch would (a bad flag: exit 2) is launched once, and
  supervise stops non-zero with the worker's error line; before, it reinstalled and
  relaunched up to --max_restarts times on a billed slice."""
  code, out = launcher('supervise', f'--workdir=gs://{BUCKET}/bad', '--poll_s=1',
                       '--max_restarts=3', '--', '--config.train.no_such_key=1')
  last = out.strip().splitlines()[-1]
  assert code != 0 and last.startswith('error: training stopped on an error that a relaunch')
  assert 'no_such_key' in last and 'restart 1:' not in out
  code, launches = on_workers('grep -c "no_such_key" $HOME/train.log')
  assert code == 0 and launches.split() == ['1', '1']


def test_a_failing_api_is_retried_and_never_taken_for_a_lost_slice(emulated):
  """`describe` answering HTTP 503 eight times in a row (past gcloud's own five tries), or
  refusing connections, is a failed call, retried with backoff: before, it read as
  NOT_FOUND, counted a restart and created a slice that existed. Past --max_failures in
  a row, supervise gives up naming the call, having created nothing."""
  create_slice()
  workdir = f'gs://{BUCKET}/flaky'
  fleet.set_faults(describe_failures=8)
  code, out = launcher('supervise', f'--workdir={workdir}', '--poll_s=0.2',
                       '--max_failures=0', '--', *TRAIN)
  assert code != 0 and 'status\': 503' in out and 'tpu-vm create' not in out, out
  assert out.strip().splitlines()[-1].startswith('error: 1 gcloud calls failed in a row')
  assert fleet.settings()['describe_failures'] == 3  # the CLI tried 5 times
  fleet.stop_api()  # refused connections, then the API back, still 3 failures to come
  threading.Timer(40, fleet.start_api).start()
  code, out = launcher('supervise', f'--workdir={workdir}', '--poll_s=0.2', '--', *TRAIN)
  assert code == 0 and 'training finished' in out, out
  assert 'retrying (1 in a row)' in out and 'restart 1:' not in out
  assert 'tpu-vm create' not in out and fleet.settings()['describe_failures'] == 0
  creates = [r for r in fleet.api_requests() if r['method'] == 'POST' and
             r['path'].endswith('/nodes')]
  assert len(creates) == 1  # create_slice's
  # A finished run, asked for more steps, is extended (before: "training finished").
  code, out = launcher('supervise', f'--workdir={workdir}', '--poll_s=0.2', '--', *TRAIN,
                       '--config.train.num_steps=8')
  assert code == 0 and 'training finished' in out, out
  done = subprocess.run(['gcloud', 'storage', 'cat', f'{workdir}/done.json'],
                        capture_output=True, text=True, check=True, timeout=60)
  assert json.loads(done.stdout)['step'] == 8


def test_a_queued_resource_is_created_read_and_deleted_through_the_cli(emulated):
  """The queued-resource path supervise takes with --queued: ACTIVE once its node is
  up, a quota error (HTTP 429) a failed call, SUSPENDED once the node is preempted (a
  lost slice), NOT_FOUND once deleted."""
  a = options(queued=True)
  code, out = launcher('create', '--queued')
  assert code == 0 and 'Created queued_resource [mt]' in out, out
  assert tpu.state(a) == 'ACTIVE'
  fleet.set_faults(quota_failures=1)  # HTTP 429, which gcloud does not retry: a failed
  with pytest.raises(subprocess.CalledProcessError):  # call, never a lost slice
    tpu.state(a)
  assert fleet.preempt('mt', grace_s=1)
  assert tpu.state(a) == 'SUSPENDED' and 'SUSPENDED' in tpu.LOST
  assert launcher('delete', '--queued')[0] == 0
  assert tpu.state(a) == 'NOT_FOUND'


def test_a_workdir_with_shell_characters_reaches_training_as_written(emulated):
  """The workdir, with `$(...)`, spaces and quotes, reaches the workers' Python as
  written, through gcloud, ssh and the workers' shells (before, `$(...)` ran there)."""
  create_slice()
  workdir = f"""gs://{BUCKET}/run $(touch /tmp/ran) "q" 'a'"""
  code, out = launcher('supervise', f'--workdir={workdir}', '--poll_s=1', '--', *TRAIN)
  assert code == 0 and 'training finished' in out, out
  listed = subprocess.run(['gcloud', 'storage', 'ls', f'{workdir}/'], capture_output=True,
                          text=True, check=True, timeout=60).stdout
  assert f'{workdir}/done.json' in listed.splitlines()
  code, ran = on_workers('ls /tmp/ran 2> /dev/null | wc -l')
  assert code == 0 and ran.split() == ['0', '0']


def test_a_faulted_run_on_the_emulated_fleet_finishes_bit_for_bit(repo):
  """The bench in small: 2 workers, one training killed, one preemption (then ssh
  refused on the new slice); supervise brings the run to done.json, and its losses and
  final parameters equal an uninterrupted run's."""
  result = subprocess.run([sys.executable, 'bench/fleet_rehearsal.py', '--workers=2',
                           '--kills=1', '--preemptions=1'], cwd=repo, capture_output=True,
                          text=True, timeout=1500)
  record = json.loads(result.stdout)
  assert record['ok'], (record['phases'], result.stderr[-3000:])
  assert len(record['kills']) == 1 and len(record['preemptions']) == 1
  assert record['supervise_exit'] == 0 and record['restarts'] >= 2
  assert record['losses_faulted'] == record['losses_reference']
  assert record['checksums_faulted'] == record['checksums_reference']
  faulted, reference = record['goodput']['faulted'], record['goodput']['reference']
  assert faulted['segments'] == len(faulted['launches']) == record['restarts'] + 1
  assert reference['segments'] == len(reference['launches']) == 1
  assert 0 < faulted['goodput'] < reference['goodput'] < 1  # relaunches cost time
  assert faulted['badput_s']['gaps'] > 0 and reference['badput_s']['gaps'] == 0
