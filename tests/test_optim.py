"""The learning-rate schedules (optim.py), by hand."""
import numpy as np
import pytest

from transformer_jax import config as config_lib
from transformer_jax import optim
from transformer_jax.errors import UserError


def test_learning_rate_schedules_by_hand():
  """The paper's formula, and linear_decay: the same warm-up and peak, then a straight line
  to zero at num_steps (optax counts updates from 0, the paper's step from 1)."""
  c = config_lib.defaults()
  c.model.d_model, c.train.warmup_steps, c.train.learning_rate = 256, 100, 2.0
  c.train.num_steps = 500
  paper = lambda step: 2.0 * 256 ** -0.5 * min(step ** -0.5, step * 100 ** -1.5)
  rsqrt = optim.learning_rate_schedule(c)
  for step in (1, 50, 100, 101, 400, 2000):
    np.testing.assert_allclose(float(rsqrt(step - 1)), paper(step), rtol=1e-6)
  c.train.schedule = 'linear_decay'
  linear = optim.learning_rate_schedule(c)
  for step in (1, 50, 100):
    np.testing.assert_allclose(float(linear(step - 1)), paper(step), rtol=1e-6)
  np.testing.assert_allclose(float(linear(300 - 1)), paper(100) / 2, rtol=1e-6)
  assert float(linear(500 - 1)) == 0.0 and float(linear(600)) == 0.0
  c.train.num_steps = 100
  with pytest.raises(UserError, match='must exceed train.warmup_steps'):
    config_lib.validate(c)

