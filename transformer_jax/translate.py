"""`python -m transformer_jax.translate --workdir=DIR`: translate stdin (or --input) to
stdout (or --output), one line per line, in input order.

Restores the newest verified (or `--step`, or `--averaged`) checkpoint's parameters, or
an `--ensemble` of models, on whatever devices this machine has, and decodes with beam
search (or `--decode=greedy|sample`).

- A file (or stdin redirected from one) is read whole and decoded in length-sorted
  batches (`inference.translate_hypotheses`).
- A pipe or terminal is served as it comes, as fairseq-interactive and Marian's server
  mode do: a batch closes when `--batch_size` lines have arrived or `--max_wait_ms` after
  its first line, and its translations are written and flushed at once, in input order.
  Batch shapes come from a fixed set (power-of-two rows and lengths), so nothing
  recompiles once each has been seen.
- `--nbest=K` writes K lines per input line: `LINE<TAB>SCORE<TAB>TRANSLATION`, LINE
  counting from 1, best first, SCORE the beam score (log p / length penalty); an empty
  input line gives one line with score 0 and an empty translation.

On several processes (a pod slice, the same command on every worker, each reading the
same input) the input is read whole and process 0 writes the output.
"""
from __future__ import annotations

import dataclasses
import os
import queue
import stat
import sys
import threading
import time

import jax
from absl import flags

from transformer_jax import cli, distributed, inference, inference_flags
from transformer_jax.data import datasets
from transformer_jax.errors import UserError

_EOF = object()


def main(argv):
  del argv
  settings = dataclasses.replace(inference_flags.settings(), nbest=_NBEST.value)
  if _MAX_WAIT_MS.value < 0:
    raise UserError(f'--max_wait_ms must be at least 0, got {_MAX_WAIT_MS.value}.')
  streaming = (_INPUT.value in (None, '-') and jax.process_count() == 1
               and _stdin_is_a_stream())
  lines = None if streaming else datasets.read_lines(_INPUT.value)
  restored = inference_flags.restore()
  output = inference_flags.OUTPUT.value
  out = sys.stdout if output in (None, '-') else open(output, 'w', encoding='utf-8')
  try:
    if streaming:
      number = 0
      for batch in _arriving_batches(settings.batch_size, _MAX_WAIT_MS.value / 1000):
        hypotheses = inference.translate_nbest(restored, batch, settings, sort=False)
        out.write(_format(hypotheses, number, settings.nbest))
        out.flush()
        number += len(batch)
      return
    hypotheses = inference.translate_nbest(restored, lines, settings, cli.stderr_progress())
    if distributed.is_writer():  # on several processes, every one has every line
      out.write(_format(hypotheses, 0, settings.nbest))
  finally:
    if out is not sys.stdout:
      out.close()


def _stdin_is_a_stream() -> bool:
  """A pipe, terminal or socket (not a regular file, which is read whole)."""
  try:
    return not stat.S_ISREG(os.fstat(sys.stdin.fileno()).st_mode)
  except (AttributeError, OSError, ValueError):  # replaced by an in-memory stream
    return False


def _format(hypotheses: list[list[tuple[str, float]]], first: int, nbest: int) -> str:
  if nbest == 1:
    return ''.join((hyps[0][0] if hyps else '') + '\n' for hyps in hypotheses)
  return ''.join(f'{first + i}\t{score:.4f}\t{text}\n'
                 for i, hyps in enumerate(hypotheses, 1) for text, score in hyps or [('', 0.0)])


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


_INPUT = flags.DEFINE_string('input', None, 'Text file to translate (default: stdin).')
_NBEST = flags.DEFINE_integer('nbest', 1, 'Hypotheses per input line (beam search), written '
                              'as LINE<TAB>SCORE<TAB>TRANSLATION.')
_MAX_WAIT_MS = flags.DEFINE_integer(
    'max_wait_ms', 100, 'Reading a pipe: the longest a line waits for its batch to fill.')

if __name__ == '__main__':
  cli.run(main)
