"""Each committed step's manifest (manifest.py) and the verdicts it decides
(integrity.py): the bytes, never an error's words."""
import hashlib
import shutil

from etils import epath

from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import integrity, lease, loop, manifest, sharding
from transformer_jax.steps import build

# Every word the verdict's patterns for steps without a manifest look for.
EVERY_WORD = ('DATA_LOSS OUT_OF_RANGE decompress Zstd JSONDecodeError UnicodeDecodeError '
              'NOT_FOUND FileNotFoundError')


def _snapshot(workdir) -> dict[str, str]:
  return {p.relative_to(workdir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(workdir.rglob('*')) if p.is_file()}


def _directory(workdir):
  return epath.Path(workdir) / 'checkpoints'


def _flip_one_byte(path) -> None:
  raw = bytearray(path.read_bytes())
  raw[len(raw) // 2] ^= 0x01
  path.write_bytes(bytes(raw))


def _largest_array_file(step_dir):
  return max((p for p in step_dir.rglob('*') if p.is_file() and p.parent.name == 'd'),
             key=lambda p: p.stat().st_size)


def test_each_committed_step_has_a_manifest_and_deleted_ones_lose_theirs(
    briefly_trained, tiny_config, tmp_path):
  """Saved asynchronously, keeping 2: after closing, the kept steps have manifests that
  list their files exactly, and the step Orbax deleted has none."""
  config = tiny_config()
  setup = build(config, sharding.make_mesh(config.mesh))
  source = checkpoint_lib.Checkpoints(str(briefly_trained), config, async_save=False)
  state = source.restore(6, setup.abstract_state)
  source.close()
  for step in (2, 4, 6):  # the training run wrote these
    assert manifest.read(_directory(briefly_trained), step) == \
        manifest.listing(_directory(briefly_trained) / str(step))
  target = checkpoint_lib.Checkpoints(str(tmp_path / 'run'), config, max_to_keep=2,
                                      async_save=True, writer=True)
  vocab = config.data.vocab_path
  for step in (1, 2, 3):
    target.save(step, state, None, vocab)
  target.close()
  directory = _directory(tmp_path / 'run')
  assert sorted(p.name for p in (directory.parent / manifest.MANIFEST_DIR).iterdir()) == \
      ['checkpoints-2.json', 'checkpoints-3.json']
  for step in (2, 3):
    recorded = manifest.read(directory, step)
    assert recorded == manifest.listing(directory / str(step))
    assert any(name.startswith('state/') for name in recorded)
  assert not (tmp_path / 'run' / lease.LEASE_FILE).exists()  # released on close


def test_a_step_killed_before_its_manifest_gets_one_when_training_restores_it(
    briefly_trained, tiny_config, tmp_path):
  workdir = tmp_path / 'work'
  shutil.copytree(briefly_trained, workdir)
  manifest.remove(_directory(workdir), 6)
  loop.train(tiny_config(num_steps=8, checkpoint_every=2), str(workdir))
  for step in (6, 8):
    assert manifest.read(_directory(workdir), step) == \
        manifest.listing(_directory(workdir) / str(step))


def _raised(message):
  try:
    raise RuntimeError(message)
  except RuntimeError as e:
    return e


def test_with_a_manifest_no_error_text_decides_only_the_bytes_do(briefly_trained, tmp_path):
  """In a workdir named with every damage word: a DATA_LOSS, an OUT_OF_RANGE or a
  NOT_FOUND while every file matches the manifest moves nothing; one flipped byte, under
  an error that names no damage at all, is proven by the manifest."""
  workdir = tmp_path / EVERY_WORD / 'work'
  shutil.copytree(briefly_trained, workdir)
  directory = _directory(workdir)
  for message in ('DATA_LOSS: Error reading "state/d/1": checksum mismatch',
                  'OUT_OF_RANGE: Zstd decompress failed', 'NOT_FOUND: state/_METADATA',
                  f'JSONDecodeError in {directory}/6/meta'):
    verdict = integrity.classify(6, directory, _raised(message))
    assert isinstance(verdict, integrity.RestoreFailed), (message, verdict)
    assert 'every file matching its manifest' in str(verdict) or 'memory' in str(verdict)
  victim = _largest_array_file(workdir / 'checkpoints' / '6')
  _flip_one_byte(victim)
  verdict = integrity.classify(6, directory, _raised('could not place an array'))
  assert isinstance(verdict, integrity.CorruptCheckpoint), verdict
  name = victim.relative_to(workdir / 'checkpoints' / '6').as_posix()
  assert f'1 of its files differ from its manifest ({name}: another checksum' in str(verdict)
