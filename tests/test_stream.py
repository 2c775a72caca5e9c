"""The training stream (data/stream.py): packed batches of fixed shapes, one pair per
row without packing, long pairs dropped or truncated, a global order that depends only
on the seed and the step, each process's rows of the global batch, each process's work
bound by its own rows, and exact resume on any number of processes."""
import collections
import threading

import numpy as np
import pytest

from transformer_jax.data import pipeline, stream as stream_lib
from transformer_jax.data.tokenizer import EOS_ID, PAD_ID
from transformer_jax.errors import UserError


def make(config, store, index=0, count=1, state=None):
  s = stream_lib.Stream(store, config.data, config.seed, process_index=index,
                        process_count=count)
  if state is not None:
    s.set_state(state)
  return s


def take(stream, n):
  return [next(stream) for _ in range(n)]


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert set(x) == set(y)
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def check_packed_row(batch, row, max_len):
  for field in pipeline.FIELDS:
    tokens = batch[field][row]
    segments = batch[f'{field}_segment_ids'][row]
    positions = batch[f'{field}_positions'][row]
    assert tokens.shape == (max_len,)
    np.testing.assert_array_equal(tokens != PAD_ID, segments > 0)
    for segment in set(segments[segments > 0].tolist()):
      where = np.flatnonzero(segments == segment)
      assert np.array_equal(where, np.arange(where[0], where[-1] + 1))  # contiguous
      np.testing.assert_array_equal(positions[where], np.arange(len(where)))
      assert tokens[where[-1]] == EOS_ID and EOS_ID not in tokens[where[:-1]]
  # The i-th source sentence of a row pairs with the i-th target sentence.
  assert set(batch['source_segment_ids'][row].tolist()) - {0} == set(
      batch['target_segment_ids'][row].tolist()) - {0}


def test_packed_batches_have_fixed_shapes_and_consistent_masks(pipeline_corpus):
  config, _, store = pipeline_corpus
  stream = make(config, store)
  for batch in take(stream, 3):
    assert set(batch) == {f + s for f in pipeline.FIELDS
                          for s in ('', '_segment_ids', '_positions')}
    for value in batch.values():
      assert value.shape == (8, 32) and value.dtype == np.int32
    for row in range(8):
      check_packed_row(batch, row, 32)
    assert batch['source_segment_ids'].max() > 1  # rows really hold several pairs
    fill = (batch['source'] != PAD_ID).mean()
    assert fill > 0.6, fill


def placed_pairs(batch, stream):
  """(epoch, pair id) of each pair in `batch`, checked against the tokens the batch
  holds: the stream's account of what it placed must be what it placed."""
  rows = {}
  for row, epoch, pair in stream.placed:
    rows.setdefault(row - stream.mine[0], []).append((epoch, pair))
  for row, pairs in rows.items():
    segments = batch['source_segment_ids'][row]
    held = [batch['source'][row][segments == k].tolist() for k in range(1, segments.max() + 1)]
    stored = [t[:32].tolist() for t in stream.store.tokens(
        np.asarray([p for _, p in pairs]), 'source')]
    assert held == stored
  assert sum(len(p) for p in rows.values()) == sum(
      int(s.max()) for s in batch['source_segment_ids'])
  return [pair for pairs in rows.values() for pair in pairs]


def test_an_epoch_holds_every_stored_pair_once(pipeline_corpus):
  """By the time every pair of epoch 0 is placed, the batches held each pair that fits
  max_len exactly once in epoch 0, pairs deferred to a later batch included, and no
  pair of epoch 1 twice."""
  config, _, store = pipeline_corpus
  stream = make(config, store)
  found = collections.Counter()
  while stream.epoch == 0:
    found.update(placed_pairs(next(stream), stream))
  lengths = store.lengths(np.arange(len(store)))
  fitting = np.flatnonzero((lengths['source'] <= 32) & (lengths['target'] <= 32))
  assert {pair for (epoch, pair) in found if epoch == 0} == set(fitting.tolist())
  assert max(found.values()) == 1
  assert {epoch for epoch, _ in found} == {0, 1}  # rows run on into the next epoch


def test_unpacked_batches_hold_one_pair_per_row(pipeline_corpus, with_data):
  config, _, store = pipeline_corpus
  batch = next(make(with_data(config, packing=False), store))
  assert batch['source'].shape == (8, 32) and batch['source_segment_ids'].max() == 1
  for row in range(8):
    check_packed_row(batch, row, 32)


def test_long_pairs_are_dropped_or_truncated(pipeline_corpus, with_data):
  config, _, store = pipeline_corpus
  full_rows = {}
  for truncate in (False, True):
    short = with_data(config, max_len=12, truncate=truncate, packing=False)
    rows = np.concatenate([b['source'] for b in take(make(short, store), 10)])
    lengths = (rows != PAD_ID).sum(1)
    assert lengths.max() <= 12 and (rows[np.arange(len(rows)), lengths - 1] == EOS_ID).all()
    full_rows[truncate] = np.mean(lengths == 12)
  # Half the synthetic sentences are longer than 12 tokens: truncated, they fill rows.
  assert full_rows[True] > 0.6 and full_rows[False] < 0.4
  with pytest.raises(UserError, match='training pairs in a row fits data.max_len=2'):
    next(make(with_data(config, max_len=2), store))


