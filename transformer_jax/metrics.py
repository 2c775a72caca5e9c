"""What the user sees of training: one console line per interval, a progress bar on a
terminal, TensorBoard event files and a metrics.jsonl record in the workdir.

Only process 0 writes. On resume, records past the restored step are dropped from
metrics.jsonl, so the file reads as if the run had never been interrupted. The workdir
may be a bucket, where files cannot be appended to, so the (small) file is rewritten
whole at each record.
"""
from __future__ import annotations

import json
import math
import sys
import time

import jax
import numpy as np

from transformer_jax import costs, files

METRICS_FILE = 'metrics.jsonl'


def summarize(sums: dict) -> dict:
  """Token sums -> per-token loss, accuracy and perplexity."""
  tokens = max(float(sums['tokens']), 1.0)
  nll = float(sums['nll']) / tokens
  return {'loss': float(sums['loss']) / tokens, 'nll': nll,
          'perplexity': math.exp(min(nll, 50.0)), 'accuracy': float(sums['correct']) / tokens,
          'tokens': float(sums['tokens'])}


def summary_writer():
  """tensorboardX's SummaryWriter (only process 0 imports it), imported without torch:
  where torch is installed (the export extra) tensorboardX imports it only to accept torch
  tensors, which we never pass, and that import adds about 2 s to every start."""
  if 'torch' in sys.modules:
    from tensorboardX import SummaryWriter  # noqa: PLC0415
    return SummaryWriter
  sys.modules['torch'] = None  # `import torch` raises ImportError, which it expects
  try:
    from tensorboardX import SummaryWriter  # noqa: PLC0415
  finally:
    del sys.modules['torch']  # a later `import torch` (export) finds the real one
  return SummaryWriter


class Reporter:
  def __init__(self, workdir: str, config, start_step: int, num_steps: int,
               deadline: float = float('inf')):
    """`deadline`: the `time.monotonic()` at which the run stops on time, if it does."""
    self.enabled = jax.process_index() == 0
    self.path = files.path(workdir) / METRICS_FILE
    self._lines: list[str] = []
    self.num_steps, self.start_step, self.deadline = num_steps, start_step, deadline
    self.config = config
    self._interval_start = (time.perf_counter(), start_step)
    self._run_start = time.perf_counter()
    self._tty = sys.stderr.isatty()
    self._writers = {}
    if self.enabled:
      self._truncate_after(start_step)
      self._writers = {name: summary_writer()(str(files.path(workdir) / 'tensorboard' / name))
                       for name in ('train', 'eval')}
      if start_step == 0:
        self._writers['train'].add_text('config', '```\n' + str(config) + '\n```', 0)

  def _truncate_after(self, step: int) -> None:
    if self.path.exists():
      self._lines = [line + '\n' for line in self.path.read_text().splitlines()
                     if line.strip() and json.loads(line)['step'] <= step]
      files.write_atomically(self.path, ''.join(self._lines).encode())

  def _record(self, kind: str, step: int, values: dict) -> None:
    if not self.enabled:
      return
    # `time` (seconds since the epoch) lets a run be plotted against wall-clock time.
    record = {'kind': kind, 'step': step, **values, 'time': time.time()}
    self._lines.append(json.dumps(record) + '\n')
    files.write_atomically(self.path, ''.join(self._lines).encode())
    for name, value in values.items():
      self._writers[kind].add_scalar(name, value, step)
    self._writers[kind].flush()

  def train(self, step: int, sums: dict, extra: dict) -> dict:
    """Log the interval that ends at `step`; returns what was logged."""
    now = time.perf_counter()
    start_time, start_step = self._interval_start
    self._interval_start = (now, step)
    step_time = (now - start_time) / max(step - start_step, 1)
    values = {**summarize(sums), **extra, 'step_time': step_time,
              'target_tokens_per_s': float(sums['tokens']) / max(now - start_time, 1e-9),
              'train_flops': step * costs.step_flops(self.config)}  # from step 0
    mfu = costs.mfu(self.config, step_time, jax.devices())
    if mfu is not None:  # none on a CPU: its peak is not published, and not guessed
      values['mfu'] = mfu
    self._record('train', step, values)
    if self.enabled:
      eta = min(step_time * (self.num_steps - step), self.deadline - time.monotonic())
      line = (f'step {step}/{self.num_steps}  loss {values["loss"]:.4f}  '
              f'acc {values["accuracy"]:.3f}  lr {values["learning_rate"]:.2e}  '
              f'{values["target_tokens_per_s"]:,.0f} tgt tok/s  {step_time:.3f} s/step  '
              f'MFU {f"{mfu:.1%}" if mfu is not None else "n/a"}  '
              f'input wait {values.get("input_wait", 0):.0%}  '
              f'{values["train_flops"]:.3g} FLOPs  ETA {_duration(eta)}')
      print(('\r' + ' ' * 100 + '\r' if self._tty else '') + line, flush=True)
    return values

  def progress(self, step: int) -> None:
    if self.enabled and self._tty:
      done = (step - self.start_step) / max(self.num_steps - self.start_step, 1)
      bar = '#' * int(30 * done)
      print(f'\r[{bar:<30}] {step}/{self.num_steps}', end='', file=sys.stderr, flush=True)

  def eval(self, step: int, sums: dict, extra: dict | None = None) -> dict:
    """Validation token sums (loss, accuracy) and/or `extra` scores such as BLEU."""
    values = {**(summarize(sums) if sums else {}), **(extra or {})}
    self._record('eval', step, values)
    if self.enabled:
      print(f'eval step {step}  ' + '  '.join(f'{k} {v:.4f}' for k, v in values.items()
                                              if k != 'tokens'), flush=True)
    return values

  def close(self) -> None:
    for writer in self._writers.values():
      writer.close()


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def read(workdir: str, kind: str = 'train') -> list[dict]:
  """The records of metrics.jsonl of one kind, in step order."""
  text = (files.path(workdir) / METRICS_FILE).read_text()
  return [r for r in map(json.loads, filter(str.strip, text.splitlines())) if r['kind'] == kind]


def device_sums(history: list[dict]) -> dict:
  """Add up a list of per-step metric dicts (device arrays) in one transfer."""
  fetched = jax.device_get(history)
  return {k: float(np.sum([h[k] for h in fetched])) for k in fetched[0]}
