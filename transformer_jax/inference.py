"""A trained model, anywhere: a checkpoint's config, vocabulary and parameters on the
devices of this machine (whatever mesh it was trained on), and the translation of a
list of sentences with it. `translate`, `evaluate` and training's validation BLEU all
decode through `translate_ids`.
"""
from __future__ import annotations

import base64
import collections
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
  try:
    steps = existing_steps(probe, step)
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


def existing_steps(probe, step: int | None) -> list[int]:
  """`probe`'s complete steps; refused in one line if there are none, or if `step` is
  given and not among them."""
  steps = probe.steps()
  if not steps:
    raise UserError(f'{probe.directory} holds no complete checkpoint.')
  if step is not None and step not in steps:
    raise UserError(f'No checkpoint at step {step} in {probe.directory}; there are: '
                    f'{", ".join(map(str, steps))}.')
  return steps


def restore_ensemble(specs: list[str]) -> Restored:
  """Models that decode as one (`decode.Ensemble`), each given as DIR, DIR@STEP,
  DIR@averaged or DIR@best (its best checkpoint by validation BLEU); parameters only.
  Their vocabularies must be the same; the first one's config and vocabulary serve."""
  members = [restore(*checkpoint_spec(spec)) for spec in specs]
  first = members[0].tokenizer.serialized()
  for spec, member in zip(specs, members):
    if member.tokenizer.serialized() != first:
      raise UserError(f'--ensemble: {spec} was trained with another vocabulary than '
                      f'{specs[0]}; an ensemble averages probabilities over one vocabulary.')
  return Restored(members[0].config, members[0].tokenizer,
                  decode.Ensemble([m.model for m in members]), members[0].mesh,
                  members[0].step, tuple(m.step for m in members))


def checkpoint_spec(spec: str, flag: str = '--ensemble') -> tuple[str, int | None, bool]:
  """'DIR', 'DIR@STEP', 'DIR@averaged' or 'DIR@best' -> restore()'s (workdir, step,
  averaged); `flag` names where it was given in an error."""
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
    raise UserError(f'{flag}: {spec!r}: after @ comes a step, "averaged" or "best".')
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
  tokenizer = tokenizer_lib.from_bytes(proto, local, config.data.lowercase)
  if tokenizer.vocab_size != config.model.vocab_size:
    raise UserError('The checkpoint is inconsistent: its vocabulary has '
                    f'{tokenizer.vocab_size} pieces, its config {config.model.vocab_size}.')
  return tokenizer


def on_local_devices(restored: Restored) -> Restored:
  """The model on this process's own devices, so that it decodes batches of its own
  without the other processes (bulk translation on a pod). The parameters are whole on
  every process (inference meshes shard only the batch)."""
  if jax.process_count() == 1:
    return restored
  mesh = sharding.make_mesh(restored.config.mesh, jax.local_devices())
  graphdef, params = nnx.split(restored.model)
  everywhere = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def local(x):
    if not x.is_fully_replicated:
      raise ValueError('on_local_devices needs replicated parameters')
    return jax.device_put(x.addressable_data(0), everywhere)

  return dataclasses.replace(restored, model=nnx.merge(graphdef, jax.tree.map(local, params)),
                             mesh=mesh)


# ----------------------------------------------------------------------------- decode


@dataclasses.dataclass(frozen=True)
class Settings:
  """How to decode: the paper's beam search (width 4, length penalty 0.6) by default."""
  beam_size: int = 4
  alpha: float = 0.6
  max_extra_len: int = 50     # output length limit = source length + max_extra_len
  batch_size: int = 256       # sentences per batch, at most
  batch_tokens: int | None = None  # per batch (`plan_batches`); None: default_batch_tokens
  max_input_len: int = 256    # source tokens; longer lines are truncated with a warning
  method: str = 'beam'        # beam | greedy | sample
  temperature: float = 1.0
  top_k: int = 0
  seed: int = 0
  nbest: int = 1              # hypotheses per sentence (beam search's best n)

  def __post_init__(self):
    if self.method not in ('beam', 'greedy', 'sample'):
      raise UserError(f'--decode must be beam, greedy or sample, got {self.method!r}.')
    for name in ('beam_size', 'batch_size', 'max_input_len', 'batch_tokens'):
      if getattr(self, name) is not None and getattr(self, name) < 1:
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


def source_bucket(length: int) -> int:
  """Sources are padded to 16, 24, 32, 48, 64, ... tokens (steps of 1.5x and 2x): few
  shapes to compile, at most a third of padding in batches of length-sorted sentences."""
  bucket = 16
  while bucket < length:
    bucket = bucket * 3 // 2 if bucket & (bucket - 1) == 0 else bucket * 4 // 3
  return bucket


