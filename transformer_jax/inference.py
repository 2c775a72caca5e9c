"""A trained model, anywhere: a checkpoint's config, vocabulary and parameters on the
devices of this machine (whatever mesh it was trained on), and the translation of a
list of sentences with it. `translate`, `evaluate` and training's validation BLEU all
decode through `translate_ids`.
"""
from __future__ import annotations

import base64
import dataclasses
import math
import os

import jax
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import config as config_lib
from transformer_jax import decode, distributed, files, sharding
from transformer_jax.data import tokenizer as tokenizer_lib
from transformer_jax.data.tokenizer import EOS_ID, PAD_ID, Tokenizer
from transformer_jax.errors import UserError
from transformer_jax.model import Transformer
from transformer_jax.steps import build


# ----------------------------------------------------------------------------- restore


@dataclasses.dataclass
class Restored:
  config: ConfigDict
  tokenizer: Tokenizer
  model: Transformer
  mesh: jax.sharding.Mesh
  step: int
  steps: tuple[int, ...] = ()  # of each member of an ensemble


def restore(workdir: str, step: int | None = None, averaged: bool = False) -> Restored:
  """The newest verified (or `step`'s, or the averaged) checkpoint's model on this machine.

  Only the parameters are read: the optimizer state (twice their size) is neither
  loaded nor needed, so a damaged optimizer state does not stop translation. A step that
  fails verification is moved aside: without `step`, the one before is tried."""
  root = checkpoint_lib.checkpoint_root(workdir, averaged)
  probe = checkpoint_lib.Checkpoints(root, config_lib.defaults(), async_save=False)
  steps = probe.steps()
  if not steps:
    raise UserError(f'{probe.directory} holds no complete checkpoint.')
  if step is not None and step not in steps:
    raise UserError(f'No checkpoint at step {step} in {probe.directory}; there are: '
                    f'{", ".join(map(str, steps))}.')
  try:
    if step is not None:
      return _restore_step(workdir, probe, step)
    found, restored = probe.restore_newest(lambda s: _restore_step(workdir, probe, s), steps)
  except checkpoint_lib.CorruptCheckpoint as e:  # the --step the user named
    where = probe.quarantine(step)
    raise UserError(f'{e}{f" Moved it to {where}." if where else ""} Choose another --step, '
                    'or omit it for the newest verified one.') from None
  finally:
    probe.close()
  if found is None:
    raise UserError(f'No checkpoint in {probe.directory} passed verification (each was '
                    f'moved to {checkpoint_lib.QUARANTINE_DIR}/ beside it); train again.')
  return restored


def restore_ensemble(specs: list[str]) -> Restored:
  """Models that decode as one (`decode.Ensemble`), each given as DIR, DIR@STEP,
  DIR@averaged or DIR@best (its best checkpoint by validation BLEU); parameters only.
  Their vocabularies must be the same; the first one's config and vocabulary serve."""
  members = [restore(*_member(spec)) for spec in specs]
  first = members[0].tokenizer.serialized()
  for spec, member in zip(specs, members):
    if member.tokenizer.serialized() != first:
      raise UserError(f'--ensemble: {spec} was trained with another vocabulary than '
                      f'{specs[0]}; an ensemble averages probabilities over one vocabulary.')
  return Restored(members[0].config, members[0].tokenizer,
                  decode.Ensemble([m.model for m in members]), members[0].mesh,
                  members[0].step, tuple(m.step for m in members))


def _member(spec: str) -> tuple[str, int | None, bool]:
  """'DIR@WHICH' -> restore()'s (workdir, step, averaged)."""
  workdir, _, which = spec.partition('@')
  if which in ('', 'averaged'):
    return workdir, None, which == 'averaged'
  if which == 'best':
    best = checkpoint_lib.checkpoint_root(os.path.join(workdir, 'best'))
    probe = checkpoint_lib.Checkpoints(best, config_lib.defaults(), async_save=False,
                                       best_metric='bleu')
    try:
      return best, probe.best_step(), False
    finally:
      probe.close()
  if not which.isdigit():
    raise UserError(f'--ensemble: {spec!r}: after @ comes a step, "averaged" or "best".')
  return workdir, int(which), False


