"""What a failed restore may cost (integrity.py): only proven damage moves a step aside;
a changed optimizer resumes; another structure, running out of memory or a permission
error stops in one line with every file in place; a workdir whose checkpoints are all
damaged never trains from step 0 unless told; done.json tells the truth."""
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import config as config_lib
from transformer_jax import inference, integrity, loop, sharding
from transformer_jax.errors import UserError
from transformer_jax.steps import build


def _copy(briefly_trained, tmp_path) -> pathlib.Path:
  workdir = tmp_path / 'work'
  shutil.copytree(briefly_trained, workdir)  # checkpoints at steps 2, 4 and 6
  return workdir


def _snapshot(workdir) -> dict[str, str]:
  """Every file under the workdir by path: the sha256 of its bytes."""
  return {p.relative_to(workdir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(workdir.rglob('*')) if p.is_file()}


def _restored(workdir, config, step):
  setup = build(config, sharding.make_mesh(config.mesh))
  checkpoints = checkpoint_lib.Checkpoints(str(workdir), config, async_save=False)
  try:
    return checkpoints.restore(step, setup.abstract_state)
  finally:
    checkpoints.close()


def test_turning_clipping_on_or_off_resumes_with_the_adam_moments(briefly_trained,
                                                                  tiny_config, tmp_path,
                                                                  capsys):
  workdir = _copy(briefly_trained, tmp_path)
  saved = _restored(workdir, tiny_config(), 6)
  clipped = _restored(workdir, tiny_config(clip_grad_norm=1.0), 6)
  assert 'train.clip_grad_norm turned on' in capsys.readouterr().out
  assert int(clipped.step) == 6 and len(clipped.opt_state) == 2  # (clipping, adam)
  for a, b in zip(jax.tree.leaves((saved.params, saved.opt_state, saved.rng)),
                  jax.tree.leaves((clipped.params, clipped.opt_state, clipped.rng)),
                  strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  # The user's case: the same run, on with clipping; it continues from step 6.
  last = loop.train(tiny_config(num_steps=8, checkpoint_every=2, clip_grad_norm=1.0),
                    str(workdir))
  out = capsys.readouterr().out
  assert 'resumed from the checkpoint at step 6' in out and last['step'] == 8
  assert not (workdir / 'quarantine').exists()
  assert checkpoint_lib.Checkpoints(str(workdir), tiny_config()).steps() == [4, 6, 8]
  # And off again: the clipped step 8 resumes without clipping.
  unclipped = _restored(workdir, tiny_config(), 8)
  assert 'train.clip_grad_norm turned off' in capsys.readouterr().out
  assert int(unclipped.step) == 8 and len(unclipped.opt_state) == 1


def test_a_state_of_another_structure_stops_and_leaves_the_workdir_byte_identical(
    briefly_trained, tiny_config, tmp_path):
  """A step whose state holds an array this version's state has not (as another version
  would write): one line naming it; not a file of the workdir changes, done.json kept."""
  workdir = _copy(briefly_trained, tmp_path)
  config = tiny_config(num_steps=8, checkpoint_every=8)
  state = _restored(workdir, config, 6)
  other = state.replace(params={**state.params, 'extra': jnp.zeros(3)})
  checkpoints = checkpoint_lib.Checkpoints(str(workdir), config, async_save=False)
  checkpoints.save(7, other, None, config.data.vocab_path)
  checkpoints.close()
  assert (workdir / 'done.json').exists()
  before = _snapshot(workdir)
  with pytest.raises(checkpoint_lib.RestoreFailed) as refused:
    loop.train(config, str(workdir))
  message = str(refused.value)
  assert re.match(r'Could not restore the checkpoint at step 7 in .*: it holds a train '
                  r'state of another structure \(it also holds: params/extra\)\. Use a new '
                  r'--workdir.* Every checkpoint was left in place\.$', message), message
  assert '\n' not in message
  assert _snapshot(workdir) == before


def _fail_placing_arrays(monkeypatch, error):
  """Every array Orbax assembles from the shards it read fails as JAX fails it."""
  def fail(*args, **kwargs):
    raise error
  monkeypatch.setattr(jax, 'make_array_from_single_device_arrays', fail)


def test_out_of_memory_while_restoring_stops_and_moves_nothing(briefly_trained, tiny_config,
                                                               tmp_path, monkeypatch):
  workdir = _copy(briefly_trained, tmp_path)
  before = _snapshot(workdir)
  _fail_placing_arrays(monkeypatch, jax.errors.JaxRuntimeError(
      'RESOURCE_EXHAUSTED: Out of memory while trying to allocate 2.18GiB.'))
  for attempt in (lambda: loop.train(tiny_config(num_steps=8), str(workdir)),
                  lambda: inference.restore(str(workdir))):  # translate's and evaluate's
    with pytest.raises(checkpoint_lib.RestoreFailed,
                       match=r'step 6 .*: it ran out of memory \(RESOURCE_EXHAUSTED.*Free '
                             r'memory, or restore with more devices'):
      attempt()
    assert _snapshot(workdir) == before


@pytest.mark.slow
def test_translate_stops_on_a_permission_error_and_moves_nothing(briefly_trained, tmp_path):
  """The array files of the newest step unreadable (a real EACCES: as root, without the
  capabilities that override file modes): the command stops in one line, nothing moved,
  where it used to quarantine the step and translate with an older one."""
  workdir = _copy(briefly_trained, tmp_path)
  for path in (workdir / 'checkpoints' / '6' / 'state').rglob('*'):
    if path.is_file() and path.parent.name == 'd':
      path.chmod(0)
  before = sorted(p.as_posix() for p in workdir.rglob('*'))
  drop = (['setpriv', '--bounding-set=-dac_override,-dac_read_search']
          if os.geteuid() == 0 else [])
  result = subprocess.run(
      [*drop, sys.executable, '-m', 'transformer_jax.translate', f'--workdir={workdir}'],
      input=b'The dog sees the cat.\n', capture_output=True, timeout=600,
      cwd=pathlib.Path(__file__).parents[1], env=dict(os.environ, JAX_PLATFORMS='cpu'))
  err = result.stderr.decode()
  assert result.returncode == 2 and result.stdout == b'', err
  assert re.fullmatch(r'error: Could not restore the checkpoint at step 6 in \S+: permission '
                      r'denied \(PERMISSION_DENIED.*\)\. Give this machine read access to '
                      r'the workdir and run again\. Every checkpoint was left in place\.\n',
                      err), err
  assert sorted(p.as_posix() for p in workdir.rglob('*')) == before


def test_all_steps_damaged_stops_until_told_to_restart(briefly_trained, tiny_config,
                                                       tmp_path, damage_arrays, capsys):
  workdir = _copy(briefly_trained, tmp_path)
  for step in (2, 4, 6):
    damage_arrays(workdir / 'checkpoints' / str(step))
  config = tiny_config(num_steps=8, checkpoint_every=4)
  for attempt in range(2):  # again, when only the quarantine holds them
    with pytest.raises(UserError, match=r'No checkpoint in .* passed verification; the '
                       r'damaged ones are in .*quarantine \(checkpoints-2-.*, checkpoints-4-'
                       r'.*, checkpoints-6-.*\)\. To train from step 0 beside them, set '
                       r'--config.train.restart_if_no_valid_checkpoint=True'):
      loop.train(config, str(workdir))
    assert len(list((workdir / 'quarantine').iterdir())) == 3
    assert checkpoint_lib.Checkpoints(str(workdir), config).steps() == []
  capsys.readouterr()
  config.train.restart_if_no_valid_checkpoint = True
  assert loop.train(config, str(workdir))['step'] == 8
  assert 'training from step 0, as train.restart_if_no_valid_checkpoint says' in \
      capsys.readouterr().err
  assert checkpoint_lib.Checkpoints(str(workdir), config).steps() == [4, 8]
  assert len(list((workdir / 'quarantine').iterdir())) == 3


def test_a_run_resumed_at_its_last_step_writes_done(briefly_trained, tiny_config, tmp_path):
  workdir = _copy(briefly_trained, tmp_path)
  (workdir / 'done.json').unlink()  # e.g. a run killed between its last save and done.json
  assert loop.train(tiny_config(num_steps=6, checkpoint_every=2), str(workdir)) == {'step': 6}
  assert json.loads((workdir / 'done.json').read_text()) == {'step': 6}


_SKIP_DAMAGED = """
import gc, sys
from absl import logging
logging.set_verbosity(logging.ERROR)  # as every command sets it (cli.py)
from transformer_jax import checkpoint, config as config_lib, sharding
from transformer_jax.steps import build
config = config_lib.load(sys.argv[1])
config.data.vocab_path = sys.argv[2]
setup = build(config, sharding.make_mesh(config.mesh))
for workdir in sys.argv[3:]:
  checkpoints = checkpoint.Checkpoints(workdir, config, async_save=False)
  print(checkpoints.newest_verified(setup.abstract_state.params), flush=True)
  checkpoints.close()
  gc.collect()  # what abandoned reads left behind is finalized now, under our eyes
"""


@pytest.mark.slow
def test_a_skipped_step_leaves_one_warning_and_no_traceback(briefly_trained, tiny_config,
                                                            repo, tmp_path):
  """Every array file of the newest step cut in half: each of its reads fails, most
  while others are still in flight. In a process of its own (stderr as a user sees it),
  only the warnings may reach stderr, however late the abandoned reads end; repeated,
  as the race showed once in a 50-case battery."""
  workdirs = []
  for round_ in range(6):
    workdir = tmp_path / f'round{round_}'
    shutil.copytree(briefly_trained, workdir)
    for path in (workdir / 'checkpoints' / '6' / 'state').rglob('*'):
      if path.is_file() and path.parent.name == 'd':
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    workdirs.append(str(workdir))
  result = subprocess.run(
      [sys.executable, '-c', _SKIP_DAMAGED, str(repo / 'configs' / 'tiny.py'),
       tiny_config().data.vocab_path, *workdirs],
      capture_output=True, text=True, timeout=600, cwd=repo,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert result.returncode == 0 and result.stdout.split() == ['4'] * len(workdirs), \
      result.stderr[-3000:]
  lines = [x for x in result.stderr.splitlines() if x.strip()]
  assert len(lines) == len(workdirs), result.stderr[-3000:]
  for line in lines:
    assert re.match(r'warning: The checkpoint at step 6 in \S+ failed verification: it could '
                    r'not be read \(OUT_OF_RANGE: .*\), and \d+ of its files differ from its '
                    r'manifest \(state/\S+: \d+ bytes, recorded \d+, \.\.\.\)\. Moved it to '
                    r'\S+; trying the one before\.$', line), line


@pytest.mark.parametrize('missing', ['state/_METADATA', 'state/manifest.ocdbt', 'state/d',
                                     'meta', 'data'])
def test_a_file_missing_from_a_committed_step_is_damage(briefly_trained, tiny_config,
                                                        tmp_path, missing):
  """Orbax lists a step only once committed: a part of it gone since is proven damage
  (even where Orbax then reports another tree structure), so it is quarantined."""
  workdir = _copy(briefly_trained, tmp_path)
  victim = workdir / 'checkpoints' / '6' / missing
  shutil.rmtree(victim) if victim.is_dir() else victim.unlink()
  config = tiny_config()
  setup = build(config, sharding.make_mesh(config.mesh))
  checkpoints = checkpoint_lib.Checkpoints(str(workdir), config, async_save=False)

  class Position:  # where the stream would be moved to
    def set_state(self, state):
      self.state = state
  with pytest.raises(checkpoint_lib.CorruptCheckpoint,
                     match=r'step 6 .* failed verification: it could not be read'):
    checkpoints.restore(6, setup.abstract_state, Position())
  assert checkpoints.restore_newest(
      lambda step: checkpoints.restore(step, setup.abstract_state, Position()))[0] == 4
  checkpoints.close()
  assert [p.name.split('-')[1] for p in (workdir / 'quarantine').iterdir()] == ['6']


def test_a_structure_error_is_damage_only_where_orbaxs_own_record_disagrees(briefly_trained,
                                                                          tmp_path):
  """Orbax reports 'tree structures do not match' both for a damaged tree record and for
  a reader whose containers changed type (a library upgrade): the step's own record,
  against the arrays its verified meta lists, tells which."""
  workdir = _copy(briefly_trained, tmp_path)
  directory = workdir / 'checkpoints'
  checkpoints = checkpoint_lib.Checkpoints(str(workdir), config_lib.defaults())
  recorded = set(checkpoints.meta(6)['checksums'])
  checkpoints.close()
  from etils import epath
  error = ValueError('User-provided restore item and on-disk value metadata tree structures '
                     'do not match: ...')
  verdict = integrity.classify(6, epath.Path(directory), error, recorded)
  assert isinstance(verdict, checkpoint_lib.RestoreFailed), verdict
  assert 'an error that proves no damage' in str(verdict)
  metadata = directory / '6' / 'state' / '_METADATA'
  tree = json.loads(metadata.read_text())
  del tree['tree_metadata'][next(iter(tree['tree_metadata']))]  # an array it lost
  metadata.write_text(json.dumps(tree))
  verdict = integrity.classify(6, epath.Path(directory), error, recorded)
  assert isinstance(verdict, checkpoint_lib.CorruptCheckpoint), verdict


def test_a_checkpoint_of_another_storage_dtype_is_refused_not_quarantined(
    briefly_trained, tiny_config, tmp_path):
  """Orbax would cast the saved float32 values to bfloat16 and the checksums would then
  differ: a refusal naming the key, not damage."""
  workdir = _copy(briefly_trained, tmp_path)
  config = tiny_config(num_steps=8)
  config.model.param_dtype = 'bfloat16'
  before = _snapshot(workdir)
  with pytest.raises(UserError, match=r"of another model \(param_dtype: checkpoint 'float32', "
                                      r"config 'bfloat16'\)"):
    loop.train(config, str(workdir))
  assert _snapshot(workdir) == before


def test_a_step_deleted_while_it_is_read_stops_and_moves_nothing(briefly_trained, tiny_config,
                                                                 tmp_path):
  """`translate` beside a live run: the run's save schedule deletes the step after it was
  listed. Nothing proves damage, so nothing is moved; the command says to run again."""
  workdir = _copy(briefly_trained, tmp_path)
  config = tiny_config()
  setup = build(config, sharding.make_mesh(config.mesh))
  checkpoints = checkpoint_lib.Checkpoints(str(workdir), config, async_save=False)
  assert checkpoints.steps() == [2, 4, 6]
  shutil.rmtree(workdir / 'checkpoints' / '6')
  with pytest.raises(checkpoint_lib.RestoreFailed, match=r'step 6 .*: it disappeared while '
                     r'being read .*deleted it; run again'):
    checkpoints.restore_newest(lambda step: checkpoints.restore(step, setup.abstract_state),
                               [2, 4, 6])
  checkpoints.close()
  assert not (workdir / 'quarantine').exists()


def test_training_on_an_average_says_it_holds_no_data_position(briefly_trained, tiny_config,
                                                              tmp_path):
  """`average`'s checkpoint (as `best/`'s) is saved without a data position, and its own
  record says so: training on it stops in one line. Before, the missing `data` item read
  as damage, and the good average was quarantined."""
  workdir = _copy(briefly_trained, tmp_path)
  checkpoint_lib.average(str(workdir), last=2)
  averaged = workdir / checkpoint_lib.AVERAGED_DIR
  before = _snapshot(averaged / 'checkpoints')
  with pytest.raises(UserError, match=r'step 6 in .* holds no data position .*Nothing was '
                                      r'moved\.$'):
    loop.train(tiny_config(num_steps=8), str(averaged))
  assert _snapshot(averaged / 'checkpoints') == before
  assert not (averaged / 'quarantine').exists()


# Every word the verdict's patterns look for, as a workdir's name may hold them.
EVERY_WORD = ('DATA_LOSS OUT_OF_RANGE decompress Zstd JSONDecodeError UnicodeDecodeError '
              'NOT_FOUND FileNotFoundError')


def _raised(*messages):
  """The exception a restore raises: the last message's error, raised from the ones
  before it (the innermost first)."""
  error = None
  for message in messages:
    try:
      raise RuntimeError(message) from error
    except RuntimeError as e:
      error = e
  return error


def test_the_verdict_reads_the_storage_status_never_a_path(tmp_path):
  """Before, the words anywhere in the error chain decided: a workdir named after an
  ablation of decompression made any error damage, and a DATA_LOSS whose chain also
  mentioned memory or the network was never damage."""
  from etils import epath
  directory = epath.Path(tmp_path / f'runs/{EVERY_WORD}/checkpoints')
  (directory / '6').mkdir(parents=True)
  verdict = integrity.classify(6, directory, _raised(f'Could not restore {directory}/6: why'))
  assert isinstance(verdict, checkpoint_lib.RestoreFailed), verdict
  assert 'proves no damage' in str(verdict)
  damaged = _raised('DATA_LOSS: Error reading "state/d/1": checksum mismatch',
                    'Failed to restore (Out of memory? UNAVAILABLE?)')
  assert isinstance(integrity.classify(6, directory, damaged), checkpoint_lib.CorruptCheckpoint)
  memory = _raised('RESOURCE_EXHAUSTED: Out of memory while decompressing a Zstd chunk')
  verdict = integrity.classify(6, directory, memory)
  assert isinstance(verdict, checkpoint_lib.RestoreFailed) and 'out of memory' in str(verdict)


def test_a_workdir_named_with_every_damage_word_loses_nothing(briefly_trained, tiny_config,
                                                             tmp_path, monkeypatch):
  """A failure that proves nothing, in a workdir whose path holds every word the verdict
  looks for: the command stops and not a file changes."""
  workdir = tmp_path / EVERY_WORD / 'work'
  shutil.copytree(briefly_trained, workdir)
  before = _snapshot(workdir)
  _fail_placing_arrays(monkeypatch, ValueError(f'could not place an array read from '
                                               f'{workdir}/checkpoints/6/state'))
  with pytest.raises(checkpoint_lib.RestoreFailed, match='proves no damage'):
    inference.restore(str(workdir))
  assert _snapshot(workdir) == before

