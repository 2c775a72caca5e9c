"""The Grain input pipeline (data/pipeline.py): tokenized splits, subword sampling,
packed and padded batches of fixed shapes, determinism and exact resume of the iterator,
host shards, evaluation batches, and a split's texts in their original order."""
import numpy as np
import pytest

from transformer_jax.data import datasets, pipeline
from transformer_jax.data.tokenizer import EOS_ID, PAD_ID
from transformer_jax.errors import UserError


def test_subword_regularization_samples_reproducible_spellings_of_each_pair(pipeline_corpus,
                                                                           with_data):
  config, tokenizer, _ = pipeline_corpus
  sampled = with_data(config, subword_samples=4)
  source = datasets.data_source(config.data, 'validation')
  best = pipeline.TokenizedSplit(source, sampled.data, tokenizer)  # no seed: not sampled
  split = pipeline.TokenizedSplit(source, sampled.data, tokenizer, sample_seed=0)
  again = pipeline.TokenizedSplit(source, sampled.data, tokenizer, sample_seed=0)
  other_seed = pipeline.TokenizedSplit(source, sampled.data, tokenizer, sample_seed=1)
  assert len(best) == len(source) and len(split) == 4 * len(source)
  by_index = {int(i): n for n, i in enumerate(best.index)}
  spellings = {}
  for n in range(len(split)):
    pair, original = split[n], best[by_index[split[n]['index']]]
    for field in pipeline.FIELDS:
      assert pair[field][-1] == EOS_ID
      assert tokenizer.decode(pair[field]) == tokenizer.decode(original[field])
      spellings.setdefault((field, pair['index']), set()).add(tuple(pair[field]))
      np.testing.assert_array_equal(pair[field], again[n][field])  # what resume rebuilds
  varied = sum(len(s) > 1 for s in spellings.values()) / len(spellings)
  assert varied > 0.5, varied
  assert any(not np.array_equal(split[n]['target'], other_seed[n]['target'])
             for n in range(len(split)))


def test_training_split_is_sampled_only_when_configured(pipeline_corpus, with_data):
  config, tokenizer, train = pipeline_corpus
  assert len(pipeline.training_split(config, tokenizer)) == len(train)
  sampled = with_data(config, subword_samples=2)
  assert len(pipeline.training_split(sampled, tokenizer)) == 2 * len(train)


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
  config, _, train = pipeline_corpus
  batches = iter(pipeline.train_dataset(config, train))
  for _ in range(3):
    batch = next(batches)
    assert set(batch) == {f + s for f in pipeline.FIELDS
                          for s in ('', '_segment_ids', '_positions')}
    for value in batch.values():
      assert value.shape == (8, 32) and value.dtype == np.int32
    for row in range(8):
      check_packed_row(batch, row, 32)
    assert batch['source_segment_ids'].max() > 1  # rows really hold several pairs


def test_unpacked_batches_hold_one_pair_per_row(pipeline_corpus, with_data):
  config, _, train = pipeline_corpus
  config = with_data(config, packing=False)
  batch = next(iter(pipeline.train_dataset(config, train)))
  assert batch['source'].shape == (8, 32) and batch['source_segment_ids'].max() == 1
  for row in range(8):
    check_packed_row(batch, row, 32)


def test_long_pairs_are_dropped_or_truncated(pipeline_corpus, with_data):
  config, _, train = pipeline_corpus
  full_rows = {}
  for truncate in (False, True):
    short = with_data(config, max_len=12, truncate=truncate, packing=False)
    batches = iter(pipeline.train_dataset(short, train))
    rows = np.concatenate([next(batches)['source'] for _ in range(10)])
    lengths = (rows != PAD_ID).sum(1)
    assert lengths.max() <= 12 and (rows[np.arange(len(rows)), lengths - 1] == EOS_ID).all()
    full_rows[truncate] = np.mean(lengths == 12)
  # Half the synthetic sentences are longer than 12 tokens: truncated, they fill rows.
  assert full_rows[True] > 0.6 and full_rows[False] < 0.4


