"""A workdir in a Google Cloud Storage bucket, end to end: train, resume and translate
with `--workdir=gs://...` against a local GCS emulator (gcp-storage-emulator), which
gcsfs, Orbax's tensorstore and tensorboardX's google-cloud-storage client all reach
through their documented endpoint variables."""
import json
import os
import re
import subprocess
import sys

import pytest
from etils import epath

import gcs_emulator
from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import config as config_lib
from transformer_jax import manifest

BUCKET = 'transformer-jax-test'

# Every test here starts training processes: minutes, left out of the everyday loop.
pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def gcs_env(tmp_path_factory):
  server, variables = gcs_emulator.start(BUCKET)
  yield dict(os.environ, JAX_PLATFORMS='cpu', **variables), tmp_path_factory.mktemp('tfds')
  server.terminate()
  server.wait()


def _train(repo, env, tfds, workdir, steps):
  flags = [f'--config={repo / "configs" / "tiny.py"}', f'--workdir={workdir}',
           f'--config.data.tfds_dir={tfds}', f'--config.train.num_steps={steps}',
           '--config.train.log_every=5', '--config.train.checkpoint_every=10',
           '--config.train.eval_every=10']
  return subprocess.run([sys.executable, '-m', 'transformer_jax.train', *flags], cwd=repo,
                        env=env, capture_output=True, text=True, timeout=900)


def _metrics(workdir):
  """metrics.jsonl read the way a user would, through gcsfs (or the local disk)."""
  text = epath.Path(workdir, 'metrics.jsonl').read_text()
  return [json.loads(line) for line in text.splitlines()]


def test_train_resume_and_translate_with_a_bucket_workdir(gcs_env, repo, tmp_path, monkeypatch):
  env, tfds = gcs_env
  for key in ('STORAGE_EMULATOR_HOST', 'GOOGLE_CLOUD_PROJECT'):  # for reading the bucket here
    monkeypatch.setenv(key, env[key])
  bucket_run, local_run = f'gs://{BUCKET}/run', tmp_path / 'local'

  first = _train(repo, env, tfds, bucket_run, 20)
  assert first.returncode == 0, first.stderr[-3000:]
  resumed = _train(repo, env, tfds, bucket_run, 30)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'resumed' in (resumed.stdout + resumed.stderr).lower()
  local = _train(repo, env, tfds, local_run, 30)
  assert local.returncode == 0, local.stderr[-3000:]

  # Interrupted in the bucket equals uninterrupted on disk: the same records, same losses.
  in_bucket, on_disk = _metrics(bucket_run), _metrics(local_run)
  assert [(r['kind'], r['step']) for r in in_bucket] == [(r['kind'], r['step']) for r in on_disk]
  for a, b in zip(in_bucket, on_disk):
    assert a.get('loss') == pytest.approx(b.get('loss'), rel=1e-6, abs=1e-6)

  names = {p.name for p in epath.Path(bucket_run).iterdir()}
  assert {'checkpoints', 'vocab.model', 'metrics.jsonl', 'tensorboard'} <= names
  steps = {p.name for p in (epath.Path(bucket_run) / 'checkpoints').iterdir()}
  assert {'20', '30'} <= steps
  events = list((epath.Path(bucket_run) / 'tensorboard' / 'train').iterdir())
  assert events and events[0].name.startswith('events.out.tfevents')

  # The same model translates the same, restored from the bucket or from disk.
  translations = [_translate(repo, env, run) for run in (bucket_run, local_run)]
  assert translations[0] == translations[1]
  assert len(translations[0].split('\n')) == 4  # three lines, the empty one kept


