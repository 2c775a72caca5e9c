"""Multi30k En->De as the literature trains it: `configs/multi30k.py` with all text
lowercased (source, target and the vocabulary learned from them).

The published Multi30k figures (README "Results") come from models trained on the
task's lowercased, tokenized files and scored lowercased; a cased model spends pieces
and updates on "Ein"/"ein" pairs that lowercased BLEU does not reward. The model's
output is lowercased, so its cased BLEU is not a fair figure; validation BLEU during
training is scored lowercased.
"""
import os

from transformer_jax.config import load


def get_config():
  c = load(os.path.join(os.path.dirname(__file__), 'multi30k.py'))
  c.data.lowercase = True
  return c
