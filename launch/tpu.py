"""Cloud TPU VM launcher: create, install, prepare, train, supervise, logs, delete. Every
gcloud call goes through `gcloud()`, and `--dry_run` prints the exact commands instead.

  python launch/tpu.py create    --name=mt --zone=us-west4-a --type=v5litepod-8 [--spot|--queued]
  python launch/tpu.py install   --name=mt --zone=us-west4-a --config=configs/tpu_v5e_8_base.py
  python launch/tpu.py prepare   --name=mt --zone=us-west4-a --config=... --workdir=gs://B/run1
  python launch/tpu.py train     --name=mt --zone=us-west4-a --config=... --workdir=gs://B/run1 \\
                                 [-- --config.train.num_steps=100000]
  python launch/tpu.py supervise --name=mt ... (the create flags, --config, --workdir, -- flags)
  python launch/tpu.py logs      --name=mt --zone=us-west4-a
  python launch/tpu.py delete    --name=mt --zone=us-west4-a [--queued]

`install` installs the `tpu` extra on every worker, and on worker 0 also the `tf` extra
when the config reads a TFDS catalog dataset (WMT), which needs TensorFlow to build.
`prepare` builds the dataset on worker 0 and copies it to WORKDIR/tfds, writes the
vocabulary to WORKDIR/vocab.model, then has every worker tokenize its share of the token
store into WORKDIR/store: once, for every worker and every later VM. `train`
copies the dataset from there to each worker's disk (ArrayRecord reads local files) and
starts `transformer_jax.train` on every worker (`--worker=all`; JAX connects the hosts),
its log copied to WORKDIR/logs/ every minute. A pod slice's workdir must be a bucket.
`supervise` keeps a spot or queued slice training: when it is preempted, it waits for
capacity, recreates it and relaunches `train` (installing where a worker lacks the run's
code), which resumes, until the run has written WORKDIR/done.json.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import pathlib
import shlex
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
REMOTE_DIR = '$HOME/transformer_jax'  # expanded by the worker's shell
VENV = '$HOME/venv'
UV = '$HOME/.local/bin/uv'
PYTHON = '3.11'
LOCAL_TFDS = '$HOME/tensorflow_datasets'
TRAIN_LOG, TRAIN_PID, TRAIN_EXIT = '$HOME/train.log', '$HOME/train.pid', '$HOME/train.exit'
TRAIN_LOCK = '$HOME/train.lock'
CODE_HELD = f'{REMOTE_DIR}/.archive'  # the archive REMOTE_DIR came from (its listing)
DATA_HELD = '$HOME/tensorflow_datasets.copied'  # the bucket copy LOCAL_TFDS came from
LAUNCH_TIMES = 'TRANSFORMER_JAX_LAUNCH_TIMES'  # what the worker did before train started
RUNTIME = {'v5litepod': 'v2-alpha-tpuv5-lite', 'v5p': 'v2-alpha-tpuv5',
           'v6e': 'v2-alpha-tpuv6e', 'v4': 'tpu-ubuntu2204-base'}
OUR_DATASETS = ('synthetic', 'multi30k', 'parallel_text')  # built without TensorFlow
# A node's (tpu-vm describe) or a queued resource's states, as supervise reads them.
READY = {'READY', 'ACTIVE'}
LOST = {'PREEMPTED', 'TERMINATED', 'SUSPENDED', 'FAILED', 'NOT_FOUND'}


def gcloud(args: list[str], dry_run: bool, check: bool = True) -> subprocess.CompletedProcess:
  """The one place a gcloud command is run (or, with --dry_run, printed)."""
  command = ['gcloud', *args]
  print(shlex.join(command), flush=True)  # exactly what runs
  if dry_run:
    return subprocess.CompletedProcess(command, 0, '', '')
  return subprocess.run(command, check=check, capture_output=not check, text=True)


def tpu_vm(*args: str) -> list[str]:
  return ['compute', 'tpus', 'tpu-vm', *args]


def runtime_version(accelerator: str) -> str:
  family = accelerator.rsplit('-', 1)[0]
  if family not in RUNTIME:
    sys.exit(f'error: unknown accelerator type {accelerator!r}; pass --version explicitly.')
  return RUNTIME[family]


def create(a, check: bool = True) -> bool:
  """Create the VM (or queued resource); with check=False, a failure (e.g. no capacity in
  the zone) returns False instead of stopping."""
  version = a.version or runtime_version(a.type)
  spot = ['--spot'] if a.spot else []
  if a.queued:
    args = ['compute', 'tpus', 'queued-resources', 'create', a.name, f'--node-id={a.name}',
            f'--zone={a.zone}', f'--accelerator-type={a.type}',
            f'--runtime-version={version}', *spot]
  else:
    args = tpu_vm('create', a.name, f'--zone={a.zone}', f'--accelerator-type={a.type}',
                  f'--version={version}', *spot)
  return gcloud(args, a.dry_run, check).returncode == 0


def ssh(a, command: str, worker: str = 'all', check: bool = True) -> bool:
  return gcloud(tpu_vm('ssh', a.name, f'--zone={a.zone}', f'--worker={worker}',
                       f'--command={command}'), a.dry_run, check).returncode == 0


def ssh_output(a, command: str) -> str | None:
  """What `command` printed on all workers, or None if the ssh call failed."""
  result = gcloud(tpu_vm('ssh', a.name, f'--zone={a.zone}', '--worker=all',
                         f'--command={command}'), a.dry_run, check=False)
  return result.stdout if result.returncode == 0 else None


def local_config(config_path: str):
  """The config file as this checkout reads it."""
  sys.path.insert(0, str(REPO))
  from transformer_jax import config as config_lib  # noqa: PLC0415 (only these actions)
  return config_lib.load(str(REPO / config_path))


def needs_tensorflow(config_path: str) -> bool:
  """Whether the config's dataset is a TFDS catalog one (WMT), built with TensorFlow."""
  return local_config(config_path).data.name not in OUR_DATASETS


