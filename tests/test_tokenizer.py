"""The SentencePiece vocabulary (data/tokenizer.py): round trips, lowercasing, stored and
reused; a vocabulary of the wrong size, a corrupt file or an impossible size is refused
with one clear error and nothing overwritten."""
import os

import pytest

from transformer_jax.data import datasets, pipeline, tokenizer as tokenizer_lib
from transformer_jax.data.tokenizer import EOS_ID, PAD_ID
from transformer_jax.errors import UserError


def test_tokenization_round_trips(pipeline_corpus):
  config, tokenizer, _ = pipeline_corpus
  source = datasets.data_source(config.data, 'validation')
  for example in pipeline.read(source, range(50)):
    for lang in ('en', 'de'):
      text = example[lang].decode()
      ids = tokenizer.encode(text)
      assert PAD_ID not in ids and EOS_ID not in ids
      assert tokenizer.decode(ids + [EOS_ID, 7, 7]) == text  # stops at EOS



def test_lowercased_data_gives_a_lowercase_vocabulary_and_records(pipeline_corpus, tmp_path,
                                                                  with_data):
  config, _, _ = pipeline_corpus
  lower = with_data(config, lowercase=True)
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



def test_vocabulary_is_stored_and_reused(pipeline_corpus, tmp_path):
  config, tokenizer, _ = pipeline_corpus
  reloaded = tokenizer_lib.load(tokenizer.path, config.model.vocab_size)
  assert reloaded.encode('The dog sleeps.') == tokenizer.encode('The dog sleeps.')
  assert os.path.basename(tokenizer.path) == 'vocab.model'



def test_vocabulary_size_mismatch_is_refused(pipeline_corpus):
  config, tokenizer, _ = pipeline_corpus
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

