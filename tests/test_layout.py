"""Tests mirror the code: every module with behaviour has its test file."""
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
NO_BEHAVIOUR = {'__init__', 'errors'}  # package markers; the exception classes


def test_every_module_has_a_test_file():
  modules = {p.stem for p in (REPO / 'transformer_jax').rglob('*.py')} - NO_BEHAVIOUR
  missing = sorted(m for m in modules if not (REPO / 'tests' / f'test_{m}.py').exists())
  assert not missing
