"""Datasets build and read offline; the Grain pipeline's batches, determinism, exact
resume and host sharding; each bad input gets one clear error."""
import gzip
import os
import pathlib

import numpy as np
import pytest

from transformer_jax import config as config_lib
from transformer_jax.data import datasets, pipeline, tokenizer as tokenizer_lib
from transformer_jax.data.tokenizer import EOS_ID, PAD_ID
from transformer_jax.errors import UserError

MULTI30K = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'multi30k'


def make_config(tfds_dir, **data):
  c = config_lib.defaults()
  c.model.vocab_size = 256
  c.data.tfds_dir = str(tfds_dir)
  c.data.max_len = 32
  c.data.batch_size = 8
  c.data.update(data)
  return config_lib.validate(c)


@pytest.fixture(scope='module')
def synthetic(tmp_path_factory):
  """The synthetic corpus and a vocabulary trained on it, built once for this module."""
  root = tmp_path_factory.mktemp('synthetic')
  config = make_config(root / 'tfds')
  tokenizer = pipeline.get_tokenizer(config, str(root / 'work'))
  train = pipeline.TokenizedSplit(datasets.data_source(config.data, 'train'), config.data,
                                  tokenizer)
  return config, tokenizer, train


def write_corpus(directory, split, source_lines, target_lines, gz=False):
  for lang, lines in (('en', source_lines), ('fr', target_lines)):
    path = directory / f'{split}.{lang}' if not gz else directory / f'{split}.{lang}.gz'
    data = ''.join(line + '\n' for line in lines).encode()
    path.write_bytes(gzip.compress(data) if gz else data)


PAIRS = [(f'the {n} cats sleep number {i}', f'les {n} chats dorment numero {i}')
         for i, n in enumerate(['two', 'three', 'four', 'five', 'six'] * 40)]


def parallel_text_config(tmp_path, **data):
  return make_config(tmp_path / 'tfds', name='parallel_text', data_dir=str(tmp_path / 'corpus'),
                     source_lang='en', target_lang='fr', **data)


# ------------------------------------------------------------------------ datasets


def test_synthetic_builds_offline_with_three_splits(synthetic):
  config, _, train = synthetic
  assert len(train) == 100_000
  validation = datasets.data_source(config.data, 'validation')
  assert len(validation) == 1000 and len(datasets.data_source(config.data, 'test')) == 1000
  example = validation[0]
  assert set(example) == {'en', 'de', 'index'} and example['en'].decode().endswith('.')


def test_multi30k_reads_the_shared_files(tmp_path):
  config = make_config(tmp_path, name='multi30k', data_dir=str(MULTI30K))
  sizes = {s: len(datasets.data_source(config.data, s)) for s in datasets.SPLITS}
  assert sizes == {'train': 29000, 'validation': 1014, 'test': 1000}
  source = datasets.data_source(config.data, 'test')
  first = next(ex for ex in pipeline.read(source, range(len(source))) if ex['index'] == 0)
  with gzip.open(MULTI30K / 'test_2016_flickr.en.gz', 'rt', encoding='utf-8') as f:
    assert first['en'].decode() == f.readline().rstrip('\n')


@pytest.mark.parametrize('gz', [False, True])
def test_parallel_text_reads_the_users_files(tmp_path, gz):
  (tmp_path / 'corpus').mkdir()
  write_corpus(tmp_path / 'corpus', 'train', *zip(*PAIRS), gz=gz)
  write_corpus(tmp_path / 'corpus', 'validation', *zip(*PAIRS[:7]), gz=gz)
  config = parallel_text_config(tmp_path)
  train = datasets.data_source(config.data, 'train')
  assert len(train) == len(PAIRS)
  by_index = {ex['index']: ex for ex in pipeline.read(train, range(len(train)))}
  assert by_index[3] == {'en': PAIRS[3][0].encode(), 'fr': PAIRS[3][1].encode(), 'index': 3}
  assert len(datasets.data_source(config.data, 'validation')) == 7
  with pytest.raises(UserError, match="no split 'test'"):
    datasets.data_source(config.data, 'test')


def test_edited_corpus_is_rebuilt(tmp_path):
  (tmp_path / 'corpus').mkdir()
  write_corpus(tmp_path / 'corpus', 'train', *zip(*PAIRS))
  config = parallel_text_config(tmp_path)
  assert len(datasets.data_source(config.data, 'train')) == len(PAIRS)
  write_corpus(tmp_path / 'corpus', 'train', *zip(*PAIRS[:10]))
  assert len(datasets.data_source(config.data, 'train')) == 10


# ------------------------------------------------------------------------ tokenizer


def test_tokenization_round_trips(synthetic):
  config, tokenizer, _ = synthetic
  source = datasets.data_source(config.data, 'validation')
  for example in pipeline.read(source, range(50)):
    for lang in ('en', 'de'):
      text = example[lang].decode()
      ids = tokenizer.encode(text)
      assert PAD_ID not in ids and EOS_ID not in ids
      assert tokenizer.decode(ids + [EOS_ID, 7, 7]) == text  # stops at EOS


