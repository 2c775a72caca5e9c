"""Training: sharded equals unsharded, loss falls, exact resume after SIGKILL, SIGTERM,
half-written checkpoints, restoring onto other meshes, and each bad input."""
import math
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import config as config_lib
from transformer_jax import inference
from transformer_jax import metrics as metrics_lib
from transformer_jax import optim
from transformer_jax import sharding
from transformer_jax.data import pipeline
from transformer_jax.errors import UserError
from transformer_jax.loss import cross_entropy, projected_cross_entropy
from transformer_jax.steps import (abstract_batch, build, compile_in_background, compile_steps,
                                   init_state, initializer)
from transformer_jax.train import train


@pytest.fixture(scope='module')
def shared(tmp_path_factory):
  """One TFDS build and one vocabulary for every run in this module."""
  root = tmp_path_factory.mktemp('train')
  config = tiny_config(root / 'tfds', '')
  tokenizer = pipeline.get_tokenizer(config, str(root))
  return {'tfds_dir': str(root / 'tfds'), 'vocab': tokenizer.path}


def tiny_config(tfds_dir, vocab, **train):
  c = config_lib.load(str(config_lib_path()))
  c.data.tfds_dir, c.data.vocab_path = str(tfds_dir), str(vocab)
  c.train.update({**dict(log_every=1, eval_every=0, checkpoint_every=4), **train})
  return config_lib.validate(c)


def config_lib_path():
  return os.path.join(os.path.dirname(__file__), '..', 'configs', 'tiny.py')


def overrides(shared, **train):
  flags = [f'--config.data.tfds_dir={shared["tfds_dir"]}',
           f'--config.data.vocab_path={shared["vocab"]}',
           '--config.train.log_every=1', '--config.train.eval_every=0']
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


def saved_params(workdir, config, step):
  mesh = sharding.make_mesh(config_lib.defaults().mesh, jax.devices()[:1])
  setup = build(config, mesh)
  checkpoints = checkpoint_lib.Checkpoints(str(workdir), config)
  try:
    return jax.device_get(checkpoints.restore(step, setup.abstract_state).params)
  finally:
    checkpoints.close()


def fake_batch(config, seed=0):
  rows, length = config.data.batch_size, config.data.max_len
  rng = np.random.default_rng(seed)
  batch = {}
  for field in ('source', 'target'):
    lengths = rng.integers(3, length, rows)
    mask = np.arange(length)[None] < lengths[:, None]
    batch[field] = np.where(mask, rng.integers(3, config.model.vocab_size, (rows, length)),
                            0).astype(np.int32)
    batch[f'{field}_segment_ids'] = mask.astype(np.int32)
    batch[f'{field}_positions'] = np.where(mask, np.arange(length)[None], 0).astype(np.int32)
  return batch


def steps_on(mesh_sizes, config, n=2, devices=None):
  config = config_lib.validate(config.copy_and_resolve_references())
  config.mesh.update(dict(zip(('data', 'fsdp', 'tensor'), mesh_sizes)))
  mesh = sharding.make_mesh(config.mesh, devices)
  setup = build(config, mesh)
  train_step, _ = compile_steps(setup)
  state = init_state(setup)
  for i in range(n):
    state, metrics = train_step(state, sharding.place_batch(fake_batch(config, i), mesh))
  return setup, state, metrics


# ----------------------------------------------------------------------- numerics


# Adam's update m / (sqrt(v) + eps) turns a near-zero gradient's fp32 reduction-order
# noise (which any change of layout or summation order makes) into up to a whole update
# at the paper's eps=1e-9; at 1e-6 that noise stays far below the tolerances below.
NOISE_EPS = 1e-6


