"""Section 5.3: Adam(beta1=0.9, beta2=0.98, eps=1e-9) with the paper's learning rate

  lrate = scale * d_model^-0.5 * min(step^-0.5, step * warmup_steps^-1.5)

(linear warm-up, then inverse square root decay), plus optional global-norm clipping and
decoupled weight decay. `train.schedule='linear_decay'` keeps the warm-up and its peak but
then falls linearly to zero at `train.num_steps`: for a run whose length is fixed in
advance (a time budget) it ends with small steps, where the rsqrt tail stays large.
Gradient accumulation lives in the train step, which averages over every micro-batch's
tokens before one update.
"""
from __future__ import annotations

import jax.numpy as jnp
import optax
from ml_collections import ConfigDict


def learning_rate_schedule(config: ConfigDict):
  """count (updates applied so far) -> learning rate, for optax and the logged metric."""
  t = config.train
  scale = t.learning_rate * config.model.d_model ** -0.5
  warmup, total = t.warmup_steps, t.num_steps

  def schedule(count):
    step = jnp.maximum(count + 1, 1).astype(jnp.float32)  # optax counts updates from 0
    warm = step * warmup ** -1.5
    if t.schedule == 'rsqrt':
      return scale * jnp.minimum(step ** -0.5, warm)
    decay = warmup ** -0.5 * (total - step) / max(total - warmup, 1)
    return scale * jnp.maximum(jnp.minimum(warm, decay), 0.0)
  return schedule


def _parts(config: ConfigDict) -> list[tuple[str, optax.GradientTransformation]]:
  """The optimizer's transformations in order, each named by the setting that adds it."""
  t = config.train
  parts = []
  if t.clip_grad_norm > 0:
    parts.append(('train.clip_grad_norm', optax.clip_by_global_norm(t.clip_grad_norm)))
  parts.append(('adam', optax.adamw(learning_rate_schedule(config), b1=t.adam_b1,
                                    b2=t.adam_b2, eps=t.adam_eps,
                                    weight_decay=t.weight_decay)))
  return parts


def make_optimizer(config: ConfigDict) -> optax.GradientTransformation:
  return optax.chain(*(tx for _, tx in _parts(config)))


def changed_parts(saved_config: ConfigDict, config: ConfigDict) -> list[str]:
  """The transformations one config has and the other lacks, e.g. 'train.clip_grad_norm
  turned on': then `saved_config`'s optimizer state is not of `config`'s structure."""
  saved, ours = ([name for name, _ in _parts(c)] for c in (saved_config, config))
  return ([f'{name} turned on' for name in ours if name not in saved]
          + [f'{name} turned off' for name in saved if name not in ours])


def carry_over(saved_state, saved_config: ConfigDict, config: ConfigDict, params):
  """`config`'s optimizer state from one saved under `saved_config`: the parts both have
  (Adam's moments and update count) as saved, the new ones initialized, dropped ones
  dropped (clipping keeps no state, so today nothing new costs memory)."""
  saved = dict(zip((name for name, _ in _parts(saved_config)), saved_state))
  return tuple(saved[name] if name in saved else tx.init(params)
               for name, tx in _parts(config))
