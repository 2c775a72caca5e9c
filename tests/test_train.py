"""The `train` command as a user runs it, in a new process: exact resume after a real
SIGKILL, SIGTERM saves and exits cleanly, the compilation cache is reused, and its
one-line errors. In this process: the command trains, resumes and prints its JSON."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import loop
from transformer_jax import metrics as metrics_lib
from transformer_jax import train as train_command


def overrides(config, **train):
  """Flags that give configs/tiny.py `config`'s data, then `train` keys."""
  flags = [f'--config.data.{key}={config.data[key]}' for key in
           ('name', 'data_dir', 'source_lang', 'target_lang', 'tfds_dir', 'vocab_path')]
  flags += ['--config.train.log_every=1', '--config.train.eval_every=0']
  return flags + [f'--config.train.{k}={v}' for k, v in train.items()]


def start_train(repo, workdir, *flags):
  return subprocess.Popen(
      [sys.executable, '-m', 'transformer_jax.train', '--config=configs/tiny.py',
       f'--workdir={workdir}', *flags], cwd=repo, env=dict(os.environ, JAX_PLATFORMS='cpu'),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_train(repo, workdir, *flags):
  process = start_train(repo, workdir, *flags)
  out, err = process.communicate(timeout=600)
  return process.returncode, out, err


def wait_for_step(workdir, step, process, timeout=300):
  path = os.path.join(workdir, metrics_lib.METRICS_FILE)
  deadline = time.time() + timeout
  while time.time() < deadline:
    assert process.poll() is None, process.communicate()
    if os.path.exists(path) and any(r['step'] >= step for r in metrics_lib.read(str(workdir))):
      return
    time.sleep(0.05)
  raise TimeoutError(f'step {step} not reached')


KILLER = """
import os, signal, sys, time
from transformer_jax import sharding, train
kill_at, checkpoint = int(os.environ['KILL_AT_STEP']), os.environ['WAIT_FOR_CHECKPOINT']
place, calls = sharding.place_batch, [0]
def place_then_maybe_die(batch, mesh):
  calls[0] += 1
  if calls[0] == kill_at + 1:  # steps 1..kill_at are done
    while not os.path.isdir(checkpoint):  # the async save before the kill has committed
      time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGKILL)
  return place(batch, mesh)
sharding.place_batch = place_then_maybe_die
sys.argv = ['train'] + sys.argv[1:]
train.cli.run(train.main)
"""


@pytest.mark.slow
def test_exact_resume_after_sigkill(tiny_config, saved_params, repo, tmp_path):
  """A real SIGKILL at step 10 (not a checkpoint step; the last checkpoint is at 8 or 4),
  then the same command again: losses and final parameters equal an uninterrupted run."""
  flags = overrides(tiny_config(), num_steps=14, checkpoint_every=4)
  uninterrupted, resumed = tmp_path / 'a', tmp_path / 'b'
  code, _, err = run_train(repo, uninterrupted, *flags)
  assert code == 0, err
  killed = subprocess.run(
      [sys.executable, '-c', KILLER, '--config=configs/tiny.py', f'--workdir={resumed}', *flags],
      cwd=repo, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, JAX_PLATFORMS='cpu', KILL_AT_STEP='10',
               WAIT_FOR_CHECKPOINT=str(resumed / 'checkpoints' / '4')))
  assert killed.returncode == -signal.SIGKILL, killed.stderr
  assert max(r['step'] for r in metrics_lib.read(str(resumed))) == 10
  code, out, err = run_train(repo, resumed, *flags)
  assert code == 0, err
  assert 'resumed from the checkpoint at step' in out
  a, b = metrics_lib.read(str(uninterrupted)), metrics_lib.read(str(resumed))
  assert [r['step'] for r in b] == list(range(1, 15))
  assert [r['loss'] for r in a] == [r['loss'] for r in b]  # exactly, not approximately
  config = tiny_config()
  for x, y in zip(jax.tree.leaves(saved_params(uninterrupted, config, 14)),
                  jax.tree.leaves(saved_params(resumed, config, 14))):
    np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_compilation_cache_is_reused_with_identical_results(tiny_config, repo, tmp_path):
  """A second run of the same command finds every program in the cache (it adds none)
  and trains exactly as the run that compiled them."""
  cache = tmp_path / 'xla'
  flags = [*overrides(tiny_config(), num_steps=3, checkpoint_every=3),
           f'--compilation_cache={cache}']
  code, _, err = run_train(repo, tmp_path / 'a', *flags)
  assert code == 0, err
  compiled = sorted(os.listdir(cache))
  assert compiled  # the train step at least
  code, _, err = run_train(repo, tmp_path / 'b', *flags)
  assert code == 0, err
  # The initializer and the train step are one program each: had the second run missed
  # the cache (a key that differs between runs), it would have added a second entry
  # under the same name. Small helpers (`jit_slice` in several shapes) are not checked:
  # one is cached whenever it took >= 0.2 s to compile, which on a busy machine can
  # happen in either run.
  name = lambda entry: entry.split('-')[0]
  assert {'jit_init', 'jit_train_step'} <= {name(e) for e in compiled}
  entries = os.listdir(cache)
  for program in ('jit_init', 'jit_train_step'):
    assert sum(name(e) == program for e in entries) == 1, entries
  losses = [[r['loss'] for r in metrics_lib.read(str(tmp_path / run))] for run in 'ab']
  assert losses[0] == losses[1] and len(losses[0]) == 3


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tiny_config, repo, tmp_path):
  process = start_train(repo, tmp_path, *overrides(tiny_config(), num_steps=100000,
                                                   checkpoint_every=100000))
  wait_for_step(tmp_path, 3, process)
  process.send_signal(signal.SIGTERM)
  out, err = process.communicate(timeout=300)
  assert process.returncode == 0, err
  assert 'SIGTERM: saved the checkpoint at step' in out
  config = tiny_config()
  steps = checkpoint_lib.Checkpoints(str(tmp_path), config).steps()
  assert len(steps) == 1 and steps[0] >= 3


