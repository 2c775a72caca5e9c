"""Training batches streamed from the token store, in an order that depends on the seed
and the step only: a run saved on N processes resumes on M and sees the same batches.

Each epoch visits every pair once, in the order of a seeded permutation that changes
each epoch (`shuffle.permute`). The epochs, one after another, are dealt round-robin to
the `data.batch_size` rows of the global batch: row r owns global indices r, r + B,
r + 2B, ... (B rows; global index g is position g mod N of epoch g // N, N pairs). So
each row is a stream of its own, and a process reads, packs and lays out only the rows
it feeds: its work per step is proportional to its rows, whatever the number of
processes or the size of the global batch.

A row is packed from a window of its next `WINDOW` pairs: first the oldest (it fits an
empty row, so no pair waits more than WINDOW steps), then, while any fits, the one with
the most tokens that fits both the source and the target room (`data.max_len` tokens
each); each pair placed is replaced in the window by the row's next. Without
`data.packing` a row holds the oldest pair only. A pair longer than a row is dropped,
or truncated with `data.truncate`.

The state is, per row, the index it reads next and the indices in its window: small
arrays, which `get_state` gathers from all processes into one record at save time (no
collective per step), and `set_state` restores on any number of processes.
"""
from __future__ import annotations

import base64
import collections
import queue
import threading
import zlib

import jax
import numpy as np
from ml_collections import ConfigDict

from transformer_jax import distributed
from transformer_jax.data import shuffle
from transformer_jax.data.store import FIELDS, TokenStore
from transformer_jax.data.tokenizer import EOS_ID
from transformer_jax.errors import UserError

WINDOW = 8  # pairs a row chooses among (measured fill: 4: 0.93, 8: 0.95, 12: 0.955)
FORMAT = 2  # of the saved state; 1 was one position in one global order (until 2026-12-05)
# A row's indices whose pairs and lengths are read at a time, and how few left make it
# read more before a step; sampling, fewer (a sampled pair costs ~1 ms, not ~1 us).
_AHEAD, _LOW = 256, 32
_AHEAD_SAMPLED, _LOW_SAMPLED = 16, 8
_BARREN = 4  # reads ahead in a row with no pair that fits: the data cannot be packed

# A pair in a row's window: its index in the row's stream, pair id, epoch, lengths.
Item = collections.namedtuple('Item', 'k pair epoch source target')


