"""An emulated Cloud TPU fleet on one Linux machine (as root): the TPU VMs behind the
emulated Cloud TPU API (api.py), which the real `gcloud` CLI talks to, and the faults a
bench or test delivers to them.

Each worker of a slice is a sandbox that behaves as a VM to the commands run on it:
  - its own PID namespace (`pgrep` sees the worker's processes only, and `vm.py` is
    process 1: killing it ends every process of the worker, as a VM shutdown does);
  - its own UTS namespace (`hostname` is the worker's, e.g. t1v-n-mt-g2-w-1) and
    /etc/hosts naming it, so gloo and JAX resolve it as on a VM;
  - its own mount namespace: its own /tmp, and TPU chips on its PCI bus (fake vendor
    0x1ae0 / v5e device entries beside the real devices in /sys/bus/pci/devices),
    which is how JAX recognises a Cloud TPU VM;
  - its own HOME, root's home in its own /etc/passwd (a fresh directory per VM: a
    recreated slice starts with empty disks);
  - its own OpenSSH server (Debian's sshd) on its own loopback address 127.77.G.W+1,
    port 22, with a fresh host key per VM, public-key login only, the keys `gcloud`
    pushes as node metadata (installed by api.py as a guest agent does), and the
    worker's environment (sshd's SetEnv);
  - a metadata server (`vm.py`, GCE_METADATA_IP) naming the worker's number and the
    slice's workers, which JAX's TPU cluster detection reads to join the slice.
What differs from a real VM: the workers share the machine's files outside their HOME
and /tmp (the repository, the prepared venv, the fleet's directory) and its loopback
network (JAX's worker endpoints are 127.0.0.1, and each slice gets its own
JAX_COORDINATOR_PORT, a variable JAX documents); the TPU chips are CPU devices: libtpu
is hidden on the workers (it would probe the real metadata address, 169.254.169.254)
and JAX_FORCE_TPU_INIT stands in for it, so JAX still takes the VM for a Cloud TPU VM
and falls back to its CPU backend; the bucket is a local GCS emulator, and gcloud's
credentials an access-token file.

State lives under $TPU_EMULATOR_DIR: fleet.json (settings and pending faults),
nodes/NAME.json (one per TPU VM or queued resource), vms/NAME-GEN/w<i>/ (each
worker's disk, sshd log), api_requests.jsonl, gcloud/ (the launcher's gcloud config)
and home/ (the launcher's HOME: gcloud's ssh key and known hosts).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import pathlib
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

sys.path[:0] = [str(pathlib.Path(__file__).resolve().parents[d]) for d in (1, 2)]
import gcs_emulator  # noqa: E402 (tests/: the bucket's gcloud variables)
from transformer_jax import local_pod  # noqa: E402 (the coordinator's port, as tests pick it)

HERE = pathlib.Path(__file__).resolve().parent
CHIP = {'vendor': '0x1ae0', 'device': '0x0063', 'class': '0x120000'}  # a TPU v5e chip
TRAIN_ARGV = ['-m', 'transformer_jax.train']
SSHD = '/usr/sbin/sshd'


def root() -> pathlib.Path:
  return pathlib.Path(os.environ['TPU_EMULATOR_DIR'])


def setup(directory: str | os.PathLike, env: dict, devices_per_worker: int = 2,
          venv: str = '') -> dict:
  """A new fleet under `directory`, its Cloud TPU API served (api.py); returns the
  variables that point the real gcloud CLI (and this module) at them. `env` is given to
  every worker (e.g. the GCS emulator's variables); `venv`, if given, is the prepared
  virtual environment `install` links instead of downloading one (no network)."""
  missing = [tool for tool in ('gcloud', 'ssh', 'ssh-keygen', SSHD, 'unshare')
             if not shutil.which(tool)]
  if missing or os.geteuid() != 0:
    raise RuntimeError(
        f'the emulated TPU fleet needs root and {", ".join(missing) or "its tools"}: run as '
        'root with google-cloud-cli and openssh-server installed (.ci/run installs them)')
  top = pathlib.Path(directory).resolve()
  for sub in ('nodes', 'vms', 'gcloud', 'home'):
    (top / sub).mkdir(parents=True, exist_ok=True)
  site = pathlib.Path(venv or sys.prefix).glob('lib/python*/site-packages/libtpu')
  cloudsdk = gcs_emulator.gcloud_env(env, top)
  settings = {'python': sys.executable, 'devices_per_worker': devices_per_worker,
              'env': {**env, **cloudsdk}, 'venv': venv,
              'libtpu': [str(path) for path in site], 'create_failures': 0,
              'ssh_key_delay_s': 0, 'describe_failures': 0, 'quota_failures': 0,
              'ssh_drops_after_start': 0,
              'generation': 0, 'api_port': free_port()}
  (top / 'fleet.json').write_text(json.dumps(settings, indent=1))
  start_api(top)
  api = f'http://127.0.0.1:{settings["api_port"]}/'
  return {**cloudsdk, 'TPU_EMULATOR_DIR': str(top), 'CLOUDSDK_CONFIG': str(top / 'gcloud'),
          'CLOUDSDK_API_ENDPOINT_OVERRIDES_TPU': api,
          'CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE': api,
          'HOME': str(top / 'home'),  # gcloud's ssh key: ~/.ssh/google_compute_engine
          'SSH_AUTH_SOCK': ''}


def start_api(top: pathlib.Path | None = None) -> None:
  """The emulated Cloud TPU API (api.py) on the fleet's port, once it accepts calls."""
  top = top or root()
  port = json.loads((top / 'fleet.json').read_text())['api_port']
  with open(top / 'api.log', 'ab') as log:
    server = subprocess.Popen([sys.executable, str(HERE / 'api.py'), str(port)],
                              env={**os.environ, 'TPU_EMULATOR_DIR': str(top)},
                              stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                              start_new_session=True)
  (top / 'api.pid').write_text(str(server.pid))
  for _ in range(300):
    with contextlib.suppress(OSError):
      socket.create_connection(('127.0.0.1', port), timeout=1).close()
      return
    time.sleep(0.05)
  raise RuntimeError(f'the emulated TPU API did not start: see {top / "api.log"}')


def stop_api() -> None:
  """The API gone: gcloud's calls are refused until start_api()."""
  with contextlib.suppress(OSError, ValueError):
    pid = int((root() / 'api.pid').read_text())
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def log_request(entry: dict) -> None:
  with open(root() / 'api_requests.jsonl', 'a') as f:
    f.write(json.dumps(entry) + '\n')


def api_requests() -> list[dict]:
  path = root() / 'api_requests.jsonl'
  return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def ssh_sessions(vm: str = '*') -> int:
  """Sessions the workers' sshd accepted (their logs), over the VMs of the fleet (those
  deleted counted as they went)."""
  gone = settings().get('ssh_sessions_of_deleted_vms', 0) if vm == '*' else 0
  return gone + sum(log.read_text(errors='replace').count('Accepted publickey')
                    for log in (root() / 'vms').glob(f'{vm}/w*/sshd.log'))


@contextlib.contextmanager
def locked():
  """One change to the fleet's state at a time (gcloud calls run concurrently)."""
  with open(root() / 'lock', 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    yield


def settings() -> dict:
  return json.loads((root() / 'fleet.json').read_text())


def set_faults(**faults: float) -> None:
  """create_failures=K: the next K creates fail for lack of capacity;
  describe_failures=K: the next K node or queued-resource gets answer HTTP 503;
  quota_failures=K: the next K of them answer HTTP 429 (a quota);
  ssh_key_delay_s=S: an ssh key gcloud pushes reaches the workers S seconds later (its
  ssh is refused meanwhile, as while a new VM's keys propagate);
  ssh_drops_after_start=K: the next K ssh sessions drop after their command ran."""
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


def node_of_queued(queued: str) -> dict | None:
  """The node queued resource `queued` holds (None if there is none)."""
  for path in (root() / 'nodes').glob('*.json'):
    n = json.loads(path.read_text())
    if n.get('queued') == queued:
      return n
  return None


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


def create(name: str, accelerator: str, runtime: str = '', spot: bool = False,
           queued: str = '') -> str:
  """A READY slice (held by queued resource `queued`, if named), or an error line."""
  with locked():
    s = settings()
    if node(name):
      return f'ALREADY_EXISTS: node {name} already exists'
    s['generation'] += 1
    (root() / 'fleet.json').write_text(json.dumps(s, indent=1))
    g = s['generation']
    n = {'name': name, 'type': accelerator, 'runtime': runtime, 'spot': spot,
         'queued': queued, 'state': 'CREATING', 'vm': f'{name}-g{g}',
         'id': 6_000_000_000_000_000_000 + g,  # a recreated node has a new id, as on GCP
         'coordinator_port': local_pod.free_port(), 'metadata': {}, 'workers': []}
    save(n)
  count = hosts_of(accelerator)
  hostnames = [f't1v-n-{n["vm"]}-w-{i}' for i in range(count)]
  endpoints = ','.join(f'{h}:{i}:127.0.0.1' for i, h in enumerate(hostnames))
  for i, hostname in enumerate(hostnames):
    address = f'127.77.{g % 250 + 1}.{i + 1}'
    n['workers'].append(_boot(n, i, hostname, endpoints, address, s))
  with locked():
    if node(name) is not None:  # not deleted meanwhile
      n['state'] = 'READY'
      save(n)
  return ''


def _boot(n: dict, i: int, hostname: str, endpoints: str, address: str, s: dict) -> dict:
  """Start worker i: its namespaces, disk, chips, sshd and metadata server."""
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
  w = {'hostname': hostname, 'address': address, 'metadata_port': port,
       'home': str(disk / 'home')}
  w['host_key'] = _sshd_files(n, w, disk, s)
  pathlib.Path('/run/sshd').mkdir(exist_ok=True)  # sshd's privilege separation directory
  # /tmp first: a plain bind of a directory from the machine's /tmp (the venv, in CI)
  # would not carry mounts made inside it before, such as the one hiding libtpu.
  boot = (f'{_private_tmp(disk, s)} && mount --bind {pci} /sys/bus/pci/devices && '
          f'mount --bind {disk}/hosts /etc/hosts && mount --bind {disk}/passwd /etc/passwd'
          f'{hide} && hostname {hostname} && {SSHD} -f {disk}/sshd_config -E {disk}/sshd.log'
          f' && exec {shlex.quote(s["python"])} {HERE / "vm.py"} {port} {disk}/metadata.json')
  with open(disk / 'console.log', 'wb') as console:
    launcher = subprocess.Popen(
        ['unshare', '--pid', '--uts', '--mount', '--fork', '--mount-proc', 'sh', '-c', boot],
        stdin=subprocess.DEVNULL, stdout=console, stderr=console, start_new_session=True)
  w['init'] = _wait_for_init(launcher, port)
  return w


def _sshd_files(n: dict, w: dict, disk: pathlib.Path, s: dict) -> str:
  """The worker's sshd: a fresh host key, root's HOME in its own passwd, a config
  (public keys only, the worker's environment, the `ssh_drops_after_start` fault);
  returns the host's public key."""
  key = disk / 'ssh_host_ed25519_key'
  subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', w['hostname'],
                  '-f', str(key)], check=True)
  passwd = pathlib.Path('/etc/passwd').read_text().splitlines()
  (disk / 'passwd').write_text(''.join(
      (re.sub(r'^(root:[^:]*:0:0:[^:]*:)[^:]*:', rf'\g<1>{w["home"]}:', line) + '\n')
      for line in passwd))
  env = ' '.join(f'"{k}={v}"' for k, v in worker_env(n, w).items())
  # The session runs the command as sshd would (bash -c); with the fault pending, its
  # sshd process is then killed before it sends the exit status: the client sees the
  # connection drop after the command ran, and gcloud runs it again.
  drop = (f'TPU_EMULATOR_DIR={shlex.quote(str(root()))} {shlex.quote(s["python"])} '
          f'{HERE / "fleet.py"} take ssh_drops_after_start')
  (disk / 'sshd_config').write_text(
      f'ListenAddress {w["address"]}:22\nHostKey {key}\nPidFile {disk}/sshd.pid\n'
      'PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n'
      'PermitRootLogin prohibit-password\nAuthorizedKeysFile .ssh/authorized_keys\n'
      f'SetEnv {env}\n'
      f'ForceCommand bash -c "$SSH_ORIGINAL_COMMAND"; code=$?; if {drop}; then '
      'kill -KILL $PPID; fi; exit $code\n')
  kind, public, _ = key.with_suffix('.pub').read_text().split(' ', 2)
  return f'{kind} {public}'  # as the guest attribute holds it, without the comment


