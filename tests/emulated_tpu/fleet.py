"""An emulated Cloud TPU fleet on one Linux machine (as root): the TPU VMs `gcloud.py`
answers for, and the faults a bench or test delivers to them.

Each worker of a slice is a sandbox that behaves as a VM to the commands run on it:
  - its own PID namespace (`pgrep` sees the worker's processes only, and `vm.py` is
    process 1: killing it ends every process of the worker, as a VM shutdown does);
  - its own UTS namespace (`hostname` is the worker's, e.g. t1v-n-mt-g2-w-1) and
    /etc/hosts naming it, so gloo and JAX resolve it as on a VM;
  - its own mount namespace: its own /tmp, and TPU chips on its PCI bus (fake vendor
    0x1ae0 / v5e device entries beside the real devices in /sys/bus/pci/devices),
    which is how JAX recognises a Cloud TPU VM;
  - its own HOME (a fresh directory per VM: a recreated slice starts with empty disks);
  - a metadata server (`vm.py`, GCE_METADATA_IP) naming the worker's number and the
    slice's workers, which JAX's TPU cluster detection reads to join the slice.
What differs from a real VM: the workers share the machine's files outside their HOME
and /tmp (the repository, the prepared venv, the fleet's directory) and its loopback
network (so the
workers' endpoints are 127.0.0.1 and each slice gets its own JAX_COORDINATOR_PORT, a
variable JAX documents); the TPU chips are CPU devices: libtpu is hidden on the workers
(it would probe the real metadata address, 169.254.169.254) and JAX_FORCE_TPU_INIT
stands in for it, so JAX still takes the VM for a Cloud TPU VM and falls back to its CPU
backend; ssh is `nsenter` into the worker; the GCS bucket is a local emulator.

State lives under $TPU_EMULATOR_DIR: fleet.json (settings and pending faults),
nodes/NAME.json (one per TPU VM or queued resource), vms/NAME-GEN/w<i>/ (each
worker's disk), bin/gcloud (the stand-in, first on the workers' PATH).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from transformer_jax import local_pod  # noqa: E402 (the coordinator's port, as tests pick it)

HERE = pathlib.Path(__file__).resolve().parent
CHIP = {'vendor': '0x1ae0', 'device': '0x0063', 'class': '0x120000'}  # a TPU v5e chip
TRAIN_ARGV = ['-m', 'transformer_jax.train']


def root() -> pathlib.Path:
  return pathlib.Path(os.environ['TPU_EMULATOR_DIR'])


def setup(directory: str | os.PathLike, env: dict, devices_per_worker: int = 2,
          venv: str = '') -> dict:
  """A new fleet under `directory`; returns the variables that point `launch/tpu.py`
  ($GCLOUD) and this module at it. `env` is given to every worker (e.g. the GCS
  emulator's variables); `venv`, if given, is the prepared virtual environment
  `install` links instead of downloading one (workers have no network)."""
  top = pathlib.Path(directory).resolve()
  for sub in ('nodes', 'vms', 'bin'):
    (top / sub).mkdir(parents=True, exist_ok=True)
  site = pathlib.Path(venv or sys.prefix).glob('lib/python*/site-packages/libtpu')
  libtpu = [str(path) for path in site]
  settings = {'python': sys.executable, 'devices_per_worker': devices_per_worker,
              'env': dict(env), 'venv': venv, 'libtpu': libtpu, 'create_failures': 0,
              'ssh_failures_after_ready': 0, 'describe_failures': 0, 'generation': 0}
  (top / 'fleet.json').write_text(json.dumps(settings, indent=1))
  shim = top / 'bin' / 'gcloud'
  shim.write_text(f'#!/bin/sh\nTPU_EMULATOR_DIR={shlex.quote(str(top))} exec '
                  f'{shlex.quote(sys.executable)} {shlex.quote(str(HERE / "gcloud.py"))} "$@"\n')
  shim.chmod(0o755)
  return {'TPU_EMULATOR_DIR': str(top), 'GCLOUD': str(shim)}


@contextlib.contextmanager
def locked():
  """One change to the fleet's state at a time (gcloud calls run concurrently)."""
  with open(root() / 'lock', 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    yield


def settings() -> dict:
  return json.loads((root() / 'fleet.json').read_text())


def set_faults(**faults: int) -> None:
  """create_failures=K: the next K creates fail for lack of capacity;
  ssh_failures_after_ready=K: on each slice created from now on, its first K ssh or
  scp calls fail, as while a new VM's ssh keys propagate; describe_failures=K: the next K
  describes fail as the API's HTTP 503 does (after gcloud's own retries);
  ssh_drops_after_start=K: the next K ssh commands run, then run again, as gcloud's own
  retry does when the connection drops after the command started."""
  with locked():
    s = settings()
    s.update(faults)
    (root() / 'fleet.json').write_text(json.dumps(s, indent=1))


def take_fault(name: str) -> bool:
  """Whether to deliver one of the pending faults `name` (and count it off)."""
  with locked():
    s = settings()
    if s.get(name, 0) <= 0:
      return False
    s[name] -= 1
    (root() / 'fleet.json').write_text(json.dumps(s, indent=1))
    return True


def node(name: str) -> dict | None:
  path = root() / 'nodes' / f'{name}.json'
  return json.loads(path.read_text()) if path.exists() else None


def save(n: dict) -> None:
  path = root() / 'nodes' / f'{n["name"]}.json'
  path.with_suffix('.tmp').write_text(json.dumps(n, indent=1))
  path.with_suffix('.tmp').rename(path)


def hosts_of(accelerator: str) -> int:
  """Workers (VMs) in a slice: v5e/v6e have 4 chips per host above 8 chips; v4/v5p
  count TensorCores (2 per chip, 4 chips per host)."""
  family, size = accelerator.rsplit('-', 1)
  size = int(size)
  if family in ('v4', 'v5p'):
    return max(1, size // 8)
  return 1 if size <= 8 else size // 4


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def create(name: str, accelerator: str, queued: bool = False) -> str:
  """A READY slice (or an ACTIVE queued resource with its node), or an error line."""
  with locked():
    s = settings()
    if s['create_failures'] > 0:
      s['create_failures'] -= 1
      (root() / 'fleet.json').write_text(json.dumps(s, indent=1))
      return (f'There is no more capacity in the zone; you can try in another zone where '
              f'Cloud TPU Nodes are offered (emulated: {s["create_failures"]} more).')
    if node(name):
      return f'ALREADY_EXISTS: node {name} already exists'
    s['generation'] += 1
    (root() / 'fleet.json').write_text(json.dumps(s, indent=1))
    n = {'name': name, 'type': accelerator, 'queued': queued, 'state': 'CREATING',
         'vm': f'{name}-g{s["generation"]}', 'coordinator_port': local_pod.free_port(),
         'ssh_failures_left': s['ssh_failures_after_ready'], 'workers': []}
    save(n)
  count = hosts_of(accelerator)
  hostnames = [f't1v-n-{n["vm"]}-w-{i}' for i in range(count)]
  endpoints = ','.join(f'{h}:{i}:127.0.0.1' for i, h in enumerate(hostnames))
  for i, hostname in enumerate(hostnames):
    n['workers'].append(_boot(n, i, hostname, endpoints, s))
  with locked():
    if node(name) is not None:  # not deleted meanwhile
      n['state'] = 'READY'
      save(n)
  return ''


def _boot(n: dict, i: int, hostname: str, endpoints: str, s: dict) -> dict:
  """Start worker i: its namespaces, disk, chips and metadata server."""
  disk = root() / 'vms' / n['vm'] / f'w{i}'
  (disk / 'home').mkdir(parents=True)
  pci = disk / 'pci'
  pci.mkdir()
  for real in pathlib.Path('/sys/bus/pci/devices').iterdir():  # keep the real ones: gloo
    (pci / real.name).symlink_to(real.resolve())                 # reads their class
  for chip in range(s['devices_per_worker']):
    entry = pci / f'0000:01:{chip:02x}.0'
    entry.mkdir()
    for key, value in CHIP.items():
      (entry / key).write_text(value + '\n')
  (disk / 'hosts').write_text(f'127.0.0.1 localhost\n127.0.0.1 {hostname}\n')
  (disk / 'no_libtpu').mkdir()
  (disk / 'no_libtpu' / '__init__.py').write_text("raise ImportError('hidden on emulated VMs')\n")
  hide = ''.join(f' && mount --bind {disk}/no_libtpu {path}' for path in s['libtpu'])
  attributes = {'agent-worker-number': str(i), 'worker-network-endpoints': endpoints,
                'accelerator-type': n['type'],
                'tpu-env': f"ACCELERATOR_TYPE: '{n['type']}'\nWORKER_ID: '{i}'\n"}
  (disk / 'metadata.json').write_text(json.dumps(attributes))
  port = free_port()
  # /tmp first: a plain bind of a directory from the machine's /tmp (the venv, in CI)
  # would not carry mounts made inside it before, such as the one hiding libtpu.
  boot = (f'{_private_tmp(disk, s)} && mount --bind {pci} /sys/bus/pci/devices && '
          f'mount --bind {disk}/hosts /etc/hosts{hide} && hostname {hostname} && exec '
          f'{shlex.quote(s["python"])} {HERE / "vm.py"} {port} {disk}/metadata.json')
  with open(disk / 'console.log', 'wb') as console:
    launcher = subprocess.Popen(
        ['unshare', '--pid', '--uts', '--mount', '--fork', '--mount-proc', 'sh', '-c', boot],
        stdin=subprocess.DEVNULL, stdout=console, stderr=console, start_new_session=True)
  init = _wait_for_init(launcher, port)
  return {'hostname': hostname, 'init': init, 'metadata_port': port, 'home': str(disk / 'home')}


def _private_tmp(disk: pathlib.Path, s: dict) -> str:
  """Shell: the worker's own /tmp (scp's target; libtpu's and JAX's scratch files),
  keeping visible what lives under the machine's /tmp and the worker needs: the fleet's
  directory (its HOME), the Python environment (CI's venv is made in /tmp) and this
  repository (vm.py; a clone in /tmp)."""
  tmp = disk / 'tmp'
  tmp.mkdir()
  keep = {root(), pathlib.Path(s['python']).parents[1], pathlib.Path(s['venv'] or '/'),
          HERE.parents[1]}
  binds = []
  for path in sorted(keep):
    if path.is_relative_to('/tmp'):
      inside = tmp / path.relative_to('/tmp')
      inside.mkdir(parents=True, exist_ok=True)
      binds.append(f'mount --bind {path} {inside}')
  return ' && '.join([*binds, f'mount --rbind {tmp} /tmp'])


def _wait_for_init(launcher: subprocess.Popen, port: int) -> int:
  """The worker's process 1 (as the host numbers it), once its metadata server answers."""
  children = pathlib.Path(f'/proc/{launcher.pid}/task/{launcher.pid}/children')
  for _ in range(600):
    if launcher.poll() is not None:
      raise RuntimeError(f'emulated VM failed to boot (exit {launcher.returncode}); '
                         'the emulator needs root (unshare, mount)')
    with contextlib.suppress(OSError):
      socket.create_connection(('127.0.0.1', port), timeout=1).close()
      return int(children.read_text().split()[0])
    time.sleep(0.05)
  raise RuntimeError('emulated VM did not boot in 30 s')


def worker_env(n: dict, i: int) -> dict:
  """The environment a command run over ssh sees on worker i."""
  s = settings()
  w = n['workers'][i]
  return {**s['env'], 'HOME': w['home'], 'USER': 'root', 'LANG': 'C.UTF-8',
          'PATH': f'{root() / "bin"}:/usr/local/bin:/usr/bin:/bin',
          'GCE_METADATA_IP': f'127.0.0.1:{w["metadata_port"]}',  # as JAX reads it
          'JAX_COORDINATOR_PORT': str(n['coordinator_port']),
          'JAX_FORCE_TPU_INIT': '1',  # a Cloud TPU VM to JAX, though libtpu is hidden
          'JAX_PLATFORMS': '',  # JAX's own choice: with no TPU backend, the CPU
          'XLA_FLAGS': f'--xla_force_host_platform_device_count={s["devices_per_worker"]}',
          'TRANSFORMER_JAX_PREPARED_VENV': s['venv']}


def enter(n: dict, i: int, command: list[str], **popen) -> subprocess.Popen:
  """`command` run inside worker i (its namespaces, HOME and environment)."""
  w = n['workers'][i]
  return subprocess.Popen(['nsenter', '-t', str(w['init']), '-p', '-u', '-m', '--',
                           'env', '-i', *(f'{k}={v}' for k, v in worker_env(n, i).items()),
                           *command], cwd=w['home'], **popen)


def workers(n: dict, spec: str) -> list[int]:
  return list(range(len(n['workers']))) if spec == 'all' else [int(spec)]


def reachable(name: str) -> str:
  """'' if ssh to the slice would connect now, else the error (counting a fault)."""
  with locked():
    n = node(name)
    if n is None:
      return f'NOT_FOUND: node {name} not found'
    if n['state'] != 'READY':
      return f'ssh: connect to host {name}: the node is {n["state"]}'
    if n['ssh_failures_left'] > 0:
      n['ssh_failures_left'] -= 1
      save(n)
      return 'ssh: connect to host port 22: Connection refused (emulated: a new VM)'
  return ''


def processes(init: int) -> list[int]:
  """Host pids of the worker's processes, its process 1 excepted."""
  try:
    ns = os.readlink(f'/proc/{init}/ns/pid')
  except OSError:
    return []
  found = []
  for entry in pathlib.Path('/proc').iterdir():
    if entry.name.isdigit() and int(entry.name) != init:
      with contextlib.suppress(OSError):
        if os.readlink(entry / 'ns' / 'pid') == ns:
          found.append(int(entry.name))
  return found


def training(init: int) -> list[int]:
  """The worker's `python -m transformer_jax.train` processes (not shells naming it)."""
  found = []
  for pid in processes(init):
    with contextlib.suppress(OSError):
      argv = pathlib.Path(f'/proc/{pid}/cmdline').read_bytes().decode().split('\0')
      if any(argv[k:k + 2] == TRAIN_ARGV for k in range(len(argv))):
        found.append(pid)
  return found


def kill_training(name: str, worker: int) -> bool:
  """SIGKILL worker's training process (a crash, an OOM kill); False if none ran."""
  n = node(name)
  pids = training(n['workers'][worker]['init']) if n else []
  for pid in pids:
    with contextlib.suppress(ProcessLookupError):
      os.kill(pid, signal.SIGKILL)
  return bool(pids)


def preempt(name: str, grace_s: float = 5.0) -> bool:
  """As a spot VM's preemption: SIGTERM to every process of every worker, SIGKILL after
  `grace_s`, the VMs off, the node PREEMPTED (its disks stay until it is deleted)."""
  with locked():
    n = node(name)
    if n is None or n['state'] != 'READY':
      return False
    n['state'] = 'PREEMPTED'
    save(n)
  for w in n['workers']:
    for pid in processes(w['init']):
      with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
  deadline = time.time() + grace_s
  while time.time() < deadline and any(processes(w['init']) for w in n['workers']):
    time.sleep(0.1)
  _power_off(n)
  return True


def _power_off(n: dict) -> None:
  for w in n['workers']:
    with contextlib.suppress(ProcessLookupError):
      os.kill(w['init'], signal.SIGKILL)  # process 1 gone: the kernel kills the rest
  for w in n['workers']:
    for _ in range(200):
      if not os.path.exists(f'/proc/{w["init"]}'):
        break
      time.sleep(0.05)


def delete(name: str) -> str:
  """The VM (or queued resource) and its disks gone; '' or an error line."""
  with locked():
    n = node(name)
    if n is None:
      return f'NOT_FOUND: node {name} not found'
    (root() / 'nodes' / f'{name}.json').unlink()
  _power_off(n)
  shutil.rmtree(root() / 'vms' / n['vm'], ignore_errors=True)
  return ''


def teardown() -> None:
  """Every VM of the fleet off (the end of a test or bench)."""
  for path in (root() / 'nodes').glob('*.json'):
    delete(path.stem)
