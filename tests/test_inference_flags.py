"""The decoding flags of translate and evaluate (inference_flags.py) become Settings; the
output limit keeps its old name as an alias."""
import pytest
from absl import flags

from transformer_jax import inference, inference_flags
from transformer_jax.errors import UserError


@pytest.fixture
def parse():
  def parse_flags(*argv):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(['translate', *argv])
    return inference_flags.settings()
  yield parse_flags
  flags.FLAGS.unparse_flags()


def test_defaults_are_the_papers_beam_search(parse):
  assert parse() == inference.Settings(beam_size=4, alpha=0.6, method='beam')


def test_every_flag_reaches_its_setting(parse):
  s = parse('--beam_size=2', '--alpha=1.0', '--max_extra_len=7', '--batch_size=3',
            '--max_input_len=9', '--decode=sample', '--temperature=0.5', '--top_k=4', '--seed=5')
  assert s == inference.Settings(beam_size=2, alpha=1.0, max_extra_len=7, batch_size=3,
                                 max_input_len=9, method='sample', temperature=0.5, top_k=4,
                                 seed=5)
  assert parse('--max_len=11').max_extra_len == 11  # the flag's earlier name


def test_a_bad_value_is_a_user_error(parse):
  with pytest.raises(UserError, match='--max_extra_len must be at least 0, got -5'):
    parse('--max_len=-5')
