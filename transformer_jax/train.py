"""`python -m transformer_jax.train --config=FILE --workdir=DIR`.

Foundation stage: the training loop (data pipeline, optimizer, checkpoints) lands with
the data and training issues. Until then this command builds the configured model and
runs one jitted forward and backward pass of the label-smoothed loss on a random batch,
printing the loss and gradient norm, so the command line is already the final one.
"""
from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from transformer_jax import cli
from transformer_jax.model import PAD_ID, Transformer, shift_right



def cross_entropy(logits: jax.Array, targets: jax.Array, label_smoothing: float):
  """Label-smoothed cross-entropy (section 5.4), summed over non-padding targets.

  Returns (loss sum, token count). Smoothing spreads epsilon uniformly over the
  vocabulary, as `optax.smooth_labels` does.
  """
  smoothed = optax.smooth_labels(jax.nn.one_hot(targets, logits.shape[-1]), label_smoothing)
  per_token = optax.softmax_cross_entropy(logits, smoothed)
  weights = (targets != PAD_ID).astype(jnp.float32)
  return jnp.sum(per_token * weights), jnp.sum(weights)


def loss_fn(model: Transformer, source, target, label_smoothing: float, rngs: nnx.Rngs):
  logits = model(source, shift_right(target), rngs=rngs)
  total, count = cross_entropy(logits, target, label_smoothing)
  return total / jnp.maximum(count, 1.0)


@nnx.jit(static_argnums=3)
def forward_backward(model, source, target, label_smoothing, key):
  loss, grads = nnx.value_and_grad(loss_fn)(
      model, source, target, label_smoothing, nnx.Rngs(dropout=key))
  return loss, optax.global_norm(grads)


def main(argv):
  del argv
  config = cli.resolved_config()
  cli.required_workdir()
  key = jax.random.key(config.seed)
  model = Transformer(config.model, rngs=nnx.Rngs(params=key))
  shape = (config.data.batch_size, config.data.max_len)
  tokens = jax.random.randint(jax.random.fold_in(key, 1), shape, 3, config.model.vocab_size)
  start = time.perf_counter()
  loss, grad_norm = forward_backward(model, tokens, tokens, config.train.label_smoothing,
                                     jax.random.fold_in(key, 2))
  print(json.dumps({
      'note': 'foundation stage: one forward+backward pass on a random batch; '
              'the training loop comes with the training issue',
      'loss': float(loss), 'grad_norm': float(grad_norm),
      'seconds_with_compile': round(time.perf_counter() - start, 2),
      'params': sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))),
  }))


if __name__ == '__main__':
  cli.run(main)