def _restore_step(workdir: str, probe, step: int) -> Restored:
  meta = probe.meta(step)
  config = config_lib.from_checkpoint(meta['config'])
  config.mesh.update(dict(data=-1, fsdp=1, tensor=1))  # whatever devices this machine has
  tokenizer = _checkpoint_vocabulary(workdir, meta, config)
  mesh = sharding.make_mesh(config.mesh)
  setup = build(config, mesh)
  params = probe.restore_params(step, setup.abstract_state.params)
  return Restored(config, tokenizer, nnx.merge(setup.graphdef, params), mesh, step)


def _checkpoint_vocabulary(workdir, meta, config) -> Tokenizer:
  """The vocabulary stored in the checkpoint; a vocab.model beside it must be the same."""
  proto = base64.b64decode(meta['vocab_model'])
  local = os.path.join(workdir, tokenizer_lib.VOCAB_FILE)
  if files.path(local).exists():
    if checkpoint_lib.vocab_fingerprint(local)[0] != meta['vocab_sha256']:
      raise UserError(f'{local} does not match the vocabulary the checkpoint was trained '
                      'with. Restore the original file, or remove it to use the copy '
                      'stored in the checkpoint.')
  tokenizer = Tokenizer(proto, local, config.data.lowercase)
  if tokenizer.vocab_size != config.model.vocab_size:
    raise UserError('The checkpoint is inconsistent: its vocabulary has '
                    f'{tokenizer.vocab_size} pieces, its config {config.model.vocab_size}.')
  return tokenizer


# ----------------------------------------------------------------------------- decode


@dataclasses.dataclass(frozen=True)
class Settings:
  """How to decode: the paper's beam search (width 4, length penalty 0.6) by default."""
  beam_size: int = 4
  alpha: float = 0.6
  max_extra_len: int = 50     # output length limit = source length + max_extra_len
  batch_size: int = 32
  max_input_len: int = 256    # source tokens; longer lines are truncated with a warning
  method: str = 'beam'        # beam | greedy | sample
  temperature: float = 1.0
  top_k: int = 0
  seed: int = 0
  nbest: int = 1              # hypotheses per sentence (beam search's best n)

  def __post_init__(self):
    if self.method not in ('beam', 'greedy', 'sample'):
      raise UserError(f'--decode must be beam, greedy or sample, got {self.method!r}.')
    for name in ('beam_size', 'batch_size', 'max_input_len'):
      if getattr(self, name) < 1:
        raise UserError(f'--{name} must be at least 1, got {getattr(self, name)}.')
    if self.max_extra_len < 0:
      raise UserError(f'--max_extra_len must be at least 0, got {self.max_extra_len}.')
    if not 1 <= self.nbest <= (self.beam_size if self.method == 'beam' else 1):
      raise UserError(f'--nbest={self.nbest}: it takes beam search and at most --beam_size '
                      f'({self.beam_size}) hypotheses.')


def encode_sources(tokenizer: Tokenizer, lines: list[str], max_input_len: int) -> list[list[int]]:
  """Token ids of each line with EOS appended; an empty line stays empty (no input)."""
  sources = []
  for number, ids in enumerate(tokenizer.encode_batch(lines), 1):
    if len(ids) + 1 > max_input_len:
      distributed.warn(f'line {number} has {len(ids)} tokens; translating its first '
                       f'{max_input_len - 1} (raise --max_input_len to keep more)')
      ids = ids[:max_input_len - 1]
    sources.append(ids + [EOS_ID] if ids else [])
  return sources


def _bucket(length: int) -> int:
  """Source lengths are padded to powers of two (at least 8): one compile per bucket."""
  return max(8, 2 ** math.ceil(math.log2(max(length, 1))))


def translate_ids(model, mesh, sources: list[list[int]], s: Settings,
                  progress=None) -> list[list[int]]:
  """Token ids in, the best translation's ids out (EOS and padding removed), in order."""
  return [hyps[0][0] if hyps else [] for hyps in
          translate_hypotheses(model, mesh, sources, s, progress)]


