"""Bulk translation of a file, as back-translation and distillation need it: memory
bounded by a window, output written as it goes, a resume after a kill, and a pod's
processes each decoding their own share.

The input is cut into windows of `window` lines (`scan`: one pass that finds where each
starts, so any process can seek to any window). Each window is decoded (length-sorted,
token-budget batches: `inference.translate_hypotheses`) and its translations are written
as one part, `OUTPUT.parts/window-NNNNNNNN.txt`, atomically. `OUTPUT.parts/job.json`
records what is being translated and how; a rerun with the same settings skips the
windows already written, a rerun with others is refused. When every window is written,
process 0 joins the parts into OUTPUT (atomically: it appears whole or not at all) and
removes the parts. A kill therefore costs at most the windows in progress.

On N processes the windows left to do are dealt out in turn: process p decodes the
p-th, (p+N)-th, ... on its own devices (no collective per batch), so a window's
translation is the same whatever the process count. Output and parts must be on storage
every process reaches (a gs:// bucket, or a shared disk).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time

import jax

from transformer_jax import distributed, files, inference
from transformer_jax.data import datasets
from transformer_jax.errors import UserError

_CHUNK = 16 << 20
_FINISH_TIMEOUT_S = 24 * 3600  # waiting for the others' last windows; a dead one is
# caught sooner by the distributed heartbeat


@dataclasses.dataclass(frozen=True)
class Plan:
  """Where each window of a file starts: `offsets[k]` is window k's first byte and
  `starts[k]` its first line (0-based), the last entries the file's size and line
  count; the file's SHA-256 (a changed input)."""
  offsets: tuple[int, ...]
  starts: tuple[int, ...]
  sha256: str

  @property
  def lines(self) -> int:
    return self.starts[-1]

  @property
  def windows(self) -> int:
    return len(self.offsets) - 1


def check_readable(path: str) -> None:
  """A one-line error now for an input that cannot be read."""
  try:
    files.path(path).open('rb').close()
  except OSError as e:
    raise UserError(f'Cannot read {path}: {e.strerror or e}.') from None


# The first window is this short (lines), so that the first translations reach disk
# within the first minute: compiling the decoder's shapes takes most of it.
FIRST_WINDOW = 1000


def scan(path: str, window: int) -> Plan:
  """One pass over `path`, in large reads: window starts, line count and checksum.
  Windows hold `window` lines, the first at most `FIRST_WINDOW`."""
  offsets, starts, lines, size, digest = [0], [0], 0, 0, hashlib.sha256()
  end = min(window, FIRST_WINDOW)  # the current window's end (a line count)
  ends_line = True
  try:
    with files.path(path).open('rb') as f:
      while chunk := f.read(_CHUNK):
        digest.update(chunk)
        start = 0
        while True:  # the newlines that end a window's last line
          need = end - lines
          count = chunk.count(b'\n', start)
          if count < need:
            lines += count
            break
          for _ in range(need):
            start = chunk.index(b'\n', start) + 1
          lines += need
          offsets.append(size + start)
          starts.append(lines)
          end += window
        size += len(chunk)
        ends_line = chunk.endswith(b'\n')
  except (FileNotFoundError, OSError) as e:
    raise UserError(f'Cannot read {path}: {getattr(e, "strerror", None) or e}.') from None
  if not ends_line:  # a last line without its newline
    lines += 1
  if offsets[-1] != size:
    offsets.append(size)
    starts.append(lines)
  return Plan(tuple(offsets), tuple(starts), digest.hexdigest())


def read_window(path: str, plan: Plan, k: int) -> list[str]:
  """The lines of window k, decoded strictly (a bad byte names its line)."""
  with files.path(path).open('rb') as f:
    f.seek(plan.offsets[k])
    raw = f.read(plan.offsets[k + 1] - plan.offsets[k])
  return datasets.decode_lines(raw, path, first=plan.starts[k] + 1)


def format_hypotheses(hypotheses: list[list[tuple[str, float]]], first: int,
                      nbest: int) -> str:
  """One line per input line; with nbest > 1, LINE<TAB>SCORE<TAB>TRANSLATION lines,
  LINE counting from `first`."""
  if nbest == 1:
    return ''.join((hyps[0][0] if hyps else '') + '\n' for hyps in hypotheses)
  return ''.join(f'{first + i}\t{score:.4f}\t{text}\n'
                 for i, hyps in enumerate(hypotheses) for text, score in hyps or [('', 0.0)])


