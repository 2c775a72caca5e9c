"""`goodput` on a run killed at a known step, then resumed: the steps computed twice are
counted exactly."""
import json
import os
import re
import signal
import subprocess
import sys

import pytest

from test_train import KILLER, overrides, run_train


@pytest.mark.slow
def test_a_kill_at_a_known_step_reports_the_recomputed_steps_exactly(tiny_config, repo,
                                                                     tmp_path):
  workdir = tmp_path / 'run'
  flags = overrides(tiny_config(), num_steps=14, checkpoint_every=4)
  killed = subprocess.run(
      [sys.executable, '-c', KILLER, '--config=configs/tiny.py', f'--workdir={workdir}',
       *flags], cwd=repo, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, JAX_PLATFORMS='cpu', KILL_AT_STEP='10',
               WAIT_FOR_CHECKPOINT=str(workdir / 'checkpoints' / '4')))
  assert killed.returncode == -signal.SIGKILL, killed.stderr
  code, out, err = run_train(repo, workdir, *flags)
  assert code == 0, err
  restored = int(re.search(r'resumed from the checkpoint at step (\d+)', out)[1])
  assert restored in (4, 8)
  result = subprocess.run([sys.executable, '-m', 'transformer_jax.goodput',
                           f'--workdir={workdir}'], cwd=repo, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert result.returncode == 0, result.stderr
  summary = json.loads(result.stdout)
  assert summary['recomputed_steps'] == 10 - restored  # steps restored+1 .. 10, twice
  assert summary['exits'] == ['killed', 'done'] and summary['last_step'] == 14
  assert 0 < summary['goodput'] < 1
  assert summary['badput_s']['recomputed'] > 0 and summary['badput_s']['gaps'] > 0
  assert re.fullmatch(r'goodput \d+\.\d% over \d+ s and 2 start\(s\); \d+ step\(s\) computed '
                      r'twice; most lost to \w+ \(\d+ s\)\n', result.stderr), result.stderr


def test_a_workdir_without_records_is_named(tmp_path, repo):
  result = subprocess.run([sys.executable, '-m', 'transformer_jax.goodput',
                           f'--workdir={tmp_path}'], cwd=repo, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert result.returncode == 2
  assert result.stderr.strip() == (f'error: {tmp_path} holds no run records (goodput/): '
                                   'train in it with this version first.')
