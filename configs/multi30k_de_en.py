"""Multi30k De->En: configs/multi30k.py with the direction swapped."""
import os

from transformer_jax.config import load


def get_config():
  c = load(os.path.join(os.path.dirname(__file__), 'multi30k.py'))
  c.data.source_lang, c.data.target_lang = 'de', 'en'
  return c
