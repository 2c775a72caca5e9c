"""The loss (loss.py): label-smoothed cross-entropy by hand, and the fused output
projection's values and gradients (cross-entropy, and R-Drop's KL) against plain autodiff
of optax."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

import pytest

from transformer_jax.loss import cross_entropy, projected_cross_entropy, projected_rdrop


def test_label_smoothed_cross_entropy_by_hand():
  logits = jnp.array([[2.0, 0.5, -1.0, 0.0]])
  loss, nll, correct = cross_entropy(logits, jnp.array([1]), label_smoothing=0.1)
  logp = np.log(np.exp(logits[0]) / np.exp(logits[0]).sum())
  expected = -(0.9 + 0.1 / 4) * logp[1] - (0.1 / 4) * (logp.sum() - logp[1])
  np.testing.assert_allclose(float(loss[0]), expected, rtol=1e-5)
  np.testing.assert_allclose(float(nll[0]), -logp[1], rtol=1e-5)
  assert float(correct[0]) == 0.0  # token 0 has the highest logit



@pytest.mark.parametrize('with_bias', [False, True])
def test_fused_projection_loss_and_gradients_equal_autodiff_of_optax(with_bias):
  """The custom VJP against plain autodiff of optax's smoothed-label cross-entropy, with
  and without a logits bias (model.logits_bias), whose gradient it also returns."""
  keys = jax.random.split(jax.random.key(0), 5)
  x = jax.random.normal(keys[0], (24, 16))
  kernel = jax.random.normal(keys[1], (16, 50)) * 0.5
  targets = jax.random.randint(keys[2], (24,), 0, 50)
  weights = jax.random.uniform(keys[3], (24,))
  bias = jax.random.normal(keys[4], (50,)) if with_bias else None

  def fused(x, kernel, bias):
    loss, nll, _ = projected_cross_entropy(x, kernel, targets, 0.1, 'dv', None, None, bias)
    return jnp.sum(loss * weights) + 0.3 * jnp.sum(nll)

  def reference(x, kernel, bias):
    logits = x @ kernel + (0 if bias is None else bias)
    labels = jax.nn.one_hot(targets, 50)
    loss = optax.softmax_cross_entropy(logits, optax.smooth_labels(labels, 0.1))
    nll = optax.softmax_cross_entropy(logits, labels)
    return jnp.sum(loss * weights) + 0.3 * jnp.sum(nll)

  np.testing.assert_allclose(fused(x, kernel, bias), reference(x, kernel, bias), rtol=1e-6)
  for ours, theirs in zip(jax.grad(fused, (0, 1, 2))(x, kernel, bias),
                          jax.grad(reference, (0, 1, 2))(x, kernel, bias)):
    if with_bias or ours is not None:
      np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)



@pytest.mark.parametrize('layout, with_bias', [('dv', False), ('vd', False), ('vd', True)])
def test_fused_rdrop_terms_and_gradients_equal_autodiff_of_a_plain_kl(layout, with_bias):
  """projected_rdrop against autodiff of the obvious implementation: logits, optax's
  cross-entropies, log_softmax, and KL(P1||P2) + KL(P2||P1) written out, under weights
  on every output so each term's gradient counts."""
  keys = jax.random.split(jax.random.key(1), 6)
  x = jax.random.normal(keys[0], (3, 2, 5, 16))  # [B, passes, T, D]
  kernel = jax.random.normal(keys[1], (16, 40) if layout == 'dv' else (40, 16)) * 0.5
  targets = jax.random.randint(keys[2], (3, 2, 5), 0, 40)
  w_loss, w_nll = jax.random.uniform(keys[3], (3, 2, 5)), jax.random.uniform(keys[4], (3, 2, 5))
  w_kl = jax.random.uniform(keys[5], (3, 5))
  bias = jax.random.normal(keys[2], (40,)) if with_bias else None

  def fused(x, kernel, bias):
    loss, nll, _, kl = projected_rdrop(x, kernel, targets, 0.1, layout, None, None, bias)
    return jnp.sum(loss * w_loss) + jnp.sum(nll * w_nll) + 2.5 * jnp.sum(kl * w_kl)

  def reference(x, kernel, bias):
    logits = x @ (kernel if layout == 'dv' else kernel.T) + (0 if bias is None else bias)
    labels = jax.nn.one_hot(targets, 40)
    loss = optax.softmax_cross_entropy(logits, optax.smooth_labels(labels, 0.1))
    nll = optax.softmax_cross_entropy(logits, labels)
    logp = jax.nn.log_softmax(logits)
    p1, p2 = logp[:, 0], logp[:, 1]
    kl = (jnp.sum(jnp.exp(p1) * (p1 - p2), -1) + jnp.sum(jnp.exp(p2) * (p2 - p1), -1))
    return jnp.sum(loss * w_loss) + jnp.sum(nll * w_nll) + 2.5 * jnp.sum(kl * w_kl)

  np.testing.assert_allclose(fused(x, kernel, bias), reference(x, kernel, bias), rtol=1e-5)
  for ours, theirs in zip(jax.grad(fused, (0, 1, 2))(x, kernel, bias),
                          jax.grad(reference, (0, 1, 2))(x, kernel, bias)):
    if with_bias or ours is not None:
      np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
