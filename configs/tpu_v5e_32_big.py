"""Transformer (big) on a v5e-32 slice (4 hosts x 8 chips), WMT14 En-De.

FSDP over 4 chips (parameters and Adam state of the 214M-parameter model split 4 ways)
times 8-way data parallelism, bf16 compute with fp32 parameters, packed rows of 128
tokens: 512 x 128 = 65,536 token slots per side per step.
"""
import os

from transformer_jax.config import load


def get_config():
  c = load(os.path.join(os.path.dirname(__file__), 'big.py'))  # the paper's values
  c.model.dtype = 'bfloat16'
  c.data.max_len = 128
  c.data.batch_size = 512
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 4, 1
  c.train.checkpoint_every = 2000
  c.train.eval_every = 2000
  c.train.bleu_every = 10000
  c.train.keep_checkpoints = 20  # the paper averaged the last 20 for big
  return c
