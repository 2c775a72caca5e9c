"""Commands as several processes on this machine, as on a pod slice's workers
(`local_pod`: `jax.distributed` on localhost, gloo collectives, 4 or 2 CPU devices
each): training with evaluation and BLEU from a corpus nobody prepared, `evaluate` and
`translate` equal to one process, a checkpoint of 2 processes refused on 1, and the
losses of 2 processes equal to 1's.
"""
import json
import os

import numpy as np
import pytest

from transformer_jax import local_pod
from transformer_jax import metrics as metrics_lib
from transformer_jax.data import pipeline

# Every test here starts processes: minutes, left out of the everyday loop.
pytestmark = pytest.mark.slow

TINY = ['--config=configs/tiny.py', '--config.data.name=parallel_text',
        '--config.train.log_every=1', '--config.train.eval_every=0']


def run(repo, tmp_path, command, processes, devices=4):
  logs = tmp_path / 'logs' / f'{command[0]}-{processes}-{len(os.listdir(tmp_path))}'
  results = local_pod.run([f'transformer_jax.{command[0]}', *map(str, command[1:])],
                          processes=processes, devices=devices, log_dir=str(logs), cwd=repo)
  for r in results:
    assert r.code == 0, r.err[-3000:]
  return results


@pytest.fixture(scope='module')
def repeated(tmp_path_factory):
  """One sentence pair, repeated: every row of every batch is alike, so a 1-process and
  a 2-process run (each host packs its own shard) see equal batches."""
  root = tmp_path_factory.mktemp('repeated')
  for split, n in (('train', 64), ('validation', 16)):
    (root / f'{split}.en').write_text('the dog sees the cat in the park\n' * n)
    (root / f'{split}.de').write_text('der hund sieht die katze im park\n' * n)
  return root


def test_two_processes_match_one(repo, repeated, tmp_path):
  flags = [*TINY, f'--config.data.data_dir={repeated}', f'--config.data.tfds_dir={repeated}/tfds',
           '--config.model.vocab_size=24', '--config.train.num_steps=6',
           '--config.train.checkpoint_every=6']
  one, two = tmp_path / 'one', tmp_path / 'two'
  run(repo, tmp_path, ['train', f'--workdir={one}', *flags], processes=1, devices=8)
  run(repo, tmp_path, ['train', f'--workdir={two}', *flags,
                       f'--config.data.vocab_path={one / "vocab.model"}'], processes=2)
  single, multi = metrics_lib.read(str(one)), metrics_lib.read(str(two))
  assert [r['step'] for r in multi] == list(range(1, 7))
  np.testing.assert_allclose([r['loss'] for r in multi], [r['loss'] for r in single], rtol=1e-6)
  assert single[-1]['loss'] < single[0]['loss']
  # Each process saved its own data-iterator state into the one checkpoint.
  assert {'process_0-of-2.json', 'process_1-of-2.json'} <= set(
      os.listdir(two / 'checkpoints' / '6' / 'data'))


def test_training_with_bleu_from_a_corpus_nobody_prepared(repo, synthetic, tmp_path, command):
  """Both processes start on an unbuilt dataset and no vocabulary: process 0 builds them
  while the other waits; validation BLEU every 3 steps; the best checkpoints kept; a
  checkpoint of 2 processes is then refused, in one line, by 1."""
  workdir, tfds = tmp_path / 'run', tmp_path / 'tfds'  # nothing built there yet
  flags = [*TINY, f'--config.data.data_dir={synthetic.data["data_dir"]}',
           f'--config.data.tfds_dir={tfds}', '--config.train.num_steps=6',
           '--config.train.bleu_every=3', '--config.train.bleu_sentences=24',
           '--config.train.eval_every=3', '--config.train.checkpoint_every=3']
  results = run(repo, tmp_path, ['train', f'--workdir={workdir}', *flags], processes=2)
  assert '"final"' in results[0].out and '"final"' not in results[1].out  # process 0 reports
  evals = [r for r in metrics_lib.read(str(workdir), 'eval') if 'bleu' in r]
  assert [r['step'] for r in evals] == [3, 6]
  assert sorted(os.listdir(workdir / 'best' / 'checkpoints')) == ['3', '6']
  assert (workdir / 'vocab.model').exists()

  from transformer_jax import train
  refused = command(train, f"--workdir={workdir}", *flags,
                    '--config.train.num_steps=9')
  assert refused.code == 2
  assert 'saved by 2 processes' in refused.err and len(refused.err.strip().splitlines()) == 1


@pytest.fixture(scope='module')
def test_files(trained, tmp_path_factory):
  """The first 48 test pairs of the trained model's corpus, as --src / --ref files."""
  workdir, config = trained
  sources, references = pipeline.split_pairs(config, 'test')
  root = tmp_path_factory.mktemp('test_files')
  (root / 'src.txt').write_text(''.join(s + '\n' for s in sources[:48]))
  (root / 'ref.txt').write_text(''.join(s + '\n' for s in references[:48]))
  return root / 'src.txt', root / 'ref.txt'


def test_evaluate_and_translate_on_two_processes_equal_one(repo, trained, test_files, tmp_path):
  """Beam search over distinct sentences: the same lines, in order, and the same BLEU."""
  workdir, _ = trained
  src, ref = test_files
  out = {}
  for n in (2, 1):
    run(repo, tmp_path, ['evaluate', f'--workdir={workdir}', f'--src={src}', f'--ref={ref}',
                         f'--json={tmp_path}/eval{n}.json', f'--hypotheses={tmp_path}/hyp{n}.txt',
                         '--batch_size=16'], processes=n)
    run(repo, tmp_path, ['translate', f'--workdir={workdir}', f'--input={src}',
                         f'--output={tmp_path}/out{n}.txt', '--batch_size=16'], processes=n)
    out[n] = (json.loads((tmp_path / f'eval{n}.json').read_text())['bleu'],
              (tmp_path / f'hyp{n}.txt').read_text(), (tmp_path / f'out{n}.txt').read_text())
  assert out[2] == out[1]
  bleu, hypotheses, translations = out[2]
  assert bleu > 1 and hypotheses == translations
  assert len(set(translations.splitlines())) > 24  # distinct lines, a row out of place shows
