"""The shared source/target subword vocabulary (SentencePiece), stored in the workdir;
or an imported Marian model's (data/marian.py), stored and used the same way.

Ids 0, 1, 2 are pad, eos and unk, so padding never collides with an unknown token; there
is no BOS piece (the decoder starts from the pad id, see model.shift_right).
"""
from __future__ import annotations

import io
import os
from typing import Iterable

import sentencepiece as spm

from transformer_jax import files
from transformer_jax.errors import UserError

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
VOCAB_FILE = 'vocab.model'
_MAX_TRAINING_SENTENCES = 2_000_000  # SentencePiece samples this many; plenty for a vocab


class Tokenizer:
  """Text <-> ids. `encode` adds no EOS; the pipeline appends it.

  With `lowercase` (config `data.lowercase`) text is lowercased before encoding, so the
  model reads and writes lowercased text only. Python's `str.lower`, as sacreBLEU's
  lowercased scores use, not SentencePiece's case folding, which turns "ß" into "ss".
  """

  def __init__(self, model_proto: bytes, path: str, lowercase: bool = False):
    self.path = path
    self.lowercase = lowercase
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)

  def _normalized(self, texts: list[str]) -> list[str]:
    return [t.lower() for t in texts] if self.lowercase else texts

  def serialized(self) -> bytes:
    """The SentencePiece model itself: two tokenizers are the same if these are."""
    return self._sp.serialized_model_proto()

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def piece(self, i: int) -> str:
    """The vocabulary's piece of id `i` (e.g. '<pad>', '▁the')."""
    return self._sp.id_to_piece(i)

  def encode(self, text: str, side: str = 'source') -> list[int]:
    return self.encode_batch([text], side)[0]

  def encode_batch(self, texts: list[str], side: str = 'source') -> list[list[int]]:
    """`side`: which language the texts are in ('source' or 'target'); one model serves
    both here, a Marian vocabulary has one per side."""
    del side
    return self._sp.encode(self._normalized(texts))

  def sample_batch(self, texts: list[str], alpha: float, seed: int,
                   side: str = 'source') -> list[list[int]]:
    """One segmentation of each text sampled from the unigram model's distribution
    (subword regularization), reproducibly: seeded, on one thread, since SentencePiece
    keeps one random generator per thread."""
    del side
    spm.set_random_generator_seed(seed)
    return self._sp.encode(self._normalized(texts), enable_sampling=True, nbest_size=-1,
                           alpha=alpha, num_threads=1)

  def decode(self, ids: Iterable[int]) -> str:
    """Ids up to the first EOS, padding dropped, back to detokenized text."""
    return self._sp.decode(content(ids, (PAD_ID,)))

  def has_reserved_ids(self) -> bool:
    """Whether the model numbers pad and eos as our pipeline and model do."""
    return (self._sp.pad_id(), self._sp.eos_id()) == (PAD_ID, EOS_ID)


def content(ids: Iterable[int], dropped) -> list[int]:
  """The ids before the first EOS, those in `dropped` left out."""
  out = []
  for i in map(int, ids):
    if i == EOS_ID:
      break
    if i not in dropped:
      out.append(i)
  return out


def train(sentences: Iterable[str], vocab_size: int, path: str,
          lowercase: bool = False) -> Tokenizer:
  """Train a unigram SentencePiece model on `sentences`; write it to `path` atomically."""
  model = io.BytesIO()
  if lowercase:
    sentences = (s.lower() for s in sentences)
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size,
        model_type='unigram', character_coverage=1.0, pad_id=PAD_ID, eos_id=EOS_ID,
        unk_id=UNK_ID, bos_id=-1, input_sentence_size=_MAX_TRAINING_SENTENCES,
        shuffle_input_sentence=True, num_threads=os.cpu_count() or 1,
        minloglevel=2)
  except RuntimeError as e:
    if 'Vocabulary size is too high' in str(e) or 'vocab_size' in str(e):
      raise UserError(f'model.vocab_size={vocab_size} is larger than this corpus supports '
                      f'({e}); choose a smaller --config.model.vocab_size.') from None
    raise
  files.write_atomically(path, model.getvalue())
  return Tokenizer(model.getvalue(), path, lowercase)


def from_bytes(data: bytes, path: str, lowercase: bool = False):
  """The vocabulary stored as `data`: ours (a SentencePiece model) or a Marian one."""
  from transformer_jax.data import marian  # noqa: PLC0415 (it imports this module's ids)
  if marian.is_marian(data):
    return marian.MarianVocabulary(data, path, lowercase)
  return Tokenizer(data, path, lowercase)


def load(path: str, vocab_size: int, lowercase: bool = False) -> Tokenizer:
  """Load a stored model; its size must equal the config's `model.vocab_size`."""
  try:
    tokenizer = from_bytes(files.path(path).read_bytes(), path, lowercase)
  except OSError as e:
    raise UserError(f'Cannot read the vocabulary {path}: {e.strerror}.') from None
  except RuntimeError:
    raise UserError(f'{path} is not a SentencePiece model (corrupt or another file). '
                    'Point data.vocab_path at a .model file, or remove it to retrain.') from None
  if tokenizer.vocab_size != vocab_size:
    raise UserError(
        f'The vocabulary {path} has {tokenizer.vocab_size} pieces but the config says '
        f'model.vocab_size={vocab_size}. Use --config.model.vocab_size='
        f'{tokenizer.vocab_size} to keep this vocabulary, or a new workdir to train one.')
  if not tokenizer.has_reserved_ids():
    raise UserError(f'The vocabulary {path} does not use pad={PAD_ID}, eos={EOS_ID}; '
                    'train it with transformer_jax (or those ids).')
  return tokenizer


def load_or_train(path: str, vocab_size: int, sentences,
                  lowercase: bool = False) -> Tokenizer:
  """The stored vocabulary if `path` exists (resume, decoding), else train one there.

  `sentences` is a callable returning the training text, so nothing is read on resume.
  """
  if files.path(path).exists():
    return load(path, vocab_size, lowercase)
  return train(sentences(), vocab_size, path, lowercase)

