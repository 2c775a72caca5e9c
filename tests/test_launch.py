"""The TPU launcher's dry runs: the exact gcloud commands, single host and pod; the
worker-side wrapper run by bash. What the commands do on (emulated) TPU VMs, `supervise`
included: tests/test_fleet.py."""
import argparse
import pathlib
import shlex
import subprocess
import sys
import time

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'launch'))
import tpu  # noqa: E402 (launch/tpu.py)


def dry_run(repo, *args):
  result = subprocess.run([sys.executable, 'launch/tpu.py', '--dry_run', *args], cwd=repo,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  return [shlex.split(line) for line in result.stdout.strip().splitlines()]


def test_single_host_flow(repo):
  common = ['--name=mt', '--zone=us-west4-a']
  (create,) = dry_run(repo, 'create', *common)
  assert create == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'mt', '--zone=us-west4-a',
                    '--accelerator-type=v5litepod-8', '--version=v2-alpha-tpuv5-lite']
  archive, upload, setup, tf = dry_run(repo, 'install', *common, '--ship_dirty',
                                      '--config=configs/tpu_v5e_8_base.py', '--workdir=gs://b/run1')
  assert archive[:2] == ['git', '-C'] and 'archive' in archive
  assert upload[:3] == ['gcloud', 'storage', 'cp'] and upload[-1] == 'gs://b/run1/code.tar.gz'
  assert 'gcloud storage cp gs://b/run1/code.tar.gz $HOME/transformer_jax.tar.gz' in setup[-1]
  assert 'uv venv' in setup[-1] and '--python 3.11' in setup[-1]  # the VM's Python is 3.10
  assert 'pip install' in setup[-1] and '[tpu]"' in setup[-1] and '--worker=all' in setup
  # WMT14 is a TFDS catalog dataset: TensorFlow on worker 0, which prepares it.
  assert '--worker=0' in tf and '[tpu,tf]' in tf[-1]
  prepare, store = dry_run(repo, 'prepare', *common, '--config=configs/tpu_v5e_8_base.py',
                           '--workdir=gs://b/run1')
  assert '--worker=0' in prepare and 'python -m transformer_jax.prepare' in prepare[-1]
  assert '--nostore' in prepare[-1] and 'JAX_PLATFORMS=cpu' in prepare[-1]
  assert 'gcloud storage rsync -r $HOME/tensorflow_datasets gs://b/run1/tfds' in prepare[-1]
  # Then every worker tokenizes its shards of the token store, joined as one run.
  assert '--worker=all' in store and 'transformer_jax.prepare' in store[-1]
  assert '--nostore' not in store[-1] and 'JAX_PLATFORMS' not in store[-1]
  (train,) = dry_run(repo, 'train', *common, '--config=configs/tpu_v5e_8_base.py',
                     '--workdir=gs://b/run1', '--', '--config.train.num_steps=100')
  assert train[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'mt']
  command = train[-1]
  assert 'gcloud storage rsync -r gs://b/run1/tfds $HOME/tensorflow_datasets' in command
  assert ('python -m transformer_jax.train --config=configs/tpu_v5e_8_base.py '
          '--workdir=gs://b/run1 --config.data.tfds_dir="$HOME/tensorflow_datasets" '
          '--config.train.num_steps=100') in command
  assert 'gs://b/run1/logs/"$(hostname).log"' in command  # the log outlives the VM
  (logs,) = dry_run(repo, 'logs', *common)
  assert '--worker=0' in logs and 'tail' in logs[-1]
  (delete,) = dry_run(repo, 'delete', *common)
  assert delete == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'mt', '--zone=us-west4-a',
                    '--quiet']


def test_pod_slice_on_spot_queued_resources(repo):
  common = ['--name=pod', '--zone=us-east5-a', '--queued']
  (create,) = dry_run(repo, 'create', *common, '--type=v5litepod-32', '--spot')
  assert create == ['gcloud', 'compute', 'tpus', 'queued-resources', 'create', 'pod',
                    '--node-id=pod', '--zone=us-east5-a', '--accelerator-type=v5litepod-32',
                    '--runtime-version=v2-alpha-tpuv5-lite', '--spot']
  (train,) = dry_run(repo, 'train', *common, '--type=v5litepod-32',
                     '--config=configs/tpu_v5e_32_big.py', '--workdir=gs://bucket/big')
  assert '--worker=all' in train  # every host of the slice runs the same command
  assert '--workdir=gs://bucket/big' in train[-1]
  (delete,) = dry_run(repo, 'delete', *common)
  assert delete[:5] == ['gcloud', 'compute', 'tpus', 'queued-resources', 'delete']


def test_a_workdir_on_local_disks_is_refused(repo):
  result = subprocess.run([sys.executable, 'launch/tpu.py', '--dry_run', 'train', '--name=pod',
                           '--zone=us-east5-a', '--type=v5litepod-32', '--workdir=/data/run'],
                          cwd=repo, capture_output=True, text=True, timeout=60)
  assert result.returncode != 0 and 'gs://' in result.stderr and not result.stdout


