"""`python -m transformer_jax.translate --workdir=DIR`: translate stdin (or --input) to
stdout (or --output), one line per line, in input order.

Restores the newest verified (or `--step`, or `--averaged`) checkpoint's parameters, or
an `--ensemble` of models, on whatever devices this machine has, and decodes with beam
search (or `--decode=greedy|sample`); see `inference.translate_ids` for the batching. On
several processes (a pod slice, the same command on every worker, each reading the same
input) process 0 writes the output.
"""
from __future__ import annotations

import sys

from absl import flags

from transformer_jax import cli, distributed, inference, inference_flags
from transformer_jax.data import datasets


def main(argv):
  del argv
  settings = inference_flags.settings()
  lines = datasets.read_lines(_INPUT.value)
  restored = inference_flags.restore()
  translations = inference.translate_texts(restored, lines, settings, cli.stderr_progress())
  if not distributed.is_writer():  # on several processes, every one has every line
    return
  text = ''.join(t + '\n' for t in translations)
  if _OUTPUT.value in (None, '-'):
    sys.stdout.write(text)
  else:
    with open(_OUTPUT.value, 'w', encoding='utf-8') as f:
      f.write(text)


_INPUT = flags.DEFINE_string('input', None, 'Text file to translate (default: stdin).')
_OUTPUT = flags.DEFINE_string('output', None, 'Where to write translations (default: stdout).')

if __name__ == '__main__':
  cli.run(main)
