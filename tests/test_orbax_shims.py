"""Our changes to how Orbax restores (orbax_shims.py) apply to the Orbax they were written
for only; restores work either way."""
import shutil

from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import integrity, sharding
from transformer_jax.steps import build


def test_another_orbax_restores_by_its_own_path_with_one_warning(briefly_trained, tiny_config,
                                                                 tmp_path, monkeypatch, capsys):
  """Our changes to Orbax's restores replace private functions of the pinned version:
  with another version installed they are not made (a restore still works, by Orbax's own
  path) and one warning names the version. Before, they were made on any version."""
  import importlib.metadata

  from orbax.checkpoint._src.multihost import multihost

  from transformer_jax import orbax_shims
  original = multihost.sync_global_processes
  real_version = importlib.metadata.version
  monkeypatch.setattr(importlib.metadata, 'version', lambda name: '0.99.0' if
                      name == 'orbax-checkpoint' else real_version(name))
  orbax_shims._private_modules.cache_clear()
  try:
    workdir = tmp_path / 'work'
    shutil.copytree(briefly_trained, workdir)
    seen = []
    checkpoints = checkpoint_lib.Checkpoints(str(workdir), tiny_config(), async_save=False)
    integrity.read(6, checkpoints.directory,
                   lambda: seen.append(multihost.sync_global_processes is original))
    assert int(checkpoints.restore(6, build(tiny_config(), sharding.make_mesh(
        tiny_config().mesh)).abstract_state).step) == 6
    checkpoints.close()
    assert seen == [True]  # untouched while reading
    err = capsys.readouterr().err
    assert err.count('orbax-checkpoint 0.99.0 is installed') == 1, err
  finally:
    monkeypatch.undo()
    orbax_shims._private_modules.cache_clear()
  seen = []
  integrity.read(6, checkpoints.directory,
                 lambda: seen.append(multihost.sync_global_processes is original))
  assert seen == [False] and multihost.sync_global_processes is original  # the pinned one
