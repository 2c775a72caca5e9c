"""`train.init_from`: a new run starts from another run's parameters (fine-tuning), with
its model and vocabulary; refusals write nothing; a rerun resumes its own checkpoints.
On 8 simulated CPU devices in-process, and as 2 processes (`local_pod`)."""
from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from flax import nnx

from transformer_jax import config as config_lib
from transformer_jax import inference, local_pod, loop
from transformer_jax import metrics as metrics_lib
from transformer_jax.data import tokenizer as tokenizer_lib
from transformer_jax.errors import UserError

SOURCE_D_FF = 48  # configs/tiny.py has 64: the fine-tune's config file differs from it


def _config(synthetic, **train):
  c = config_lib.load(os.path.join(os.path.dirname(__file__), '..', 'configs', 'tiny.py'))
  c.data.update(vocab_path=synthetic.vocab, **synthetic.data)
  c.train.update({**dict(log_every=1, eval_every=0, checkpoint_every=4), **train})
  return config_lib.validate(c)


@pytest.fixture(scope='module')
def source(synthetic, tmp_path_factory) -> str:
  """A run of 12 steps (checkpoints at 4, 8, 12) whose d_ff is not configs/tiny.py's."""
  workdir = str(tmp_path_factory.mktemp('source'))
  c = _config(synthetic, num_steps=12)
  c.model.d_ff = SOURCE_D_FF
  loop.train(c, workdir)
  return workdir


def _params(workdir: str, step: int | None = None) -> dict:
  model = inference.restore(workdir, step).model
  return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def _assert_same(a: dict, b: dict) -> None:
  leaves_a, leaves_b = jax.tree.leaves_with_path(a), jax.tree.leaves_with_path(b)
  assert [p for p, _ in leaves_a] == [p for p, _ in leaves_b]
  for (path, x), (_, y) in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def test_a_fine_tune_starts_from_the_source_and_a_rerun_resumes_it(
    synthetic, source, tmp_path, capsys):
  """With a learning rate of 1e-30 (no update survives float32 rounding) the fine-tune's
  parameters stay the source's, bit for bit,
  though its config file has another d_ff (the source's replaces it, said in one line);
  its steps count from 0 and its first loss is the trained model's, far below a fresh
  one's. A rerun with more steps resumes from its own checkpoint."""
  workdir = str(tmp_path / 'fine_tune')
  tune = _config(synthetic, num_steps=4, learning_rate=1e-30, init_from=f'{source}@8')
  loop.train(tune, workdir)
  out = capsys.readouterr().out
  assert f'model.d_ff=64->{SOURCE_D_FF}' in out and 'optimizer and data from the start' in out
  _assert_same(_params(workdir, 4), _params(source, 8))
  restored = inference.restore(workdir)
  assert restored.step == 4 and restored.config.model.d_ff == SOURCE_D_FF
  assert restored.config.model.dropout_rate == tune.model.dropout_rate  # the run's own
  tuned = [r['loss'] for r in metrics_lib.read(workdir)]
  fresh = [r['loss'] for r in metrics_lib.read(source)]
  assert len(tuned) == 4 and tuned[0] < fresh[0] - 0.5, (tuned, fresh)

  loop.train(_config(synthetic, num_steps=8, init_from=f'{source}@8'), workdir)
  out = capsys.readouterr().out
  assert 'resumed from the checkpoint at step 4' in out and 'parameters of' not in out
  assert [r['step'] for r in metrics_lib.read(workdir)] == list(range(1, 9))


@pytest.mark.parametrize('given, override, message', [
    ({'model.d_ff'}, {'model.d_ff': 96}, f'model.d_ff=96 (the source has {SOURCE_D_FF})'),
    ({'model.d_model', 'model.num_heads'}, {'model.d_model': 64, 'model.num_heads': 8},
     'model.d_model=64 (the source has 32); model.num_heads=8 (the source has 4)'),
    ({'data.vocab_path'}, {'data.vocab_path': 'OTHER'}, 'the source has another vocabulary'),
], ids=['d_ff', 'd_model_and_heads', 'vocabulary'])
def test_a_command_line_that_contradicts_the_source_is_refused(
    synthetic, source, tmp_path, given, override, message):
  c = _config(synthetic, num_steps=4, init_from=source)
  for key, value in override.items():
    if value == 'OTHER':  # a vocabulary trained on other text
      value = str(tmp_path / 'other.model')
      tokenizer_lib.load_or_train(value, 48, lambda: (
          f'other words number {i} for another vocabulary' for i in range(2000)), False)
    section, name = key.split('.')
    c[section][name] = value
  workdir = tmp_path / 'refused'
  with pytest.raises(UserError, match='contradicts it') as e:
    loop.train(config_lib.validate(c), str(workdir), given)
  assert message in str(e.value) and '\n' not in str(e.value)
  assert not workdir.exists()


