"""sacreBLEU scores of a corpus: BLEU and chrF with the signatures that make them
comparable with other papers' numbers (cased, detokenized, 13a by default)."""
from __future__ import annotations

import sacrebleu


def scores(hypotheses: list[str], references: list[str], tokenize: str = '13a',
           lowercase: bool = False) -> dict:
  """Corpus BLEU and chrF of `hypotheses` against one reference each, with signatures."""
  bleu = sacrebleu.metrics.BLEU(tokenize=tokenize, lowercase=lowercase)
  chrf = sacrebleu.metrics.CHRF(lowercase=lowercase)
  b = bleu.corpus_score(hypotheses, [references])
  c = chrf.corpus_score(hypotheses, [references])
  return {'bleu': b.score, 'bleu_signature': str(bleu.get_signature()),
          'bleu_detail': str(b), 'chrf': c.score, 'chrf_signature': str(chrf.get_signature()),
          'sentences': len(hypotheses)}