def code_archive(a) -> tuple[str, str]:
  """The run's code, WORKDIR/code.tar.gz: a `git archive` of this checkout made by the
  run's first install and reused by every later one, so a relaunch days later runs the
  code the run started with, whatever is checked out by then. Uncommitted changes to
  tracked files are refused unless --ship_dirty ships them (`git stash create`;
  untracked files never ship). Returns its address and its listing (`gcloud storage ls
  -l`: size, time made), which tells a worker whether the code it holds is this one."""
  remote = f'{a.workdir}/code.tar.gz'
  if getattr(a, 'code', None):  # this launcher's earlier answer (`relaunch` forgets it)
    return a.code
  if (listed := listing(a, remote)) is not None:
    print(f"the run's code: {remote} (made by its first install)", flush=True)
    a.code = remote, listed
    return a.code
  git = ['git', '-C', str(REPO)]
  dirty = subprocess.run([*git, 'status', '--porcelain', '--untracked-files=no'],
                         capture_output=True, text=True, check=True).stdout.strip()
  if dirty and not a.ship_dirty:
    sys.exit(f'error: {REPO} has uncommitted changes (git status): commit them, or pass '
             "--ship_dirty to ship them; the run's code is made once, from this checkout.")
  tree = 'HEAD'
  if dirty:
    # A throwaway commit of the working tree, only archived: any identity will do (a
    # machine without one configured would refuse to make it).
    anyone = ['-c', 'user.name=transformer_jax', '-c', 'user.email=launch@localhost']
    tree = subprocess.run([*git, *anyone, 'stash', 'create'], capture_output=True, text=True,
                          check=True).stdout.strip()
  with tempfile.TemporaryDirectory() as directory:
    archive = os.path.join(directory, 'code.tar.gz')
    local = [*git, 'archive', '--format=tar.gz', f'--output={archive}', tree]
    print(shlex.join(local), flush=True)
    if not a.dry_run:
      subprocess.run(local, check=True)
    gcloud(['storage', 'cp', archive, remote], a.dry_run)
  a.code = remote, listing(a, remote) or remote
  return a.code


def listing(a, remote: str) -> str | None:
  """`gcloud storage ls -l` of one object (None if absent; itself under --dry_run)."""
  if a.dry_run:
    return None
  result = gcloud(['storage', 'ls', '-l', remote], False, check=False)
  lines = [line.strip() for line in result.stdout.splitlines() if remote in line]
  return ' '.join(lines[0].split()) if result.returncode == 0 and lines else None


