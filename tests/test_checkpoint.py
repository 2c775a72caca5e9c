"""Checkpoints (checkpoint.py): restoring onto other meshes and continuing, parameters
alone, averaging, and the refusals of a workdir without them."""
import json
import math
import re
import shutil

import jax
import numpy as np
import optax
import pytest

from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import sharding
from transformer_jax.errors import UserError
from transformer_jax.steps import build, compile_steps


def test_checkpoint_restores_onto_other_meshes_and_continues(briefly_trained, tiny_config,
                                                             fake_batch, saved_params):
  """Saved from a mesh of 8 data-parallel devices; restored with FSDP and tensor
  parallelism, onto one device, and with Adam's state split over data and fsdp
  (mesh.shard_update); each continues training."""
  config = tiny_config()
  reference = saved_params(briefly_trained, config, 6)
  for sizes, devices, shard_update in (((1, 4, 2), None, False),
                                       ((1, 1, 1), jax.devices()[:1], False),
                                       ((4, 2, 1), None, True)):
    other = config.copy_and_resolve_references()
    other.mesh.update(dict(zip(('data', 'fsdp', 'tensor'), sizes)), shard_update=shard_update)
    mesh = sharding.make_mesh(other.mesh, devices)
    setup = build(other, mesh)
    checkpoints = checkpoint_lib.Checkpoints(str(briefly_trained), other)
    state = checkpoints.restore(6, setup.abstract_state)
    checkpoints.close()
    for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(state.params), strict=True):
      np.testing.assert_array_equal(a, np.asarray(b))
    assert state.params['encoder_layers'][0]['feed_forward']['w1']['kernel'].sharding.mesh.shape \
        == dict(zip(('data', 'fsdp', 'tensor'), sizes))
    mu = jax.tree.leaves(optax.tree_utils.tree_get(state.opt_state, 'mu'))[0]
    assert ('data' in str(mu.sharding.spec)) == shard_update
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
  saved = json.loads((data / 'metadata').read_text())
  assert set(saved) == {'format', 'rows', 'pairs', 'next', 'back'} and saved['format'] == 2
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


def _state_leaves(checkpoints, step, abstract_state):
  return [np.asarray(x) for x in jax.tree.leaves(checkpoints.restore(step, abstract_state))]


