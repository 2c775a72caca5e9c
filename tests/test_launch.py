"""The TPU launcher's dry runs: the exact gcloud commands, single host and pod; the
worker-side wrapper run by bash. What the commands do on (emulated) TPU VMs, `supervise`
included: tests/test_fleet.py."""
import pathlib
import shlex
import subprocess
import sys
import time

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
  archive, scp, setup, tf = dry_run(repo, 'install', *common,
                                    '--config=configs/tpu_v5e_8_base.py')
  assert archive[:2] == ['git', '-C'] and 'archive' in archive
  assert scp[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp'] and '--worker=all' in scp
  assert 'uv venv' in setup[-1] and '--python 3.11' in setup[-1]  # the VM's Python is 3.10
  assert 'pip install' in setup[-1] and '[tpu]"' in setup[-1] and '--worker=all' in setup
  # WMT14 is a TFDS catalog dataset: TensorFlow on worker 0, which prepares it.
  assert '--worker=0' in tf and '[tpu,tf]' in tf[-1]
  prepare, store = dry_run(repo, 'prepare', *common, '--config=configs/tpu_v5e_8_base.py',
                           '--workdir=gs://b/run1')
  assert '--worker=0' in prepare and 'python -m transformer_jax.prepare' in prepare[-1]
  assert '--nostore' in prepare[-1] and 'JAX_PLATFORMS=cpu' in prepare[-1]
  assert 'gcloud storage rsync -r $HOME/tensorflow_datasets "gs://b/run1/tfds"' in prepare[-1]
  # Then every worker tokenizes its shards of the token store, joined as one run.
  assert '--worker=all' in store and 'transformer_jax.prepare' in store[-1]
  assert '--nostore' not in store[-1] and 'JAX_PLATFORMS' not in store[-1]
  (train,) = dry_run(repo, 'train', *common, '--config=configs/tpu_v5e_8_base.py',
                     '--workdir=gs://b/run1', '--', '--config.train.num_steps=100')
  assert train[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'mt']
  command = train[-1]
  assert 'gcloud storage rsync -r "gs://b/run1/tfds" $HOME/tensorflow_datasets' in command
  assert ('python -m transformer_jax.train --config="configs/tpu_v5e_8_base.py" '
          '--workdir="gs://b/run1" --config.data.tfds_dir="$HOME/tensorflow_datasets" '
          '--config.train.num_steps=100') in command
  assert 'gs://b/run1/logs/$(hostname).log' in command  # the log outlives the VM
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
  assert '--workdir="gs://bucket/big"' in train[-1]
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

  old = start('sleep 2; exit 3')  # the old run's last process, still ending
  time.sleep(0.5)
  new = start('sleep 4')  # the next run, launched meanwhile
  assert old.wait(timeout=30) == 0
  assert not (tmp_path / 'train.exit').exists() and check() == 'TRAIN_RUNNING'
  assert new.wait(timeout=30) == 0
  assert (tmp_path / 'train.exit').read_text().strip() == '0' and check() == 'TRAIN_STOPPED'
