"""Training batches streamed from the token store, in an order that depends on the seed
and the step only: a run saved on N processes resumes on M and sees the same batches.

Epoch e visits every pair once, in the order of a seeded permutation that changes each
epoch (Grain's `index_shuffle`: a permutation computed index by index, no array of N).
A global batch is filled first-fit: each pair in turn goes into the first of the
`data.batch_size` rows where both its source and its target still fit (`data.max_len`
tokens each); the first pair that fits no row opens the next batch. So the packing is
new each epoch, every process computes the same global batch from the pairs' lengths
alone, and each reads the tokens of its own rows only. A pair that fits no row waits
for the next batch, where it goes first. The iterator's state is (epoch, position, the
waiting pairs), the same on every process.

Grain's own packers (`FirstFitPackIterDataset`) work element by element in Python and
per process (56-83k tokens/s here); this packs with small numpy operations per pair
and gathers a whole batch's tokens at once.
"""
from __future__ import annotations

import hashlib
import queue
import threading

import grain
import jax
import numpy as np
from ml_collections import ConfigDict

from transformer_jax.data.store import FIELDS, TokenStore
from transformer_jax.data.tokenizer import EOS_ID
from transformer_jax.errors import UserError

_LOOKAHEAD = 4096  # pairs whose lengths are fetched at a time


def epoch_seed(seed: int, epoch: int) -> int:
  digest = hashlib.sha256(f'{seed}/{epoch}'.encode()).digest()
  return int.from_bytes(digest[:4], 'little')


class Stream:
  """This process's rows of each global training batch, forever; `get_state` and
  `set_state` save and restore the position: epoch, index in the epoch's order, and
  the pairs waiting for the next batch (a small JSON dict, the same on every process)."""

  def __init__(self, store: TokenStore, data: ConfigDict, seed: int, *,
               process_index: int | None = None, process_count: int | None = None,
               sampler=None):
    """`sampler(ids, epoch) -> {field: [token arrays]}` replaces the stored token ids
    (subword regularization: a sampled segmentation of each pair, per epoch)."""
    if process_index is None:
      process_index, process_count = jax.process_index(), jax.process_count()
    rows = data.batch_size
    if rows % process_count:
      raise UserError(f'data.batch_size={rows} must be divisible by the number of '
                      f'processes ({process_count}).')
    self.store, self.seed, self.sampler = store, seed, sampler
    self.rows, self.length = rows, data.max_len
    self.packing, self.truncate = data.packing, data.truncate
    share = rows // process_count
    self.mine = (process_index * share, (process_index + 1) * share)
    self.set_state({'epoch': 0, 'position': 0})

  # -------------------------------------------------------------------- state

  def get_state(self) -> dict:
    return {'epoch': self.epoch, 'position': self.position,
            'deferred': [list(pair) for pair in self._deferred]}

  def set_state(self, state: dict) -> None:
    self.epoch, self.position = int(state['epoch']), int(state['position'])
    self._deferred = [tuple(pair) for pair in state.get('deferred', [])]
    self._buffer = None  # lengths (and sampled tokens) ahead of the position

  # -------------------------------------------------------------------- order

  def pair_ids(self, epoch: int, positions: range) -> np.ndarray:
    """The pairs at `positions` of epoch `epoch`'s order."""
    n, seed = len(self.store), epoch_seed(self.seed, epoch)
    shuffle = grain.experimental.index_shuffle
    return np.fromiter((shuffle(p, max_index=n - 1, seed=seed, rounds=4) for p in positions),
                       np.int64, len(positions))

  def _fill(self) -> None:
    """Lengths (and, sampling, tokens) of the next pairs of this epoch."""
    end = min(self.position + _LOOKAHEAD, len(self.store))
    ids = self.pair_ids(self.epoch, range(self.position, end))
    tokens = self.sampler(ids, self.epoch) if self.sampler else None
    lengths = ({f: np.fromiter(map(len, tokens[f]), np.int64, len(ids)) for f in FIELDS}
               if tokens else self.store.lengths(ids))
    if self.truncate:
      lengths = {f: np.minimum(v, self.length) for f, v in lengths.items()}
    self._buffer = dict(start=self.position, ids=ids, tokens=tokens,
                        source=lengths['source'].tolist(), target=lengths['target'].tolist())

  def _advance(self) -> None:
    self.position += 1
    if self.position == len(self.store):
      self.epoch, self.position, self._buffer = self.epoch + 1, 0, None

  # -------------------------------------------------------------------- batches

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    taken, rows = self._pack()
    return self._materialize(taken, rows)

  def _pack(self):
    """First-fit: the pairs of the next global batch and the row of each. A pair that
    fits no row is deferred to the next batch (it goes first there); the batch closes
    after `rows` deferrals, so rows fill up with the shorter pairs that follow."""
    room = {f: np.full(self.rows, self.length, np.int64) for f in FIELDS}
    taken, rows, deferred = [], [], []

    def place(pair, s, t, tokens) -> None:
      fits = np.flatnonzero((room['source'] >= s) & (room['target'] >= t))
      if fits.size == 0:
        deferred.append(pair)
        return
      row = fits[0]
      room['source'][row] -= s
      room['target'][row] -= t
      if not self.packing:
        room['source'][row] = -1  # one pair per row
      taken.append((pair[1], tokens))
      rows.append(int(row))

    for pair, s, t, tokens in self._describe(self._deferred):
      place(pair, s, t, tokens)
    skipped = 0
    while len(deferred) < self.rows:
      if self._buffer is None or self.position - self._buffer['start'] >= len(
          self._buffer['ids']):
        self._fill()
      b, i = self._buffer, self.position - self._buffer['start']
      pair = (self.epoch, int(b['ids'][i]))
      s, t = b['source'][i], b['target'][i]
      tokens = b['tokens'] and {f: b['tokens'][f][i] for f in FIELDS}
      self._advance()
      if s > self.length or t > self.length:  # too long, not truncated: dropped
        skipped += 1
        if skipped > 100 * self.rows and not taken:
          raise UserError(f'No training pair fits data.max_len={self.length}; raise it '
                          'or set data.truncate=True.')
        continue
      place(pair, s, t, tokens)
    self._deferred = deferred
    return taken, rows

  def _describe(self, pairs):
    """(pair, source length, target length, sampled tokens or None) of (epoch, id) pairs."""
    for epoch, pair_id in pairs:
      ids = np.asarray([pair_id], np.int64)
      tokens = self.sampler(ids, epoch) if self.sampler else None
      lengths = ({f: [len(tokens[f][0])] for f in FIELDS} if tokens
                 else self.store.lengths(ids))
      s, t = (min(int(lengths[f][0]), self.length) if self.truncate else int(lengths[f][0])
              for f in FIELDS)
      yield (epoch, pair_id), s, t, tokens and {f: tokens[f][0] for f in FIELDS}

  def _materialize(self, taken, rows) -> dict:
    """This process's rows as arrays [rows, max_len]: tokens, segment ids, positions."""
    lo, hi = self.mine
    rows = np.asarray(rows)
    order = np.flatnonzero((rows >= lo) & (rows < hi))
    order = order[np.argsort(rows[order], kind='stable')]  # by row, then as taken
    row_of = rows[order] - lo
    ids = np.asarray([taken[k][0] for k in order], np.int64)
    batch = {}
    for field in FIELDS:
      if taken and taken[0][1]:
        pieces = [taken[k][1][field] for k in order]
      else:
        pieces = self.store.tokens(ids, field)
      if self.truncate:
        pieces = [p if len(p) <= self.length else
                  np.append(p[:self.length - 1], EOS_ID) for p in pieces]
      batch.update(_layout(pieces, row_of, hi - lo, self.length, field))
    return batch


