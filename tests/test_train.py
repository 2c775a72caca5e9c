"""The main-job command runs end to end from a subprocess."""
import json
import math
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np

from transformer_jax.train import cross_entropy


def run_train(repo, *flags):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', 'transformer_jax.train', *flags], cwd=repo,
                        env=env, capture_output=True, text=True, timeout=600)


def test_train_command_runs(repo, tmp_path):
  result = run_train(repo, '--config=configs/tiny.py', f'--workdir={tmp_path}',
                     f'--config.data.tfds_dir={tmp_path / "tfds"}')
  assert result.returncode == 0, result.stderr
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert math.isfinite(out['loss']) and out['grad_norm'] > 0
  assert (tmp_path / 'vocab.model').exists() and out['example'].endswith('.')


def test_train_requires_workdir(repo):
  result = run_train(repo, '--config=configs/tiny.py')
  assert result.returncode == 2 and '--workdir is required' in result.stderr


def test_label_smoothed_cross_entropy_by_hand():
  logits = jnp.array([[[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 0.3, 0.4]]])
  targets = jnp.array([[1, 0]])  # the second position is padding
  total, count = cross_entropy(logits, targets, label_smoothing=0.1)
  logp = np.log(np.exp(logits[0, 0]) / np.exp(logits[0, 0]).sum())
  expected = -(0.9 + 0.1 / 4) * logp[1] - (0.1 / 4) * (logp.sum() - logp[1])
  assert float(count) == 1.0
  np.testing.assert_allclose(float(total), expected, rtol=1e-5)
