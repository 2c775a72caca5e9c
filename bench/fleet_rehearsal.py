"""The Cloud TPU launcher driven end to end on the emulated fleet (tests/emulated_tpu), with
faults: the run must survive them and finish bit for bit as an uninterrupted one.

A spot slice of W workers x D devices (v5litepod-16 for the default 4 x 2), a gs:// workdir on
the GCS emulator, the synthetic corpus. Phases, each through `launch/tpu.py` running the
real gcloud CLI, pointed only by CLOUDSDK_* variables at the emulated Cloud TPU API and
the GCS emulator, and reaching the workers through their own sshd:

  create, install, prepare   as a user starts (prepare: dataset, vocabulary, token store)
  faulted                    `supervise` (it launches `train`); meanwhile, at seeded
                             random steps, K kills of one worker's training and P
                             preemptions of the whole slice (SIGTERM, SIGKILL after a
                             grace period, PREEMPTED), the new slice's ssh keys
                             propagating late, and once the API answering `describe`
                             with HTTP 503 past gcloud's own retries; supervise
                             recreates, reinstalls, relaunches until done.json, then exits
  reference                  the same config in a new workdir, uninterrupted
  compare                    per-step losses and the final step's parameter checksums

  python bench/fleet_rehearsal.py [--kills=5] [--preemptions=1] [--workers=4] [--record=F]

Prints one JSON object; "ok" is true only if every fault was delivered, supervise exited
0, and both runs' losses and final checksums are equal.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import random
import re
import subprocess
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / 'bench'), str(REPO / 'tests' / 'emulated_tpu'),
                str(REPO / 'tests')]
import fleet  # noqa: E402
from pod_rehearsal import emit, run_phase  # noqa: E402

BUCKET = 'fleet-rehearsal'
NAME = 'mt'
API_FAILURES = 6  # HTTP 503s in a row: gcloud tries 5 times, so one call fails
KEY_DELAY_S = 8  # a new slice's ssh key reaches its workers this late (gcloud retries)


def accelerator(workers: int) -> str:
  """A slice of that many hosts: v5e above 8 chips has 4 per host; v4 has 2-host types."""
  return f'v5litepod-{4 * workers}' if workers >= 4 else f'v4-{8 * workers}'


class Rehearsal:
  def __init__(self, a, root: pathlib.Path, env: dict):
    self.a, self.root, self.env = a, root, env
    self.phases: dict[str, dict] = {}
    self.common = ['--name=' + NAME, '--zone=emulated-a', f'--type={accelerator(a.workers)}',
                   '--spot', '--config=configs/tiny.py', '--ship_dirty']
    self.flags = ['--config.data.name=synthetic', f'--config.train.num_steps={a.steps}',
                  '--config.train.log_every=1', '--config.train.eval_every=1000',
                  f'--config.train.checkpoint_every={a.every}',
                  '--config.train.keep_checkpoints=3', '--heartbeat_timeout_s=10',
                  '--initialization_timeout_s=60']
    self.faults: dict[str, list] = {'kills': [], 'preemptions': [], 'api': []}

  def launch(self, action: str, workdir: str = '', *extra: str, **kwargs):
    command = [sys.executable, 'launch/tpu.py', action, *self.common, *extra]
    if workdir:
      command.append(f'--workdir={workdir}')
    log = self.root / 'logs' / f'{action}-{len(self.phases)}.log'
    log.parent.mkdir(exist_ok=True)
    with open(log, 'ab') as out:
      return subprocess.run([*command, '--', *self.flags], cwd=REPO, env=self.env,
                            stdout=out, stderr=subprocess.STDOUT, **kwargs)

  def phase(self, name: str, body) -> bool:
    return run_phase(self.phases, name, body)

  def setup(self):
    codes = [self.launch(action, *args).returncode for action, *args in
             (('create',), ('install', f'gs://{BUCKET}/faulted'),
              ('prepare', f'gs://{BUCKET}/faulted'),
              ('prepare', f'gs://{BUCKET}/reference'))]
    return not any(codes), {'exit_codes': codes}

  def supervised(self, workdir: str, inject: bool):
    supervise = ['--poll_s=1', '--grace_s=3', '--max_failures=50']
    process = threading.Thread(target=lambda: setattr(
        self, 'result', self.launch('supervise', workdir, *supervise, timeout=3000)))
    process.start()
    if inject:
      self.inject(workdir, process)
    process.join()
    return self.result.returncode

  def faulted(self):
    code = self.supervised(f'gs://{BUCKET}/faulted', inject=True)
    restarts = (self.root / 'logs').glob('supervise-*.log')
    restarts = sum(line.startswith('restart ') for f in restarts
                   for line in f.read_text().splitlines())
    delivered = len(self.faults['kills']) == self.a.kills and (
        len(self.faults['preemptions']) == self.a.preemptions)
    ok = code == 0 and delivered and restarts >= self.a.kills + self.a.preemptions
    return ok, {'supervise_exit': code, 'restarts': restarts,
                                      **self.faults}

  def inject(self, workdir: str, supervise: threading.Thread) -> None:
    """Deliver the faults in a seeded order at seeded steps, each once training runs on
    every worker past the step where the run last resumed."""
    rng = random.Random(self.a.seed)
    plan = ['kill'] * self.a.kills + ['preempt'] * self.a.preemptions
    rng.shuffle(plan)
    # Fault steps spread over the run, the last well before its end.
    steps = sorted(rng.sample(range(2, self.a.steps - self.a.every), len(plan)))
    for kind, target in zip(plan, steps):
      while supervise.is_alive():
        n = fleet.node(NAME)
        live = n and n['state'] == 'READY' and all(fleet.training(w['init'])
                                                     for w in n['workers'])
        step = self.last_step(workdir)
        if live and step >= target:
          break
        time.sleep(0.3)
      else:
        return
      if kind == 'kill':
        worker = rng.randrange(self.a.workers)
        if fleet.kill_training(NAME, worker):
          self.faults['kills'].append({'step': step, 'worker': worker})
        if not self.faults['api']:  # one describe fails, past gcloud's 5 tries
          fleet.set_faults(describe_failures=API_FAILURES)
          self.faults['api'].append({'step': step, 'describe_http_503': API_FAILURES})
      else:
        fleet.set_faults(ssh_key_delay_s=KEY_DELAY_S)  # the next slice's keys come late
        if fleet.preempt(NAME, grace_s=3):
          self.faults['preemptions'].append({'step': step, 'worker': 'all'})
      # Wait until the run has resumed and trained past this fault before the next.
      while supervise.is_alive() and self.last_step(workdir) <= step:
        time.sleep(0.3)

  def reference(self):
    code = self.supervised(f'gs://{BUCKET}/reference', inject=False)
    return code == 0, {'supervise_exit': code}

  def compare(self):
    losses = {run: [r['loss'] for r in self.records(f'gs://{BUCKET}/{run}')]
              for run in ('faulted', 'reference')}
    checksums = {run: self.checksums(f'gs://{BUCKET}/{run}') for run in losses}
    equal = (losses['faulted'] == losses['reference'] and len(losses['faulted']) ==
             self.a.steps and checksums['faulted'] == checksums['reference'])
    return equal, {'losses_faulted': losses['faulted'],
                   'losses_reference': losses['reference'],
                   'checksums_faulted': checksums['faulted'],
                   'checksums_reference': checksums['reference'], 'bitwise_equal': equal,
                   'goodput': {run: self.goodput(f'gs://{BUCKET}/{run}') for run in losses}}

  def goodput(self, workdir: str) -> dict:
    """What `python -m transformer_jax.goodput` prints: goodput, recomputed steps, badput
    by cause, and each launch of supervise phase by phase."""
    from transformer_jax import segments
    trained = segments.read(workdir)
    return {**segments.summarize(trained),
            'launches': segments.launches(segments.read(workdir, 'supervise'), trained)}

  def records(self, workdir: str) -> list[dict]:
    """One record per step: a resumed run logs again the steps after its checkpoint."""
    from transformer_jax import metrics
    return list({r['step']: r for r in metrics.read(workdir)}.values())

  def checksums(self, workdir: str) -> dict:
    """The final step's parameter checksums, as its checkpoint recorded them."""
    from transformer_jax import checkpoint, config as config_lib
    checkpoints = checkpoint.Checkpoints(workdir, config_lib.defaults())
    try:
      meta = checkpoints.meta(self.a.steps)
    finally:
      checkpoints.close()
    return {k: v for k, v in sorted(meta['checksums'].items()) if k.startswith('params')}

  def last_step(self, workdir: str) -> int:
    from transformer_jax import metrics
    try:
      return max((r['step'] for r in metrics.read(workdir)), default=0)
    except (FileNotFoundError, ValueError):
      return 0


