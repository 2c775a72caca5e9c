"""Transformer (base) on one v5e-8 TPU VM (8 chips, 16 GiB HBM each), WMT14 En-De.

Pure data parallelism over the 8 chips, bf16 compute with fp32 parameters, packed rows
of 128 tokens: 256 x 128 = 32,768 source and as many target token slots per step, a
little above the paper's ~25,000. `aot --topology=v5e:2x4` says it fits (1.95 GiB per
chip of 16) and estimates its speed (docs/tpu.md).
"""
import os

from transformer_jax.config import load


def get_config():
  c = load(os.path.join(os.path.dirname(__file__), 'base.py'))  # the paper's values
  c.model.dtype = 'bfloat16'
  c.data.max_len = 128
  c.data.batch_size = 256
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 1, 1
  c.mesh.shard_update = True  # each chip updates 1/8 of Adam's state (docs/tpu.md)
  c.train.checkpoint_every = 2000
  c.train.eval_every = 2000
  c.train.bleu_every = 10000
  c.train.keep_checkpoints = 5  # the paper averaged the last 5 for base
  return c
