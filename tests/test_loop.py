"""The training loop (loop.py) in this process: the loss falls, checkpoints written by a
kill are ignored, the time budget stops it, non-finite steps stop it or are skipped, and
each refused workdir, checkpoint, mesh or batch is one clear error that changes nothing."""
import json
import math
import os
import pathlib
import re
import shutil

import jax
import numpy as np
import pytest

from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import metrics as metrics_lib
from transformer_jax.errors import UserError
from transformer_jax.loop import train


def test_loss_falls_on_the_synthetic_corpus(tiny_config, tmp_path):
  config = tiny_config(num_steps=30, checkpoint_every=30, eval_every=30)
  config.data.batch_size = 16
  last = train(config, str(tmp_path))
  losses = [r['loss'] for r in metrics_lib.read(str(tmp_path))]
  assert len(losses) == 30
  assert losses[0] > math.log(config.model.vocab_size) - 0.3  # starts near uniform
  assert np.mean(losses[-10:]) < losses[0] - 0.8
  assert math.isfinite(last['eval_loss']) and last['eval_loss'] < losses[0] - 0.8
  assert checkpoint_lib.Checkpoints(str(tmp_path), config).steps() == [30]
  assert os.listdir(tmp_path / 'tensorboard' / 'train')  # event files were written


@pytest.fixture
def workdir(briefly_trained, tmp_path):
  """A copy of the briefly trained workdir (checkpoints at steps 2, 4 and 6) to resume."""
  shutil.copytree(briefly_trained, tmp_path / 'work')
  return tmp_path / 'work'


def test_half_written_checkpoint_is_ignored(tiny_config, workdir):
  # What a kill during an async save leaves behind: a temporary step directory.
  partial = workdir / 'checkpoints' / '8.orbax-checkpoint-tmp-1234567'
  shutil.copytree(workdir / 'checkpoints' / '6', partial)
  (partial / 'state' / 'manifest.ocdbt').write_bytes(b'garbage')
  config = tiny_config(num_steps=7, checkpoint_every=7, keep_checkpoints=3)
  train(config, str(workdir))
  assert [r['step'] for r in metrics_lib.read(str(workdir))] == [2, 4, 6, 7]
  assert checkpoint_lib.Checkpoints(str(workdir), config).steps() == [4, 6, 7]


def test_time_budget_saves_and_stops_early(tiny_config, workdir, capsys):
  config = tiny_config(num_steps=1000, checkpoint_every=1000, keep_checkpoints=3,
                       stop_after_minutes=1e-4)  # 6 ms: the first step
  train(config, str(workdir))
  steps = [r['step'] for r in metrics_lib.read(str(workdir))]
  assert steps[:3] == [2, 4, 6] and 6 < steps[-1] < 1000
  assert checkpoint_lib.Checkpoints(str(workdir), config).steps() == [4, 6, steps[-1]]
  assert 'train.stop_after_minutes reached' in capsys.readouterr().out


def test_a_flops_budget_ends_the_run_with_a_checkpoint_and_done_json(tiny_config, tmp_path,
                                                                     capsys):
  from transformer_jax import costs
  config = tiny_config(num_steps=1000, checkpoint_every=1000)
  config.train.budget_flops = 4.5 * costs.step_flops(config)
  last = train(config, str(tmp_path))
  records = metrics_lib.read(str(tmp_path))
  assert [r['step'] for r in records] == [1, 2, 3, 4, 5] and last['step'] == 5
  assert records[-1]['train_flops'] == 5 * costs.step_flops(config)
  assert checkpoint_lib.Checkpoints(str(tmp_path), config).steps() == [5]
  assert json.loads((tmp_path / 'done.json').read_text())['step'] == 5
  assert 'train.budget_flops reached at step 5' in capsys.readouterr().out
  assert train(config, str(tmp_path)) == {'step': 5}  # done: nothing more to train


def test_workdir_not_writable(tiny_config, tmp_path):
  (tmp_path / 'file').write_text('x')
  config = tiny_config()
  with pytest.raises(UserError, match='not writable'):
    train(config, str(tmp_path / 'file' / 'workdir'))


def test_checkpoint_of_other_training_records_is_refused(tiny_config, workdir):
  before = sorted(p.name for p in (workdir / 'checkpoints').iterdir())
  config = tiny_config(num_steps=8)
  config.data.lowercase = True  # other token ids
  with pytest.raises(UserError, match=r'other records \(lowercase: checkpoint False, '
                     r'config True\)'):
    train(config, str(workdir))
  config.data.lowercase, config.data.subword_samples = False, 2  # K sampled copies of each pair
  with pytest.raises(UserError, match=r'trained on other records \(subword_samples: '
                     r'checkpoint 0, config 2\).*Use a new --workdir'):
    train(config, str(workdir))
  config.data.subword_samples, config.seed = 0, 1  # another shuffle order
  with pytest.raises(UserError, match=r'other records \(seed: checkpoint 0, config 1\)'):
    train(config, str(workdir))
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == before


