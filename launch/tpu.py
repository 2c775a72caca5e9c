"""Cloud TPU VM launcher: create, install, train, logs, delete. Every gcloud call goes
through `gcloud()`, and `--dry_run` prints the exact commands instead of running them.

  python launch/tpu.py create  --name=mt --zone=us-west4-a --type=v5litepod-8 [--spot] [--queued]
  python launch/tpu.py install --name=mt --zone=us-west4-a
  python launch/tpu.py train   --name=mt --zone=us-west4-a --config=configs/tpu_v5e_8_base.py \\
                               --workdir=gs://BUCKET/run1 [-- --config.train.num_steps=100000]
  python launch/tpu.py logs    --name=mt --zone=us-west4-a
  python launch/tpu.py delete  --name=mt --zone=us-west4-a [--queued]

On a pod slice (e.g. --type=v5litepod-32) `install` and `train` run on every worker
(`--worker=all`); JAX connects the hosts itself and each reads its own data shard. Their
checkpoints must meet in one place, so a pod slice's workdir must be a bucket (gs://).
"""
from __future__ import annotations

import argparse
import pathlib
import shlex
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
REMOTE_DIR = '$HOME/transformer_jax'  # expanded by the worker's shell
VENV = '$HOME/venv'
RUNTIME = {'v5litepod': 'v2-alpha-tpuv5-lite', 'v5p': 'v2-alpha-tpuv5',
           'v6e': 'v2-alpha-tpuv6e', 'v4': 'tpu-ubuntu2204-base'}


def gcloud(args: list[str], dry_run: bool) -> None:
  """The one place a gcloud command is run (or, with --dry_run, printed)."""
  command = ['gcloud', *args]
  print(shlex.join(command), flush=True)  # exactly what runs
  if not dry_run:
    subprocess.run(command, check=True)


def tpu_vm(*args: str) -> list[str]:
  return ['compute', 'tpus', 'tpu-vm', *args]


def runtime_version(accelerator: str) -> str:
  family = accelerator.rsplit('-', 1)[0]
  if family not in RUNTIME:
    sys.exit(f'error: unknown accelerator type {accelerator!r}; pass --version explicitly.')
  return RUNTIME[family]


def create(a) -> None:
  version = a.version or runtime_version(a.type)
  spot = ['--spot'] if a.spot else []
  if a.queued:
    gcloud(['compute', 'tpus', 'queued-resources', 'create', a.name, f'--node-id={a.name}',
            f'--zone={a.zone}', f'--accelerator-type={a.type}', f'--runtime-version={version}',
            *spot], a.dry_run)
  else:
    gcloud(tpu_vm('create', a.name, f'--zone={a.zone}', f'--accelerator-type={a.type}',
                  f'--version={version}', *spot), a.dry_run)


def ssh(a, command: str, worker: str = 'all') -> None:
  gcloud(tpu_vm('ssh', a.name, f'--zone={a.zone}', f'--worker={worker}',
                f'--command={command}'), a.dry_run)


def install(a) -> None:
  """Copy this checkout (git archive of HEAD) to every worker and pip-install it."""
  archive = '/tmp/transformer_jax.tar.gz'
  local = ['git', '-C', str(REPO), 'archive', '--format=tar.gz', f'--output={archive}', 'HEAD']
  print(shlex.join(local), flush=True)
  if not a.dry_run:
    subprocess.run(local, check=True)
  gcloud(tpu_vm('scp', archive, f'{a.name}:{archive}', f'--zone={a.zone}', '--worker=all'),
         a.dry_run)
  ssh(a, f'mkdir -p {REMOTE_DIR} && tar -xzf {archive} -C {REMOTE_DIR} && '
         f'python3 -m venv {VENV} && {VENV}/bin/pip install -q -e "{REMOTE_DIR}[tpu]"')


def is_pod_slice(accelerator: str) -> bool:
  """More than one host: every family's single-host VMs stop at the '-8' types."""
  return int(accelerator.rsplit('-', 1)[1]) > 8


def train(a) -> None:
  if not a.workdir:
    sys.exit('error: train needs --workdir, e.g. --workdir=gs://BUCKET/run1.')
  if is_pod_slice(a.type) and not a.workdir.startswith('gs://'):
    sys.exit(f'error: --workdir={a.workdir} is on each worker\'s own disk, but the '
             f'{a.type} slice has several workers and their checkpoints must meet: use '
             '--workdir=gs://BUCKET/DIR.')
  flags = ' '.join(shlex.quote(f) for f in a.extra)
  ssh(a, f'cd {REMOTE_DIR} && nohup {VENV}/bin/python -m transformer_jax.train '
         f'--config="{a.config}" --workdir="{a.workdir}" {flags} > $HOME/train.log 2>&1 &')


def logs(a) -> None:
  ssh(a, 'tail -n 100 -f $HOME/train.log', worker='0')


def delete(a) -> None:
  if a.queued:
    gcloud(['compute', 'tpus', 'queued-resources', 'delete', a.name, f'--zone={a.zone}',
            '--force', '--quiet'], a.dry_run)
  else:
    gcloud(tpu_vm('delete', a.name, f'--zone={a.zone}', '--quiet'), a.dry_run)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('action', choices=['create', 'install', 'train', 'logs', 'delete'])
  parser.add_argument('--name', required=True)
  parser.add_argument('--zone', required=True)
  parser.add_argument('--type', default='v5litepod-8', help='accelerator type')
  parser.add_argument('--version', default='', help='TPU runtime (default: by --type)')
  parser.add_argument('--spot', action='store_true')
  parser.add_argument('--queued', action='store_true', help='use a queued resource')
  parser.add_argument('--config', default='configs/tpu_v5e_8_base.py')
  parser.add_argument('--workdir', default='', help='gs://BUCKET/DIR (any path on one host)')
  parser.add_argument('--dry_run', action='store_true', help='print the commands only')
  argv = sys.argv[1:] if argv is None else argv
  split = argv.index('--') if '--' in argv else len(argv)
  a = parser.parse_args(argv[:split])
  a.extra = argv[split + 1:]  # train flags after --, passed through
  {'create': create, 'install': install, 'train': train, 'logs': logs, 'delete': delete}[a.action](a)


if __name__ == '__main__':
  main()
