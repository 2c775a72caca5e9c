"""What a config costs: parameters, FLOPs per training step and the training state's
memory. Parameters are counted from the model itself (built abstractly, no memory
used); FLOPs use the usual analytic count (bench/workloads/README.md): 6 x weights x
tokens for every matmul, plus attention scores and values, plus the output projection.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict

from transformer_jax.model import VOCAB, Transformer


def abstract_params(model_cfg: ConfigDict):
  """The model's nnx.Param state as shapes only (nothing is allocated)."""
  model = nnx.eval_shape(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0)))
  return nnx.state(model, nnx.Param)


def count_params(model_cfg: ConfigDict) -> dict[str, int]:
  """Total parameters (a shared embedding counted once) and those without a vocab axis."""
  total = embedding = 0
  for _, var in nnx.to_flat_state(abstract_params(model_cfg)):
    size = math.prod(var.shape)
    total += size
    if VOCAB in (var.get_metadata().get('out_sharding') or ()):
      embedding += size
  return {'params': total, 'params_non_embedding': total - embedding}


def train_flops(m: ConfigDict, batch: int, source_len: int, target_len: int) -> float:
  """Model FLOPs of one training step (forward + backward = 3x forward = 6 per MAC)."""
  d, f, le, ld = m.d_model, m.d_ff, m.num_encoder_layers, m.num_decoder_layers
  source_weights = le * (4 * d * d + 2 * d * f) + ld * 2 * d * d  # + cross-attn K, V
  target_weights = ld * (4 * d * d + 2 * d * d + 2 * d * f)  # self, cross Q and O, FFN
  matmuls = source_len * source_weights + target_len * target_weights
  attention = 2 * d * (le * source_len ** 2 + ld * target_len ** 2
                       + ld * target_len * source_len)
  output = target_len * d * m.vocab_size
  return 6.0 * batch * (matmuls + attention + output)


# Published peak dense bf16 FLOP/s per JAX device, by `device_kind` (first match wins).
# TPU v2/v3 devices are single cores (two per chip); from v4 on, a device is a chip.
PEAK_FLOPS = (
    ('TPU v2', 22.5e12), ('TPU v3', 61.5e12), ('TPU v4', 275e12),
    ('TPU v5 lite', 197e12), ('TPU v5e', 197e12), ('TPU v5', 459e12),  # v5p: 'TPU v5'
    ('TPU v6 lite', 918e12), ('TPU v6e', 918e12),
    ('H200', 989e12), ('H100 PCIe', 756e12), ('H100', 989e12), ('A100', 312e12),
    ('L40S', 362e12), ('L4', 121e12), ('A10', 125e12), ('V100', 125e12), ('T4', 65e12),
)


def peak_flops(device_kind: str) -> float | None:
  """The device's published peak (None for a CPU or a kind not listed: no guess)."""
  return next((peak for name, peak in PEAK_FLOPS if name in device_kind), None)


def step_flops(config: ConfigDict) -> float:
  """Model FLOPs of one training step of `config` (rows of data.max_len tokens each way;
  R-Drop passes every row twice)."""
  n = config.data.max_len
  passes = 2 if config.train.get('rdrop_alpha', 0.0) else 1
  return passes * train_flops(config.model, config.data.batch_size, n, n)


def last_step(config: ConfigDict) -> int:
  """The step a run of `config` ends at: `train.num_steps`, or, with `train.budget_flops`,
  the first step whose training FLOPs from step 0 (`step_flops` each) reach the budget,
  if that comes first. Depends on the config alone, not on the machine or processes."""
  t = config.train
  if not t.get('budget_flops'):
    return t.num_steps
  # (1 - 1e-12): a budget of exactly k steps' FLOPs, rounded as floats are, is k steps.
  return min(t.num_steps, max(1, math.ceil(t.budget_flops / step_flops(config) * (1 - 1e-12))))


def mfu(config: ConfigDict, step_seconds: float, devices) -> float | None:
  """Model FLOPs utilization: model FLOPs per second over the devices' summed peak."""
  peaks = [peak_flops(d.device_kind) for d in devices]
  if not peaks or None in peaks:
    return None
  return step_flops(config) / step_seconds / sum(peaks)


def summary(config: ConfigDict) -> dict:
  m, n = config.model, config.data.max_len
  counts = count_params(m)
  param_bytes = counts['params'] * jnp.dtype(m.param_dtype).itemsize
  flops = step_flops(config)
  return {
      **counts,
      'flops_per_token_train': flops / (config.data.batch_size * n),
      'flops_per_step_train': flops,
      'flops_note': f'per target token, source and target of data.max_len={n} tokens',
      'memory_bytes': {  # training state only; activations depend on batch and remat
          'params': param_bytes,
          'gradients': param_bytes,
          'adam_moments': 2 * param_bytes,
          'total_state': 4 * param_bytes,
      },
      'devices': [str(d) for d in jax.devices()],
      'config': config.to_dict(),
  }
