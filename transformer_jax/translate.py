"""`python -m transformer_jax.translate --workdir=DIR`: translate stdin (or --input) to
stdout (or --output), one line per line, in input order.

Restores the newest verified (or `--step`, or `--averaged`) checkpoint's parameters, or
an `--ensemble` of models, on whatever devices this machine has, and decodes with beam
search (or `--decode=greedy|sample`).

- `--input=F --output=O`: bulk translation (`bulk.translate_file`): `--window` lines at a
  time, each window's translations written to O.parts/ as it completes, O joined from
  them at the end; rerunning the same command after a kill resumes; on several processes
  each translates its own windows.
- A file to stdout, or stdin redirected from a file: `--window` lines at a time, each
  window written and flushed when done (`bulk.translate_stream`).
- A pipe or terminal is served as it comes, as fairseq-interactive and Marian's server
  mode do: a batch closes when `--batch_size` lines have arrived or `--max_wait_ms` after
  its first line, and its translations are written and flushed at once, in input order.
- `--nbest=K` writes K lines per input line: `LINE<TAB>SCORE<TAB>TRANSLATION`, LINE
  counting from 1, best first, SCORE the beam score (log p / length penalty); an empty
  input line gives one line with score 0 and an empty translation.

Batches are sized by `--batch_tokens` (at most `--batch_size` sentences) and their shapes
come from a fixed set, so nothing recompiles once each has been seen.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import stat
import sys
import threading
import time

import jax
from absl import flags

from transformer_jax import bulk, cli, files, inference, inference_flags
from transformer_jax.data import datasets
from transformer_jax.errors import UserError

_EOF = object()


def main(argv):
  del argv
  settings = dataclasses.replace(inference_flags.settings(), nbest=_NBEST.value)
  if _MAX_WAIT_MS.value < 0:
    raise UserError(f'--max_wait_ms must be at least 0, got {_MAX_WAIT_MS.value}.')
  if _WINDOW.value < 1:
    raise UserError(f'--window must be at least 1, got {_WINDOW.value}.')
  source, output = _named(inference_flags.INPUT.value), _named(inference_flags.OUTPUT.value)
  if jax.process_count() > 1 and not (source and output):
    raise UserError('On several processes, give --input and --output, on storage every '
                    'process reaches (a gs:// bucket or a shared disk): each process '
                    'translates its own windows of the file.')
  if source is None and _stdin_is_a_stream():
    return _serve_stdin(inference_flags.restore(), settings)
  if source is not None:
    bulk.check_readable(source)  # before the model loads
  restored = inference_flags.restore()
  if source and output:
    return bulk.translate_file(restored, settings, source, output, _WINDOW.value,
                               _model_identity(restored), _RESTART.value)
  with contextlib.ExitStack() as stack:
    stream = stack.enter_context(files.path(source).open('rb')) if source else sys.stdin.buffer
    if output is None:
      return bulk.translate_stream(restored, settings, stream, sys.stdout, _WINDOW.value)
    target = files.path(output)
    if target.exists() and not _RESTART.value:
      raise UserError(f'{output} exists. Remove it, or add --restart to replace it.')
    partial = target.parent / f'.{target.name}.partial'
    with partial.open('w', encoding='utf-8') as out:
      bulk.translate_stream(restored, settings, stream, out, _WINDOW.value)
    partial.replace(target)


def _named(path: str | None) -> str | None:
  return None if path in (None, '-') else path


def _model_identity(restored) -> dict:
  """What a resumed job must decode with: the same checkpoints."""
  return {'workdir': cli.WORKDIR.value, 'ensemble': inference_flags.ENSEMBLE.value,
          'averaged': inference_flags.AVERAGED.value, 'step': restored.step,
          'steps': list(restored.steps)}


def _serve_stdin(restored, settings) -> None:
  """A pipe or terminal: each batch's translations written and flushed as it closes."""
  number = 1
  for batch in _arriving_batches(settings.batch_size, _MAX_WAIT_MS.value / 1000):
    hypotheses = inference.translate_nbest(restored, batch, settings, sort=False, first=number)
    sys.stdout.write(bulk.format_hypotheses(hypotheses, number, settings.nbest))
    sys.stdout.flush()
    number += len(batch)


def _stdin_is_a_stream() -> bool:
  """A pipe, terminal or socket (not a regular file, which is read whole)."""
  try:
    return not stat.S_ISREG(os.fstat(sys.stdin.fileno()).st_mode)
  except (AttributeError, OSError, ValueError):  # replaced by an in-memory stream
    return False


def _arriving_batches(rows: int, max_wait_s: float):
  """Lists of stdin's lines as they arrive: each ends when `rows` lines are in, or
  `max_wait_s` after its first line arrived, or at the end of the input."""
  lines: queue.Queue = queue.Queue()
  threading.Thread(target=_read_stdin, args=(lines,), daemon=True).start()
  while True:
    item = lines.get()
    if item is _EOF:
      return
    batch, deadline = [_checked(item)], time.monotonic() + max_wait_s
    while len(batch) < rows:
      try:
        item = lines.get(timeout=max(deadline - time.monotonic(), 0.0))
      except queue.Empty:
        break
      if item is _EOF:
        yield batch
        return
      batch.append(_checked(item))
    yield batch


def _read_stdin(lines: queue.Queue) -> None:
  number = 0
  try:
    for raw in iter(sys.stdin.buffer.readline, b''):
      number += 1
      lines.put(datasets.decode_line(raw.rstrip(b'\n'), 'stdin', number))
  except UserError as e:
    lines.put(e)
  lines.put(_EOF)


def _checked(item):
  if isinstance(item, UserError):
    raise item
  return item


_NBEST = flags.DEFINE_integer('nbest', 1, 'Hypotheses per input line (beam search), written '
                              'as LINE<TAB>SCORE<TAB>TRANSLATION.')
_WINDOW = flags.DEFINE_integer(
    'window', 10_000, 'A file is translated this many lines at a time: memory is bounded '
    'by a window, and each window\'s translations are written when it is done.')
_RESTART = flags.DEFINE_bool(
    'restart', False, 'Start over: discard an unfinished translation into --output (its '
    'OUTPUT.parts) and replace an existing --output.')
_MAX_WAIT_MS = flags.DEFINE_integer(
    'max_wait_ms', 100, 'Reading a pipe: the longest a line waits for its batch to fill.')

if __name__ == '__main__':
  cli.run(main)
