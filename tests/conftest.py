"""Run every test on 8 simulated CPU devices, so sharding is tested for real.

XLA reads the flag when JAX initializes its backend, so it must be set before any test
module imports jax.
"""
import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# The commands' compilation cache (cli.py) lives in the home directory by default; tests
# and the commands they start share one of their own instead.
import tempfile  # noqa: E402
os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='transformer_jax_xla_')

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='session')
def repo():
  return REPO
