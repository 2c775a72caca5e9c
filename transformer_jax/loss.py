"""Section 5.4's label-smoothed cross-entropy, fused with the pre-softmax linear.

Smoothing puts epsilon uniformly over the vocabulary (as `optax.smooth_labels`), so per
token, with logits z, target t and lse = log sum_v exp(z_v):

  nll  = lse - z_t
  loss = (1 - eps) * nll + eps * (lse - mean_v z_v)
  d loss / d z = softmax(z) - (1 - eps) * onehot(t) - eps / V

The output layer is the widest op of the model (a quarter of the cpu-small FLOPs).
XLA's autodiff of logits -> log_softmax -> smoothing writes [tokens, vocab] arrays
several times (log-probabilities, a one-hot, the gradient, and a transposed copy of it
for the kernel's gradient). The custom VJP below writes the gradient once, with the
one-hot as a comparison fused into it, and computes the kernel's gradient in the layout
the kernel is stored in: about a fifth of a cpu-small train step.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from transformer_jax import precision


def cross_entropy(logits: jax.Array, targets: jax.Array, label_smoothing: float):
  """Per token: (smoothed loss, nll, correct) from fp32 logits [..., V]."""
  return _terms(logits, targets, label_smoothing)[:3]


def _terms(logits, targets, label_smoothing):
  """`cross_entropy`'s terms and lse. `logits` may be the output layer's product in the
  model's dtype: the sums run in fp32 either way."""
  # The target's logit is read before widening: XLA otherwise stores a widened fp32 copy
  # of all the logits (606 MB per chip in the base TPU preset) just for this gather.
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  target_logit = target_logit.astype(jnp.float32)
  logits = logits.astype(jnp.float32)
  top = jnp.max(logits, axis=-1)
  lse = top + jnp.log(jnp.sum(jnp.exp(logits - top[..., None]), axis=-1))
  nll = lse - target_logit
  loss = (1.0 - label_smoothing) * nll + label_smoothing * (lse - jnp.mean(logits, axis=-1))
  # The target is the argmax (ties aside): no separate argmax pass over the vocabulary.
  return loss, nll, (target_logit >= top).astype(jnp.float32), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def projected_cross_entropy(x: jax.Array, kernel: jax.Array, targets: jax.Array,
                            label_smoothing: float, layout: str = 'dv',
                            matmul_dtype: str | None = None, shardings=None, bias=None):
  """`cross_entropy(x @ kernel + bias)` for hidden states x [N, D] and the pre-softmax
  kernel ([D, V] for layout 'dv', [V, D] for 'vd'; `bias` [V] fp32 or None), with a
  gradient that touches the [N, V] logits once. Products take operands in `matmul_dtype`
  when given (precision.py). `shardings` (sharding.token_shardings) keeps the gradient's
  tokens where they are."""
  return cross_entropy(output_logits(x, kernel, layout, matmul_dtype, bias), targets,
                       label_smoothing)


def output_logits(x, kernel, layout, matmul_dtype, bias=None):
  """fp32 logits [N, V] of hidden states x [N, D] (the softmax and loss run in fp32)."""
  return _product(x, kernel, layout, matmul_dtype, bias).astype(jnp.float32)


def _product(x, kernel, layout, matmul_dtype, bias=None):
  """The logits in the product's own dtype (bf16 in a bf16 model: its fp32 logits hold
  the same values); fp32 with a bias, added after the product as the model adds it."""
  logits = precision.einsum(f'nd,{layout}->nv', x, kernel, matmul_dtype)
  return logits if bias is None else logits.astype(jnp.float32) + bias


def _forward(x, kernel, targets, label_smoothing, layout, matmul_dtype, shardings, bias):
  del shardings
  logits = _product(x, kernel, layout, matmul_dtype, bias)
  *outputs, lse = _terms(logits, targets, label_smoothing)
  return tuple(outputs), (x, kernel, targets, logits, lse, bias)


def _backward(label_smoothing, layout, matmul_dtype, shardings, residuals, cotangents):
  x, kernel, targets, logits, lse, bias = residuals
  logits = logits.astype(jnp.float32)
  g_loss, g_nll, _ = cotangents
  d_logits = _cross_entropy_grad(logits, lse, targets, g_loss, g_nll, label_smoothing)
  return (*_project_back(x, kernel, d_logits.astype(x.dtype), layout, matmul_dtype,
                         shardings), None, _bias_grad(d_logits, bias))


def _bias_grad(d_logits, bias):
  """d loss / d bias: the fp32 logits' gradient summed over tokens (None without one)."""
  if bias is None:
    return None
  return jnp.sum(d_logits.reshape(-1, d_logits.shape[-1]), axis=0).astype(bias.dtype)