def test_a_flipped_byte_anywhere_in_a_checkpoint_is_never_loaded(briefly_trained, tiny_config,
                                                                 tmp_path, flip_bytes):
  """Every file of a step, damaged in turn: the restore either refuses it in one line or
  returns exactly the saved values (a byte no value depends on, e.g. a timestamp)."""
  workdir = tmp_path / 'work'
  shutil.copytree(briefly_trained, workdir)
  config = tiny_config()
  setup = build(config, sharding.make_mesh(config.mesh))
  checkpoints = checkpoint_lib.Checkpoints(str(workdir), config, async_save=False)
  saved = _state_leaves(checkpoints, 6, setup.abstract_state)
  refused = []
  rng = np.random.default_rng(0)
  damages = [(path, offset) for path in sorted((workdir / 'checkpoints' / '6').rglob('*'))
             if path.is_file() for offset in (min(100, path.stat().st_size // 2),
                                               int(rng.integers(0, path.stat().st_size)))]
  for path, offset in damages:
    original = flip_bytes(path, offset, count=1)
    try:
      got = _state_leaves(checkpoints, 6, setup.abstract_state)
      for a, b in zip(saved, got, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=f'{path} damaged, loaded anyway')
    except checkpoint_lib.CorruptCheckpoint as e:
      assert str(e).startswith('The checkpoint at step 6 in ') and '\n' not in str(e)
      refused.append(path.relative_to(workdir).as_posix())
    finally:
      path.write_bytes(original)
  checkpoints.close()
  # The arrays' data files are refused whenever damaged; so is the meta item.
  assert 'checkpoints/6/meta/metadata' in refused
  assert any('/d/' in p for p in refused), refused


def test_a_damaged_step_is_quarantined_and_training_continues_past_it(
    briefly_trained, tiny_config, tmp_path, damage_arrays, capsys):
  workdir = tmp_path / 'work'
  shutil.copytree(briefly_trained, workdir)
  damage_arrays(workdir / 'checkpoints' / '6')
  (workdir / 'checkpoints' / '9').mkdir()  # junk named like a step
  (workdir / 'checkpoints' / '9' / 'notes.txt').write_text('not a checkpoint')
  from transformer_jax import loop
  capsys.readouterr()
  loop.train(tiny_config(num_steps=8, checkpoint_every=2), str(workdir))
  err = capsys.readouterr().err
  assert re.search(r'step 9 in .* failed verification: it could not be read .*not found', err)
  assert re.search(r'step 6 in .* failed verification: (\d+ of its arrays differ from their '
                   r'checksums|it could not be read)', err)
  quarantined = sorted(p.name.rsplit('-', 2)[0] for p in (workdir / 'quarantine').iterdir())
  assert quarantined == ['checkpoints-6', 'checkpoints-9']
  # The step it fell back past is saved again, and later ones too.
  assert checkpoint_lib.Checkpoints(str(workdir), tiny_config()).steps() == [4, 6, 8]


def test_checkpoints_without_checksums_load_with_one_notice(briefly_trained, tiny_config,
                                                            tmp_path, capsys):
  """A step saved as before this change (meta without checksums) still restores."""
  import orbax.checkpoint as ocp
  workdir = tmp_path / 'work'
  shutil.copytree(briefly_trained, workdir)
  config = tiny_config()
  setup = build(config, sharding.make_mesh(config.mesh))
  current = checkpoint_lib.Checkpoints(str(workdir), config, async_save=False)
  state = current.restore(6, setup.abstract_state)
  meta = current.meta(6)
  current.close()
  old = {k: meta[k] for k in ('config', 'vocab_sha256', 'vocab_model')}
  manager = ocp.CheckpointManager(workdir / 'old' / 'checkpoints',
                                  item_names=('state', 'data', 'meta'))
  for step in (1, 2):
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               meta=ocp.args.JsonSave(old)))
  manager.wait_until_finished()
  manager.close()
  capsys.readouterr()
  checkpoints = checkpoint_lib.Checkpoints(str(workdir / 'old'), config, async_save=False)
  for step in (1, 2):
    restored = checkpoints.restore(step, setup.abstract_state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  checkpoints.close()
  err = capsys.readouterr().err
  assert err.count('written before checkpoints carried checksums') == 1


def test_a_failed_average_leaves_the_earlier_one_as_it_was(briefly_trained, tmp_path,
                                                           monkeypatch):
  """A new average of the same step is written beside the earlier one; when the write
  fails (here the storage is full), the earlier one is back, byte for byte. Before, it
  was deleted first."""
  import hashlib

  import orbax.checkpoint as ocp
  workdir = tmp_path / 'work'
  shutil.copytree(briefly_trained, workdir)
  checkpoint_lib.average(str(workdir), last=2)
  step = workdir / checkpoint_lib.AVERAGED_DIR / 'checkpoints' / '6'
  files = lambda: {p.relative_to(step): hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
                   for p in sorted(step.rglob('*')) if p.is_file()}
  before = files()

  def full(*args, **kwargs):
    raise OSError(28, 'No space left on device')
  monkeypatch.setattr(ocp.CheckpointManager, 'save', full)
  with pytest.raises(OSError, match='No space left'):
    checkpoint_lib.average(str(workdir), last=3)
  assert files() == before
  monkeypatch.undo()
  assert checkpoint_lib.average(str(workdir), last=3) == (6, [2, 4, 6])
  assert files() != before  # the new average replaced it
  assert not (workdir / checkpoint_lib.AVERAGED_DIR / 'previous-6').exists()
