"""Multi30k En->De in a 2-hour budget with a smaller vocabulary: configs/experiments/multi30k_2h.py
with a joint 4,096-piece vocabulary (instead of 8,192) and dropout 0.3.

Why: on 29,000 pairs many of 8,192 pieces are rare, and low-resource studies find
smaller subword vocabularies and stronger dropout better (Sennrich & Zhang, 2019); the
output layer also shrinks by half, which pays for the ~10% longer sequences.

Measured 2026-11-29: worse. 39.24 lowercased test BLEU (validation 39.68, the last
checkpoint, beam 4, alpha 1.0) against 40.80 for configs/experiments/multi30k_2h.py; the 9,000 steps
took 94 min (0.62 s a step against 0.70).
"""
import os

from transformer_jax.config import load


def get_config():
  c = load(os.path.join(os.path.dirname(__file__), 'multi30k_2h.py'))
  c.model.vocab_size = 4096
  c.model.dropout_rate = 0.3
  return c