def test_sharded_step_equals_single_device_step(shared):
  config = tiny_config(shared['tfds_dir'], shared['vocab'])
  assert config.model.dropout_rate > 0  # dropout masks are the same on every mesh
  config.train.adam_eps = NOISE_EPS
  _, single, m1 = steps_on((1, 1, 1), config, devices=jax.devices()[:1])
  setup, sharded, m8 = steps_on((2, 2, 2), config)
  assert len(jax.devices()) == 8
  np.testing.assert_allclose(float(m1['loss']), float(m8['loss']), rtol=1e-5)
  np.testing.assert_allclose(float(m1['grad_norm']), float(m8['grad_norm']), rtol=1e-5)
  # Parameters are compared to 1% of one update (lr ~ 5e-3 at these steps).
  for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(sharded.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=5e-5)
  # The parameters really are split as the rules say.
  layer = sharded.params['encoder_layers'][0]
  w1 = layer['feed_forward']['w1']['kernel']
  assert w1.sharding.spec == jax.sharding.PartitionSpec('fsdp', 'tensor')
  assert w1.addressable_shards[0].data.shape == (w1.shape[0] // 2, w1.shape[1] // 2)
  query = layer['self_attention']['query']['kernel']
  assert query.sharding.spec == jax.sharding.PartitionSpec('fsdp', 'tensor', None)
  table = sharded.params['source_embedding']['table']['embedding']
  assert table.sharding.spec == jax.sharding.PartitionSpec('tensor', 'fsdp')
  mu = optax.tree_utils.tree_get(sharded.opt_state, 'mu')
  mu = mu['encoder_layers'][0]['feed_forward']['w1']['kernel']
  assert mu.sharding.spec == w1.sharding.spec  # Adam moments follow their parameter


def test_initializer_compiled_at_o1_gives_the_same_bits_as_the_default(shared):
  config = tiny_config(shared['tfds_dir'], shared['vocab'])
  setup = build(config, sharding.make_mesh(config.mesh))  # all 8 devices
  default = jax.jit(initializer(setup), out_shardings=setup.state_shardings)()
  fast = init_state(setup)
  for a, b in zip(jax.tree.leaves(default), jax.tree.leaves(fast), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert fast.params['encoder_layers'][0]['feed_forward']['w1']['kernel'].sharding == \
      setup.state_shardings.params['encoder_layers'][0]['feed_forward']['w1']['kernel']


def test_step_compiled_in_background_equals_the_jitted_step(shared):
  config = tiny_config(shared['tfds_dir'], shared['vocab'])
  mesh = sharding.make_mesh(config.mesh)
  setup = build(config, mesh)
  jitted, _ = compile_steps(setup)
  background = compile_in_background(jitted, setup.abstract_state, abstract_batch(config, mesh))
  batch = sharding.place_batch(fake_batch(config), mesh)
  expected = jitted(init_state(setup), batch)  # each call donates its state: make two
  got = background(init_state(setup), batch)
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # A compile error is raised by the first call, not lost on the thread.
  wrong = compile_in_background(jax.jit(jnp.dot), jax.ShapeDtypeStruct((2, 3), jnp.float32),
                                jax.ShapeDtypeStruct((4, 5), jnp.float32))
  with pytest.raises(TypeError, match='dot'):
    wrong(jnp.ones((2, 3)), jnp.ones((4, 5)))


def test_gradient_accumulation_equals_one_big_batch(shared):
  config = tiny_config(shared['tfds_dir'], shared['vocab'])
  config.model.dropout_rate = 0.0
  config.train.adam_eps = NOISE_EPS
  _, whole, _ = steps_on((1, 1, 1), config, n=1, devices=jax.devices()[:1])
  config.train.grad_accum_steps = 4
  _, accumulated, _ = steps_on((1, 1, 1), config, n=1, devices=jax.devices()[:1])
  for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(accumulated.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=5e-5)


def test_label_smoothed_cross_entropy_by_hand():
  logits = jnp.array([[2.0, 0.5, -1.0, 0.0]])
  loss, nll, correct = cross_entropy(logits, jnp.array([1]), label_smoothing=0.1)
  logp = np.log(np.exp(logits[0]) / np.exp(logits[0]).sum())
  expected = -(0.9 + 0.1 / 4) * logp[1] - (0.1 / 4) * (logp.sum() - logp[1])
  np.testing.assert_allclose(float(loss[0]), expected, rtol=1e-5)
  np.testing.assert_allclose(float(nll[0]), -logp[1], rtol=1e-5)
  assert float(correct[0]) == 0.0  # token 0 has the highest logit


def test_learning_rate_schedules_by_hand():
  """The paper's formula, and linear_decay: the same warm-up and peak, then a straight line
  to zero at num_steps (optax counts updates from 0, the paper's step from 1)."""
  c = config_lib.defaults()
  c.model.d_model, c.train.warmup_steps, c.train.learning_rate = 256, 100, 2.0
  c.train.num_steps = 500
  paper = lambda step: 2.0 * 256 ** -0.5 * min(step ** -0.5, step * 100 ** -1.5)
  rsqrt = optim.learning_rate_schedule(c)
  for step in (1, 50, 100, 101, 400, 2000):
    np.testing.assert_allclose(float(rsqrt(step - 1)), paper(step), rtol=1e-6)
  c.train.schedule = 'linear_decay'
  linear = optim.learning_rate_schedule(c)
  for step in (1, 50, 100):
    np.testing.assert_allclose(float(linear(step - 1)), paper(step), rtol=1e-6)
  np.testing.assert_allclose(float(linear(300 - 1)), paper(100) / 2, rtol=1e-6)
  assert float(linear(500 - 1)) == 0.0 and float(linear(600)) == 0.0
  c.train.num_steps = 100
  with pytest.raises(UserError, match='must exceed train.warmup_steps'):
    config_lib.validate(c)


def test_fused_projection_loss_and_gradients_equal_autodiff_of_optax():
  """The custom VJP against plain autodiff of optax's smoothed-label cross-entropy."""
  keys = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(keys[0], (24, 16))
  kernel = jax.random.normal(keys[1], (16, 50)) * 0.5
  targets = jax.random.randint(keys[2], (24,), 0, 50)
  weights = jax.random.uniform(keys[3], (24,))

  def fused(x, kernel):
    loss, nll, _ = projected_cross_entropy(x, kernel, targets, 0.1)
    return jnp.sum(loss * weights) + 0.3 * jnp.sum(nll)

  def reference(x, kernel):
    logits = x @ kernel
    labels = jax.nn.one_hot(targets, 50)
    loss = optax.softmax_cross_entropy(logits, optax.smooth_labels(labels, 0.1))
    nll = optax.softmax_cross_entropy(logits, labels)
    return jnp.sum(loss * weights) + 0.3 * jnp.sum(nll)

  np.testing.assert_allclose(fused(x, kernel), reference(x, kernel), rtol=1e-6)
  for ours, theirs in zip(jax.grad(fused, (0, 1))(x, kernel),
                          jax.grad(reference, (0, 1))(x, kernel)):
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------- the loop


def test_loss_falls_on_the_synthetic_corpus(shared, tmp_path):
  config = tiny_config(shared['tfds_dir'], shared['vocab'], num_steps=60, log_every=1,
                       checkpoint_every=60, eval_every=60)
  config.data.batch_size = 16
  last = train(config, str(tmp_path))
  losses = [r['loss'] for r in metrics_lib.read(str(tmp_path))]
  assert len(losses) == 60
  assert losses[0] > math.log(config.model.vocab_size) - 0.3  # starts near uniform
  assert np.mean(losses[-10:]) < losses[0] - 0.8
  assert math.isfinite(last['eval_loss']) and last['eval_loss'] < losses[0] - 0.8
  assert checkpoint_lib.Checkpoints(str(tmp_path), config).steps() == [60]
  assert os.listdir(tmp_path / 'tensorboard' / 'train')  # event files were written


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


def test_exact_resume_after_sigkill(shared, repo, tmp_path):
  """A real SIGKILL at step 10 (not a checkpoint step; the last checkpoint is at 8 or 4),
  then the same command again: losses and final parameters equal an uninterrupted run."""
  flags = overrides(shared, num_steps=14, checkpoint_every=4)
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
  config = tiny_config(shared['tfds_dir'], shared['vocab'])
  for x, y in zip(jax.tree.leaves(saved_params(uninterrupted, config, 14)),
                  jax.tree.leaves(saved_params(resumed, config, 14))):
    np.testing.assert_array_equal(x, y)


def test_compilation_cache_is_reused_with_identical_results(shared, repo, tmp_path):
  """A second run of the same command finds every program in the cache (it adds none)
  and trains exactly as the run that compiled them."""
  cache = tmp_path / 'xla'
  flags = [*overrides(shared, num_steps=3, checkpoint_every=3), f'--compilation_cache={cache}']
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


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(shared, repo, tmp_path):
  process = start_train(repo, tmp_path, *overrides(shared, num_steps=100000,
                                                   checkpoint_every=100000))
  wait_for_step(tmp_path, 3, process)
  process.send_signal(signal.SIGTERM)
  out, err = process.communicate(timeout=300)
  assert process.returncode == 0, err
  assert 'SIGTERM: saved the checkpoint at step' in out
  config = tiny_config(shared['tfds_dir'], shared['vocab'])
  steps = checkpoint_lib.Checkpoints(str(tmp_path), config).steps()
  assert len(steps) == 1 and steps[0] >= 3


def test_half_written_checkpoint_is_ignored(shared, tmp_path):
  config = tiny_config(shared['tfds_dir'], shared['vocab'], num_steps=4, checkpoint_every=4)
  train(config, str(tmp_path))
  # What a kill during an async save leaves behind: a temporary step directory.
  partial = tmp_path / 'checkpoints' / '8.orbax-checkpoint-tmp-1234567'
  shutil.copytree(tmp_path / 'checkpoints' / '4', partial)
  (partial / 'state' / 'manifest.ocdbt').write_bytes(b'garbage')
  config.train.num_steps = 6
  train(config, str(tmp_path))
  assert [r['step'] for r in metrics_lib.read(str(tmp_path))] == list(range(1, 7))
  assert checkpoint_lib.Checkpoints(str(tmp_path), config).latest_step() == 6


def test_checkpoint_restores_onto_other_meshes_and_continues(shared, tmp_path):
  config = tiny_config(shared['tfds_dir'], shared['vocab'], num_steps=4, checkpoint_every=4)
  config.mesh.update(dict(data=2, fsdp=2, tensor=2))
  train(config, str(tmp_path))
  reference = saved_params(tmp_path, config, 4)  # onto one device
  for sizes, devices in (((1, 4, 2), None), ((1, 1, 1), jax.devices()[:1])):
    other = config.copy_and_resolve_references()
    other.mesh.update(dict(zip(('data', 'fsdp', 'tensor'), sizes)))
    mesh = sharding.make_mesh(other.mesh, devices)
    setup = build(other, mesh)
    checkpoints = checkpoint_lib.Checkpoints(str(tmp_path), other)
    state = checkpoints.restore(4, setup.abstract_state)
    checkpoints.close()
    for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(state.params)):
      np.testing.assert_array_equal(a, np.asarray(b))
    assert state.params['encoder_layers'][0]['feed_forward']['w1']['kernel'].sharding.mesh.shape \
        == dict(zip(('data', 'fsdp', 'tensor'), sizes))
    train_step, _ = compile_steps(setup)
    state, metrics = train_step(state, sharding.place_batch(fake_batch(other), mesh))
    assert int(state.step) == 5 and math.isfinite(float(metrics['loss']))


def test_time_budget_saves_and_stops_early(shared, tmp_path, capsys):
  config = tiny_config(shared['tfds_dir'], shared['vocab'], num_steps=1000,
                       checkpoint_every=1000, stop_after_minutes=1e-4)  # 6 ms: the first step
  train(config, str(tmp_path))
  steps = [r['step'] for r in metrics_lib.read(str(tmp_path))]
  assert steps and steps[-1] < 1000
  assert checkpoint_lib.Checkpoints(str(tmp_path), config).steps() == [steps[-1]]
  assert 'train.stop_after_minutes reached' in capsys.readouterr().out


# ----------------------------------------------------------------------- bad input


def test_workdir_not_writable(shared, tmp_path):
  (tmp_path / 'file').write_text('x')
  config = tiny_config(shared['tfds_dir'], shared['vocab'])
  with pytest.raises(UserError, match='not writable'):
    train(config, str(tmp_path / 'file' / 'workdir'))


def test_checkpoint_of_another_model_is_refused(shared, repo, tmp_path):
  config = tiny_config(shared['tfds_dir'], shared['vocab'], num_steps=2, checkpoint_every=2)
  train(config, str(tmp_path))
  before = sorted(p.name for p in (tmp_path / 'checkpoints').iterdir())
  code, _, err = run_train(repo, tmp_path, *overrides(shared, num_steps=4),
                           '--config.model.d_model=64')
  assert code == 2
  assert 'is of another model (d_model: checkpoint 32, config 64)' in err
  assert 'Use a new --workdir' in err and 'Traceback' not in err
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == before


def test_checkpoint_of_other_training_records_is_refused(shared, tmp_path):
  config = tiny_config(shared['tfds_dir'], shared['vocab'], num_steps=2, checkpoint_every=2)
  config.data.lowercase = True
  train(config, str(tmp_path))
  # Whatever restores the checkpoint lowercases its input as training did.
  restored = inference.restore(str(tmp_path))
  assert restored.tokenizer.encode('The Dog SLEEPS.') == restored.tokenizer.encode(
      'the dog sleeps.')
  before = sorted(p.name for p in (tmp_path / 'checkpoints').iterdir())
  config.data.lowercase, config.train.num_steps = False, 4  # other token ids
  with pytest.raises(UserError, match=r'other records \(lowercase: checkpoint True, '
                     r'config False\)'):
    train(config, str(tmp_path))
  config.data.lowercase, config.data.subword_samples = True, 2  # K sampled copies of each pair
  with pytest.raises(UserError, match=r'trained on other records \(subword_samples: '
                     r'checkpoint 0, config 2\).*Use a new --workdir'):
    train(config, str(tmp_path))
  config.data.subword_samples, config.seed = 0, 1  # another shuffle order
  with pytest.raises(UserError, match=r'other records \(seed: checkpoint 0, config 1\)'):
    train(config, str(tmp_path))
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == before


def test_checkpoint_of_another_vocabulary_is_refused(shared, tmp_path):
  run = tmp_path / 'run'
  config = tiny_config(shared['tfds_dir'], shared['vocab'], num_steps=2, checkpoint_every=2)
  train(config, str(run))
  before = sorted(p.name for p in (run / 'checkpoints').iterdir())
  # The same pieces plus an unknown protobuf field (number 200, varint 1): a vocabulary
  # that loads and has the same size, but is not the file the checkpoint was trained with.
  other = tmp_path / 'other.model'
  other.write_bytes(pathlib.Path(shared['vocab']).read_bytes() + b'\xc0\x0c\x01')
  config.data.vocab_path, config.train.num_steps = str(other), 4
  with pytest.raises(UserError, match=rf'step 2 in {re.escape(str(run))}.* was trained '
                     rf'with another vocabulary than {re.escape(str(other))}\. Restore'):
    train(config, str(run))
  assert sorted(p.name for p in (run / 'checkpoints').iterdir()) == before


def test_mesh_that_does_not_match_the_devices(shared, tmp_path):
  config = tiny_config(shared['tfds_dir'], shared['vocab'])
  config.mesh.update(dict(data=3, fsdp=1, tensor=1))
  with pytest.raises(UserError, match='multiply to 3 but there are 8 devices'):
    train(config, str(tmp_path))


def test_batch_not_divisible_by_data_parallel_size(shared, tmp_path):
  config = tiny_config(shared['tfds_dir'], shared['vocab'])
  config.data.batch_size = 12
  with pytest.raises(UserError, match='batch_size=12 is not divisible by the data-parallel size 8'):
    train(config, str(tmp_path))


def test_non_finite_loss_stops_without_saving(shared, tmp_path):
  config = tiny_config(shared['tfds_dir'], shared['vocab'], num_steps=2, checkpoint_every=2)
  train(config, str(tmp_path))
  config.train.update(dict(num_steps=8, learning_rate=1e30))  # diverges at once
  with pytest.raises(UserError, match=r'Non-finite loss or gradient within steps .*'
                                      r'Last good checkpoint: step 2 in '):
    train(config, str(tmp_path))
  assert checkpoint_lib.Checkpoints(str(tmp_path), config).steps() == [2]
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(saved_params(tmp_path, config, 2)))


def test_non_finite_updates_can_be_skipped(shared, tmp_path):
  config = tiny_config(shared['tfds_dir'], shared['vocab'], num_steps=6, checkpoint_every=6,
                       learning_rate=1e30, warmup_steps=1, skip_nonfinite=True)
  train(config, str(tmp_path))
  assert sum(r['skipped_steps'] for r in metrics_lib.read(str(tmp_path))) > 0
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(saved_params(tmp_path, config, 6)))


def test_train_requires_workdir(repo):
  result = subprocess.run([sys.executable, '-m', 'transformer_jax.train',
                           '--config=configs/tiny.py'], cwd=repo, capture_output=True, text=True,
                          env=dict(os.environ, JAX_PLATFORMS='cpu'), timeout=300)
  assert result.returncode == 2 and '--workdir is required' in result.stderr
