"""sacreBLEU scores (scoring.py): known values, and the signatures that say how."""
import pytest

from transformer_jax import scoring


def test_perfect_and_disjoint_hypotheses():
  refs = ['The dog sleeps in the park .', 'Two cats eat a big cake .']
  perfect = scoring.scores(refs, refs)
  assert perfect['bleu'] == pytest.approx(100.0) and perfect['chrf'] == pytest.approx(100.0)
  assert perfect['sentences'] == 2
  disjoint = scoring.scores(['x y z w v u t', 'q r s p o n m'], refs)
  assert disjoint['bleu'] == pytest.approx(0.0)


def test_case_and_tokenization_are_in_the_signature():
  refs, hyps = ['The Dog sleeps.'], ['the dog sleeps.']
  cased, lower = scoring.scores(hyps, refs), scoring.scores(hyps, refs, lowercase=True)
  assert lower['bleu'] == pytest.approx(100.0) and cased['bleu'] < 100.0
  assert 'case:mixed' in cased['bleu_signature'] and 'tok:13a' in cased['bleu_signature']
  assert 'case:lc' in lower['bleu_signature']
  intl = scoring.scores(hyps, refs, tokenize='intl')
  assert 'tok:intl' in intl['bleu_signature'] and 'nc:6|nw:0' in intl['chrf_signature']
