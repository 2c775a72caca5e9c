"""Multi30k De->En: configs/multi30k.py with the direction swapped."""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    '_multi30k', os.path.join(os.path.dirname(os.path.abspath(__file__)), 'multi30k.py'))
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)


def get_config():
  c = _base.get_config()
  c.data.source_lang, c.data.target_lang = 'de', 'en'
  return c