class Stream:
  """This process's rows of each global training batch, forever."""

  def __init__(self, store: TokenStore, data: ConfigDict, seed: int, *,
               process_index: int | None = None, process_count: int | None = None,
               sampler=None):
    """`sampler(ids, epoch) -> {field: [token arrays]}` replaces the stored token ids
    (subword regularization: a sampled segmentation of each pair, per epoch). Given
    `process_index` and `process_count`, the stream stands in for that process of a run
    (tests, benches): it has no one to gather from, so use `local_state`."""
    self.simulated = process_index is not None
    if process_index is None:
      process_index, process_count = jax.process_index(), jax.process_count()
    rows = data.batch_size
    if rows % process_count:
      raise UserError(f'data.batch_size={rows} must be divisible by the number of '
                      f'processes ({process_count}).')
    self.store, self.seed, self.sampler = store, seed, sampler
    self.pairs, self.rows, self.length = len(store), rows, data.max_len
    self.packing, self.truncate = data.packing, data.truncate
    self.window = WINDOW if data.packing else 1
    self._chunk, self._low = (_AHEAD_SAMPLED, _LOW_SAMPLED) if sampler else (_AHEAD, _LOW)
    share = rows // process_count
    self.mine = np.arange(process_index * share, (process_index + 1) * share)  # global rows
    self.reads = 0  # pairs this stream has looked up: its work, which tests bound
    self.placed = []  # (global row, epoch, pair id) of each pair of the last batch
    self.set_state(None)

  # -------------------------------------------------------------------- order

  def pair_ids(self, epoch: int, positions) -> np.ndarray:
    """The pairs at `positions` of epoch `epoch`'s order."""
    return shuffle.permute(np.asarray(positions), self.pairs, shuffle.keys(self.seed, epoch))

  @property
  def epoch(self) -> int:
    """The epoch of the first global index these rows have not placed: every pair
    before it is placed (or dropped)."""
    state = self.local_state()
    oldest = state['next'] - state['back'].max(1)  # k of the row's first unplaced pair
    return int((self.mine + oldest * self.rows).min() // self.pairs)

  # -------------------------------------------------------------------- batches

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    self._read_ahead([r for r, ahead in enumerate(self._ahead) if len(ahead) < self._low])
    placed = [self._pack(r) for r in range(len(self.mine))]
    self.placed = [(int(self.mine[r]), i.epoch, i.pair) for r, row in enumerate(placed)
                   for i in row]
    return self._layout(placed)

  def _pack(self, row: int) -> list[Item]:
    """The pairs of one row, in order; the window is refilled from the row's stream."""
    window = self._window[row]
    while len(window) < self.window:
      window.append(self._take(row))
    room_source = room_target = self.length
    placed = []
    best = min(range(len(window)), key=lambda i: window[i].k)  # the oldest: it fits
    while best is not None:
      item = window[best]
      placed.append(item)
      room_source -= item.source
      room_target -= item.target
      window[best] = self._take(row)
      if not self.packing:
        break
      best, most = None, 0
      for i, other in enumerate(window):
        if (other.source <= room_source and other.target <= room_target
            and other.source + other.target > most):
          best, most = i, other.source + other.target
    return placed

  def _take(self, row: int) -> Item:
    """The row's next pair that fits (reading ahead if none is read)."""
    barren = 0
    while not self._ahead[row]:
      if barren == _BARREN:
        raise UserError(f'None of {_BARREN * self._chunk} training pairs in a row fits '
                        f'data.max_len={self.length}; raise it or set data.truncate=True.')
      self._read_ahead([row])
      barren += 1
    return self._ahead[row].popleft()

  def _read_ahead(self, rows: list[int]) -> None:
    """The next pairs (a chunk) of each of `rows` (local), appended to what they have
    read ahead: ids and lengths from one lookup for all, and pairs too long left out."""
    if not rows:
      return
    n = self._chunk
    ks = [np.arange(self._end[r], self._end[r] + n) for r in rows]
    items = self._describe([r for r in rows for _ in range(n)], np.concatenate(ks))
    for i, row in enumerate(rows):
      self._ahead[row].extend(item for item in items[i * n:(i + 1) * n] if item is not None)
      self._end[row] += n

  def _describe(self, rows: list[int], ks: np.ndarray) -> list[Item | None]:
    """Items for the ks-th pairs of (local) `rows`; None for a pair too long to keep."""
    if not len(ks):
      return []
    epoch, position = np.divmod(self.mine[rows] + ks * self.rows, self.pairs)
    ids = np.empty_like(position)
    sampled = [None] * len(ks)  # each pair's tokens, sampling
    for e in np.unique(epoch).tolist():
      at = np.flatnonzero(epoch == e)
      ids[at] = self.pair_ids(e, position[at])
      if self.sampler:
        tokens = self.sampler(ids[at], e)
        for i, j in enumerate(at.tolist()):
          sampled[j] = {f: tokens[f][i] for f in FIELDS}
    lengths = ({f: np.asarray([len(t[f]) for t in sampled], np.int64) for f in FIELDS}
               if self.sampler else self.store.lengths(ids))
    self.reads += len(ks)
    if self.truncate:
      lengths = {f: np.minimum(v, self.length) for f, v in lengths.items()}
    keep = (lengths['source'] <= self.length) & (lengths['target'] <= self.length)
    if self.sampler:
      for j in np.flatnonzero(keep).tolist():
        self._tokens[(rows[j], int(ks[j]))] = sampled[j]
    return [Item(*fields) if ok else None for ok, fields in zip(
        keep.tolist(), zip(ks.tolist(), ids.tolist(), epoch.tolist(),
                           lengths['source'].tolist(), lengths['target'].tolist()))]

  def _layout(self, placed: list[list[Item]]) -> dict:
    """This process's rows as arrays [rows, max_len]: tokens, segment ids, positions."""
    row_of = np.repeat(np.arange(len(placed)), [len(p) for p in placed])
    items = [item for row in placed for item in row]
    batch = {}
    for field in FIELDS:
      if self.sampler:
        pieces = [self._tokens[(r, item.k)][field][:self.length]
                  for r, item in zip(row_of.tolist(), items)]
        lengths = np.fromiter(map(len, pieces), np.int64, len(pieces))
        flat = np.concatenate(pieces).astype(np.int32)
      else:
        flat, lengths = self.store.gather(np.asarray([i.pair for i in items], np.int64),
                                          field, limit=self.length)
      flat[np.cumsum(lengths) - 1] = EOS_ID  # a truncated pair still ends like one
      batch.update(_arrange(flat, lengths, row_of, len(placed), self.length, field))
    if self.sampler:
      for r, item in zip(row_of.tolist(), items):
        del self._tokens[(r, item.k)]
    return batch

  # -------------------------------------------------------------------- state

  def local_state(self) -> dict:
    """This process's rows: `next`, the index each reads next (in its own stream), and
    `back`, its window as distances back from `next` (0: a free place)."""
    rows = len(self.mine)
    next_k = np.asarray([ahead[0].k if ahead else self._end[r]
                         for r, ahead in enumerate(self._ahead)], np.int64)
    back = np.zeros((rows, self.window), np.int64)
    for r, window in enumerate(self._window):
      back[r, :len(window)] = [next_k[r] - item.k for item in window]
    return {'next': next_k, 'back': back}

  def get_state(self, local: dict | None = None) -> dict:
    """The global state (of `local`, this process's state, or now): the rows of every
    process gathered, which is a collective (at save time, every process calls it)."""
    local = local or self.local_state()
    if len(self.mine) == self.rows:
      return merge_states([local], self.pairs)
    if self.simulated:
      raise RuntimeError('a stream standing in for one of several processes has its '
                         'local_state only: merge_states makes the global one')
    stacked = distributed.each_array(np.concatenate(
        [local['next'][:, None], local['back']], 1).astype(np.int32))
    return merge_states([{'next': p[:, 0], 'back': p[:, 1:]} for p in stacked], self.pairs)

  def set_state(self, state: dict | None) -> None:
    """Continue from `state` (None: the start). A state of another batch size, corpus
    size or format goes on from the first pair that no row of it had read, with a
    warning: the pairs an epoch has not yet placed are never seen twice in it."""
    rows = len(self.mine)
    self._ahead = [collections.deque() for _ in range(rows)]
    self._window = [[] for _ in range(rows)]
    self._tokens = {}
    next_k, back = np.zeros(rows, np.int64), np.zeros((rows, 0), np.int64)
    if state is not None and _continues(state, self.rows, self.pairs):
      next_k = _decode(state['next'])[self.mine]
      back = _decode(state['back']).reshape(self.rows, -1)[self.mine]
    elif state is not None:
      start = _first_unread(state, self.pairs)
      distributed.warn(
          f'the saved data position is of {_described(state)}, not of this run\'s '
          f'(data.batch_size={self.rows}, {self.pairs} pairs): the order goes on from '
          f'global pair {start} (epoch {start // self.pairs}); the pairs it had read '
          'ahead are skipped.')
      next_k = np.maximum(0, -(-(start - self.mine) // self.rows))
    self._end = next_k.copy()
    windowed = [(r, next_k[r] - b) for r in range(rows) for b in back[r].tolist() if b]
    items = self._describe([r for r, _ in windowed], np.asarray([k for _, k in windowed],
                                                                np.int64))
    for (r, _), item in zip(windowed, items):
      self._window[r].append(item)  # (kept when saved: it fits)


def merge_states(parts: list[dict], pairs: int) -> dict:
  """The global state from the local states of all processes, in process order: JSON
  (the arrays compressed: the record of 32,768 rows is some 100 KB)."""
  next_k = np.concatenate([p['next'] for p in parts]).astype(np.int64)
  back = np.concatenate([p['back'] for p in parts]).astype(np.int64)
  return {'format': FORMAT, 'rows': len(next_k), 'pairs': pairs,
          'next': _encode(next_k), 'back': _encode(back)}


def _continues(state: dict, rows: int, pairs: int) -> bool:
  return state.get('format') == FORMAT and state['rows'] == rows and state['pairs'] == pairs


def _first_unread(state: dict, pairs: int) -> int:
  """The first global index (in `pairs` pairs' epochs) from which a run saved in `state`
  can go on without showing a pair twice in an epoch."""
  if state.get('format') == FORMAT:
    rows = state['rows']
    read = int((np.arange(rows) + _decode(state['next']) * rows).max())
    if state['pairs'] == pairs:
      return read
    return -(-read // state['pairs']) * pairs  # the next epoch of the new corpus
  # Format 1: (epoch, position) in one global order, which this one does not share.
  return (int(state['epoch']) + (int(state['position']) > 0)) * pairs


def _described(state: dict) -> str:
  if state.get('format') == FORMAT:
    return f'data.batch_size={state["rows"]} and {state["pairs"]} pairs'
  return 'an earlier version (one global order)'


def _encode(array: np.ndarray) -> str:
  return base64.b64encode(zlib.compress(array.astype('<i8').tobytes(), 6)).decode()


def _decode(text: str) -> np.ndarray:
  return np.frombuffer(zlib.decompress(base64.b64decode(text)), '<i8').astype(np.int64)


def _arrange(flat: np.ndarray, lengths: np.ndarray, row_of: np.ndarray, rows: int,
             length: int, field: str) -> dict:
  """Pairs' tokens (`flat`, back to back) placed one after another in their rows
  (`row_of`, non-decreasing)."""
  tokens = np.zeros((rows, length), np.int32)
  segments = np.zeros((rows, length), np.int32)
  positions = np.zeros((rows, length), np.int32)
  if len(lengths):
    ends = np.cumsum(lengths)
    starts = ends - lengths
    first = np.r_[True, row_of[1:] != row_of[:-1]]  # first pair of its row
    row_start = np.maximum.accumulate(np.where(first, starts, 0))
    within = np.arange(len(flat)) - np.repeat(starts, lengths)
    column = np.repeat(starts - row_start, lengths) + within
    row = np.repeat(row_of, lengths)
    rank = np.arange(len(lengths)) - np.maximum.accumulate(
        np.where(first, np.arange(len(lengths)), 0)) + 1
    tokens[row, column] = flat
    segments[row, column] = np.repeat(rank, lengths)
    positions[row, column] = within
  return {field: tokens, f'{field}_segment_ids': segments, f'{field}_positions': positions}


class Prefetch:
  """Batches made ahead in a thread, so a step does not wait for input that keeps up;
  `get_state` is the position after the last batch handed out. An error in the thread
  is raised by the `next` that would have had its batch; `close` never waits on it."""

  def __init__(self, stream: Stream, depth: int = 2):
    self.stream, self.depth = stream, depth
    self._local = stream.local_state()
    self._start()

  def _start(self):
    self._queue = queue.Queue(self.depth)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._produce, daemon=True)
    self._thread.start()

  def _hand(self, item) -> None:
    """Queue `item`, unless told to stop first (then the consumer wants nothing)."""
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return
      except queue.Full:
        continue

  def _produce(self):
    try:
      while not self._stop.is_set():
        batch = next(self.stream)
        self._hand((batch, self.stream.local_state()))
    except BaseException as e:  # noqa: BLE001 (handed to the consumer, raised there)
      self._hand((e, None))

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch, local = self._queue.get()
    if isinstance(batch, BaseException):
      self._queue.put((batch, None))  # every later call fails alike, none blocks
      raise batch
    self._local = local
    return batch

  def get_state(self) -> dict:
    return self.stream.get_state(self._local)

  def set_state(self, state: dict) -> None:
    self.close()
    self.stream.set_state(state)
    self._local = self.stream.local_state()
    self._start()

  def close(self) -> None:
    self._stop.set()
    self._thread.join()