def test_subword_regularization_samples_reproducible_spellings_of_each_pair(synthetic):
  config, tokenizer, _ = synthetic
  sampled = make_config(config.data.tfds_dir, subword_samples=4)
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


def test_training_split_is_sampled_only_when_configured(synthetic):
  config, tokenizer, train = synthetic
  assert len(pipeline.training_split(config, tokenizer)) == len(train)
  sampled = make_config(config.data.tfds_dir, subword_samples=2)
  assert len(pipeline.training_split(sampled, tokenizer)) == 2 * len(train)


def test_lowercased_data_gives_a_lowercase_vocabulary_and_records(synthetic, tmp_path):
  config, _, _ = synthetic
  lower = make_config(config.data.tfds_dir, lowercase=True)
  tokenizer = pipeline.get_tokenizer(lower, str(tmp_path))
  pieces = [tokenizer._sp.id_to_piece(i) for i in range(3, tokenizer.vocab_size)]
  assert all(p == p.lower() for p in pieces) and any(p != p.upper() for p in pieces)
  assert tokenizer_lib.load(tokenizer.path, 256, lowercase=True).encode(
      'The Dog SLEEPS.') == tokenizer.encode('the dog sleeps.')
  source = datasets.data_source(lower.data, 'validation')
  split = pipeline.TokenizedSplit(source, lower.data, tokenizer)
  for n, example in zip(range(20), pipeline.read(source, range(len(source)))):
    for field, lang in zip(pipeline.FIELDS, ('en', 'de')):
      text = example[lang].decode()
      assert text != text.lower()  # the corpus is cased; the records are not
      assert tokenizer.decode(split[n][field]) == text.lower()


def test_vocabulary_is_stored_and_reused(synthetic, tmp_path):
  config, tokenizer, _ = synthetic
  reloaded = tokenizer_lib.load(tokenizer.path, config.model.vocab_size)
  assert reloaded.encode('The dog sleeps.') == tokenizer.encode('The dog sleeps.')
  assert os.path.basename(tokenizer.path) == 'vocab.model'


def test_vocabulary_size_mismatch_is_refused(synthetic):
  config, tokenizer, _ = synthetic
  with pytest.raises(UserError, match=r'has 256 pieces but the config says '
                                      r'model.vocab_size=300.*--config.model.vocab_size=256'):
    tokenizer_lib.load(tokenizer.path, 300)


def test_corrupt_vocabulary_is_refused(tmp_path):
  path = tmp_path / 'vocab.model'
  path.write_bytes(b'not a model')
  with pytest.raises(UserError, match='not a SentencePiece model'):
    tokenizer_lib.load(str(path), 256)
  assert path.read_bytes() == b'not a model'  # nothing good (or bad) was overwritten


def test_too_large_vocabulary_is_a_clear_error(tmp_path):
  with pytest.raises(UserError, match='choose a smaller --config.model.vocab_size'):
    tokenizer_lib.train(['a b c', 'b c d'] * 50, 5000, str(tmp_path / 'v.model'))
  assert not (tmp_path / 'v.model').exists()


# ------------------------------------------------------------------------ batches


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


def test_packed_batches_have_fixed_shapes_and_consistent_masks(synthetic):
  config, _, train = synthetic
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


def test_unpacked_batches_hold_one_pair_per_row(synthetic):
  config, _, train = synthetic
  config = make_config(config.data.tfds_dir, packing=False)
  batch = next(iter(pipeline.train_dataset(config, train)))
  assert batch['source'].shape == (8, 32) and batch['source_segment_ids'].max() == 1
  for row in range(8):
    check_packed_row(batch, row, 32)


def test_long_pairs_are_dropped_or_truncated(synthetic):
  config, _, train = synthetic
  full_rows = {}
  for truncate in (False, True):
    short = make_config(config.data.tfds_dir, max_len=12, truncate=truncate, packing=False)
    batches = iter(pipeline.train_dataset(short, train))
    rows = np.concatenate([next(batches)['source'] for _ in range(10)])
    lengths = (rows != PAD_ID).sum(1)
    assert lengths.max() <= 12 and (rows[np.arange(len(rows)), lengths - 1] == EOS_ID).all()
    full_rows[truncate] = np.mean(lengths == 12)
  # Half the synthetic sentences are longer than 12 tokens: truncated, they fill rows.
  assert full_rows[True] > 0.3 and full_rows[False] < 0.2


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


def test_same_seed_same_batches_other_seed_other_batches(synthetic):
  config, _, train = synthetic
  assert_same_batches(batches_from(config, train, 3), batches_from(config, train, 3))
  other = make_config(config.data.tfds_dir)
  other.seed = 1
  assert not np.array_equal(batches_from(config, train, 1)[0]['source'],
                            batches_from(other, train, 1)[0]['source'])


