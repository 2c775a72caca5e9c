"""A Marian (OPUS-MT) vocabulary, used as Marian uses it: two SentencePiece models (one per
side) whose pieces are numbered by `vocab.json`, as Hugging Face's `MarianTokenizer` does.

It is stored as one file (WORKDIR/vocab.model, as our own vocabulary is), so checkpoints,
`train.init_from` and the token store carry it unchanged: a header line, then JSON holding
both SentencePiece models and the piece numbering. Our ids reserve 0, 1, 2 for pad, eos and
unk (the model starts decoding from pad, see model.shift_right); Marian's own numbering
(eos 0, unk 1, pad last, in OPUS-MT) is kept beside them: `marian_ids[i]` is the Marian id
of our id i. Importing permutes the embedding rows by it, exporting permutes them back.
"""
from __future__ import annotations

import base64
import json
from typing import Iterable

import sentencepiece as spm

from transformer_jax.data.tokenizer import EOS_ID, PAD_ID, UNK_ID, Tokenizer, content
from transformer_jax.errors import UserError

HEADER = b'transformer_jax marian vocabulary 1\n'
SIDES = ('source', 'target')


def is_marian(data: bytes) -> bool:
  return data.startswith(HEADER)


def our_order(vocab: dict[str, int], pad: str, eos: str, unk: str) -> list[int]:
  """Marian ids in our order: pad, eos, unk at our PAD_ID, EOS_ID, UNK_ID (the first
  three), then every other piece by its Marian id."""
  special = {PAD_ID: vocab[pad], EOS_ID: vocab[eos], UNK_ID: vocab[unk]}
  first = [special[i] for i in range(len(special))]
  return first + sorted(set(vocab.values()) - set(first))


class MarianVocabulary(Tokenizer):
  """Text <-> our ids through Marian's models, in `Tokenizer`'s interface.

  Sources are split by the source model, targets by the target model; a multilingual
  model's target-language token (`>>deu<<`) opening a line is kept whole, as
  `MarianTokenizer` keeps it. A piece the numbering lacks is unk."""

  def __init__(self, data: bytes, path: str, lowercase: bool = False):
    self.path, self.lowercase, self._data = path, lowercase, data
    try:
      spec = json.loads(data[len(HEADER):])
      self._sides = {side: spm.SentencePieceProcessor(
          model_proto=base64.b64decode(spec[f'{side}_spm'])) for side in SIDES}
      self.marian_ids = list(spec['marian_ids'])
      self.pieces = list(spec['pieces'])  # ours: pieces[i] is our id i
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
      raise UserError(f'{path} is a damaged Marian vocabulary ({type(e).__name__}); import '
                      'the model again (python -m transformer_jax.import_model).') from None
    self._ids = {piece: i for i, piece in enumerate(self.pieces)}

  @classmethod
  def build(cls, source_spm: bytes, target_spm: bytes, vocab: dict[str, int],
            special: dict[str, str], path: str = '') -> 'MarianVocabulary':
    """From Marian's files: the two SentencePiece models, `vocab.json` and the pieces
    of pad, eos and unk."""
    marian_ids = our_order(vocab, special['pad'], special['eos'], special['unk'])
    by_id = {i: piece for piece, i in vocab.items()}
    spec = {'source_spm': base64.b64encode(source_spm).decode(),
            'target_spm': base64.b64encode(target_spm).decode(),
            'pieces': [by_id[i] for i in marian_ids], 'marian_ids': marian_ids}
    return cls(HEADER + json.dumps(spec, ensure_ascii=False).encode(), path)

  def serialized(self) -> bytes:
    return self._data

  def spm_model(self, side: str) -> bytes:
    return self._sides[side].serialized_model_proto()

  @property
  def vocab_size(self) -> int:
    return len(self.pieces)

  def piece(self, i: int) -> str:
    return self.pieces[i]

  def has_reserved_ids(self) -> bool:
    return True  # `our_order` numbers them so

  def marian_vocab(self) -> dict[str, int]:
    """`vocab.json`: each piece's Marian id."""
    return {piece: self.marian_ids[i] for i, piece in enumerate(self.pieces)}

  def encode_batch(self, texts: list[str], side: str = 'source',
                   **sampling) -> list[list[int]]:
    split = [_language_code(t) for t in self._normalized(texts)]
    pieces = self._sides[side].encode([text for _, text in split], out_type=str, **sampling)
    return [[self._ids.get(p, UNK_ID) for p in code + found]
            for (code, _), found in zip(split, pieces)]

  def sample_batch(self, texts: list[str], alpha: float, seed: int,
                   side: str = 'source') -> list[list[int]]:
    """One sampled segmentation per text, as `Tokenizer.sample_batch`, by the side's model."""
    spm.set_random_generator_seed(seed)
    return self.encode_batch(texts, side, enable_sampling=True, nbest_size=-1, alpha=alpha,
                             num_threads=1)

  def decode(self, ids: Iterable[int]) -> str:
    """Ids up to the first EOS, pad and unk dropped (as `skip_special_tokens`), back to
    text by the target model."""
    pieces = [self.pieces[i] for i in content(ids, (PAD_ID, EOS_ID, UNK_ID))]
    return self._sides['target'].decode_pieces(pieces).replace('\u2581', ' ').strip()


def _language_code(text: str) -> tuple[list[str], str]:
  """A leading `>>xx<<` apart from the rest (MarianTokenizer.remove_language_code)."""
  end = text.find('<<') if text.startswith('>>') else -1
  return ([text[:end + 2]], text[end + 2:]) if end != -1 else ([], text)
