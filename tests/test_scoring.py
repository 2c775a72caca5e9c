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


def test_lowercased_bleu_on_moses_tokenized_text():
  """As Multi30k papers report: tokenized as Moses' tokenizer.perl does, then lowercased
  (cased 13a counts "The" against "the" as a miss)."""
  hypotheses = ["The Dog's red ball is in the garden, next to the house."]
  references = ["the dog's red ball is in the garden, next to the house."]
  s = scoring.scores(hypotheses, references, moses_lang='en')
  assert s['bleu_moses_lc'] == pytest.approx(100.0) and s['bleu'] < 90.0
  assert s['bleu_moses_lc_signature'].startswith('moses-tokenizer:en|')
  assert 'case:lc' in s['bleu_moses_lc_signature'] and 'tok:none' in s['bleu_moses_lc_signature']
  german = scoring.scores(['Der Hund spielt.'], ['Ein Hund spielt .'], moses_lang='de')
  assert 0.0 < german['bleu_moses_lc'] < 100.0