def test_a_missing_source_step_is_refused(synthetic, source, tmp_path):
  workdir = tmp_path / 'refused'
  with pytest.raises(UserError, match=r'init_from: No checkpoint at step 5 .*there are: 4, 8, 12'):
    loop.train(_config(synthetic, init_from=f'{source}@5'), str(workdir))
  with pytest.raises(UserError, match='holds no checkpoints'):
    loop.train(_config(synthetic, init_from=str(tmp_path / 'nothing')), str(workdir))
  assert not workdir.exists()


@pytest.mark.slow
def test_two_processes_start_from_the_source_alike(repo, synthetic, source, tmp_path):
  """The source (saved on one process, 8 devices) restored onto 2 processes x 2 devices
  with FSDP: the same parameters, and a first loss of the trained model's."""
  workdir = tmp_path / 'pod'
  flags = ['--config=configs/tiny.py', '--config.train.log_every=1',
           '--config.train.eval_every=0', '--config.train.num_steps=2',
           '--config.train.learning_rate=1e-30', '--config.mesh.fsdp=2',
           *(f'--config.data.{k}={v}' for k, v in synthetic.data.items()),
           f'--config.data.vocab_path={synthetic.vocab}', f'--config.train.init_from={source}']
  results = local_pod.run(['transformer_jax.train', f'--workdir={workdir}', *flags],
                          processes=2, devices=2, cwd=repo, log_dir=str(tmp_path / 'logs'))
  for r in results:
    assert r.code == 0, r.err[-3000:]
  _assert_same(_params(str(workdir), 2), _params(source, 12))
  refused = local_pod.run(['transformer_jax.train', f'--workdir={tmp_path / "refused"}', *flags,
                           '--config.model.d_ff=64'], processes=2, devices=2, cwd=repo,
                           log_dir=str(tmp_path / 'refused_logs'))
  for r in refused:
    assert r.code == 2 and 'model.d_ff=64 (the source has 48)' in r.err, r.err[-2000:]
  assert not (tmp_path / 'refused').exists()


def test_prepare_takes_the_source_vocabulary_and_train_refuses_another(
    synthetic, source, tmp_path, command):
  """`prepare` with `init_from` writes the source's vocabulary (and tokenizes with it);
  a workdir whose vocab.model is another (a `prepare` without `init_from`) stops
  `train` in one line, the file left as it was."""
  from transformer_jax import prepare
  prepared = tmp_path / 'prepared'
  tiny = os.path.join(os.path.dirname(__file__), '..', 'configs', 'tiny.py')
  flags = [f'--config={tiny}', *(f'--config.data.{k}={v}' for k, v in synthetic.data.items()),
           f'--config.train.init_from={source}', '--nostore']
  result = command(prepare, *flags, f'--workdir={prepared}')
  assert result.code == 0, result.err
  assert (prepared / tokenizer_lib.VOCAB_FILE).read_bytes() == \
      open(synthetic.vocab, 'rb').read()  # the source was trained with it
  other = tmp_path / 'other' / tokenizer_lib.VOCAB_FILE
  other.parent.mkdir()
  tokenizer_lib.load_or_train(str(other), 48, lambda: (
      f'other words number {i} for another vocabulary' for i in range(2000)), False)
  before = other.read_bytes()
  with pytest.raises(UserError, match='is not the vocabulary of train.init_from') as e:
    loop.train(_config(synthetic, num_steps=4, init_from=source), str(other.parent))
  assert '\n' not in str(e.value) and other.read_bytes() == before
  assert not (other.parent / 'checkpoints').exists()
