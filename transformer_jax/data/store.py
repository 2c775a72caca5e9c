"""The token store: a split tokenized once into flat arrays of token ids, read by
random access without holding the corpus in memory.

`prepare` (or the first `train`) writes it; every later start maps it in seconds. Layout,
under `data.store_dir` (default WORKDIR/store), one directory per key:

  KEY/meta.json                       pairs, shards, dtype, and what the key covers
  KEY/shard-00000/{source,target}.npy token ids of every pair, EOS appended, back to back
  KEY/shard-00000/{source,target}_offsets.npy  where pair i starts (pairs + 1 entries)
  KEY/shard-00000/COMPLETE            written last: a shard without it is prepared again

KEY is a hash of the vocabulary's bytes and of everything that decides the token ids
(dataset, its version and size, languages, lowercasing), so a changed setting reads a
new store instead of a stale one. Shards are the unit of work: the processes of a slice
each prepare every Nth, and an interrupted prepare resumes at the first missing one.
Arrays are .npy files: locally they are memory-mapped (pages come and go with the page
cache, not the process's heap); a store in a bucket is copied shard by shard to a local
cache first (`data.store_cache`), since memory maps need local files. Every process of a
run must see the one directory (a bucket, or a filesystem all hosts share): `build`
checks that first.
"""
from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
import os
import secrets
import shutil

import jax
import numpy as np
from ml_collections import ConfigDict

from transformer_jax import distributed, files
from transformer_jax.data.tokenizer import EOS_ID, Tokenizer
from transformer_jax.errors import UserError

VERSION = 1
FIELDS = ('source', 'target')
PAIRS_PER_SHARD = 200_000
_CHUNK = 8192  # pairs read and tokenized at a time
_ARRAYS = ('source', 'target', 'source_offsets', 'target_offsets')


def key(data: ConfigDict, dataset_id: str, vocab_sha256: str) -> str:
  """The store's directory name: changes whenever its token ids would."""
  covered = {'version': VERSION, 'dataset': dataset_id, 'vocab_sha256': vocab_sha256,
             'source_lang': data.source_lang, 'target_lang': data.target_lang,
             'lowercase': data.lowercase}
  return hashlib.sha256(json.dumps(covered, sort_keys=True).encode()).hexdigest()[:16]


def shard_ranges(pairs: int, shards: int) -> list[tuple[int, int]]:
  bounds = np.linspace(0, pairs, shards + 1).round().astype(int)
  return list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))


def build(source, data: ConfigDict, tokenizer: Tokenizer, directory: str,
          shards: int | None = None, progress=None) -> None:
  """Tokenize `source` (a random-access split) into the store at `directory`.

  Every process writes its share of the shards (process p: shards p, p + P, ...);
  process 0 writes meta.json once all are complete. Complete shards are skipped."""
  root = files.path(directory)
  check_shared(root, data)
  if (root / 'meta.json').exists():
    return
  pairs = len(source)
  shards = shards or max(1, math.ceil(pairs / PAIRS_PER_SHARD))
  ranges = shard_ranges(pairs, shards)
  dtype = np.uint16 if tokenizer.vocab_size <= 2 ** 16 else np.int32
  for number in range(jax.process_index(), shards, jax.process_count()):
    shard = root / f'shard-{number:05d}'
    if not (shard / 'COMPLETE').exists():
      _write_shard(shard, source, *ranges[number], data, tokenizer, dtype)
    if progress:
      progress(number + 1, shards)
  distributed.barrier('write their shards of the token store', 3600)
  if distributed.is_writer():
    meta = {'version': VERSION, 'pairs': pairs, 'shards': shards, 'dtype': np.dtype(dtype).name,
            'ranges': ranges}
    files.write_atomically(root / 'meta.json', json.dumps(meta).encode())
  distributed.barrier('see the token store complete', 600)


def check_shared(root, data: ConfigDict) -> None:
  """Every process sees the store directory `root` process 0 sees, or all stop with one
  line. Without it, a store_dir on each host's own disk (a pod slice's VMs) has each
  process decide alone whether meta.json exists: the others fail reading it, or wait an
  hour at build's barrier for a process that found it. Process 0 writes a marker of a
  fresh name (a stale or concurrent run's marker cannot pass), all learn the name and
  report whether they see it; the first collective returns only after the write."""
  if jax.process_count() == 1:
    return
  nonce = secrets.randbits(31) if distributed.is_writer() else 0
  if distributed.is_writer():
    files.write_atomically(root / f'.seen-by-all-{nonce:08x}', b'')
  marker = root / f'.seen-by-all-{distributed.each(nonce)[0]:08x}'
  seen = distributed.each(int(marker.exists()))
  if distributed.is_writer():
    marker.unlink(missing_ok=True)  # every process has looked: the second collective
  blind = [str(p) for p, s in enumerate(seen) if not s]
  if blind:
    where = (f'data.store_dir={data.store_dir}' if data.store_dir else
             'The token store (data.store_dir empty: WORKDIR/store)')
    raise UserError(
        f'{where}: process{"es" if len(blind) > 1 else ""} {", ".join(blind)} cannot see '
        f'what process 0 wrote in {root}, so it is not one directory for all (each host\'s '
        'own disk?). Put the store in the bucket (leave data.store_dir empty: WORKDIR/store, '
        'with a gs:// workdir) or on a filesystem all hosts share.')


