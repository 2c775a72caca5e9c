"""The multi-host path on CPU: two processes joined by `jax.distributed` (coordinator on
127.0.0.1), 4 devices each, train the same steps as one process with 8 devices.

Each host packs its own shard of the data, so the global batches of a 1-host and a
2-host run differ in general; this corpus repeats one sentence pair, which makes every
row identical and the two runs' batches equal, so their losses must match.
"""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from transformer_jax import metrics as metrics_lib

# Every test here starts training processes: minutes, left out of the everyday loop.
pytestmark = pytest.mark.slow


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def train_command(workdir, corpus, *extra):
  return [sys.executable, '-m', 'transformer_jax.train', '--config=configs/tiny.py',
          f'--workdir={workdir}', '--config.data.name=parallel_text',
          f'--config.data.data_dir={corpus}', f'--config.data.tfds_dir={corpus}/tfds',
          '--config.model.vocab_size=24', '--config.train.num_steps=6',
          '--config.train.log_every=1', '--config.train.eval_every=0',
          '--config.train.checkpoint_every=6', *extra]


def env(devices):
  return dict(os.environ, JAX_PLATFORMS='cpu', JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo',
              XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp('corpus')
  for split, n in (('train', 64), ('validation', 16)):
    (root / f'{split}.en').write_text('the dog sees the cat in the park\n' * n)
    (root / f'{split}.de').write_text('der hund sieht die katze im park\n' * n)
  return root


def test_two_processes_match_one(repo, corpus, tmp_path):
  one, two = tmp_path / 'one', tmp_path / 'two'
  result = subprocess.run(train_command(one, corpus), cwd=repo, env=env(8),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  port = free_port()
  processes = [subprocess.Popen(
      train_command(two, corpus, f'--config.data.vocab_path={one / "vocab.model"}',
                    f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
                    f'--process_id={i}'),
      cwd=repo, env=env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in processes]
  for p, (_, err) in zip(processes, outputs):
    assert p.returncode == 0, err[-3000:]
  single, multi = metrics_lib.read(str(one)), metrics_lib.read(str(two))
  assert [r['step'] for r in multi] == list(range(1, 7))
  np.testing.assert_allclose([r['loss'] for r in multi], [r['loss'] for r in single], rtol=1e-6)
  assert single[-1]['loss'] < single[0]['loss']
  # Each process saved its own data-iterator state into the one checkpoint.
  assert {'process_0-of-2.json', 'process_1-of-2.json'} <= set(
      os.listdir(two / 'checkpoints' / '6' / 'data'))