def batches_from(config, split, n, state=None):
  iterator = iter(pipeline.train_dataset(config, split))
  if state is not None:
    iterator.set_state(state)
  return [next(iterator) for _ in range(n)]


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def test_same_seed_same_batches_other_seed_other_batches(pipeline_corpus, with_data):
  config, _, train = pipeline_corpus
  assert_same_batches(batches_from(config, train, 3), batches_from(config, train, 3))
  other = with_data(config)
  other.seed = 1
  assert not np.array_equal(batches_from(config, train, 1)[0]['source'],
                            batches_from(other, train, 1)[0]['source'])


def test_restored_iterator_continues_exactly(pipeline_corpus):
  config, _, train = pipeline_corpus
  iterator = iter(pipeline.train_dataset(config, train))
  for _ in range(5):
    next(iterator)
  state = iterator.get_state()
  uninterrupted = [next(iterator) for _ in range(4)]
  assert_same_batches(batches_from(config, train, 4, state=state), uninterrupted)


def test_host_shards_are_disjoint_and_cover_the_split(pipeline_corpus):
  config, tokenizer, _ = pipeline_corpus
  source = datasets.data_source(config.data, 'validation')
  shards = [pipeline.TokenizedSplit(source, config.data, tokenizer, process_index=i,
                                    process_count=3) for i in range(3)]
  indices = [set(s.index.tolist()) for s in shards]
  assert sum(len(s) for s in indices) == len(source)
  assert set().union(*indices) == set(range(len(source)))
  with pytest.raises(UserError, match='divisible by the number of hosts'):
    pipeline.train_dataset(config, shards[0], process_count=3)


def test_eval_batches_keep_every_example_in_order(pipeline_corpus):
  config, tokenizer, _ = pipeline_corpus
  source = datasets.data_source(config.data, 'validation')
  split = pipeline.TokenizedSplit(source, config.data, tokenizer)
  batches = list(pipeline.eval_batches(config, split, batch_size=64))
  assert len(source) == 200  # 3 full batches and 8 rows of a fourth
  assert len(batches) == 4 and all(b['source'].shape == (64, 32) for b in batches)
  index = np.concatenate([b['index'] for b in batches])
  assert sorted(index[index >= 0].tolist()) == list(range(200))
  np.testing.assert_array_equal(index[200:], -1)
  assert (batches[-1]['source'][200 - 3 * 64:] == PAD_ID).all()
  n = max(range(len(split)), key=lambda i: len(split[i]['source']))
  example = split[n]['source']  # the longest: truncated to 32, still ending in EOS
  assert len(example) > 32
  np.testing.assert_array_equal(batches[n // 64]['source'][n % 64],
                                np.append(example[:31], EOS_ID))


def test_eval_batches_align_across_hosts(pipeline_corpus):
  config, tokenizer, _ = pipeline_corpus
  source = datasets.data_source(config.data, 'validation')
  counts = [len(list(pipeline.eval_batches(
      config, pipeline.TokenizedSplit(source, config.data, tokenizer, process_index=i,
                                      process_count=3), batch_size=33, process_count=3)))
            for i in range(3)]
  # 67/67/66 examples (3, 3 and 2 batches of 33 alone): the same number of batches
  assert counts == [3, 3, 3]


def test_split_pairs_are_the_texts_in_their_original_order(pipeline_corpus):
  config, _, _ = pipeline_corpus
  sources, references = pipeline.split_pairs(config, 'validation')
  source = datasets.data_source(config.data, 'validation')
  assert len(sources) == len(references) == len(source) == 200
  for example in pipeline.read(source, [0, 17, 199]):
    i = int(example['index'])
    assert sources[i] == example['en'].decode() and references[i] == example['de'].decode()