def install_code(a, unless_held: bool = False) -> str:
  """Shell: the run's code (`code_archive`) onto a worker, pip-installed, and the archive's
  listing in CODE_HELD. `unless_held`: skip all of it where CODE_HELD names this very
  archive and the venv is there (a worker that outlived a kill; a recreated VM has
  neither).
  Either way it ends by noting the time in LAUNCH_TIMES for the goodput record."""
  remote, listed = code_archive(a)
  archive = '$HOME/transformer_jax.tar.gz'
  fetch = (f'rm -f {CODE_HELD} && gcloud storage cp {shlex.quote(remote)} {archive} && '
           f'rm -rf {REMOTE_DIR} && mkdir -p {REMOTE_DIR} && tar -xzf {archive} -C {REMOTE_DIR}')
  # The TPU runtimes are Ubuntu 22.04, whose Python 3.10 is older than JAX supports
  # (3.11+): uv brings its own Python into the venv. A machine image with the environment
  # already made names it in TRANSFORMER_JAX_PREPARED_VENV (the emulated fleet does).
  script = (f'{fetch} && if [ -n "${{TRANSFORMER_JAX_PREPARED_VENV:-}}" ]; then '
            f'ln -sfn "$TRANSFORMER_JAX_PREPARED_VENV" {VENV}; else '
            f'(test -x {UV} || curl -LsSf https://astral.sh/uv/install.sh | sh) && '
            f'{UV} venv -q --allow-existing --python {PYTHON} {VENV} && '
            f'{UV} pip install -q --python {VENV} -e "{REMOTE_DIR}[tpu]"; fi && '
            f'echo {shlex.quote(listed)} > {CODE_HELD}')
  if unless_held:
    script = (f'if [ "$(cat {CODE_HELD} 2> /dev/null)" != {shlex.quote(listed)} ] || '
              f'[ ! -x {VENV}/bin/python ]; then {script}; fi')
  return f'{script} && {noted("installed")}'


def noted(phase: str) -> str:
  """Shell: append `phase=NOW` to LAUNCH_TIMES, which the train process it starts keeps in
  its goodput record (`transformer_jax.segments`)."""
  return f'export {LAUNCH_TIMES}="${{{LAUNCH_TIMES}:-}} {phase}=$(date +%s.%N)"'


def install(a) -> None:
  """The run's code (`code_archive`) onto every worker, pip-installed."""
  check_workdir(a)
  ssh(a, install_code(a))
  if needs_tensorflow(a.config):  # only worker 0 builds the dataset (prepare)
    ssh(a, f'{UV} pip install -q --python {VENV} -e "{REMOTE_DIR}[tpu,tf]"', worker='0')


def check_workdir(a) -> None:
  if not a.workdir.startswith('gs://'):
    sys.exit(f'error: --workdir={a.workdir or "(none)"} must be a bucket, '
             'e.g. --workdir=gs://BUCKET/run1: the workers and any VM that replaces them '
             'after a preemption read the data, vocabulary and checkpoints from it.')


def command_flags(a) -> str:
  """The flags of a remote `transformer_jax` command, each quoted for the worker's shell
  (a workdir with `$(...)`, spaces or quotes reaches Python as written)."""
  return (f'{shlex.quote("--config=" + a.config)} {shlex.quote("--workdir=" + a.workdir)} '
          f'--config.data.tfds_dir="{LOCAL_TFDS}" ' + ' '.join(shlex.quote(f) for f in a.extra))


def in_workdir(a, path: str) -> str:
  """WORKDIR/path, quoted for the worker's shell."""
  return shlex.quote(f'{a.workdir}/{path}')


def prepare(a) -> None:
  """Worker 0 builds the dataset and trains the vocabulary, and copies the dataset to the
  bucket; then every worker tokenizes its share of the token store into the bucket."""
  check_workdir(a)
  # JAX_PLATFORMS=cpu: worker 0 alone, not joined to the slice's other workers.
  ssh(a, f'cd {REMOTE_DIR} && JAX_PLATFORMS=cpu {VENV}/bin/python -m transformer_jax.prepare '
         f'{command_flags(a)} --nostore && '
         f'gcloud storage rsync -r {LOCAL_TFDS} {in_workdir(a, "tfds")}', worker='0')
  ssh(a, f'{fetch_dataset(a)} && cd {REMOTE_DIR} && '
         f'{VENV}/bin/python -m transformer_jax.prepare {command_flags(a)}')


