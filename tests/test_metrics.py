"""What the user sees of training (metrics.py): per-token summaries by hand, and a
metrics.jsonl that reads on resume as if the run had never been interrupted."""
import math

import jax.numpy as jnp
import pytest

from transformer_jax import config as config_lib
from transformer_jax import metrics


def test_summarize_per_token():
  s = metrics.summarize({'loss': 30.0, 'nll': 20.0, 'correct': 5.0, 'tokens': 10.0})
  assert s == {'loss': 3.0, 'nll': 2.0, 'perplexity': pytest.approx(math.exp(2.0)),
               'accuracy': 0.5, 'tokens': 10.0}
  assert metrics.summarize({'loss': 0.0, 'nll': 0.0, 'correct': 0.0, 'tokens': 0.0})[
      'loss'] == 0.0  # an empty interval divides by one token, not zero


def test_device_sums_add_up_steps():
  history = [{'tokens': jnp.float32(3), 'loss': jnp.float32(1.5)},
             {'tokens': jnp.float32(4), 'loss': jnp.float32(2.0)}]
  assert metrics.device_sums(history) == {'tokens': 7.0, 'loss': 3.5}


def record(reporter, step):
  sums = {'loss': 2.0 * step, 'nll': 1.0, 'correct': 1.0, 'tokens': 2.0}
  return reporter.train(step, sums, {'learning_rate': 0.1, 'grad_norm': 1.0})


def test_records_past_the_restored_step_are_dropped(tmp_path, capsys):
  config = config_lib.defaults()
  reporter = metrics.Reporter(str(tmp_path), config, 0, 10)
  for step in (1, 2, 3, 4):
    record(reporter, step)
  reporter.eval(4, {'loss': 4.0, 'nll': 4.0, 'correct': 1.0, 'tokens': 2.0}, {'bleu': 12.5})
  reporter.close()
  out = capsys.readouterr().out
  assert 'step 4/10  loss 4.0000' in out and 'MFU n/a' in out  # a CPU's peak: not guessed
  assert 'mfu' not in metrics.read(str(tmp_path))[-1]
  assert [r['step'] for r in metrics.read(str(tmp_path))] == [1, 2, 3, 4]
  # Resumed from a checkpoint at step 2: steps 3 and 4 are trained again.
  reporter = metrics.Reporter(str(tmp_path), config, 2, 10)
  assert [r['step'] for r in metrics.read(str(tmp_path))] == [1, 2]
  assert metrics.read(str(tmp_path), 'eval') == []
  record(reporter, 3)
  reporter.close()
  assert [(r['step'], r['loss']) for r in metrics.read(str(tmp_path))] == [
      (1, 1.0), (2, 2.0), (3, 3.0)]
  assert list((tmp_path / 'tensorboard' / 'train').iterdir())
