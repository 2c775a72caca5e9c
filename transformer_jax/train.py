"""`python -m transformer_jax.train --config=FILE --workdir=DIR`.

Interim stage: the training loop (optimizer, checkpoints) lands with the training issue.
Until then this command prepares the configured dataset and vocabulary (in the workdir),
takes the first batch from the Grain pipeline and runs one jitted forward and backward
pass of the label-smoothed loss, printing the loss and gradient norm.
"""
from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from transformer_jax import cli
from transformer_jax.data import datasets, pipeline
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


def model_inputs(batch: dict) -> dict:
  """The model's keyword arguments for a (possibly packed) batch from data.pipeline."""
  return dict(source_positions=batch['source_positions'],
              source_segments=batch['source_segment_ids'],
              target_positions=batch['target_positions'],
              target_segments=batch['target_segment_ids'])


def loss_fn(model: Transformer, batch: dict, label_smoothing: float, rngs: nnx.Rngs):
  decoder_input = shift_right(batch['target'], batch['target_segment_ids'])
  logits = model(batch['source'], decoder_input, rngs=rngs, **model_inputs(batch))
  total, count = cross_entropy(logits, batch['target'], label_smoothing)
  return total / jnp.maximum(count, 1.0)


@nnx.jit(static_argnums=2)
def forward_backward(model, batch, label_smoothing, key):
  loss, grads = nnx.value_and_grad(loss_fn)(model, batch, label_smoothing,
                                            nnx.Rngs(dropout=key))
  return loss, optax.global_norm(grads)


def main(argv):
  del argv
  config = cli.resolved_config()
  workdir = cli.required_workdir()
  start = time.perf_counter()
  tokenizer = pipeline.get_tokenizer(config, workdir)
  split = pipeline.TokenizedSplit(datasets.data_source(config.data, 'train'), config.data,
                                  tokenizer)
  batch = next(iter(pipeline.train_dataset(config, split)))
  prepared = time.perf_counter()
  key = jax.random.key(config.seed)
  model = Transformer(config.model, rngs=nnx.Rngs(params=key))
  loss, grad_norm = forward_backward(model, batch, config.train.label_smoothing, key)
  print(json.dumps({
      'note': 'interim stage: one forward+backward pass on the first batch; '
              'the training loop comes with the training issue',
      'loss': float(loss), 'grad_norm': float(grad_norm),
      'example': tokenizer.decode(batch['source'][0]),
      'data_seconds': round(prepared - start, 2),
      'step_seconds_with_compile': round(time.perf_counter() - prepared, 2),
  }))


if __name__ == '__main__':
  cli.run(main)