def fetch_dataset(a, unless_held: bool = False) -> str:
  """Shell: the prepared dataset from the bucket onto this worker's disk, if it is there,
  and its address in DATA_HELD. `unless_held` (training): not again where DATA_HELD
  names it (a worker that outlived a kill), and whether the bucket holds one is asked
  once, here, not by every worker at every launch; `prepare` always copies and asks
  (it may have just made or remade it)."""
  prepared = in_workdir(a, 'tfds')
  there = f'gcloud storage ls {prepared} > /dev/null 2>&1'
  if unless_held:
    there = 'true' if bucket_has_dataset(a) else 'false'
  fetch = (f'rm -f {DATA_HELD} && mkdir -p {LOCAL_TFDS} && if {there}; '
           f'then gcloud storage rsync -r {prepared} {LOCAL_TFDS}; fi && '
           f'echo {prepared} > {DATA_HELD}')
  if unless_held:
    return f'if [ "$(cat {DATA_HELD} 2> /dev/null)" != {prepared} ]; then {fetch}; fi'
  return fetch


def bucket_has_dataset(a) -> bool:
  """Whether WORKDIR/tfds holds a prepared dataset (a TFDS catalog one; ours are read
  from the token store), asked once per launcher process."""
  if getattr(a, 'has_dataset', None) is None:
    a.has_dataset = a.dry_run or gcloud(['storage', 'ls', f'{a.workdir}/tfds'], False,
                                        check=False).returncode == 0
  return a.has_dataset


def train(a) -> None:
  """On every worker: the prepared dataset onto its disk, then train in the background
  (its own process group, so `stop` ends all of it), its log copied to WORKDIR/logs/
  every minute while it runs and once when it ends. The wrapper leaves its pid in
  $HOME/train.pid and, when training ends, its exit status in $HOME/train.exit: what
  `running` reads (a process name would match the shells that carry it)."""
  check_workdir(a)
  ssh(a, start_training(a))


def start_training(a) -> str:
  """Shell: `train`'s, on one worker."""
  log = in_workdir(a, 'logs/') + '"$(hostname).log"'
  ship = f'gcloud storage cp -q {TRAIN_LOG} {log} > /dev/null 2>&1'
  # Compiled programs kept with the run: a VM that replaces a preempted one finds them
  # (on the worker's own disk they would be lost with it). Process 0 writes them.
  cache = '' if any(f.startswith('--compilation_cache') for f in a.extra) else \
      ' ' + shlex.quote(f'--compilation_cache={a.workdir}/compilation_cache')
  script = (f'{fetch_dataset(a, unless_held=True)} && {noted("data_copied")} && '
            f'cd {REMOTE_DIR} && '
            f'{VENV}/bin/python -m transformer_jax.train {command_flags(a)}{cache}')
  return launch(wrapper(script, ship))


def launch(wrapped: str) -> str:
  """The shell that starts `wrapped` in the background on a worker, unless a run it
  started is alive there, which it adopts: `gcloud ... ssh` runs a command again when its
  connection drops, and a second start would train twice on the worker. The check and
  the start hold $HOME/train.lock, and the new run's pid is written before it is
  released, so two launches at once start one run."""
  return (f'exec 8>> {TRAIN_LOCK}; flock 8; '
          f'if test ! -e {TRAIN_EXIT} && kill -0 "$(cat {TRAIN_PID} 2> /dev/null)" 2> /dev/null; '
          'then echo "training already runs on $(hostname): adopted"; '
          f'else rm -f {TRAIN_EXIT}; setsid nohup bash -c {shlex.quote(wrapped)} 8>&- '
          f'> /dev/null 2>&1 < /dev/null & echo $! > {TRAIN_PID}; fi')


def wrapper(script: str, ship: str) -> str:
  """The shell that runs `script` on a worker: pid in train.pid, output in train.log
  (`ship` copies it out every minute and at the end), exit status in train.exit."""
  return (f'echo $$ > {TRAIN_PID}; rm -f {TRAIN_EXIT}; '
          f'(while sleep 60 && kill -0 $$ 2> /dev/null; do {ship}; done) & shipper=$!; '
          f'({script}) >> {TRAIN_LOG} 2>&1; code=$?; '
          # A newer run may have started meanwhile (this one's last process outlived
          # done.json): only the current run's wrapper reports an exit.
          f'if [ "$(cat {TRAIN_PID})" = "$$" ]; then echo $code > {TRAIN_EXIT}; fi; '
          f'kill $shipper; {ship}')


