"""sacreBLEU scores of a corpus: BLEU and chrF with the signatures that make them
comparable with other papers' numbers (cased, detokenized, 13a by default), and, for
papers that report it so (Multi30k's), lowercased BLEU on Moses-tokenized text: what
`multi-bleu.perl` gives on the output of Moses' tokenizer.perl (sacremoses, the Python
port of that tokenizer, then sacreBLEU with no tokenization of its own)."""
from __future__ import annotations

import functools

import sacrebleu


def scores(hypotheses: list[str], references: list[str], tokenize: str = '13a',
           lowercase: bool = False, moses_lang: str | None = None) -> dict:
  """Corpus BLEU and chrF of `hypotheses` against one reference each, with signatures;
  with `moses_lang` (the target language), also `bleu_moses_lc`."""
  bleu = sacrebleu.metrics.BLEU(tokenize=tokenize, lowercase=lowercase)
  chrf = sacrebleu.metrics.CHRF(lowercase=lowercase)
  b = bleu.corpus_score(hypotheses, [references])
  c = chrf.corpus_score(hypotheses, [references])
  return {'bleu': b.score, 'bleu_signature': str(bleu.get_signature()),
          'bleu_detail': str(b), 'chrf': c.score, 'chrf_signature': str(chrf.get_signature()),
          'sentences': len(hypotheses), **(moses_bleu(hypotheses, references, moses_lang)
                                           if moses_lang else {})}


@functools.cache
def _moses(lang: str):
  # Imported here: sacremoses takes 0.4 s to import, a cost every `train` start would pay.
  from sacremoses import MosesTokenizer  # noqa: PLC0415
  return MosesTokenizer(lang=lang)


def moses_bleu(hypotheses: list[str], references: list[str], lang: str) -> dict:
  """Lowercased BLEU on Moses-tokenized text (escape off: no &quot; entities)."""
  tokenizer = _moses(lang)
  tokenized = [[tokenizer.tokenize(t, escape=False, return_str=True) for t in texts]
               for texts in (hypotheses, references)]
  bleu = sacrebleu.metrics.BLEU(tokenize='none', lowercase=True)
  score = bleu.corpus_score(tokenized[0], [tokenized[1]])
  return {'bleu_moses_lc': score.score,
          'bleu_moses_lc_signature': f'moses-tokenizer:{lang}|{bleu.get_signature()}'}