def row_bucket(count: int, data_parallel: int) -> int:
  """Rows of a batch of `count` sentences: a power of two, and a multiple of the mesh's
  data-parallel size (every device gets whole rows)."""
  rows = max(data_parallel, 2 ** math.ceil(math.log2(max(count, 1))))
  return rows + (-rows) % data_parallel


def default_batch_tokens(mesh) -> int:
  """Tokens per batch (`Settings.batch_tokens`) for this machine's devices: measured
  best on a CPU (docs/performance.md), and a budget that fills an accelerator's matrix
  units, per device, elsewhere."""
  devices = mesh.devices.size
  return 8192 if mesh.devices.flat[0].platform == 'cpu' else 65536 * devices


def batch_rows(length: int, s: Settings, data_parallel: int, batch_tokens: int) -> int:
  """Rows of every batch whose sources are padded to `length` (a `source_bucket`): as many
  as `batch_tokens` holds at `length` source and as many expected target tokens each, at
  most `s.batch_size`; a power of two, at least a row per data-parallel device. One row
  count per length, however many sentences a batch has, so few shapes compile."""
  fit = max(1, batch_tokens // (2 * length))
  return row_bucket(min(s.batch_size, 2 ** int(math.log2(fit))), data_parallel)


def plan_batches(lengths: list[int], s: Settings, data_parallel: int,
                 batch_tokens: int) -> list[list[int]]:
  """The non-empty sources (by index) in batches, as Marian's --mini-batch-words: sorted
  by length, each batch as many as `batch_rows` gives its longest (and at most
  `s.batch_size`)."""
  order = sorted((i for i, n in enumerate(lengths) if n), key=lambda i: lengths[i])
  batches: list[list[int]] = []
  for i in order:  # the longest so far is the one being added
    room = min(s.batch_size, batch_rows(source_bucket(lengths[i]), s, data_parallel,
                                        batch_tokens))
    if batches and len(batches[-1]) < room:
      batches[-1].append(i)
    else:
      batches.append([i])
  return batches


def translate_ids(model, mesh, sources: list[list[int]], s: Settings,
                  progress=None) -> list[list[int]]:
  """Token ids in, the best translation's ids out (EOS and padding removed), in order."""
  return [hyps[0][0] if hyps else [] for hyps in
          translate_hypotheses(model, mesh, sources, s, progress)]


def translate_hypotheses(model, mesh, sources: list[list[int]], s: Settings,
                         progress=None, numbers=None) -> list[list[tuple[list[int], float]]]:
  """Up to `s.nbest` (ids, score) per source, best first, in the input order; none for
  an empty source. `numbers`: each source's line number (sampling's randomness), by
  default 1, 2, ...

  Batches come from `plan_batches` and decode with `decode_batch`, sharded over the
  mesh's data axis. With a mesh over several processes' devices, each passes the same
  sentences and every process gets every translation."""
  numbers = list(range(1, len(sources) + 1)) if numbers is None else numbers
  budget = s.batch_tokens or default_batch_tokens(mesh)
  split = nnx.split(model)
  outputs: list[list[tuple[list[int], float]]] = [[] for _ in sources]
  done = 0
  data_parallel = sharding.data_parallel_size(mesh)
  for chunk in plan_batches([len(x) for x in sources], s, data_parallel, budget):
    rows = batch_rows(source_bucket(len(sources[chunk[-1]])), s, data_parallel, budget)
    hypotheses = decode_batch(split, mesh, [sources[i] for i in chunk], s,
                              [numbers[i] for i in chunk], rows)
    for i, hyps in zip(chunk, hypotheses):
      outputs[i] = hyps
    done += len(chunk)
    if progress:
      progress(done, len(sources))
  return outputs


_FEWEST_ROWS = 16  # compaction stops here (below, a step's cost hardly falls)

# Decoding work done in this process, for benchmarks: `row_steps` (steps x rows computed,
# padding and finished rows included) against `output_tokens` (tokens of the best
# translations, EOS included): their ratio is the padding efficiency.
WORK: collections.Counter = collections.Counter()


def _search(s: Settings, max_len: int):
  if s.method == 'beam':
    return decode.BeamSearch(s.beam_size, s.alpha, max_len, s.max_extra_len, EOS_ID,
                             s.nbest if s.nbest > 1 else 0)
  return decode.Sampling(0.0 if s.method == 'greedy' else s.temperature, s.top_k, max_len,
                         s.max_extra_len, EOS_ID)


def decode_batch(split, mesh, sources: list[list[int]], s: Settings, numbers: list[int],
                 rows: int | None = None) -> list[list[tuple[list[int], float]]]:
  """Decode non-empty sources as one batch: (ids, score) per source, best first.

  The batch has `rows` rows (default: `row_bucket`; fewer sentences start on a lower
  rung of the ladder below, and unused rows are done from the start) and a
  `source_bucket` length. It runs until at most a
  quarter of its sentences are still going; those go on as a batch of a quarter of the
  rows (`decode.take`) and the others are read out, so finished sentences stop costing
  steps (as CTranslate2 drops finished entries). The rows of a batch are always R, R/4,
  R/16, ... (not below 16: a step of fewer rows costs about as much), so few shapes
  compile. Each sentence's result is what it would be alone."""
  graphdef, params = split
  data_parallel = sharding.data_parallel_size(mesh)
  rows = rows or row_bucket(len(sources), data_parallel)
  while len(sources) <= _smaller(rows, data_parallel) < rows:  # a few sentences: start
    rows = _smaller(rows, data_parallel)  # lower on the same ladder (shapes compiled once)
  length = source_bucket(max(map(len, sources)))
  batch = np.full((rows, length), PAD_ID, np.int32)
  for row, src in enumerate(sources):
    batch[row, :len(src)] = src
  search = _search(s, length + s.max_extra_len)
  keys = None
  if isinstance(search, decode.Sampling):
    keys = decode.line_keys(s.seed, np.pad(numbers, (0, rows - len(numbers))))
  state = decode.start(graphdef, params,
                       distributed.global_array(batch, sharding.batch_sharding(mesh)),
                       keys, search=search)
  owner = np.where(np.arange(rows) < len(sources), np.arange(rows), -1)
  found: list = [None] * len(sources)
  segments = decode.cache_lengths(search.max_len)
  segment = step = 0
  while True:
    smaller = _smaller(owner.size, data_parallel)
    state, active, found_so_far = decode.advance(
        graphdef, params, state, segments[segment], smaller if smaller < owner.size else 0,
        search=search)
    active, last = distributed.gather(active), step
    step = int(distributed.gather(state['step']))
    WORK['row_steps'] += owner.size * (step - last)
    if not active.any() or step >= search.max_len:
      _read_out(found_so_far, owner, owner >= 0, found)
      return found
    if step >= segments[segment]:
      segment += 1
      state = decode.grow(state, length=segments[segment])
      continue
    _read_out(found_so_far, owner, (owner >= 0) & ~active, found)
    keep = np.flatnonzero(active)
    index = np.full(smaller, np.flatnonzero(~active)[0])
    index[:keep.size] = keep
    state = decode.take(state, index, rows_sharding=sharding.rows_sharding(mesh))
    owner = np.where(np.arange(index.size) < keep.size, owner[index], -1)


def _smaller(rows: int, data_parallel: int) -> int:
  """The next rung of a batch's ladder of rows: a quarter, not below 16 (or `rows`)."""
  return max(row_bucket(rows // 4, data_parallel),
             row_bucket(min(rows, _FEWEST_ROWS), data_parallel))


def _read_out(results, owner, which, found) -> None:
  """Store the `results` of the rows `which` under their sentence (`owner`) in `found`."""
  tokens, scores = map(distributed.gather, results)
  if tokens.ndim == 2:  # one hypothesis per row
    tokens, scores = tokens[:, None], scores[:, None]
  for row in np.flatnonzero(which):
    found[owner[row]] = [(_strip(ids.tolist()), float(score))
                         for ids, score in zip(tokens[row], scores[row])
                         if score > decode.NEG_INF / 2]
    WORK['output_tokens'] += len(found[owner[row]][0][0]) + 1 if found[owner[row]] else 0


def _strip(ids: list[int]) -> list[int]:
  """The ids before EOS (or all but the padding, for a hypothesis that never ended)."""
  return ids[:ids.index(EOS_ID)] if EOS_ID in ids else [t for t in ids if t != PAD_ID]


def translate_texts(restored: Restored, lines: list[str], s: Settings,
                    progress=None) -> list[str]:
  """Sentences in, translations out, one per line, in the input order."""
  return [hyps[0][0] if hyps else '' for hyps in
          translate_nbest(restored, lines, s, progress)]


def translate_nbest(restored: Restored, lines: list[str], s: Settings,
                    progress=None, sort: bool = True, first: int = 1
                    ) -> list[list[tuple[str, float]]]:
  """Up to `s.nbest` (translation, score) per line, best first, in the input order;
  `first` is the first line's number. `sort=False`: the lines are one batch as given
  (the streaming path)."""
  sources = encode_sources(restored.tokenizer, lines, s.max_input_len)
  numbers = list(range(first, first + len(lines)))
  if sort:
    hypotheses = translate_hypotheses(restored.model, restored.mesh, sources, s, progress,
                                      numbers)
  else:
    hypotheses = [[] for _ in sources]
    given = [i for i, src in enumerate(sources) if src]
    if given:
      found = decode_batch(nnx.split(restored.model), restored.mesh,
                           [sources[i] for i in given], s, [numbers[i] for i in given])
      for i, hyps in zip(given, found):
        hypotheses[i] = hyps
  return [[(restored.tokenizer.decode(ids), score) for ids, score in hyps]
          for hyps in hypotheses]
