"""`gcloud`, as the launcher and the workers use it, answered by the emulated fleet
(fleet.py; $TPU_EMULATOR_DIR) and the GCS emulator ($STORAGE_EMULATOR_HOST):

  compute tpus tpu-vm create|describe|delete|ssh|scp
  compute tpus queued-resources create|describe|delete
  storage ls|cat|cp|rsync

Commands run on workers for real (fleet.enter); outputs and exit codes are gcloud's in
shape (an `ERROR: (gcloud...)` line and exit 1; ssh failures exit 255). Anything else
exits 2 naming what the emulator does not cover.
"""
from __future__ import annotations

import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import fleet  # noqa: E402 (run as a script)


def parse(argv: list[str]) -> tuple[list[str], dict]:
  positional, options = [], {}
  for arg in argv:
    if arg.startswith('--'):
      key, _, value = arg[2:].partition('=')
      options[key] = value
    else:
      positional.append(arg)
  return positional, options


def fail(group: str, message: str, code: int = 1) -> int:
  print(f'ERROR: (gcloud.{group}) {message}', file=sys.stderr)
  return code


def tpu_vm(verb: str, args: list[str], o: dict) -> int:
  group = f'compute.tpus.tpu-vm.{verb}'
  if verb == 'create':
    error = fleet.create(args[0], o['accelerator-type'])
    return fail(group, error) if error else 0
  if verb == 'describe':
    if fleet.take_fault('describe_failures'):
      return fail(group, 'UNAVAILABLE: The service is currently unavailable (HTTP 503).')
    n = fleet.node(args[0])
    if n is None:
      return fail(group, f'NOT_FOUND: node {args[0]} not found')
    print(n['state'] if o.get('format') == 'value(state)' else n)
    return 0
  if verb == 'delete':
    error = fleet.delete(args[0])
    return fail(group, error) if error else 0
  if verb == 'ssh':
    return ssh(args[0], o.get('worker', '0'), o['command'])
  if verb == 'scp':
    source, target = args
    name, _, path = target.partition(':')
    return scp(name, o.get('worker', '0'), source, path)
  return fail(group, 'not covered by the emulator', 2)


def ssh(name: str, worker: str, command: str) -> int:
  """`bash -c command` on the workers at once; non-zero if it failed on any."""
  error = fleet.reachable(name)
  if error:
    print(error, file=sys.stderr)
    return 255
  n = fleet.node(name)
  if fleet.take_fault('ssh_drops_after_start'):  # the command ran; the connection dropped
    for run in [fleet.enter(n, i, ['bash', '-c', command]) for i in fleet.workers(n, worker)]:
      run.wait()
    print('Connection closed by remote host; retrying (emulated).', file=sys.stderr)
  runs = [fleet.enter(n, i, ['bash', '-c', command]) for i in fleet.workers(n, worker)]
  codes = [run.wait() for run in runs]
  return next((code for code in codes if code), 0)


def scp(name: str, worker: str, source: str, path: str) -> int:
  """A local file onto each worker's disk at `path`."""
  error = fleet.reachable(name)
  if error:
    print(error, file=sys.stderr)
    return 255
  n = fleet.node(name)
  codes = []
  for i in fleet.workers(n, worker):
    with open(source, 'rb') as f:
      codes.append(fleet.enter(n, i, ['sh', '-c', 'cat > "$0"', path], stdin=f).wait())
  return next((code for code in codes if code), 0)


def queued(verb: str, args: list[str], o: dict) -> int:
  """A queued resource holds one node of the same name; a preempted node leaves it
  SUSPENDED until deleted."""
  group = f'compute.tpus.queued-resources.{verb}'
  if verb == 'create':
    error = fleet.create(o.get('node-id', args[0]), o['accelerator-type'], queued=True)
    return fail(group, error) if error else 0
  if verb == 'describe':
    if fleet.take_fault('describe_failures'):
      return fail(group, 'UNAVAILABLE: The service is currently unavailable (HTTP 503).')
    n = fleet.node(args[0])
    if n is None:
      return fail(group, f'NOT_FOUND: queued resource {args[0]} not found')
    print({'READY': 'ACTIVE', 'CREATING': 'PROVISIONING'}.get(n['state'], 'SUSPENDED'))
    return 0
  if verb == 'delete':
    error = fleet.delete(args[0])
    return fail(group, error) if error else 0
  return fail(group, 'not covered by the emulator', 2)


def storage(verb: str, args: list[str], o: dict) -> int:
  # gcsfs's default probe of the bucket's layout (a gRPC call) hangs a minute against
  # the emulator; plain JSON API calls are what `gcloud storage` needs.
  os.environ['GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT'] = 'false'
  import gcsfs  # noqa: PLC0415 (only the storage commands need it)
  fs = gcsfs.GCSFileSystem(token='anon', project=os.environ.get('GOOGLE_CLOUD_PROJECT'))
  group = f'storage.{verb}'
  if verb == 'ls':
    url = args[0]
    if not fs.exists(url):
      return fail(group, 'One or more URLs matched no objects.')
    for entry in fs.ls(url):
      print(f'gs://{entry}')
    return 0
  if verb == 'cat':
    if not fs.exists(args[0]):
      return fail(group, 'One or more URLs matched no objects.')
    sys.stdout.write(fs.cat(args[0]).decode())
    return 0
  if verb == 'cp':
    source, target = args
    if source.startswith('gs://'):
      fs.get(source, target)
    else:
      fs.put(source, target)
    return 0
  if verb == 'rsync' and ('r' in o or 'recursive' in o):
    source, target = args
    if source.startswith('gs://'):
      if not fs.exists(source):
        return fail(group, f'{source} matched no objects.')
      for path in fs.find(source):
        local = pathlib.Path(target, path[len(source.removeprefix('gs://')):].lstrip('/'))
        local.parent.mkdir(parents=True, exist_ok=True)
        fs.get(path, str(local))
    else:
      for path in pathlib.Path(source).rglob('*'):
        if path.is_file():
          fs.put(str(path), f'{target.rstrip("/")}/{path.relative_to(source)}')
    return 0
  return fail(group, 'not covered by the emulator', 2)


def main(argv: list[str]) -> int:
  # -r is rsync's one short flag; gcloud spells the rest long
  argv = ['--r' if a == '-r' else '--q' if a == '-q' else a for a in argv]
  positional, options = parse(argv)
  if positional[:3] == ['compute', 'tpus', 'tpu-vm']:
    return tpu_vm(positional[3], positional[4:], options)
  if positional[:3] == ['compute', 'tpus', 'queued-resources']:
    return queued(positional[3], positional[4:], options)
  if positional[:1] == ['storage']:
    return storage(positional[1], positional[2:], options)
  return fail(' '.join(positional[:3]), 'not covered by the emulator', 2)


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
