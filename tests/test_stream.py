"""The training stream (data/stream.py): packed batches of fixed shapes, one pair per
row without packing, long pairs dropped or truncated, a global order that depends only
on the seed and the step, each process's rows of the global batch, and exact resume
from (epoch, position) on any number of processes."""
import collections

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


def test_an_epoch_holds_every_stored_pair_once(pipeline_corpus):
  """The rows of the batches up to the end of epoch 0 hold each of its pairs (those
  within max_len) exactly once, as the store holds them, plus pairs of epoch 1 read by
  then; nothing else."""
  config, _, store = pipeline_corpus
  stream = make(config, store)
  found = collections.Counter()
  while stream.epoch == 0 or any(epoch == 0 for epoch, _ in stream.get_state()['deferred']):
    batch = next(stream)
    segments = batch['source_segment_ids']
    found.update(tuple(batch['source'][r][segments[r] == k].tolist())
                 for r in range(8) for k in range(1, segments[r].max() + 1))

  def stored(epoch, end):  # pairs with both sides within max_len
    ids = stream.pair_ids(epoch, range(end))
    lengths = store.lengths(ids)
    ids = ids[(lengths['source'] <= 32) & (lengths['target'] <= 32)]
    return collections.Counter(tuple(t.tolist()) for t in store.tokens(ids, 'source'))
  epoch_0, epoch_1 = stored(0, len(store)), stored(1, stream.position)
  assert not epoch_0 - found  # all of epoch 0
  assert not found - epoch_0 - epoch_1  # and nothing that was not read
  assert sum(found.values()) == sum(epoch_0.values()) + sum(epoch_1.values()) - len(
      stream.get_state()['deferred'])


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
  with pytest.raises(UserError, match='No training pair fits data.max_len=2'):
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
  while stream.epoch == 0 and stream.position < len(store) - 40:
    next(stream)
  state = stream.get_state()
  uninterrupted = take(stream, 8)  # crosses into epoch 1
  assert stream.epoch == 1
  assert_same_batches(take(make(config, store, state=state), 8), uninterrupted)


@pytest.mark.parametrize('count', [2, 4])
def test_processes_take_disjoint_rows_that_make_the_global_batch(pipeline_corpus, count):
  """Process i of N gets rows [i*8/N, (i+1)*8/N) of the 1-process batch, and all end at
  the same (global) state: a run resumes on any number of processes."""
  config, _, store = pipeline_corpus
  whole = take(make(config, store), 3)
  parts = [make(config, store, i, count) for i in range(count)]
  for batch in whole:
    pieces = [next(p) for p in parts]
    for key in batch:
      np.testing.assert_array_equal(np.concatenate([p[key] for p in pieces]), batch[key])
  assert len({str(p.get_state()) for p in parts}) == 1
  with pytest.raises(UserError, match='divisible by the number of processes'):
    make(config, store, 0, 3)


def test_prefetch_hands_out_the_same_batches_and_the_consumed_state(pipeline_corpus):
  config, _, store = pipeline_corpus
  plain = make(config, store)
  ahead = stream_lib.Prefetch(make(config, store), depth=3)
  try:
    assert_same_batches(take(ahead, 4), take(plain, 4))
    assert ahead.get_state() == plain.get_state()  # not the position it has made ahead
    ahead.set_state({'epoch': 0, 'position': 0})
    assert_same_batches(take(ahead, 2), take(make(config, store), 2))
  finally:
    ahead.close()