# A worker's answer to `running`, one line: TRAIN_RUNNING while its wrapper is alive and
# has not written an exit; else TRAIN_STOPPED, the exit status (`none`: the wrapper died
# without one, its processes may be left; `never`: nothing was started here, a new VM)
# and the last `error:` line of its log.
RUNNING_CHECK = (f'if test ! -e {TRAIN_EXIT} && kill -0 "$(cat {TRAIN_PID} 2> /dev/null)" '
                 '2> /dev/null; then echo TRAIN_RUNNING; else echo "TRAIN_STOPPED '
                 f'$(cat {TRAIN_EXIT} 2> /dev/null || (test -e {TRAIN_PID} && echo none) '
                 '|| echo never) '
                 f'$(grep "^error: " {TRAIN_LOG} 2> /dev/null | tail -n 1)"; fi')
# `transformer_jax` commands exit 2 on an error the user must fix (a bad flag or config,
# a missing dataset, a checkpoint that cannot restore, a non-finite loss): relaunching
# would fail the same way. Other ends (75: a worker lost; a kill; a crash) are relaunched.
USER_ERROR_EXIT = '2'


@dataclasses.dataclass
class Look:
  """The workers' answers: whether training runs on every one (None: cannot be told now,
  e.g. ssh failed), and the error line of one that stopped on a user error."""
  running: bool | None
  user_error: str | None = None
  alive: bool = True  # whether a process of a run may be left on some worker


def look(a) -> Look:
  result = ssh_output(a, RUNNING_CHECK)
  if result is None or a.dry_run:
    return Look(None if result is None else True)
  lines = [line.split(' ', 2) for line in result.splitlines() if line.startswith('TRAIN_')]
  # (Every worker answered.) What a stop must end first: a live run, or what a dead
  # wrapper may have left.
  alive = any(words[0] == 'TRAIN_RUNNING' or words[1:2] == ['none'] for words in lines)
  for words in lines:
    if words[0] == 'TRAIN_STOPPED' and words[1:2] == [USER_ERROR_EXIT]:
      return Look(False, words[2] if len(words) > 2 and words[2] else 'exit 2, no error line',
                  alive)
  if any(words[0] == 'TRAIN_STOPPED' for words in lines):
    return Look(False, alive=alive)
  return Look(True if lines else None, alive=alive)


def running(a) -> bool | None:
  """Whether training runs on every worker; None if that cannot be told now (ssh failed).
  Each worker answers for itself: its wrapper is alive and has not written an exit."""
  return look(a).running


def stop(a) -> None:
  """End what is left of a run on every worker (e.g. the survivors of a dead worker,
  which would otherwise hold the TPU until JAX's heartbeat times out): SIGTERM to each
  wrapper's process group, SIGKILL after --grace_s."""
  ssh(a, stop_training(a))


def stop_training(a) -> str:
  """Shell: `stop`'s, on one worker."""
  group = f'-"$(cat {TRAIN_PID})"'
  return (f'if test -s {TRAIN_PID}; then kill -TERM -- {group} 2> /dev/null; '
          f'for i in $(seq {int(a.grace_s)}); do kill -0 -- {group} 2> /dev/null || break; '
          f'sleep 1; done; kill -KILL -- {group} 2> /dev/null; fi; true')


def relaunch(a, leftovers: bool) -> None:
  """What a relaunch does on the workers, in as few ssh calls as it can (each costs
  seconds): end what is left of the last run where any process is (`leftovers`) on every
  worker first (the new run must not meet the old one), then in one call install the
  run's code unless the worker holds it already, and start training (the dataset copied
  unless held)."""
  if leftovers:
    stop(a)
  try:
    ssh(a, f'{install_code(a, unless_held=True)} && {start_training(a)}')
  except subprocess.CalledProcessError:
    a.code = a.has_dataset = None  # ask the bucket again: it may have changed meanwhile
    raise


def state(a) -> str:
  """READY / ACTIVE, CREATING / PROVISIONING / ..., PREEMPTED, ..., or NOT_FOUND; a failed
  call that is not the API's NOT_FOUND raises CalledProcessError."""
  if a.queued:
    args = ['compute', 'tpus', 'queued-resources', 'describe', a.name, f'--zone={a.zone}',
            '--format=value(state.state)']
  else:
    args = tpu_vm('describe', a.name, f'--zone={a.zone}', '--format=value(state)')
  result = gcloud(args, a.dry_run, check=False)
  if a.dry_run:
    return 'READY'
  if result.returncode == 0:
    return result.stdout.strip()
  if 'NOT_FOUND' in result.stderr:  # the API's 404 ("ERROR: (gcloud...) NOT_FOUND: ...")
    return 'NOT_FOUND'
  # Anything else (network, auth, quota, HTTP 429/503) says nothing about the slice: a
  # failed call, which supervise retries with backoff, never a reason to recreate it.
  print(result.stderr.strip()[-2000:], file=sys.stderr, flush=True)
  raise subprocess.CalledProcessError(result.returncode, result.args)