def translate_hypotheses(model, mesh, sources: list[list[int]], s: Settings,
                         progress=None) -> list[list[tuple[list[int], float]]]:
  """Up to `s.nbest` (ids, score) per source, best first, in the input order; none for
  an empty source.

  Sentences are sorted by length into fixed-size batches of power-of-two lengths, so
  decoding compiles once per bucket; batches are sharded over the mesh's data axis. On
  several processes each passes the same sentences, decodes its devices' rows, and
  every process gets every translation."""
  rows = batch_rows(mesh, s.batch_size)
  order = sorted((i for i, src in enumerate(sources) if src), key=lambda i: len(sources[i]))
  outputs: list[list[tuple[list[int], float]]] = [[] for _ in sources]
  for start in range(0, len(order), rows):
    chunk = order[start:start + rows]
    for i, hyps in zip(chunk, decode_batch(model, mesh, [sources[i] for i in chunk], rows, s)):
      outputs[i] = hyps
    if progress:
      progress(start + len(chunk), len(order))
  return outputs


def batch_rows(mesh, batch_size: int) -> int:
  """`batch_size` rounded up to a multiple of the data-parallel size."""
  return batch_size + (-batch_size) % sharding.data_parallel_size(mesh)


def decode_batch(model, mesh, sources: list[list[int]], rows: int, s: Settings
                 ) -> list[list[tuple[list[int], float]]]:
  """Decode up to `rows` non-empty sources as one batch of `rows` rows, padded to a
  power-of-two length (so the shapes come from a fixed set): (ids, score) per source."""
  length = _bucket(max(len(src) for src in sources))
  batch = np.full((rows, length), PAD_ID, np.int32)
  for row, src in enumerate(sources):
    batch[row, :len(src)] = src
  tokens, scores = _decode(model, mesh, batch, length + s.max_extra_len, s)
  tokens, scores = distributed.gather(tokens), distributed.gather(scores)
  if tokens.ndim == 2:  # one hypothesis per row
    tokens, scores = tokens[:, None], scores[:, None]
  return [[(_strip(ids.tolist()), float(score)) for ids, score in zip(tokens[row], scores[row])
           if score > decode.NEG_INF / 2] for row in range(len(sources))]


def _strip(ids: list[int]) -> list[int]:
  """The ids before EOS (or all but the padding, for a hypothesis that never ended)."""
  return ids[:ids.index(EOS_ID)] if EOS_ID in ids else [t for t in ids if t != PAD_ID]


def _decode(model, mesh, batch, max_len, s: Settings):
  source = distributed.global_array(batch, sharding.batch_sharding(mesh))
  if s.method == 'beam':
    return decode.beam_search(model, source, beam_size=s.beam_size, alpha=s.alpha,
                              max_len=max_len, max_extra_len=s.max_extra_len,
                              n_best=s.nbest if s.nbest > 1 else 0)
  temperature = 0.0 if s.method == 'greedy' else s.temperature
  return decode.sample(model, source, jax.random.key(s.seed), max_len=max_len,
                       max_extra_len=s.max_extra_len, temperature=temperature,
                       top_k=s.top_k)


def translate_texts(restored: Restored, lines: list[str], s: Settings,
                    progress=None) -> list[str]:
  """Sentences in, translations out, one per line, in the input order."""
  return [hyps[0][0] if hyps else '' for hyps in
          translate_nbest(restored, lines, s, progress)]


def translate_nbest(restored: Restored, lines: list[str], s: Settings,
                    progress=None, sort: bool = True) -> list[list[tuple[str, float]]]:
  """Up to `s.nbest` (translation, score) per line, best first, in the input order.
  `sort=False`: the lines are one batch as given (the streaming path)."""
  sources = encode_sources(restored.tokenizer, lines, s.max_input_len)
  if sort:
    hypotheses = translate_hypotheses(restored.model, restored.mesh, sources, s, progress)
  else:
    hypotheses = [[] for _ in sources]
    given = [i for i, src in enumerate(sources) if src]
    if given:
      rows = min(batch_rows(restored.mesh, s.batch_size), batch_rows(
          restored.mesh, 2 ** math.ceil(math.log2(len(given)))))  # a power of two
      for i, hyps in zip(given, decode_batch(restored.model, restored.mesh,
                                             [sources[i] for i in given], rows, s)):
        hypotheses[i] = hyps
  return [[(restored.tokenizer.decode(ids), score) for ids, score in hyps]
          for hyps in hypotheses]
