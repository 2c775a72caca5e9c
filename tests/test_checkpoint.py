"""Checkpoints (checkpoint.py): restoring onto other meshes and continuing, parameters
alone, averaging, and the refusals of a workdir without them."""
import json
import math
import shutil

import jax
import numpy as np
import pytest

from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import sharding
from transformer_jax.errors import UserError
from transformer_jax.steps import build, compile_steps


def test_checkpoint_restores_onto_other_meshes_and_continues(briefly_trained, tiny_config,
                                                             fake_batch, saved_params):
  """Saved from a mesh of 8 data-parallel devices; restored with FSDP and tensor
  parallelism, and onto one device; each continues training."""
  config = tiny_config()
  reference = saved_params(briefly_trained, config, 6)
  for sizes, devices in (((1, 4, 2), None), ((1, 1, 1), jax.devices()[:1])):
    other = config.copy_and_resolve_references()
    other.mesh.update(dict(zip(('data', 'fsdp', 'tensor'), sizes)))
    mesh = sharding.make_mesh(other.mesh, devices)
    setup = build(other, mesh)
    checkpoints = checkpoint_lib.Checkpoints(str(briefly_trained), other)
    state = checkpoints.restore(6, setup.abstract_state)
    checkpoints.close()
    for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(state.params), strict=True):
      np.testing.assert_array_equal(a, np.asarray(b))
    assert state.params['encoder_layers'][0]['feed_forward']['w1']['kernel'].sharding.mesh.shape \
        == dict(zip(('data', 'fsdp', 'tensor'), sizes))
    train_step, _ = compile_steps(setup)
    state, metrics = train_step(state, sharding.place_batch(fake_batch(other), mesh))
    assert int(state.step) == 7 and math.isfinite(float(metrics['loss']))


def test_parameters_alone_restore_as_the_whole_state_does(briefly_trained, tiny_config):
  config = tiny_config()
  setup = build(config, sharding.make_mesh(config.mesh))
  checkpoints = checkpoint_lib.Checkpoints(str(briefly_trained), config, async_save=False)
  whole = checkpoints.restore(4, setup.abstract_state)
  params = checkpoints.restore_params(4, setup.abstract_state.params)
  checkpoints.close()
  for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(params), strict=True):
    assert a.sharding == b.sharding
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_average_is_the_mean_of_the_last_checkpoints(briefly_trained, tiny_config, saved_params,
                                                     tmp_path):
  workdir = tmp_path / 'work'
  shutil.copytree(briefly_trained, workdir)
  config = tiny_config()
  saved = {step: saved_params(workdir, config, step) for step in (2, 4, 6)}

  def assert_average_of(steps):
    got = saved_params(workdir / checkpoint_lib.AVERAGED_DIR, config, steps[-1])
    for leaves in zip(jax.tree.leaves(got), *(jax.tree.leaves(saved[s]) for s in steps)):
      np.testing.assert_allclose(leaves[0], sum(leaves[1:]) / len(steps), rtol=1e-6, atol=1e-7)

  assert checkpoint_lib.average(str(workdir), 2) == (6, [4, 6])
  assert_average_of((4, 6))
  # An earlier point of the run: the new average replaces the other.
  assert checkpoint_lib.average(str(workdir), 2, until_step=5) == (4, [2, 4])
  assert_average_of((2, 4))
  averaged = checkpoint_lib.Checkpoints(str(workdir / checkpoint_lib.AVERAGED_DIR), config)
  assert averaged.steps() == [4]
  averaged.close()
  with pytest.raises(UserError, match=r'--last=3 but .* holds 2 checkpoints at or before step '
                                      r'5 \(2, 4\); raise train.keep_checkpoints'):
    checkpoint_lib.average(str(workdir), 3, until_step=5)


def test_the_data_position_is_one_record_and_an_old_per_process_one_is_refused(
    briefly_trained, tiny_config, tmp_path):
  """The stream's position is saved once (the same on every process); a checkpoint of the
  earlier pipeline (Grain states, one file per process) cannot be continued: one line."""
  workdir = tmp_path / 'work'
  shutil.copytree(briefly_trained, workdir)
  data = workdir / 'checkpoints' / '6' / 'data'
  assert set(json.loads((data / 'metadata').read_text())) == {'epoch', 'position', 'deferred'}
  checkpoints = checkpoint_lib.Checkpoints(str(workdir), tiny_config())
  try:
    vocab = tiny_config().data.vocab_path
    checkpoints.check_compatible(6, vocab)  # today's: accepted
    (data / 'metadata').unlink()
    (data / 'process_0-of-1.json').write_text('{"next_index": 48}')
    with pytest.raises(UserError, match='earlier input pipeline.*new --workdir'):
      checkpoints.check_compatible(6, vocab)
  finally:
    checkpoints.close()


def test_a_workdir_without_checkpoints_is_named(tmp_path):
  with pytest.raises(UserError, match='holds no checkpoints .train first'):
    checkpoint_lib.checkpoint_root(str(tmp_path))
  with pytest.raises(UserError, match='holds no averaged checkpoint .run transformer_jax.average'):
    checkpoint_lib.checkpoint_root(str(tmp_path), averaged=True)