def translate_stream(restored, settings, stream, out, window: int) -> None:
  """Lines of a binary `stream`, `window` at a time, to the text stream `out`: each
  window's translations are written (and flushed) as soon as it is decoded; the first
  window holds at most `FIRST_WINDOW` lines."""
  first = 1
  while True:
    size = window if first > 1 else min(window, FIRST_WINDOW)
    raw = [line for _, line in zip(range(size), stream)]
    if not raw:
      return
    lines = datasets.decode_lines(b''.join(raw), getattr(stream, 'name', 'stdin'), first)
    out.write(format_hypotheses(inference.translate_nbest(restored, lines, settings,
                                                         first=first), first, settings.nbest))
    out.flush()
    first += len(lines)


def translate_file(restored, settings, source: str, output: str, window: int,
                   model: dict, restart: bool = False) -> None:
  """Translate the file `source` into `output`, resuming a job left unfinished there."""
  plan = scan(source, window)
  parts = files.path(output + '.parts')
  job = {'input': str(files.path(source)), 'input_sha256': plan.sha256, 'lines': plan.lines,
         'window': window, 'model': model, 'settings': dataclasses.asdict(settings)}
  if distributed.is_writer():
    _begin(parts, job, files.path(output), restart)
  distributed.barrier('read the translation job', 600)
  if not distributed.is_writer():
    _check_same_job(parts, job)
  written = {int(p.name[7:15]) for p in parts.glob('window-*.txt')}
  distributed.barrier('list the windows already translated', 600)
  todo = [k for k in range(plan.windows) if k not in written]
  if written and todo:
    distributed.say(f'resuming at line {plan.starts[todo[0]] + 1} ({len(written)} of '
                    f'{plan.windows} windows already translated)')
  mine = todo[jax.process_index()::jax.process_count()]
  local = inference.on_local_devices(restored)
  progress = _Progress(plan, mine)
  for k in mine:
    lines = read_window(source, plan, k)
    first = plan.starts[k] + 1
    hypotheses = inference.translate_nbest(local, lines, settings, first=first)
    files.write_atomically(parts / f'window-{k:08d}.txt', format_hypotheses(
        hypotheses, first, settings.nbest).encode('utf-8'))
    progress.window_done(k, len(lines))
  progress.finish()
  distributed.barrier('finish their windows', _FINISH_TIMEOUT_S)
  if distributed.is_writer():
    _join(parts, plan.windows, files.path(output))


def _begin(parts, job: dict, output, restart: bool) -> None:
  """Record the job in `parts`, or check that the one recorded there is this one."""
  if restart and parts.exists():
    parts.rmtree()
  record = parts / 'job.json'
  if record.exists():
    _check_same_job(parts, job)
    return
  if output.exists() and not restart:
    raise UserError(f'{output} exists. Remove it, or add --restart to replace it.')
  files.write_atomically(record, json.dumps(job, indent=1).encode())


def _check_same_job(parts, job: dict) -> None:
  try:
    recorded = json.loads((parts / 'job.json').read_text())
  except (FileNotFoundError, json.JSONDecodeError):
    raise UserError(f'{parts}/job.json is missing or unreadable: the directory is not a '
                    'translation in progress. Remove it, or add --restart.') from None
  differ = [f'{key}: {recorded.get(key)!r} then, {job[key]!r} now' for key in job
            if recorded.get(key) != job[key]]
  if differ:
    raise UserError(f'{parts} holds a translation begun with other settings '
                    f'({"; ".join(differ)[:600]}). Rerun with the same ones to resume it, '
                    'or add --restart to start over.')


def _join(parts, windows: int, output) -> None:
  """The parts, in order, as `output`: it appears complete (a local file is renamed into
  place; a bucket object exists once its upload completes), then the parts go."""
  target = parts / 'joined' if not files.is_bucket(output) else output
  with target.open('wb') as out:
    for k in range(windows):
      out.write((parts / f'window-{k:08d}.txt').read_bytes())
  if target != output:
    target.replace(output)
  parts.rmtree()


class _Progress:
  """stderr lines on process 0: lines done of its share, lines/s and the time left."""

  def __init__(self, plan: Plan, mine: list[int]):
    self.total = sum(plan.starts[k + 1] - plan.starts[k] for k in mine)
    self.done, self.start, self.last = 0, time.perf_counter(), 0.0
    self.share = '' if jax.process_count() == 1 else ' (process 0\'s share)'

  def window_done(self, k: int, lines: int) -> None:
    self.done += lines
    now = time.perf_counter()
    if distributed.is_writer() and (now - self.last >= 10 or self.done == self.total):
      self.last = now
      rate = self.done / max(now - self.start, 1e-9)
      left = (self.total - self.done) / max(rate, 1e-9)
      print(f'translated {self.done:,}/{self.total:,} lines{self.share}  {rate:,.0f} lines/s  '
            f'ETA {time.strftime("%H:%M:%S", time.gmtime(left))}', file=sys.stderr, flush=True)

  def finish(self) -> None:
    print(f'process {jax.process_index()} translated {self.done} lines', file=sys.stderr,
          flush=True)