def _translate(repo, env, workdir):
  result = subprocess.run(
      [sys.executable, '-m', 'transformer_jax.translate', f'--workdir={workdir}'],
      cwd=repo, env=env, input='The dog sees the cat.\n\nA cat.\n', capture_output=True,
      text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def test_unwritable_bucket_is_a_clear_error(gcs_env, repo):
  env, tfds = gcs_env
  result = _train(repo, env, tfds, 'gs://no-such-bucket-here/run', 5)
  assert result.returncode == 2
  assert 'not writable' in result.stderr and 'no-such-bucket-here' in result.stderr


def test_a_damaged_checkpoint_in_a_bucket_is_moved_aside(gcs_env, repo, monkeypatch):
  """Checksums verified on gs:// too: the newest step's array data damaged in the bucket,
  `translate` falls back to the step before and moves the damaged one to quarantine/."""
  env, tfds = gcs_env
  for key in ('STORAGE_EMULATOR_HOST', 'GOOGLE_CLOUD_PROJECT'):
    monkeypatch.setenv(key, env[key])
  run = f'gs://{BUCKET}/damaged'
  trained = _train(repo, env, tfds, run, 20)
  assert trained.returncode == 0, trained.stderr[-3000:]
  state = epath.Path(run) / 'checkpoints' / '20' / 'state'
  damaged = 0
  for process in state.glob('ocdbt.process_*'):
    for data in (process / 'd').iterdir():
      raw = bytearray(data.read_bytes())
      if len(raw) > 1024:  # 64 bytes in every 2 KB: parameters and Adam moments alike
        for start in range(100, len(raw), 2048):
          raw[start:start + 64] = bytes(b ^ 0xFF for b in raw[start:start + 64])
        data.write_bytes(bytes(raw))
        damaged += 1
  assert damaged
  # The manifest carries the bucket's own crc32c of each object; `verify` compares them.
  recorded = manifest.read(epath.Path(run) / 'checkpoints', 20)
  assert recorded and all(entry['crc32c'] for entry in recorded.values())
  checked = subprocess.run([sys.executable, '-m', 'transformer_jax.verify',
                            f'--workdir={run}'], cwd=repo, env=env, capture_output=True,
                           text=True, timeout=600)
  assert checked.returncode == 2, checked.stderr[-3000:]
  assert re.search(r'checkpoints/10: ok \(\d+ files\)', checked.stdout), checked.stdout
  assert re.search(rf'checkpoints/20: damaged: {damaged} of its files differ from its '
                   r'manifest \(state/\S+: another checksum than recorded', checked.stdout)
  # A quarantine cut short (its copies fail past the third object): in a bucket a move is
  # a copy, then a delete, so the step stays whole and a marker names where it goes.
  checkpoints = checkpoint_lib.Checkpoints(run, config_lib.defaults(), async_save=False)
  copy, copies = type(state).copy, [0]

  def copy_then_fail(self, target):
    copies[0] += 1
    if copies[0] > 3:
      raise OSError('Connection reset by peer')
    return copy(self, target)
  monkeypatch.setattr(type(state), 'copy', copy_then_fail)
  assert checkpoints.quarantine(20) is None
  monkeypatch.setattr(type(state), 'copy', copy)
  checkpoints.close()
  marker = epath.Path(run) / 'quarantine' / '.moving-checkpoints-20'
  pending = epath.Path(marker.read_text())
  assert 0 < len(manifest.listing(pending)) < len(recorded)
  assert set(manifest.listing(epath.Path(run) / 'checkpoints' / '20')) == set(recorded)
  result = subprocess.run(
      [sys.executable, '-m', 'transformer_jax.translate', f'--workdir={run}'],
      cwd=repo, env=env, input='The dog sees the cat.\n', capture_output=True, text=True,
      timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'step 20 in' in result.stderr and 'failed verification' in result.stderr
  # (listed anew: this process's gcsfs keeps the listings it read before)
  assert manifest.listing(epath.Path(run) / 'checkpoints' / '10')
  assert not manifest.listing(epath.Path(run) / 'checkpoints' / '20'), result.stderr[-3000:]
  # The move went on into the same place and finished: one copy, whole, no marker.
  moved = {name.split('/')[0] for name in manifest.listing(epath.Path(run) / 'quarantine')}
  assert moved == {pending.name} and pending.name.startswith('checkpoints-20-'), moved
  assert {name: entry['size'] for name, entry in manifest.listing(pending).items()
          if name != 'manifest.json'} == {name: entry['size'] for name, entry in
                                          recorded.items()}


def test_a_file_in_a_bucket_is_translated_in_windows_into_the_bucket(
    gcs_env, repo, briefly_trained, monkeypatch):
  """Bulk translation with --input and --output in a bucket (no append, no rename):
  windows found by reading the object, parts written as objects, joined at the end."""
  env, _ = gcs_env
  for key in ('STORAGE_EMULATOR_HOST', 'GOOGLE_CLOUD_PROJECT'):
    monkeypatch.setenv(key, env[key])
  source, output = f'gs://{BUCKET}/bulk/in.txt', f'gs://{BUCKET}/bulk/out.txt'
  lines = ['The dog sees the cat.', '', 'A cat.', 'Two big dogs sleep.', 'The man reads.']
  epath.Path(source).write_text(''.join(line + '\n' for line in lines))
  decoding = [f'--workdir={briefly_trained}', '--decode=sample', '--seed=3',
              '--max_extra_len=6']

  def translate(*flags, stdin=None):
    result = subprocess.run([sys.executable, '-m', 'transformer_jax.translate', *decoding,
                             *flags], cwd=repo, env=env, input=stdin, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result

  translate(f'--input={source}', f'--output={output}', '--window=2')
  streamed = translate(stdin=''.join(line + '\n' for line in lines))
  assert epath.Path(output).read_text() == streamed.stdout
  assert not epath.Path(output + '.parts').exists()


def test_an_opus_mt_model_is_imported_into_a_bucket_and_translates(gcs_env, repo, tmp_path):
  """The README's fine-tuning recipe starts with `import_model --workdir=gs://...`: the
  imported checkpoint and Marian vocabulary in the bucket translate as a local import
  of the same directory does."""
  import opus_mt
  env, _ = gcs_env
  directory = tmp_path / 'hf'
  directory.mkdir()
  opus_mt.build(directory)
  runs = (f'gs://{BUCKET}/opus', str(tmp_path / 'local'))
  for workdir in runs:
    result = subprocess.run([sys.executable, '-m', 'transformer_jax.import_model',
                             f'--input={directory}', f'--workdir={workdir}'], cwd=repo,
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
  translations = [_translate(repo, env, workdir) for workdir in runs]
  assert translations[0] == translations[1] and translations[0].strip()