def finished(a) -> bool:
  """Whether the run wrote WORKDIR/done.json (train does on reaching its last step) at or
  past the step these flags end at: `-- --config.train.num_steps=MORE` on a finished run
  extends it (train removes done.json as it trains past it)."""
  result = gcloud(['storage', 'cat', f'{a.workdir}/done.json'], a.dry_run, check=False)
  if a.dry_run or result.returncode != 0:
    return False
  try:
    step = int(json.loads(result.stdout)['step'])
  except (ValueError, KeyError, TypeError):  # half-written: not done, train rewrites it
    return False
  return step >= last_step(a)


def last_step(a) -> int:
  """The step a run of --config and the `-- --config.KEY=VALUE` flags ends at, as train
  computes it (`costs.last_step`)."""
  config = local_config(a.config)
  for flag in a.extra:
    key, _, value = flag.removeprefix('--config.').partition('=')
    if not (flag.startswith('--config.') and value):
      continue
    section, _, name = key.rpartition('.')
    try:
      parent = config
      for part in filter(None, section.split('.')):
        parent = parent[part]
      default = parent[name]
      parent[name] = (value.lower() in ('true', '1') if isinstance(default, bool)
                      else type(default)(value) if isinstance(default, (int, float))
                      else value)
    except (KeyError, AttributeError, TypeError, ValueError):
      continue  # a bad flag: train names it (a user error, which supervise reports)
  from transformer_jax import costs  # noqa: PLC0415 (only supervise needs it)
  return costs.last_step(config)


@dataclasses.dataclass
class Watch:
  """What `supervise` knows between polls: whether a run of ours (or one it adopted) was
  live, how many times it relaunched one, and whether it waits for a lost slice to be
  back."""
  launched: bool = False
  restarts: int = 0
  awaiting_slice: bool = False


class Journal:
  """supervise's own goodput record, WORKDIR/goodput/supervise-START_MS-PID.json: one
  object of its own, replaced whole at each event (a bucket has no append), which
  `python -m transformer_jax.goodput` reads beside the train processes' records. Each
  write (a gcloud call of 1-3 s) runs in a thread of its own, in order, so that it never
  lengthens the relaunch it times; one that fails is skipped: the record is for
  accounting, the run goes on."""

  def __init__(self, a):
    self.a, self.start, self.events = a, time.time(), []
    self.target = f'{a.workdir}/goodput/supervise-{int(self.start * 1000)}-{os.getpid()}.json'
    self._writes = concurrent.futures.ThreadPoolExecutor(1)

  def __call__(self, event: str, **fields) -> None:
    self.events.append({'event': event, 'time': time.time(), **fields})
    self._writes.submit(self._store, json.dumps(
        {'kind': 'supervise', 'start': self.start, 'events': self.events}))

  def _store(self, text: str) -> None:
    with tempfile.NamedTemporaryFile('w', suffix='.json', delete=False) as f:
      f.write(text)
    try:
      gcloud(['storage', 'cp', f.name, self.target], self.a.dry_run, check=False)
    finally:
      os.unlink(f.name)

  def close(self) -> None:
    """Once every event is written."""
    self._writes.shutdown(wait=True)


def supervise(a) -> None:
  """Keep the run going until it is done: recreate a lost slice (waiting for capacity),
  relaunch `train` (which resumes; installed where needed); relaunch it too if it stopped
  on a slice that is still up (e.g. a worker died), after ending what is left of it; stop, naming
  the error, when it ended on a user error (exit 2), which a relaunch would repeat. A run
  already training (e.g. started by `train`) is adopted, not launched twice. A failed gcloud or
  ssh call (a VM not reachable yet, one preempted meanwhile) is retried with backoff."""
  check_workdir(a)
  watch, failures, journal = Watch(), 0, Journal(a)
  journal('start')
  while True:
    try:
      if finished(a):
        break
      step(a, watch, journal)
      failures = 0
    except subprocess.CalledProcessError as e:
      failures += 1
      if failures > a.max_failures:
        sys.exit(f'error: {failures} gcloud calls failed in a row, the last: '
                 f'{shlex.join(e.cmd[-3:])} (exit {e.returncode}); see its output above.')
      print(f'gcloud failed (exit {e.returncode}); retrying ({failures} in a row)', flush=True)
    if a.dry_run:
      return
    time.sleep(a.poll_s * min(2 ** failures, 16))
  journal('done')
  journal.close()
  print(f'training finished: {a.workdir}/done.json', flush=True)


