"""The input pipeline (data/pipeline.py): evaluation splits and their host shards,
evaluation batches, a split's texts in their original order, and the training stream
with subword sampling on the fly (the stream itself: test_stream.py; the store:
test_store.py)."""
import numpy as np
from transformer_jax.data import datasets, pipeline
from transformer_jax.data.tokenizer import EOS_ID, PAD_ID


def test_host_shards_are_disjoint_and_cover_the_split(pipeline_corpus):
  config, tokenizer, _ = pipeline_corpus
  source = datasets.data_source(config.data, 'validation')
  shards = [pipeline.TokenizedSplit(source, config.data, tokenizer, process_index=i,
                                    process_count=3) for i in range(3)]
  indices = [set(s.index.tolist()) for s in shards]
  assert sum(len(s) for s in indices) == len(source)
  assert set().union(*indices) == set(range(len(source)))


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


def test_subword_sampling_on_the_fly_varies_by_epoch_and_repeats_by_seed(pipeline_corpus,
                                                                        with_data):
  """K = 2 segmentations of each pair, one per epoch in turn, seeded by pair and epoch:
  the same text, other pieces; epoch 2 spells as epoch 0; a resumed stream respells
  exactly."""
  config, tokenizer, store = pipeline_corpus
  sampled = with_data(config, subword_samples=2, packing=False)
  stream = pipeline.train_stream(sampled, store, tokenizer, process_index=0, process_count=1)
  ids = stream.pair_ids(0, range(16))
  sampler = stream.sampler
  epochs = [sampler(ids, epoch) for epoch in (0, 1, 2)]
  best = store.tokens(ids, 'target')
  for e in epochs:
    assert [tokenizer.decode(t) for t in e['target']] == [tokenizer.decode(t) for t in best]
  spelled = [[tuple(t) for t in e['target']] for e in epochs]
  assert spelled[0] == spelled[2] and spelled[0] != spelled[1]
  assert spelled[0] != [tuple(t) for t in best]
  first = next(stream)
  state = stream.get_state()
  after = next(stream)
  stream.set_state(state)
  np.testing.assert_array_equal(next(stream)['source'], after['source'])
  assert first['source'].shape == (8, 32)