@pytest.mark.slow
def test_checkpoint_of_another_model_is_refused(tiny_config, repo, tmp_path):
  config = tiny_config(num_steps=2, checkpoint_every=2)
  loop.train(config, str(tmp_path))
  before = sorted(p.name for p in (tmp_path / 'checkpoints').iterdir())
  code, _, err = run_train(repo, tmp_path, *overrides(tiny_config(), num_steps=4),
                           '--config.model.d_model=64')
  assert code == 2
  assert 'is of another model (d_model: checkpoint 32, config 64)' in err
  assert 'Use a new --workdir' in err and 'Traceback' not in err
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == before


def test_the_command_resumes_and_prints_the_last_metrics(command, tiny_config, briefly_trained,
                                                         repo, tmp_path):
  workdir = tmp_path / 'work'
  shutil.copytree(briefly_trained, workdir)  # checkpoints at steps 2, 4 and 6
  result = command(train_command, f'--config={repo / "configs" / "tiny.py"}',
                   f'--workdir={workdir}', *overrides(tiny_config(), num_steps=7,
                                                      checkpoint_every=7))
  assert result.code == 0, result.err
  assert f'resumed from the checkpoint at step 6 in {workdir}' in result.out
  final = json.loads(result.out.splitlines()[-1])['final']
  assert final['loss'] > 0 and final['step'] == 7 and 'step 7/7' in result.out
  assert [r['step'] for r in metrics_lib.read(str(workdir))] == [2, 4, 6, 7]
  # Done: a supervisor reads done.json; a run extended to more steps is not done.
  assert json.loads((workdir / loop.DONE_FILE).read_text())['step'] == 7
  result = command(train_command, f'--config={repo / "configs" / "tiny.py"}',
                   f"--workdir={workdir}", *overrides(tiny_config(), num_steps=9,
                                                      stop_after_minutes=1e-9))
  assert result.code == 0 and 'stop_after_minutes reached' in result.out
  assert not (workdir / loop.DONE_FILE).exists()


def test_the_command_requires_a_workdir_and_a_config(command, repo):
  result = command(train_command, f'--config={repo / "configs" / "tiny.py"}')
  assert result.code == 2 and result.err.strip() == (
      'error: --workdir is required: the directory for checkpoints and logs.')
  result = command(train_command, '--workdir=/tmp/x')
  assert result.code == 2 and '--config is required' in result.err


def test_an_error_found_after_the_workdir_check_leaves_no_empty_workdir(command, repo,
                                                                        tmp_path):
  """data.batch_size=12 cannot be split over 8 devices: found once the mesh exists,
  after the workdir was created to check that it is writable."""
  workdir = tmp_path / 'new_run'
  result = command(train_command, f'--config={repo / "configs" / "tiny.py"}',
                   f'--workdir={workdir}', '--config.data.batch_size=12')
  assert result.code == 2 and 'data-parallel size' in result.err
  assert not workdir.exists()


@pytest.mark.slow
def test_chaos_kills_and_a_damaged_checkpoint_end_bitwise_equal(tiny_config, saved_params, repo,
                                                               tmp_path, damage_arrays):
  """SIGKILL at seeded random moments (compiling, stepping, saving), then a damaged newest
  checkpoint: the run resumes from the newest step that verifies and ends exactly where an
  uninterrupted run does."""
  flags = overrides(tiny_config(), num_steps=16, checkpoint_every=2, keep_checkpoints=8)
  uninterrupted, chaos = tmp_path / 'a', tmp_path / 'b'
  code, _, err = run_train(repo, uninterrupted, *flags)
  assert code == 0, err
  rng = np.random.default_rng(2026)
  process = start_train(repo, chaos, *flags)
  time.sleep(rng.uniform(0.5, 3.0))  # while importing or compiling
  process.kill()
  process.communicate()
  for target in sorted(rng.choice(np.arange(2, 15), 3, replace=False)):
    process = start_train(repo, chaos, *flags)
    wait_for_step(chaos, target, process)
    time.sleep(rng.uniform(0.0, 0.3))  # stepping or saving
    process.kill()
    process.communicate()
  steps = sorted(int(p.name) for p in (chaos / 'checkpoints').iterdir() if p.name.isdigit())
  assert steps and steps[-1] < 16, steps  # the kills left the run unfinished
  damage_arrays(chaos / 'checkpoints' / str(steps[-1]))
  code, out, err = run_train(repo, chaos, *flags)
  assert code == 0, err
  assert f'step {steps[-1]} in' in err and 'failed verification' in err
  resumed_from = steps[-2] if len(steps) > 1 else None
  if resumed_from:
    assert f'resumed from the checkpoint at step {resumed_from} ' in out
  a, b = metrics_lib.read(str(uninterrupted)), metrics_lib.read(str(chaos))
  assert [r['step'] for r in b] == list(range(1, 17))
  assert [r['loss'] for r in a] == [r['loss'] for r in b]  # exactly
  config = tiny_config()
  for x, y in zip(jax.tree.leaves(saved_params(uninterrupted, config, 16)),
                  jax.tree.leaves(saved_params(chaos, config, 16)), strict=True):
    np.testing.assert_array_equal(x, y)
