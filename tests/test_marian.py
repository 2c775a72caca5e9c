"""data/marian.py: a Marian (OPUS-MT) vocabulary numbers and splits text as Hugging Face's
`MarianTokenizer` does (each side by its own SentencePiece model, target-language tokens
kept whole), in our ids; it survives storage as one file, refuses damage in one line, and
samples segmentations per side. SentencePiece models trained in the test."""
import json

import numpy as np
import pytest
import transformers

import opus_mt
from transformer_jax.data import tokenizer as tokenizer_lib
from transformer_jax.data.marian import MarianVocabulary
from transformer_jax.data.tokenizer import EOS_ID, PAD_ID, UNK_ID
from transformer_jax.errors import UserError


@pytest.fixture(scope='module')
def marian(tmp_path_factory):
  """(our vocabulary stored and loaded as a file, MarianTokenizer of the same files)."""
  directory = tmp_path_factory.mktemp('tokenizer')
  opus_mt.write_tokenizer(directory)
  vocab = json.loads((directory / 'vocab.json').read_text())
  built = MarianVocabulary.build(
      (directory / 'source.spm').read_bytes(), (directory / 'target.spm').read_bytes(),
      vocab, {'pad': '<pad>', 'eos': '</s>', 'unk': '<unk>'})
  path = directory / tokenizer_lib.VOCAB_FILE
  path.write_bytes(built.serialized())
  return (tokenizer_lib.load(str(path), len(vocab)),
          transformers.MarianTokenizer.from_pretrained(str(directory)))


def test_ids_are_marians_permuted_pad_eos_unk_first(marian):
  ours, theirs = marian
  ids = ours.marian_ids
  assert sorted(ids) == list(range(ours.vocab_size))
  assert [ours.piece(i) for i in (PAD_ID, EOS_ID, UNK_ID)] == ['<pad>', '</s>', '<unk>']
  assert [ids[i] for i in (PAD_ID, EOS_ID, UNK_ID)] == [
      theirs.pad_token_id, theirs.eos_token_id, theirs.unk_token_id]
  assert ours.marian_vocab() == theirs.get_vocab()


def test_both_sides_split_and_number_as_marian_tokenizer(marian):
  ours, theirs = marian
  pairs = opus_mt.pairs(50, seed=7)
  sources = [f'{opus_mt.LANGUAGE_TOKENS[i % 3]}{" " * (i % 2)}{s}' if i % 3 < 2 else s
             for i, (s, _) in enumerate(pairs)] + ['Ünïcödé ☃ words', '']
  targets = [t for _, t in pairs] + ['Ünïcödé ☃', '']
  ids = np.asarray(ours.marian_ids)
  assert [list(ids[x]) + [theirs.eos_token_id] for x in ours.encode_batch(sources)] == \
      theirs(sources)['input_ids']
  encoded = ours.encode_batch(targets, 'target')
  assert [list(ids[x]) + [theirs.eos_token_id] for x in encoded] == \
      theirs(text_target=targets)['input_ids']
  assert encoded[0] != ours.encode(targets[0], 'source')  # the other side's model
  assert [ours.decode(x) for x in encoded] == theirs.batch_decode(
      [list(ids[x]) for x in encoded], skip_special_tokens=True)


def test_a_damaged_vocabulary_is_one_line(marian, tmp_path):
  ours, _ = marian
  broken = tmp_path / tokenizer_lib.VOCAB_FILE
  broken.write_bytes(ours.serialized()[:len(ours.serialized()) // 2])
  with pytest.raises(UserError, match='damaged Marian vocabulary.*import the model again'):
    tokenizer_lib.load(str(broken), ours.vocab_size)


def test_subword_samples_come_from_each_sides_model(marian):
  """Reproducible by seed; each side sampled from its own SentencePiece model (the best
  split is among the samples)."""
  ours, _ = marian
  text = opus_mt.pairs(1, seed=3)[0]
  for side, line in zip(('source', 'target'), text):
    draws = [tuple(ours.sample_batch([line], 0.1, seed, side)[0]) for seed in range(40)]
    assert ours.sample_batch([line], 0.1, 7, side)[0] == list(draws[7])
    assert len(set(draws)) > 1 and tuple(ours.encode(line, side)) in draws