def test_same_seed_same_batches_other_seed_other_batches_new_order_each_epoch(pipeline_corpus):
  config, _, store = pipeline_corpus
  assert_same_batches(take(make(config, store), 3), take(make(config, store), 3))
  other = config.copy_and_resolve_references()
  other.seed = 1
  assert not np.array_equal(next(make(config, store))['source'],
                            next(make(other, store))['source'])
  stream = make(config, store)
  assert not np.array_equal(stream.pair_ids(0, range(50)), stream.pair_ids(1, range(50)))


def test_restored_stream_continues_exactly_across_an_epoch(pipeline_corpus):
  config, _, store = pipeline_corpus
  stream = make(config, store)
  states = []
  while stream.epoch == 0:
    states.append(stream.get_state())
    next(stream)
  uninterrupted = take(make(config, store, state=states[-4]), 8)  # crosses into epoch 1
  stream = make(config, store, state=states[-4])
  assert_same_batches(take(stream, 8), uninterrupted)
  assert stream.epoch == 1
  assert_same_batches(take(make(config, store, state=stream.get_state()), 3), take(stream, 3))


@pytest.mark.parametrize('count', [2, 4])
def test_processes_take_disjoint_rows_that_make_the_global_batch(pipeline_corpus, count):
  """Process i of N gets rows [i*8/N, (i+1)*8/N) of the 1-process batch, and their states
  together are the 1-process state: a run resumes on any number of processes."""
  config, _, store = pipeline_corpus
  one = make(config, store)
  whole = take(one, 3)
  parts = [make(config, store, i, count) for i in range(count)]
  for batch in whole:
    pieces = [next(p) for p in parts]
    for key in batch:
      np.testing.assert_array_equal(np.concatenate([p[key] for p in pieces]), batch[key])
  merged = stream_lib.merge_states([p.local_state() for p in parts], len(store))
  assert merged == one.get_state()
  resumed = [make(config, store, i, count, state=merged) for i in range(count)]
  for batch in take(one, 2):
    pieces = [next(p) for p in resumed]
    np.testing.assert_array_equal(np.concatenate([p['target'] for p in pieces]),
                                  batch['target'])
  with pytest.raises(UserError, match='divisible by the number of processes'):
    make(config, store, 0, 3)


def test_a_host_reads_only_for_its_own_rows_whatever_the_number_of_hosts(pipeline_corpus,
                                                                         with_data):
  """Process 0 with 2 rows of its own, of 1, 4 or 16 processes: it looks up the same
  number of pairs, whatever the global batch (2 to 32 rows)."""
  config, _, store = pipeline_corpus
  reads = {}
  for hosts in (1, 4, 16):
    stream = make(with_data(config, batch_size=2 * hosts), store, 0, hosts)
    for _ in range(40):
      assert next(stream)['source'].shape == (2, 32)
    reads[hosts] = stream.reads
  assert max(reads.values()) <= 1.5 * min(reads.values()), reads
  assert reads[16] < 32 * stream_lib._AHEAD, reads  # less than one read for each global row


def test_a_saved_position_of_another_batch_size_or_version_goes_on_without_repeats(
    pipeline_corpus, with_data, capsys):
  """A state of 8 rows resumed with 4: no pair of the epoch is placed twice; a position
  of the earlier version (one global order) goes on from the start of the next epoch."""
  config, _, store = pipeline_corpus
  stream = make(config, store)
  seen = collections.Counter()
  for _ in range(20):
    seen.update(placed_pairs(next(stream), stream))
  narrower = make(with_data(config, batch_size=4), store, state=stream.get_state())
  assert 'data.batch_size=8' in capsys.readouterr().err
  while narrower.epoch == 0:
    next(narrower)
    seen.update((e, p) for _, e, p in narrower.placed)
  assert max(seen.values()) == 1
  old = make(config, store, state={'epoch': 2, 'position': 17, 'deferred': [[2, 5]]})
  assert 'an earlier version' in capsys.readouterr().err
  next(old)
  assert {epoch for _, epoch, _ in old.placed} == {3}


def test_prefetch_hands_out_the_same_batches_and_the_consumed_state(pipeline_corpus):
  config, _, store = pipeline_corpus
  plain = make(config, store)
  ahead = stream_lib.Prefetch(make(config, store), depth=3)
  try:
    assert_same_batches(take(ahead, 4), take(plain, 4))
    assert ahead.get_state() == plain.get_state()  # not the position it has made ahead
    ahead.set_state(make(config, store).get_state())
    assert_same_batches(take(ahead, 2), take(make(config, store), 2))
  finally:
    ahead.close()


def test_prefetch_passes_an_input_error_on_and_never_hangs_on_close(pipeline_corpus,
                                                                    broken_input):
  """The error reaches the consumer after the batches made before it, on every later
  call too; and a consumer that stops while the thread holds an error for a full queue
  closes at once (the thread used to wait forever to hand it over)."""
  config, _, store = pipeline_corpus
  ahead = stream_lib.Prefetch(broken_input(make(config, store), 3), depth=1)
  take(ahead, 2)
  for _ in range(2):
    with pytest.raises(UserError, match='the input broke'):
      next(ahead)
  ahead.close()
  stuck = stream_lib.Prefetch(broken_input(make(config, store), 2), depth=1)
  while stuck._thread.is_alive() and stuck.stream.made < 2:  # batch 1 queued, 2 failed
    stuck._thread.join(0.01)
  closing = threading.Thread(target=stuck.close, daemon=True)
  closing.start()
  closing.join(60)  # not a speed limit: a hang's detector
  assert not closing.is_alive(), 'Prefetch.close() hangs on a thread holding an error'