def _write_shard(shard, source, start: int, end: int, data, tokenizer, dtype) -> None:
  """Tokenize pairs [start, end) a chunk at a time into flat arrays (memory: the shard's
  token ids, 2 bytes each, not Python lists of them)."""
  flats = {field: [] for field in FIELDS}
  lengths = {field: [] for field in FIELDS}
  for chunk_start in range(start, end, _CHUNK):
    examples = source.__getitems__(list(range(chunk_start, min(chunk_start + _CHUNK, end))))
    for field, lang in zip(FIELDS, (data.source_lang, data.target_lang)):
      ids = tokenizer.encode_batch([ex[lang].decode('utf-8') for ex in examples], field)
      lengths[field].append(np.fromiter(map(len, ids), np.int64, len(ids)) + 1)
      flats[field].append(np.fromiter(
          itertools.chain.from_iterable(x + [EOS_ID] for x in ids), dtype))
  arrays = {}
  for field in FIELDS:
    arrays[field] = np.concatenate(flats[field]) if flats[field] else np.zeros(0, dtype)
    counts = np.concatenate(lengths[field]) if lengths[field] else np.zeros(0, np.int64)
    arrays[f'{field}_offsets'] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
  shard.mkdir(parents=True, exist_ok=True)
  for name, array in arrays.items():
    buffer = io.BytesIO()
    np.save(buffer, array)
    files.write_atomically(shard / f'{name}.npy', buffer.getvalue())
  files.write_atomically(shard / 'COMPLETE', b'')


class TokenStore:
  """A prepared store, random access: lengths of any pairs, and their token ids."""

  def __init__(self, directory: str, cache: str = ''):
    self.directory = directory
    root = files.path(directory)
    self.meta = json.loads((root / 'meta.json').read_text())
    local = _local_copy(root, cache) if files.is_bucket(directory) else root
    self._starts = np.asarray([start for start, _ in self.meta['ranges']], np.int64)
    self._shards = [{name: np.load(os.path.join(local, f'shard-{i:05d}', f'{name}.npy'),
                                   mmap_mode='r')
                     for name in _ARRAYS}
                    for i in range(self.meta['shards'])]

  def __len__(self) -> int:
    return self.meta['pairs']

  def tokens_total(self) -> dict[str, int]:
    """Token ids stored per field (EOS included)."""
    return {field: int(sum(int(shard[f'{field}_offsets'][-1]) for shard in self._shards))
            for field in FIELDS}

  def _by_shard(self, ids: np.ndarray):
    """(shard, where in `ids`, index within the shard) for each shard `ids` touch."""
    shard = np.searchsorted(self._starts, ids, side='right') - 1
    order = np.argsort(shard, kind='stable')
    bounds = np.flatnonzero(np.diff(shard[order])) + 1
    for where in np.split(order, bounds) if len(ids) else ():
      s = int(shard[where[0]])
      yield self._shards[s], where, ids[where] - self._starts[s]

  def lengths(self, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Tokens (EOS included) of each pair in `ids`, per field."""
    out = {field: np.empty(len(ids), np.int64) for field in FIELDS}
    for shard, where, local in self._by_shard(ids):
      for field in FIELDS:
        offsets = shard[f'{field}_offsets']
        out[field][where] = offsets[local + 1] - offsets[local]
    return out

  def gather(self, ids: np.ndarray, field: str, limit: int | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """(the token ids of the pairs in `ids`, back to back, in order; each one's length),
    each pair's first `limit` tokens only if given. One read per shard, not per pair."""
    lengths = np.empty(len(ids), np.int64)
    starts = np.empty(len(ids), np.int64)
    shards = list(self._by_shard(ids))
    for shard, where, local in shards:
      offsets = shard[f'{field}_offsets']
      starts[where] = offsets[local]
      lengths[where] = offsets[local + 1] - starts[where]
    if limit is not None:
      lengths = np.minimum(lengths, limit)
    ends = np.cumsum(lengths)
    flat = np.empty(int(ends[-1]) if len(ids) else 0, np.int32)
    for shard, where, _ in shards:
      within = _ranges(starts[where], lengths[where])  # positions in the shard's tokens
      flat[_ranges(ends[where] - lengths[where], lengths[where])] = shard[field][within]
    return flat, lengths

  def tokens(self, ids: np.ndarray, field: str) -> list[np.ndarray]:
    """The token ids of each pair in `ids` (EOS last), in order."""
    flat, lengths = self.gather(ids, field)
    return np.split(flat, np.cumsum(lengths)[:-1]) if len(ids) else []


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """The concatenation of range(start, start + length) for each pair: no Python loop."""
  total = int(lengths.sum())
  firsts = np.cumsum(lengths) - lengths  # where each range begins in the output
  return np.arange(total) + np.repeat(starts - firsts, lengths)


def _local_copy(root, cache: str) -> str:
  """A bucket store's shards under the local cache (copied once, then reused)."""
  local = os.path.join(os.path.expanduser(cache or '~/.cache/transformer_jax/stores'),
                       root.name)
  for i in range(json.loads((root / 'meta.json').read_text())['shards']):
    shard = os.path.join(local, f'shard-{i:05d}')
    if os.path.exists(os.path.join(shard, 'COMPLETE')):
      continue
    tmp = shard + f'.tmp-{os.getpid()}'
    os.makedirs(tmp, exist_ok=True)
    for name in _ARRAYS:
      with open(os.path.join(tmp, f'{name}.npy'), 'wb') as f:
        f.write((root / f'shard-{i:05d}' / f'{name}.npy').read_bytes())
    open(os.path.join(tmp, 'COMPLETE'), 'w').close()
    try:
      os.rename(tmp, shard)
    except OSError:  # another process on this machine copied it first: use theirs
      shutil.rmtree(tmp, ignore_errors=True)
  return local