def test_checkpoint_of_another_vocabulary_is_refused(tiny_config, workdir, tmp_path):
  before = sorted(p.name for p in (workdir / 'checkpoints').iterdir())
  # The same pieces plus an unknown protobuf field (number 200, varint 1): a vocabulary
  # that loads and has the same size, but is not the file the checkpoint was trained with.
  config = tiny_config(num_steps=8)
  other = tmp_path / 'other.model'
  other.write_bytes(pathlib.Path(config.data.vocab_path).read_bytes() + b'\xc0\x0c\x01')
  config.data.vocab_path = str(other)
  with pytest.raises(UserError, match=rf'step 6 in {re.escape(str(workdir))}.* was trained '
                     rf'with another vocabulary than {re.escape(str(other))}\. Restore'):
    train(config, str(workdir))
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == before


def test_mesh_that_does_not_match_the_devices(tiny_config, tmp_path):
  config = tiny_config()
  config.mesh.update(dict(data=3, fsdp=1, tensor=1))
  with pytest.raises(UserError, match='multiply to 3 but there are 8 devices'):
    train(config, str(tmp_path))


def test_batch_not_divisible_by_data_parallel_size(tiny_config, tmp_path):
  config = tiny_config()
  config.data.batch_size = 12
  with pytest.raises(UserError, match='batch_size=12 is not divisible by the data-parallel size 8'):
    train(config, str(tmp_path))


def test_non_finite_loss_stops_without_saving(tiny_config, saved_params, workdir):
  config = tiny_config(num_steps=8, learning_rate=1e30)  # diverges at once
  with pytest.raises(UserError, match=r'Non-finite loss or gradient within steps (7|8)\.\.\1; .*'
                                      r'Newest verified checkpoint: step 6; a rerun'):
    train(config, str(workdir))
  assert checkpoint_lib.Checkpoints(str(workdir), config).steps() == [2, 4, 6]
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(saved_params(workdir, config, 6)))


def test_non_finite_stop_names_the_newest_checkpoint_that_verifies(tiny_config, workdir,
                                                                 damage_arrays, capsys):
  """Step 6 damaged: the run falls back to 4, diverges, and names 4, not 6."""
  damage_arrays(workdir / 'checkpoints' / '6')
  config = tiny_config(num_steps=8, learning_rate=1e30)
  with pytest.raises(UserError, match=r'Newest verified checkpoint: step 4; a rerun resumes'):
    train(config, str(workdir))
  assert 'step 6 in' in capsys.readouterr().err


def test_non_finite_updates_can_be_skipped(tiny_config, saved_params, workdir):
  config = tiny_config(num_steps=9, checkpoint_every=9, learning_rate=1e30,
                       skip_nonfinite=True)
  train(config, str(workdir))
  assert sum(r['skipped_steps'] for r in metrics_lib.read(str(workdir))) > 0
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(saved_params(workdir, config, 9)))


@pytest.mark.slow
def test_training_tracks_bleu_and_keeps_the_best_checkpoints(trained, command_process):
  workdir, config = trained
  bleu = {r['step']: r['bleu'] for r in metrics_lib.read(str(workdir), 'eval') if 'bleu' in r}
  assert sorted(bleu) == [100, 200, 300] and bleu[300] > bleu[100]
  best = checkpoint_lib.Checkpoints(str(workdir / 'best'), config).steps()
  assert best == sorted(sorted(bleu, key=bleu.get)[-2:])
  result = command_process('translate', f'--workdir={workdir / "best"}',
                           stdin=b'The dog sleeps.\n')
  assert result.code == 0 and result.out.strip(), result.err


def test_rdrop_training_resumes_exactly(tiny_config, saved_params, tmp_path):
  """R-Drop (train.rdrop_alpha) logs its KL; stopped at step 2 and resumed, the run ends
  with the losses and parameters of one never stopped."""
  config = tiny_config(num_steps=4, checkpoint_every=2, rdrop_alpha=1.0)
  train(config, str(tmp_path / 'whole'))
  train(tiny_config(num_steps=2, checkpoint_every=2, rdrop_alpha=1.0), str(tmp_path / 'cut'))
  train(config, str(tmp_path / 'cut'))
  whole, cut = (metrics_lib.read(str(tmp_path / d)) for d in ('whole', 'cut'))
  assert [r['loss'] for r in whole] == [r['loss'] for r in cut]
  assert all(r['rdrop_kl'] > 0 for r in whole)
  for a, b in zip(jax.tree.leaves(saved_params(tmp_path / 'whole', config, 4)),
                  jax.tree.leaves(saved_params(tmp_path / 'cut', config, 4)), strict=True):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('fail_at', [3, 9])
def test_a_failing_input_ends_the_run_with_its_error_and_never_hangs_it(
    tiny_config, tmp_path, monkeypatch, broken_input, fail_at):
  """Failing at batch 3, the run stops with the input's error; failing at batch 9, which
  a 4-step run never takes but its prefetch thread makes (and holds, the queue full), the
  run ends normally: it used to wait forever for that thread."""
  from transformer_jax import loop
  real = loop.pipeline.train_stream
  monkeypatch.setattr(loop.pipeline, 'train_stream',
                      lambda *a, **k: broken_input(real(*a, **k), fail_at))
  config = tiny_config(num_steps=4, checkpoint_every=4)
  config.data.prefetch = 4
  if fail_at == 3:
    with pytest.raises(UserError, match='the input broke'):
      train(config, str(tmp_path))
  else:
    train(config, str(tmp_path))
    assert [r['step'] for r in metrics_lib.read(str(tmp_path))] == [1, 2, 3, 4]