def _cross_entropy_grad(logits, lse, targets, g_loss, g_nll, label_smoothing):
  """d (g_loss . loss + g_nll . nll) / d logits, from the forward's logits and lse."""
  vocab = logits.shape[-1]
  onehot = jnp.arange(vocab) == targets[..., None]  # fused into the expression below
  return ((g_loss + g_nll)[..., None] * jnp.exp(logits - lse[..., None])
          - ((1.0 - label_smoothing) * g_loss + g_nll)[..., None] * onehot
          - (label_smoothing / vocab) * g_loss[..., None])


def _project_back(x, kernel, d_logits, layout, matmul_dtype, shardings=None):
  """(d x, d kernel) of logits = x @ kernel, in the layout the kernel is stored in.

  With `shardings` (hidden states', logits'), x and d_logits stay split by token as the
  batch is: each device then sums its own tokens' share of d kernel and the shares are
  reduced. Left to itself XLA's partitioner all-gathered d_logits over `fsdp` instead
  (606 MB per chip, dozens of times, in the big TPU preset: docs/tpu.md)."""
  if shardings:
    x = jax.lax.with_sharding_constraint(x, shardings[0])
    d_logits = jax.lax.with_sharding_constraint(d_logits, shardings[1])
  d_x = precision.einsum(f'nv,{layout}->nd', d_logits, kernel, matmul_dtype)
  d_kernel = precision.einsum(f'nd,nv->{layout}', x, d_logits, matmul_dtype)
  return d_x, d_kernel


projected_cross_entropy.defvjp(_forward, _backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def projected_rdrop(x: jax.Array, kernel: jax.Array, targets: jax.Array,
                    label_smoothing: float, layout: str = 'dv',
                    matmul_dtype: str | None = None, shardings=None, bias=None):
  """R-Drop's terms fused with the pre-softmax linear. x [B, 2, T, D] holds each row's two
  dropout passes on axis 1, targets [B, 2, T]. Returns `projected_cross_entropy`'s (loss,
  nll, correct) per token [B, 2, T] and the symmetric KL between the passes' distributions
  per token [B, T], sum_v (p1 - p2) (log p1 - log p2).

  The logits are computed once for both terms and their gradient is written once, by hand:
  with d = log p1 - log p2, d KL / d z1 = p1 (d - E_p1[d]) + p1 - p2 (and z2's by symmetry).
  Autodiff of the KL on separately projected logits cost a second output projection, its
  backward, and several [tokens, vocab] arrays: R-Drop's step was 2.2-3.3x a plain one."""
  return _rdrop_forward(x, kernel, targets, label_smoothing, layout, matmul_dtype,
                        shardings, bias)[0]


def _rdrop_forward(x, kernel, targets, label_smoothing, layout, matmul_dtype, shardings,
                   bias):
  del shardings
  logits = _product(x.reshape(-1, x.shape[-1]), kernel, layout, matmul_dtype, bias)
  logits = logits.reshape(*x.shape[:-1], -1)
  *outputs, lse = _terms(logits, targets, label_smoothing)
  logp = logits.astype(jnp.float32) - lse[..., None]
  kl = jnp.sum((jnp.exp(logp[:, 0]) - jnp.exp(logp[:, 1])) * (logp[:, 0] - logp[:, 1]), -1)
  return (*outputs, kl), (x, kernel, targets, logits, lse, bias)


def _rdrop_backward(label_smoothing, layout, matmul_dtype, shardings, residuals, cotangents):
  x, kernel, targets, logits, lse, bias = residuals
  logits = logits.astype(jnp.float32)
  g_loss, g_nll, _, g_kl = cotangents
  p = jnp.exp(logits - lse[..., None])
  d = (logits[:, 0] - lse[:, 0, :, None]) - (logits[:, 1] - lse[:, 1, :, None])
  expected = jnp.sum(p * d[:, None], axis=-1, keepdims=True)  # E_p1[d], E_p2[d]: [B, 2, T, 1]
  sign = jnp.array([1.0, -1.0])[None, :, None, None]  # d KL / d z2 uses -d
  d_kl = p * (sign * d[:, None] - sign * expected) + sign * (p[:, 0] - p[:, 1])[:, None]
  d_logits = (_cross_entropy_grad(logits, lse, targets, g_loss, g_nll, label_smoothing)
              + g_kl[:, None, :, None] * d_kl)
  d_x, d_kernel = _project_back(x.reshape(-1, x.shape[-1]), kernel,
                                d_logits.reshape(-1, logits.shape[-1]).astype(x.dtype),
                                layout, matmul_dtype, shardings)
  return d_x.reshape(x.shape), d_kernel, None, _bias_grad(d_logits, bias)


projected_rdrop.defvjp(_rdrop_forward, _rdrop_backward)