def test_only_the_current_runs_wrapper_reports_an_exit(tmp_path):
  """The wrapper and `running`'s check, run by bash in a worker's HOME: a run whose last
  process outlives the start of the next one must not mark the next one stopped."""
  env = {'HOME': str(tmp_path), 'PATH': '/usr/bin:/bin'}

  def start(script):
    return subprocess.Popen(['bash', '-c', tpu.wrapper(script, ship='true')], env=env)

  def check():
    return subprocess.run(['bash', '-c', tpu.RUNNING_CHECK], env=env, capture_output=True,
                          text=True).stdout.strip()

  assert check() == 'TRAIN_STOPPED never'  # a new VM: no stop needed before a launch
  (tmp_path / 'train.pid').write_text('999999999\n')  # a wrapper that died without an exit
  assert check() == 'TRAIN_STOPPED none'  # what it started may be left: stop first
  old = start('sleep 2; exit 3')  # the old run's last process, still ending
  time.sleep(0.5)
  new = start('sleep 4')  # the next run, launched meanwhile
  assert old.wait(timeout=30) == 0
  assert not (tmp_path / 'train.exit').exists() and check() == 'TRAIN_RUNNING'
  assert new.wait(timeout=30) == 0
  assert (tmp_path / 'train.exit').read_text().strip() == '0' and check() == 'TRAIN_STOPPED 0'
  start('echo "error: Unknown config key train.no_such_key" >&2; exit 2').wait(timeout=30)
  assert check() == 'TRAIN_STOPPED 2 error: Unknown config key train.no_such_key'


def test_a_second_launch_adopts_the_live_run(tmp_path):
  """gcloud's ssh runs a command again when the connection drops: the launch, run twice
  at once and once more, starts one run (one pid, one set of lines in the log), and the
  others say they adopted it. A launch after the run ended starts a new one."""
  env = {'HOME': str(tmp_path), 'PATH': '/usr/bin:/bin'}
  command = tpu.launch(tpu.wrapper('echo started; sleep 3', ship='true'))
  launches = [subprocess.Popen(['bash', '-c', command], env=env, stdout=subprocess.PIPE,
                               text=True) for _ in range(2)]
  outs = [p.communicate(timeout=30)[0] for p in launches]
  time.sleep(0.5)
  again = subprocess.run(['bash', '-c', command], env=env, capture_output=True, text=True,
                         timeout=30).stdout
  assert sorted(outs + [again]).count('') == 1 and again.endswith('adopted\n')
  pid = (tmp_path / 'train.pid').read_text().strip()
  until_exit = time.monotonic() + 30
  while not (tmp_path / 'train.exit').exists():
    assert time.monotonic() < until_exit
    time.sleep(0.2)
  assert (tmp_path / 'train.log').read_text() == 'started\n'
  subprocess.run(['bash', '-c', command], env=env, check=True, timeout=30)
  time.sleep(0.5)
  assert (tmp_path / 'train.pid').read_text().strip() != pid
  assert (tmp_path / 'train.log').read_text() == 'started\nstarted\n'


def test_remote_arguments_reach_the_worker_literally(tmp_path):
  """What the worker's shell makes of the flags: a workdir with `$(...)`, spaces and
  quotes arrives as written (before, `$(echo X)` ran on the worker)."""
  workdir = """gs://b/run $(echo X) "q" 'a'"""
  a = argparse.Namespace(config='configs/my config.py', workdir=workdir,
                         extra=['--config.train.num_steps=5'])
  shell = ['bash', '-c', 'printf "%s\\n" ' + tpu.command_flags(a) + ' ' + tpu.in_workdir(a, 'x')]
  out = subprocess.run(shell, env={'HOME': str(tmp_path)}, capture_output=True, text=True,
                       check=True).stdout.splitlines()
  assert out == ['--config=configs/my config.py', f'--workdir={workdir}',
                 f'--config.data.tfds_dir={tmp_path}/tensorflow_datasets',
                 '--config.train.num_steps=5', f'{workdir}/x']


def test_a_run_keeps_the_code_it_started_with(tmp_path, monkeypatch):
  """`install` makes the run's code archive once, in the workdir, and every later install
  (a relaunch) reuses it, whatever the checkout holds by then; uncommitted changes are
  refused unless --ship_dirty ships them. Against the GCS emulator, through the real
  gcloud CLI's storage commands (no workers, no root)."""
  import tarfile

  import gcs_emulator
  server, gcs = gcs_emulator.start('code-test')
  try:
    for key, value in {**gcs, **gcs_emulator.gcloud_env(gcs, tmp_path),
                       'CLOUDSDK_CONFIG': str(tmp_path / 'gcloud')}.items():
      monkeypatch.setenv(key, value)
    clone = tmp_path / 'clone'
    git = lambda *args: subprocess.run(['git', '-C', str(clone), *args], check=True,  # noqa: E731
                                       capture_output=True, text=True).stdout
    subprocess.run(['git', 'clone', '-q', str(tpu.REPO), str(clone)], check=True)
    monkeypatch.setattr(tpu, 'REPO', clone)

    def installed(workdir, ship_dirty=False):
      a = argparse.Namespace(workdir=workdir, dry_run=False, ship_dirty=ship_dirty)
      remote, listed = tpu.code_archive(a)
      assert remote in listed and listed == tpu.listing(a, remote)  # what workers compare
      listings.append(listed)
      local = tmp_path / f'code-{len(list(tmp_path.glob("code-*")))}.tar.gz'
      subprocess.run(['gcloud', 'storage', 'cp', remote, str(local)], check=True)
      with tarfile.open(local) as archive:
        return archive.extractfile('README.md').read().decode()

    listings = []
    first = installed('gs://code-test/run')
    (clone / 'README.md').write_text('changed\n')
    git('-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qam', 'a later commit')
    assert installed('gs://code-test/run') == first  # a relaunch: the run's own code
    assert listings[1] == listings[0]  # so a worker that holds it keeps it
    assert installed('gs://code-test/new') == 'changed\n'  # a new run: this checkout
    (clone / 'README.md').write_text('uncommitted\n')
    with pytest.raises(SystemExit, match='uncommitted changes.*--ship_dirty'):
      installed('gs://code-test/dirty')
    assert installed('gs://code-test/dirty', ship_dirty=True) == 'uncommitted\n'
    assert git('status', '--porcelain', '--untracked-files=no').strip()  # left as it was
  finally:
    server.terminate()