def test_restored_iterator_continues_exactly(synthetic):
  config, _, train = synthetic
  iterator = iter(pipeline.train_dataset(config, train))
  for _ in range(5):
    next(iterator)
  state = iterator.get_state()
  uninterrupted = [next(iterator) for _ in range(4)]
  assert_same_batches(batches_from(config, train, 4, state=state), uninterrupted)


def test_host_shards_are_disjoint_and_cover_the_split(synthetic):
  config, tokenizer, _ = synthetic
  source = datasets.data_source(config.data, 'validation')
  shards = [pipeline.TokenizedSplit(source, config.data, tokenizer, process_index=i,
                                    process_count=3) for i in range(3)]
  indices = [set(s.index.tolist()) for s in shards]
  assert sum(len(s) for s in indices) == len(source)
  assert set().union(*indices) == set(range(len(source)))
  with pytest.raises(UserError, match='divisible by the number of hosts'):
    pipeline.train_dataset(config, shards[0], process_count=3)


def test_eval_batches_keep_every_example_in_order(synthetic):
  config, tokenizer, _ = synthetic
  source = datasets.data_source(config.data, 'validation')
  split = pipeline.TokenizedSplit(source, config.data, tokenizer)
  batches = list(pipeline.eval_batches(config, split, batch_size=64))
  assert len(batches) == 16 and all(b['source'].shape == (64, 32) for b in batches)
  index = np.concatenate([b['index'] for b in batches])
  assert sorted(index[index >= 0].tolist()) == list(range(1000))
  np.testing.assert_array_equal(index[1000:], -1)
  assert (batches[-1]['source'][1000 - 15 * 64:] == PAD_ID).all()
  example = split[0]['source']  # 55 tokens: truncated to 32, still ending in EOS
  assert len(example) > 32
  np.testing.assert_array_equal(batches[0]['source'][0], np.append(example[:31], EOS_ID))


def test_eval_batches_align_across_hosts(synthetic):
  config, tokenizer, _ = synthetic
  source = datasets.data_source(config.data, 'validation')
  counts = [len(list(pipeline.eval_batches(
      config, pipeline.TokenizedSplit(source, config.data, tokenizer, process_index=i,
                                      process_count=3), batch_size=111, process_count=3)))
            for i in range(3)]
  assert counts == [counts[0]] * 3  # 334/333/333 examples: the same number of batches


# ------------------------------------------------------------------------ bad input


def test_missing_files(tmp_path):
  (tmp_path / 'corpus').mkdir()
  with pytest.raises(UserError, match=r'Missing corpus file .*train\.en'):
    datasets.data_source(parallel_text_config(tmp_path).data, 'train')
  with pytest.raises(UserError, match='does not exist'):
    datasets.data_source(make_config(tmp_path, name='multi30k',
                                     data_dir=str(tmp_path / 'nope')).data, 'train')


def test_line_count_mismatch_names_files_and_counts(tmp_path):
  (tmp_path / 'corpus').mkdir()
  write_corpus(tmp_path / 'corpus', 'train', ['a', 'b', 'c'], ['x', 'y'])
  with pytest.raises(UserError, match=r'train\.en has 3 lines but .*train\.fr has 2'):
    datasets.data_source(parallel_text_config(tmp_path).data, 'train')


def test_undecodable_bytes_name_file_and_line(tmp_path):
  (tmp_path / 'corpus').mkdir()
  write_corpus(tmp_path / 'corpus', 'train', ['ok', 'fine'], ['bon', 'bien'])
  (tmp_path / 'corpus' / 'train.fr').write_bytes(b'bon\nbi\xffen\n')
  with pytest.raises(UserError, match=r'train\.fr, line 2: bytes that are not UTF-8'):
    datasets.data_source(parallel_text_config(tmp_path).data, 'train')
  assert not (tmp_path / 'tfds').exists() or not any((tmp_path / 'tfds').rglob('*.array_record*'))


def test_empty_split(tmp_path):
  (tmp_path / 'corpus').mkdir()
  write_corpus(tmp_path / 'corpus', 'train', [], [])
  with pytest.raises(UserError, match='empty'):
    datasets.data_source(parallel_text_config(tmp_path).data, 'train')


def test_unknown_dataset_name(tmp_path):
  with pytest.raises(UserError, match="Unknown dataset 'nonexistent_corpus'.*synthetic"):
    datasets.data_source(make_config(tmp_path, name='nonexistent_corpus').data, 'train')


def test_wmt_without_tensorflow_fails_fast(tmp_path):
  import importlib.util
  if importlib.util.find_spec('tensorflow') is not None:
    pytest.fail('this test expects the test environment without TensorFlow (no [tf] extra)')
  with pytest.raises(UserError, match=r"pip install -e '\.\[tf\]'"):
    datasets.data_source(make_config(tmp_path, name='wmt14_translate/de-en').data, 'train')
