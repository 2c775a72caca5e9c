"""Where a run's time goes: one record per process start (a *segment*) under WORKDIR/goodput.

Each `train` invocation's process 0 writes WORKDIR/goodput/train-START_MS-PID.json, its
own object, replaced whole at each event (a bucket has no append, and no two writers ever
share an object): the process start, the phases until the first step (devices joined,
data ready, restore done with its step, the first step done, compile included), the
progress (the last step known, with the loop's time split into steps, input waits,
checkpoint saves that blocked it and evaluations) at every log line and checkpoint, and
the exit with its cause (done, preempted, error). A segment without an exit was killed.
Nothing is written before a run is past its refusals, so a refused run leaves no trace.

`summarize` turns the segments into goodput: the time of steps that were kept (not
computed again after a kill) over the wall time from the first start to the last record,
gaps between relaunches included; `python -m transformer_jax.goodput` prints it. We write
this rather than use `ml-goodput-measurement`, whose records go to Cloud Logging.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time

import jax

from transformer_jax import distributed, files

GOODPUT_DIR = 'goodput'
LAUNCH_TIMES = 'TRANSFORMER_JAX_LAUNCH_TIMES'
COUNTERS = ('step_s', 'input_wait_s', 'checkpoint_s', 'eval_s')


def _process_start() -> float:
  """When this process started (Linux: from /proc), else when this module was imported."""
  try:  # the kernel's start time, in ticks since boot: its age, taken from the clock now
    ticks = int(open('/proc/self/stat').read().rsplit(')', 1)[1].split()[19])
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf('SC_CLK_TCK')
    return time.time() - age
  except (OSError, ValueError, IndexError, AttributeError):
    return time.time()


_STARTED = _process_start()
_phases: dict[str, float] = {}  # marked before the segment has a workdir to go to
_opened: list = []  # this process's segments


def _launch_times() -> dict[str, float]:
  """What the worker did before this process ran, as `launch/tpu.py` noted it in
  TRANSFORMER_JAX_LAUNCH_TIMES (`installed=T data_copied=T`, seconds since the epoch;
  the data is copied after the process is forked, before Python starts)."""
  times = {}
  for word in os.environ.get(LAUNCH_TIMES, '').split():
    name, _, value = word.partition('=')
    try:
      times[name] = float(value)
    except ValueError:
      continue
  return times


def mark(phase: str) -> None:
  """Note that `phase` ended now (kept until the run's segment is opened)."""
  _phases[phase] = time.time()


class Segment:
  """This process's record; written by process 0 only, from `open()` on."""

  def __init__(self, workdir: str):
    # A process's first run started with the process; a later one (in the same Python,
    # e.g. a notebook) when it was called.
    start = _STARTED if not _opened else time.time()
    _opened.append(self)
    for phase in [p for p, t in _phases.items() if t < start]:  # an earlier run's
      del _phases[phase]
    self.path = files.path(workdir) / GOODPUT_DIR / \
        f'train-{int(start * 1000)}-{os.getpid()}-{len(_opened)}.json'
    self.record = {'host': socket.gethostname(), 'pid': os.getpid(), 'start': start,
                   # (a later run in the same Python, e.g. a notebook's, has none)
                   'launch': _launch_times() if len(_opened) == 1 else {},
                   'phases': {}, 'restored_step': None,
                   'step': None, 'time': None,
                   **{k: 0.0 for k in COUNTERS}, 'exit': None}
    self._open = False
    self._loop_start: float | None = None

  def open(self, restored_step: int) -> None:
    """Past every refusal: write what was marked so far, and from now on each event."""
    self._open = distributed.is_writer()
    self.record.update(restored_step=restored_step, step=restored_step)
    self.phase('restored')

  def phase(self, name: str) -> None:
    mark(name)
    self.record['phases'] = dict(_phases)
    self._write()

  def stepped(self, step: int, metrics) -> None:
    """After each step's dispatch; the first of this process waits for its result (the
    compile is part of it) and starts the loop's clock."""
    if self._loop_start is None:
      jax.block_until_ready(metrics)
      self.record['step'] = step
      self.phase('first_step')
      self._loop_start = time.perf_counter()

  def waited(self, seconds: float) -> None:
    """Time the loop waited for its next batch."""
    if self._loop_start is not None:
      self.record['input_wait_s'] += seconds

  @contextlib.contextmanager
  def timing(self, counter: str):
    """Time the loop spent on `counter`'s work (checkpoint_s, eval_s)."""
    started = time.perf_counter()
    try:
      yield
    finally:
      if self._loop_start is not None:
        self.record[counter] += time.perf_counter() - started

  def progress(self, step: int) -> None:
    """The last step known; the loop's time since the first step, by kind."""
    if self._loop_start is None:
      return
    others = sum(self.record[k] for k in COUNTERS if k != 'step_s')
    self.record.update(step=step, step_s=time.perf_counter() - self._loop_start - others)
    self._write()

  def exit(self, cause: str) -> None:
    self.record['exit'] = cause
    self._write()

  def _write(self) -> None:
    """The record as it is now. Written in the loop's thread, so that a kill loses no
    step it reported (one small object per log line); a failed write is only reported:
    a bucket's hiccup never stops training."""
    if not self._open:
      return
    self.record['time'] = time.time()
    try:
      files.write_atomically(self.path, json.dumps(self.record, indent=1).encode())
    except Exception as e:  # noqa: BLE001 (accounting only: the run goes on)
      distributed.warn(f'could not write {self.path} ({str(e).splitlines()[0][:200]}).')


def read(workdir: str, kind: str = 'train') -> list[dict]:
  """The workdir's records of `kind` (train processes, or `supervise`), oldest first."""
  where = files.path(workdir) / GOODPUT_DIR
  if not where.is_dir():
    return []
  found = [json.loads(p.read_text()) for p in where.iterdir()
           if p.name.startswith(f'{kind}-') and p.name.endswith('.json')]
  return sorted(found, key=lambda s: s['start'])


def launches(supervised: list[dict], trained: list[dict]) -> list[dict]:
  """Each launch `supervise` made, timed phase by phase until its first step: waiting
  for a lost slice to be back (`capacity_s`), the install (with the end of what was left
  of the last run), the data copy and interpreter start on the workers (until the train
  process started), then that process's phases. The install's end is the one process 0's
  worker noted (`launch`), or, in records of 2026-12-07 and before, supervise's own."""
  rows = []
  for record in supervised:
    events = record['events']
    for i, event in enumerate(events):
      if event['event'] != 'launch':
        continue
      after = {e['event']: e['time'] for e in events[i + 1:i + 3]}
      lost = next((e for e in reversed(events[:i]) if e['event'] in ('lost', 'launch')), None)
      ready = next((e['time'] for e in reversed(events[:i]) if e['event'] == 'ready'), None)
      started = next((t for t in trained if t['start'] >= event['time']), None)
      if 'launched' not in after or started is None:
        continue
      installed = after.get('installed', started.get('launch', {}).get('installed'))
      row = {'capacity_s': ready - lost['time'] if lost and lost['event'] == 'lost' and ready
             else 0.0}
      if installed is not None:
        row['install_s'] = installed - event['time']
        if 'data_copied' not in started.get('launch', {}):  # (then it is a phase below)
          row['data_copy_and_start_s'] = started['start'] - installed
      row.update({f'{k}_s': v for k, v in _startup(started).items()})
      if 'first_step' in started['phases']:
        row['launch_to_first_step_s'] = started['phases']['first_step'] - event['time']
      rows.append({k: round(v, 3) for k, v in row.items()})
  return rows


def _startup(segment: dict) -> dict[str, float]:
  """The phases until the first step, in seconds each."""
  order = ('joined', 'data_ready', 'restored', 'first_step')
  names = {'joined': 'start_up', 'data_ready': 'data', 'restored': 'restore',
           'first_step': 'compile_and_first_step'}
  result, before = {}, segment['start']
  # The process is forked before its worker copies the data (the shell execs it after).
  copied = segment.get('launch', {}).get('data_copied')
  if copied is not None and copied >= before:
    result['data_copy'], before = copied - before, copied
  for phase in order:
    if phase in segment['phases']:
      result[names[phase]] = segment['phases'][phase] - before
      before = segment['phases'][phase]
  return result


def summarize(segments: list[dict]) -> dict:
  """goodput, recomputed steps and badput in seconds by cause, over every segment."""
  if not segments:
    return {}
  badput = dict.fromkeys(('data_copy', 'start_up', 'data', 'restore', 'compile_and_first_step',
                          'input_wait', 'checkpoint', 'evaluation', 'recomputed', 'gaps'), 0.0)
  productive, recomputed_steps = 0.0, 0
  for i, segment in enumerate(segments):
    following = segments[i + 1] if i + 1 < len(segments) else None
    for cause, seconds in _startup(segment).items():
      badput[cause] += seconds
    badput['input_wait'] += segment['input_wait_s']
    badput['checkpoint'] += segment['checkpoint_s']
    badput['evaluation'] += segment['eval_s']
    computed = (segment['step'] or 0) - (segment['restored_step'] or 0)
    lost = 0
    if following is not None and following['restored_step'] is not None and computed > 0:
      lost = max(0, segment['step'] - following['restored_step'])
    recomputed_steps += lost
    per_step = segment['step_s'] / computed if computed > 0 else 0.0
    productive += per_step * (computed - lost)
    badput['recomputed'] += per_step * lost
    if following is not None:  # a relaunch's wait, and steps after the last record
      badput['gaps'] += max(0.0, following['start'] - (segment['time'] or segment['start']))
  end = max(s['time'] or s['start'] for s in segments)
  wall = end - segments[0]['start']
  return {
      'goodput': round(productive / wall, 4) if wall > 0 else 0.0,
      'recomputed_steps': recomputed_steps,
      'productive_s': round(productive, 3), 'wall_s': round(wall, 3),
      'badput_s': {k: round(v, 3) for k, v in badput.items()},
      'segments': len(segments),
      'exits': [s['exit'] or 'killed' for s in segments],
      'last_step': segments[-1]['step'],
  }
