"""The token store (data/store.py): what it holds equals the tokenizer's output, it is
keyed by what decides its ids (a changed vocabulary or setting reads a new store), an
interrupted build resumes at its missing shards, and it reads pairs across shards."""
import numpy as np

from transformer_jax.data import datasets, pipeline, store as store_lib
from transformer_jax.data.tokenizer import EOS_ID


def test_the_store_holds_the_tokenizers_ids_across_shards(pipeline_corpus, tmp_path):
  config, tokenizer, _ = pipeline_corpus
  source = datasets.data_source(config.data, 'train')
  directory = str(tmp_path / 'store')
  store_lib.build(source, config.data, tokenizer, directory, shards=3)
  store = store_lib.TokenStore(directory)
  assert len(store) == len(source) == 2000 and store.meta['shards'] == 3
  ids = np.asarray([0, 1, 666, 667, 1333, 1334, 1999, 5])  # around the shard boundaries
  examples = list(pipeline.read(source, ids.tolist()))
  for field, lang in (('source', 'en'), ('target', 'de')):
    expected = [tokenizer.encode(ex[lang].decode()) + [EOS_ID] for ex in examples]
    assert [t.tolist() for t in store.tokens(ids, field)] == expected
    np.testing.assert_array_equal(store.lengths(ids)[field], [len(e) for e in expected])
  totals = store.tokens_total()
  assert totals['source'] == sum(store.lengths(np.arange(2000))['source'])


def test_an_interrupted_build_resumes_at_its_missing_shard(pipeline_corpus, tmp_path):
  config, tokenizer, _ = pipeline_corpus
  source = datasets.data_source(config.data, 'train')
  root = tmp_path / 'store'
  store_lib.build(source, config.data, tokenizer, str(root), shards=4)
  (root / 'meta.json').unlink()  # as if killed before the end
  (root / 'shard-00002' / 'COMPLETE').unlink()
  (root / 'shard-00002' / 'source.npy').write_bytes(b'half-written')
  kept = (root / 'shard-00001' / 'source.npy').stat().st_mtime_ns
  store_lib.build(source, config.data, tokenizer, str(root), shards=4)
  assert (root / 'shard-00001' / 'source.npy').stat().st_mtime_ns == kept  # not redone
  store = store_lib.TokenStore(str(root))
  ids = np.arange(1000, 1500)  # shard 2
  assert [t.tolist() for t in store.tokens(ids, 'source')] == [
      tokenizer.encode(ex['en'].decode()) + [EOS_ID] for ex in pipeline.read(source, ids)]


def test_a_changed_vocabulary_or_setting_reads_another_store(pipeline_corpus, with_data,
                                                            tmp_path):
  config, tokenizer, store = pipeline_corpus
  workdir = str(tmp_path)
  assert pipeline.training_store(config, workdir, tokenizer).meta == store.meta
  lower = with_data(config, lowercase=True)
  directories = {pipeline.training_store(c, workdir, tokenizer).directory
                 for c in (config, lower)}
  assert len(directories) == 2
  data_id = datasets.dataset_id(config.data, 'train')
  assert store_lib.key(config.data, data_id, 'a' * 64) != store_lib.key(config.data, data_id,
                                                                         'b' * 64)
  other_direction = with_data(config, source_lang='de', target_lang='en')
  assert store_lib.key(config.data, data_id, 'a') != store_lib.key(other_direction.data,
                                                                   data_id, 'a')


def test_gather_reads_many_pairs_back_to_back_and_cuts_them_at_a_limit(pipeline_corpus):
  _, _, store = pipeline_corpus
  ids = np.asarray([1999, 0, 5, 5, 1000])
  pieces = store.tokens(ids, 'target')
  flat, lengths = store.gather(ids, 'target', limit=6)
  np.testing.assert_array_equal(lengths, [min(len(p), 6) for p in pieces])
  np.testing.assert_array_equal(flat, np.concatenate([p[:6] for p in pieces]))
  assert store.gather(np.zeros(0, np.int64), 'target')[0].size == 0
