"""The `prepare` command: the dataset built, the vocabulary trained and the token store
written where the config says, ready for `train` to read (several processes preparing
at once are tested in test_local_pod.py)."""
import json

from transformer_jax import prepare
from transformer_jax.data import tokenizer as tokenizer_lib


def test_prepare_builds_the_dataset_and_the_vocabulary(command, repo, synthetic, tmp_path):
  vocab = tmp_path / 'elsewhere' / 'vocab.model'  # a data.vocab_path that does not exist yet
  tfds = tmp_path / 'tfds'
  flags = [f'--config={repo / "configs" / "tiny.py"}', '--config.data.name=parallel_text',
           f'--config.data.data_dir={synthetic.data["data_dir"]}',
           f'--config.data.tfds_dir={tfds}', f'--config.data.vocab_path={vocab}']
  result = command(prepare, *flags)
  assert result.code == 0, result.err
  report = json.loads(result.out.strip().splitlines()[-1])
  assert report['splits'] == {'test': 200, 'train': 2000, 'validation': 200}
  assert report['vocabulary'] == str(vocab) and report['vocab_size'] == 128
  assert 'store' not in report  # no workdir, no data.store_dir: nowhere to put one
  assert tokenizer_lib.load(str(vocab), 128).encode('the cat') != []
  assert any(tfds.rglob('*.array_record*'))
  trained_at = vocab.stat().st_mtime_ns
  again = command(prepare, *flags)  # prepared: found, not rebuilt
  assert again.code == 0 and json.loads(again.out.strip().splitlines()[-1]) == report
  assert vocab.stat().st_mtime_ns == trained_at


def test_prepare_into_the_workdir_on_one_worker_of_a_pod(command, repo, synthetic, tmp_path,
                                                         monkeypatch):
  """As `launch/tpu.py prepare` runs it on worker 0 of a pod slice: JAX_PLATFORMS=cpu
  keeps it out of the slice (it would otherwise wait for the other workers to join)."""
  monkeypatch.setenv('TPU_WORKER_HOSTNAMES', 'worker-0,worker-1,worker-2,worker-3')
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  result = command(prepare, f'--config={repo / "configs" / "tiny.py"}',
                   f'--workdir={tmp_path / "run"}', '--config.data.name=parallel_text',
                   f'--config.data.data_dir={synthetic.data["data_dir"]}',
                   f'--config.data.tfds_dir={tmp_path / "tfds"}')
  assert result.code == 0, result.err
  assert (tmp_path / 'run' / tokenizer_lib.VOCAB_FILE).exists()
  report = json.loads(result.out.strip().splitlines()[-1])  # and the token store
  assert report['store'].startswith(str(tmp_path / 'run' / 'store'))
  assert report['store_tokens']['source'] > 2000 and (tmp_path / 'run' / 'store').is_dir()


def test_prepare_needs_a_place_for_the_vocabulary(command, repo):
  result = command(prepare, f'--config={repo / "configs" / "tiny.py"}')
  assert result.code == 2 and len(result.err.strip().splitlines()) == 1
  assert '--config.data.vocab_path' in result.err and '--workdir' in result.err
