"""The input pipeline: preparing the dataset and vocabulary, the training split's token
store and stream, and evaluation batches.

Batches are dicts of int32 [rows, max_len] arrays: `source`, `target` and their
`*_segment_ids` (0 = padding, 1, 2, ... = the pairs in a row) and `*_positions`.
Training batches come from `stream.Stream` over the token store (`store.py`), whose
`get_state()` / `set_state()` make a resumed run, on any number of processes, see
exactly the batches an uninterrupted run would. Evaluation batches are Grain batches of
each host's shard of the split, tokenized at start (validation splits are small).
"""
from __future__ import annotations

import hashlib
import math
import os
from typing import Iterator

import grain
import jax
import numpy as np
from ml_collections import ConfigDict

from transformer_jax import distributed, files
from transformer_jax.data import datasets
from transformer_jax.data import store as store_lib
from transformer_jax.data import stream as stream_lib
from transformer_jax.data import tokenizer as tokenizer_lib
from transformer_jax.data.store import TokenStore
from transformer_jax.data.tokenizer import EOS_ID, PAD_ID, Tokenizer
from transformer_jax.errors import UserError

FIELDS = ('source', 'target')
_VOCAB_SAMPLE = 1_000_000  # training pairs the vocabulary is learned from, at most


def read(source, indices, chunk: int = 2048) -> Iterator[dict]:
  """Examples of `source` at `indices`, read in chunks: TFDS array_record sources read a
  batch of records many times faster than the same records one by one."""
  indices = list(indices)
  for start in range(0, len(indices), chunk):
    yield from source.__getitems__(indices[start:start + chunk])


def split_pairs(config: ConfigDict, split: str) -> tuple[list[str], list[str]]:
  """Source and reference texts of a dataset split, in the split's original order."""
  source = datasets.data_source(config.data, split)
  examples = sorted(read(source, range(len(source))), key=lambda ex: int(ex.get('index', 0)))
  return ([ex[config.data.source_lang].decode('utf-8') for ex in examples],
          [ex[config.data.target_lang].decode('utf-8') for ex in examples])


def prepare(config: ConfigDict, workdir: str | None,
            new_vocab_path: bool = False) -> Tokenizer | None:
  """The dataset built and the vocabulary trained (or found), once for all processes.

  Process 0 builds them into their shared place (`data.tfds_dir`, the workdir or
  `data.vocab_path`: a bucket on a pod slice) while the others wait, then the others
  read them: several processes never write one dataset at once. With no workdir and no
  `data.vocab_path`, only the dataset; with `new_vocab_path`, a `data.vocab_path` that
  does not exist yet is trained there (the `prepare` command)."""
  def job(first: bool):
    datasets.builder(config.data)  # a worker-local tfds_dir: each builds its own copy
    if workdir is None and not config.data.vocab_path:
      return None
    return get_tokenizer(config, workdir, may_train=first, new_vocab_path=new_vocab_path)
  return distributed.once('build the dataset and the vocabulary', job,
                          60 * config.data.prepare_timeout_minutes)


def get_tokenizer(config: ConfigDict, workdir: str | None, may_train: bool = True,
                  new_vocab_path: bool = False) -> Tokenizer:
  """`data.vocab_path` if set, else WORKDIR/vocab.model, trained on the training split
  (source and target jointly) the first time, if `may_train`. A `data.vocab_path` that
  does not exist is an error (a typo, most likely) unless `new_vocab_path`."""
  data = config.data
  path = data.vocab_path or os.path.join(workdir, tokenizer_lib.VOCAB_FILE)
  if data.vocab_path and not new_vocab_path and not files.path(path).exists():
    raise UserError(f'data.vocab_path={path} does not exist.')
  if not may_train and not files.path(path).exists():
    raise UserError(f'Process {jax.process_index()} cannot see the vocabulary '
                    f'{path} that process 0 wrote: every process must share the workdir '
                    '(on a pod slice, a gs:// bucket) or data.vocab_path.')

  def training_text():
    source = datasets.data_source(data, 'train')
    sample = np.sort(np.random.default_rng(0).permutation(len(source))[:_VOCAB_SAMPLE])
    for example in read(source, sample.tolist()):
      yield example[data.source_lang].decode('utf-8')
      yield example[data.target_lang].decode('utf-8')

  return tokenizer_lib.load_or_train(path, config.model.vocab_size, training_text,
                                     data.lowercase)


class TokenizedSplit:
  """This host's shard of an evaluation split, tokenized once with EOS appended; random
  access. (Training reads the token store instead: store.py, stream.py.)

  Token ids are stored flat with offsets: about 2 bytes per token for vocabularies
  < 65,536.
  """

  def __init__(self, source, data: ConfigDict, tokenizer: Tokenizer, *,
               process_index: int | None = None, process_count: int | None = None):
    if process_index is None:
      process_index, process_count = jax.process_index(), jax.process_count()
    self.split_size = len(source)
    if self.split_size == 0:
      raise UserError(f"The split of dataset '{data.name}' is empty: nothing to read.")
    dtype = np.uint16 if tokenizer.vocab_size <= 2 ** 16 else np.int32
    ids = {field: [] for field in FIELDS}
    index = []
    examples = read(source, range(process_index, len(source), process_count))
    for chunk in _chunks(examples):
      index.extend(int(ex.get('index', -1)) for ex in chunk)
      for field, lang in zip(FIELDS, (data.source_lang, data.target_lang)):
        ids[field].extend(tokenizer.encode_batch([ex[lang].decode('utf-8') for ex in chunk],
                                                field))
    self.index = np.asarray(index, np.int64)
    self._flat, self._offsets = {}, {}
    for field in FIELDS:
      lengths = np.fromiter((len(x) + 1 for x in ids[field]), np.int64, len(ids[field]))
      self._offsets[field] = np.concatenate([[0], np.cumsum(lengths)])
      flat = np.full(self._offsets[field][-1], EOS_ID, dtype)
      starts = self._offsets[field][:-1]
      for start, x in zip(starts, ids[field]):
        flat[start:start + len(x)] = x
      self._flat[field] = flat

  def __len__(self) -> int:
    return len(self.index)

  def __getitem__(self, i: int) -> dict:
    out = {field: self._flat[field][self._offsets[field][i]:self._offsets[field][i + 1]
                                    ].astype(np.int32) for field in FIELDS}
    out['index'] = int(self.index[i])
    return out


