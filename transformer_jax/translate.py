"""`python -m transformer_jax.translate --workdir=DIR`: translate stdin (or --input) to
stdout (or --output), one line per line, in input order.

Sentences are sorted by length into power-of-two buckets and fixed-size batches, so
decoding compiles once per bucket; batches are sharded over the mesh's data axis.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time

import jax
import numpy as np
from absl import flags, logging

from transformer_jax import cli, decode, inference, sharding
from transformer_jax.data import datasets
from transformer_jax.data.tokenizer import EOS_ID, PAD_ID, Tokenizer
from transformer_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Settings:
  beam_size: int = 4
  alpha: float = 0.6
  max_extra: int = 50         # output length limit = source length + max_extra
  batch_size: int = 32
  max_input_len: int = 256    # source tokens; longer lines are truncated with a warning
  method: str = 'beam'        # beam | greedy | sample
  temperature: float = 1.0
  top_k: int = 0
  seed: int = 0


def read_lines(path: str | None) -> list[str]:
  """Lines of a file (or stdin), decoded strictly: bad bytes name their line."""
  if path in (None, '-'):
    return datasets.decode_lines(sys.stdin.buffer.read(), 'stdin')
  with _open(path) as f:
    return datasets.decode_lines(f.read(), path)


def _open(path: str):
  try:
    return open(path, 'rb')
  except OSError as e:
    raise UserError(f'Cannot read {path}: {e.strerror}.') from None


def encode_sources(tokenizer: Tokenizer, lines: list[str], max_input_len: int) -> list[list[int]]:
  sources = []
  for number, ids in enumerate(tokenizer.encode_batch(lines), 1):
    if len(ids) + 1 > max_input_len:
      logging.warning('line %d has %d tokens; translating its first %d '
                      '(raise --max_input_len to keep more)', number, len(ids), max_input_len - 1)
      ids = ids[:max_input_len - 1]
    sources.append(ids + [EOS_ID] if ids else [])
  return sources


def _bucket(length: int) -> int:
  return max(8, 2 ** math.ceil(math.log2(max(length, 1))))


def translate_ids(model, mesh, sources: list[list[int]], s: Settings,
                  progress=None) -> list[list[int]]:
  """Token ids in, token ids out (EOS and padding removed), in the input order."""
  rows = s.batch_size + (-s.batch_size) % sharding.data_parallel_size(mesh)
  order = sorted((i for i, src in enumerate(sources) if src), key=lambda i: len(sources[i]))
  outputs: list[list[int]] = [[] for _ in sources]  # empty inputs translate to empty
  done = 0
  for start in range(0, len(order), rows):
    chunk = order[start:start + rows]
    length = _bucket(max(len(sources[i]) for i in chunk))
    batch = np.full((rows, length), PAD_ID, np.int32)
    for row, i in enumerate(chunk):
      batch[row, :len(sources[i])] = sources[i]
    tokens = np.asarray(jax.device_get(_decode(model, mesh, batch, length + s.max_extra, s)))
    for row, i in enumerate(chunk):
      ids = tokens[row].tolist()
      outputs[i] = ids[:ids.index(EOS_ID)] if EOS_ID in ids else [t for t in ids if t != PAD_ID]
    done += len(chunk)
    if progress:
      progress(done, len(order))
  return outputs


def _decode(model, mesh, batch, max_len, s: Settings):
  source = jax.device_put(batch, sharding.batch_sharding(mesh))
  if s.method == 'beam':
    return decode.beam_search(model, source, beam_size=s.beam_size, alpha=s.alpha,
                              max_len=max_len)[0]
  temperature = 0.0 if s.method == 'greedy' else s.temperature
  return decode.sample(model, source, jax.random.key(s.seed), max_len=max_len,
                       temperature=temperature, top_k=s.top_k)[0]


def translate_texts(restored, lines: list[str], s: Settings, progress=None) -> list[str]:
  sources = encode_sources(restored.tokenizer, lines, s.max_input_len)
  outputs = translate_ids(restored.model, restored.mesh, sources, s, progress)
  return [restored.tokenizer.decode(ids) for ids in outputs]


def stderr_progress(every_s: float = 2.0):
  """A progress callback printing to stderr at most every `every_s` seconds."""
  last = [0.0]
  def report(done, total):
    now = time.perf_counter()
    if now - last[0] >= every_s or done == total:
      last[0] = now
      print(f'translated {done}/{total} sentences', file=sys.stderr, flush=True)
  return report


def settings_from_flags() -> Settings:
  if _METHOD.value not in ('beam', 'greedy', 'sample'):
    raise UserError(f'--decode must be beam, greedy or sample, got {_METHOD.value!r}.')
  for name, value in (('beam_size', _BEAM.value), ('batch_size', _BATCH.value),
                      ('max_input_len', _MAX_INPUT.value)):
    if value < 1:
      raise UserError(f'--{name} must be at least 1, got {value}.')
  return Settings(beam_size=_BEAM.value, alpha=_ALPHA.value, max_extra=_MAX_EXTRA.value,
                  batch_size=_BATCH.value, max_input_len=_MAX_INPUT.value,
                  method=_METHOD.value, temperature=_TEMPERATURE.value, top_k=_TOP_K.value)


def main(argv):
  del argv
  settings = settings_from_flags()
  lines = read_lines(_INPUT.value)
  restored = inference.restore(cli.required_workdir(), _STEP.value, _AVERAGED.value)
  translations = translate_texts(restored, lines, settings, stderr_progress())
  text = ''.join(t + '\n' for t in translations)
  if _OUTPUT.value in (None, '-'):
    sys.stdout.write(text)
  else:
    with open(_OUTPUT.value, 'w', encoding='utf-8') as f:
      f.write(text)


_INPUT = flags.DEFINE_string('input', None, 'Text file to translate (default: stdin).')
_OUTPUT = flags.DEFINE_string('output', None, 'Where to write translations (default: stdout).')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
_AVERAGED = flags.DEFINE_bool('averaged', False, 'Use the checkpoint written by `average`.')
_BEAM = flags.DEFINE_integer('beam_size', 4, 'Beam width (the paper: 4).')
_ALPHA = flags.DEFINE_float('alpha', 0.6, 'Length penalty exponent (the paper: 0.6).')
_MAX_EXTRA = flags.DEFINE_integer('max_len', 50, 'Output limit: source length + this many tokens.')
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Sentences per batch.')
_MAX_INPUT = flags.DEFINE_integer('max_input_len', 256, 'Source tokens kept per line.')
_METHOD = flags.DEFINE_string('decode', 'beam', 'beam, greedy or sample.')
_TEMPERATURE = flags.DEFINE_float('temperature', 1.0, 'Sampling temperature (--decode=sample).')
_TOP_K = flags.DEFINE_integer('top_k', 0, 'Sample from the k most likely tokens (0 = all).')

if __name__ == '__main__':
  cli.run(main)