def step(a, watch: Watch, journal: Journal) -> None:
  """One look at the slice, and what it calls for."""
  now = state(a)
  if now in LOST:
    if not watch.awaiting_slice:
      journal('lost', state=now)
      watch.awaiting_slice = True
    restart(a, watch, f'{a.name} is {now}')
    if now != 'NOT_FOUND':
      delete(a)
    create(a, check=False)  # no capacity now: try again at the next poll
  elif now in READY:  # else CREATING, PROVISIONING, ...: wait
    if watch.awaiting_slice:
      journal('ready')
      watch.awaiting_slice = False
    seen = look(a)
    if seen.user_error:
      sys.exit(f'error: training stopped on an error that a relaunch would repeat; fix it '
               f'and run supervise again. A worker\'s log says: {seen.user_error}')
    live = seen.running
    if live is None:  # ssh to a worker failed: a failed call, counted and retried
      raise subprocess.CalledProcessError(255, ['ssh', '--worker=all', 'RUNNING_CHECK'])
    if live:
      watch.launched = True  # ours, or one `train` started
    elif not finished(a):  # (finished: the run ended between the two looks)
      restart(a, watch, 'train is not running on every worker')
      journal('launch')
      relaunch(a, seen.alive)  # train resumes from the latest checkpoint in the workdir
      journal('launched')
      watch.launched = True


def restart(a, watch: Watch, why: str) -> None:
  """Count a relaunch of a run that was live (once, even if the relaunch fails midway)."""
  if not watch.launched:
    return
  if watch.restarts + 1 > a.max_restarts:
    sys.exit(f'error: gave up after {a.max_restarts} restarts (--max_restarts).')
  watch.restarts += 1
  watch.launched = False
  print(f'restart {watch.restarts}: {why}', flush=True)


def logs(a) -> None:
  ssh(a, f'tail -n 100 -f {TRAIN_LOG}', worker='0')


def delete(a) -> None:
  if a.queued:
    gcloud(['compute', 'tpus', 'queued-resources', 'delete', a.name, f'--zone={a.zone}',
            '--force', '--quiet'], a.dry_run)
  else:
    gcloud(tpu_vm('delete', a.name, f'--zone={a.zone}', '--quiet'), a.dry_run)


ACTIONS = {'create': create, 'install': install, 'prepare': prepare, 'train': train,
           'supervise': supervise, 'logs': logs, 'delete': delete}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('action', choices=list(ACTIONS))
  parser.add_argument('--name', required=True)
  parser.add_argument('--zone', required=True)
  parser.add_argument('--type', default='v5litepod-8', help='accelerator type')
  parser.add_argument('--version', default='', help='TPU runtime (default: by --type)')
  parser.add_argument('--spot', action='store_true')
  parser.add_argument('--queued', action='store_true', help='use a queued resource')
  parser.add_argument('--config', default='configs/tpu_v5e_8_base.py')
  parser.add_argument('--workdir', default='', help='gs://BUCKET/DIR')
  parser.add_argument('--poll_s', type=float, default=60, help='supervise: seconds between checks')
  parser.add_argument('--max_restarts', type=int, default=100, help='supervise: then give up')
  parser.add_argument('--max_failures', type=int, default=20,
                      help='supervise: gcloud calls failing in a row, then give up')
  parser.add_argument('--grace_s', type=float, default=30,
                      help='supervise: seconds between SIGTERM and SIGKILL of leftovers')
  parser.add_argument('--ship_dirty', action='store_true',
                      help="install: ship this checkout's uncommitted changes as the run's code")
  parser.add_argument('--dry_run', action='store_true', help='print the commands only')
  argv = sys.argv[1:] if argv is None else argv
  split = argv.index('--') if '--' in argv else len(argv)
  a = parser.parse_args(argv[:split])
  a.extra = argv[split + 1:]  # train flags after --, passed through
  ACTIONS[a.action](a)


if __name__ == '__main__':
  main()