def api_log(requests: list[dict]) -> dict:
  """The emulated API's request log, each request as [method, path, k]: k indexes the
  distinct User-Agent strings (each names the gcloud version and command; the
  invocation id, unique to each call, left out)."""
  agent = [re.sub(r' invocation-id/\S+', '', r['user_agent']) for r in requests]
  agents = sorted(set(agent))
  return {'api_requests': [[r['method'], r['path'], agents.index(a)]
                           for r, a in zip(requests, agent)], 'api_user_agents': agents}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workers', type=int, default=4)
  parser.add_argument('--devices', type=int, default=2, help='CPU devices per worker')
  parser.add_argument('--kills', type=int, default=5)
  parser.add_argument('--preemptions', type=int, default=1)
  parser.add_argument('--steps', type=int, default=0, help='default: 8 per fault + 8')
  parser.add_argument('--every', type=int, default=2, help='checkpoint every N steps')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--root', default='', help='scratch directory (default: temporary)')
  parser.add_argument('--record', default='', help='also write the JSON here')
  a = parser.parse_args()
  a.steps = a.steps or 8 * (a.kills + a.preemptions) + 8
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # this process only reads the results
  import gcs_emulator  # noqa: PLC0415 (the tests' emulator; needs the test extra)
  root = pathlib.Path(a.root or tempfile.mkdtemp(prefix='fleet-rehearsal-'))
  server, gcs = gcs_emulator.start(BUCKET)
  os.environ.update(gcs)  # this process reads the bucket too
  env = {**os.environ, **fleet.setup(root / 'fleet', gcs, a.devices, venv=sys.prefix)}
  os.environ.update(env)
  rehearsal = Rehearsal(a, root, env)
  started = time.perf_counter()
  try:
    for name in ('setup', 'faulted', 'reference', 'compare'):
      if not rehearsal.phase(name, getattr(rehearsal, name)):
        break
  finally:
    requests, sessions = fleet.api_requests(), fleet.ssh_sessions()
    fleet.teardown()
    server.terminate()
  gcloud_version = subprocess.run(['gcloud', '--version'], capture_output=True, text=True,
                                  env=env).stdout.splitlines()[0]
  phases = rehearsal.phases
  record = {
      'ok': all(p['ok'] for p in phases.values()) and len(phases) == 4,
      'kills': phases.get('faulted', {}).get('kills', []),
      'preemptions': phases.get('faulted', {}).get('preemptions', []),
      'restarts': phases.get('faulted', {}).get('restarts'),
      'supervise_exit': phases.get('faulted', {}).get('supervise_exit'),
      'bitwise_equal': phases.get('compare', {}).get('bitwise_equal', False),
      'goodput': phases.get('compare', {}).get('goodput'),
      **{k: phases.get('compare', {}).get(k) for k in
         ('losses_faulted', 'losses_reference', 'checksums_faulted', 'checksums_reference')},
      'seconds': {name: p['seconds'] for name, p in phases.items()},
      'total_seconds': round(time.perf_counter() - started, 1),
      'phases': {name: {k: v for k, v in p.items()
                        if not k.startswith(('losses', 'check', 'goodput'))}
                 for name, p in phases.items()},
      'api_faults': phases.get('faulted', {}).get('api', []),
      'ssh_key_delay_s_after_preemption': KEY_DELAY_S,
      'gcloud_version': gcloud_version, **api_log(requests), 'ssh_sessions': sessions,
      'workers': a.workers, 'devices_per_worker': a.devices, 'steps': a.steps,
      'cores': os.cpu_count(),
  }
  emit(record, a.record, sys.argv[1:])


if __name__ == '__main__':
  main()