def _layout(pieces, row_of: np.ndarray, rows: int, length: int, field: str) -> dict:
  """Pairs' token arrays placed one after another in their rows."""
  tokens = np.zeros((rows, length), np.int32)
  segments = np.zeros((rows, length), np.int32)
  positions = np.zeros((rows, length), np.int32)
  if pieces:
    lengths = np.fromiter(map(len, pieces), np.int64, len(pieces))
    flat = np.concatenate(pieces).astype(np.int32)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    first = np.r_[True, row_of[1:] != row_of[:-1]]  # first pair of its row
    row_start = np.maximum.accumulate(np.where(first, starts, 0))
    column = np.repeat(starts - row_start, lengths) + (
        np.arange(len(flat)) - np.repeat(starts, lengths))
    row = np.repeat(row_of, lengths)
    rank = np.arange(len(pieces)) - np.maximum.accumulate(
        np.where(first, np.arange(len(pieces)), 0)) + 1
    tokens[row, column] = flat
    segments[row, column] = np.repeat(rank, lengths)
    positions[row, column] = np.arange(len(flat)) - np.repeat(starts, lengths)
  return {field: tokens, f'{field}_segment_ids': segments, f'{field}_positions': positions}


class Prefetch:
  """Batches made ahead in a thread, so a step does not wait for input that keeps up;
  `get_state` is the position after the last batch handed out."""

  def __init__(self, stream: Stream, depth: int = 2):
    self.stream, self.depth = stream, depth
    self._state = stream.get_state()
    self._start()

  def _start(self):
    self._queue = queue.Queue(self.depth)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._produce, daemon=True)
    self._thread.start()

  def _produce(self):
    try:
      while not self._stop.is_set():
        batch = next(self.stream)
        item = (batch, self.stream.get_state())
        while not self._stop.is_set():
          try:
            self._queue.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
    except Exception as e:  # noqa: BLE001 (handed to the consumer, raised there)
      self._queue.put((e, None))

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch, state = self._queue.get()
    if isinstance(batch, Exception):
      raise batch
    self._state = state
    return batch

  def get_state(self) -> dict:
    return dict(self._state)

  def set_state(self, state: dict) -> None:
    self.close()
    self.stream.set_state(state)
    self._state = self.stream.get_state()
    self._start()

  def close(self) -> None:
    self._stop.set()
    self._thread.join()