def set_metadata(name: str, metadata: dict) -> None:
  with locked():
    n = node(name)
    if n is not None:
      n['metadata'] = dict(metadata)
      save(n)


def install_keys(name: str) -> None:
  """The node's `ssh-keys` metadata ("USER:KEY" lines) as each worker's
  ~/.ssh/authorized_keys for root, as a TPU VM's guest agent installs them."""
  n = node(name)
  if n is None:
    return
  keys = [line.split(':', 1)[1] for line in n['metadata'].get('ssh-keys', '').splitlines()
          if line.startswith('root:')]
  for w in n['workers']:
    ssh = pathlib.Path(w['home'], '.ssh')
    with contextlib.suppress(OSError):  # a VM deleted meanwhile
      ssh.mkdir(mode=0o700, exist_ok=True)
      (ssh / 'authorized_keys').write_text(''.join(k + '\n' for k in keys))


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


def worker_env(n: dict, w: dict) -> dict:
  """The environment a command run over ssh sees on worker `w` (sshd sets HOME)."""
  s = settings()
  return {**s['env'], 'USER': 'root', 'LANG': 'C.UTF-8',
          'PATH': '/usr/local/bin:/usr/bin:/bin',
          'GCE_METADATA_IP': f'127.0.0.1:{w["metadata_port"]}',  # as JAX reads it
          'JAX_COORDINATOR_PORT': str(n['coordinator_port']),
          'JAX_FORCE_TPU_INIT': '1',  # a Cloud TPU VM to JAX, though libtpu is hidden
          'JAX_PLATFORMS': '',  # JAX's own choice: with no TPU backend, the CPU
          'XLA_FLAGS': f'--xla_force_host_platform_device_count={s["devices_per_worker"]}',
          'TRANSFORMER_JAX_PREPARED_VENV': s['venv']}


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
  sessions = ssh_sessions(n['vm'])
  with locked():
    s = settings()
    s['ssh_sessions_of_deleted_vms'] = s.get('ssh_sessions_of_deleted_vms', 0) + sessions
    (root() / 'fleet.json').write_text(json.dumps(s, indent=1))
  shutil.rmtree(root() / 'vms' / n['vm'], ignore_errors=True)
  return ''


def teardown() -> None:
  """Every VM of the fleet off and its API gone (the end of a test or bench)."""
  stop_api()
  for path in (root() / 'nodes').glob('*.json'):
    delete(path.stem)


if __name__ == '__main__':  # `fleet.py take FAULT`: exit 0 if one was pending (sshd's)
  sys.exit(0 if sys.argv[1:2] == ['take'] and take_fault(sys.argv[2]) else 1)