def training_store(config: ConfigDict, workdir: str, tokenizer: Tokenizer) -> TokenStore:
  """The training split's token store, prepared first if it is not (every process
  tokenizes its share of the shards); under `data.store_dir` or WORKDIR/store."""
  source = datasets.data_source(config.data, 'train')
  root = config.data.store_dir or os.path.join(workdir, 'store')
  directory = os.path.join(root, store_lib.key(
      config.data, datasets.dataset_id(config.data, 'train'),
      hashlib.sha256(files.path(tokenizer.path).read_bytes()).hexdigest()))
  store_lib.build(source, config.data, tokenizer, directory)
  return TokenStore(directory, config.data.store_cache)


def train_stream(config: ConfigDict, store: TokenStore, tokenizer: Tokenizer,
                 **process) -> stream_lib.Stream:
  """The training batches of this process: `stream.Stream` over the store; with
  `data.subword_samples` = K > 0, each pair's segmentation sampled anew each epoch (K
  different ones, in turn), seeded by the pair and the epoch."""
  sampler = None
  if config.data.subword_samples:
    sampler = _subword_sampler(config, tokenizer)
  return stream_lib.Stream(store, config.data, config.seed, sampler=sampler, **process)


def _subword_sampler(config: ConfigDict, tokenizer: Tokenizer):
  data = config.data
  source = datasets.data_source(data, 'train')

  def sample(ids, epoch: int) -> dict:
    examples = source.__getitems__(ids.tolist())
    out = {field: [] for field in FIELDS}
    for pair, example in zip(ids.tolist(), examples):
      for number, (field, lang) in enumerate(zip(FIELDS, (data.source_lang, data.target_lang))):
        seed = np.random.SeedSequence([config.seed, epoch % data.subword_samples, pair,
                                       number]).generate_state(1)[0]
        pieces = tokenizer.sample_batch([example[lang].decode('utf-8')], data.subword_alpha,
                                        int(seed), field)[0]
        out[field].append(np.asarray(pieces + [EOS_ID], np.int32))
    return out
  return sample


def _chunks(examples, size: int = 8192):
  chunk = []
  for example in examples:
    chunk.append(example)
    if len(chunk) == size:
      yield chunk
      chunk = []
  if chunk:
    yield chunk


def _truncate(max_len: int):
  def truncate(example):
    # Keep EOS last, so a truncated sentence still ends like a sentence.
    for field in FIELDS:
      if len(example[field]) > max_len:
        example[field] = np.append(example[field][:max_len - 1], EOS_ID).astype(np.int32)
    return example
  return truncate


def _pad_row(max_len: int):
  """One pair per row: pad to max_len; segment 1 on tokens, positions 0..n-1."""
  def pad(example):
    out = {}
    for field in FIELDS:
      tokens = example[field]
      n = len(tokens)
      out[field] = np.pad(tokens, (0, max_len - n), constant_values=PAD_ID)
      out[f'{field}_segment_ids'] = (np.arange(max_len) < n).astype(np.int32)
      out[f'{field}_positions'] = np.where(np.arange(max_len) < n, np.arange(max_len), 0
                                           ).astype(np.int32)
    if 'index' in example:
      out['index'] = example['index']
    return out
  return pad


def eval_batches(config: ConfigDict, split: TokenizedSplit, *, batch_size: int,
                 process_count: int | None = None) -> Iterator[dict]:
  """Every example of this host's shard in order, one per row, truncated to max_len.

  Every host yields the same number of full-size batches (multi-host steps stay in
  lockstep); padding rows have all-zero tokens and `index` -1.
  """
  data = config.data
  process_count = process_count or jax.process_count()
  num_batches = math.ceil(math.ceil(split.split_size / process_count) / batch_size)
  ds = grain.MapDataset.source(split).map(_truncate(data.max_len))
  ds = ds.map(_pad_row(data.max_len)).batch(batch_size, drop_remainder=False)
  batches = iter(ds)
  for _ in range(num_batches):
    batch = next(batches, None)
    yield _pad_batch(batch, batch_size, data.max_len)


def _pad_batch(batch: dict | None, batch_size: int, max_len: int) -> dict:
  if batch is None:
    batch = {'index': np.zeros((0,), np.int64)}
    for field in FIELDS:
      for suffix in ('', '_segment_ids', '_positions'):
        batch[field + suffix] = np.zeros((0, max_len), np.int32)
  missing = batch_size - len(batch['index'])
  return {key: np.concatenate([value, np.full((missing, *value.shape[1:]),
                                              -1 if key == 'index' else 0, value.dtype)])
          for key, value in batch.items()}
