"""translate, evaluate and average end to end, from subprocesses, after a short training
on the synthetic corpus; and their bad inputs."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import config as config_lib
from transformer_jax import evaluate as evaluate_lib
from transformer_jax import inference
from transformer_jax import metrics as metrics_lib
from transformer_jax import translate as translate_lib
from transformer_jax.model import Transformer
from transformer_jax.train import train

SENTENCES = ['The dog sees the cat.', '', 'Today the big dog sees two small cats in the park.']


@pytest.fixture(scope='module')
def trained(tmp_path_factory, repo):
  """A small model trained for 300 steps; checkpoints at 200, 250 and 300 are kept."""
  workdir = tmp_path_factory.mktemp('trained')
  c = config_lib.load(str(repo / 'configs' / 'tiny.py'))
  c.model.update(vocab_size=256, d_model=64, d_ff=128, dropout_rate=0.0)
  c.data.update(tfds_dir=str(workdir / 'tfds'), max_len=32, batch_size=32)
  c.train.update(num_steps=300, warmup_steps=100, learning_rate=1.0, log_every=50,
                 eval_every=0, checkpoint_every=50, keep_checkpoints=3, bleu_every=100,
                 bleu_sentences=100, keep_best=2)
  train(config_lib.validate(c), str(workdir))
  return workdir, c


def run(repo, command, *flags, stdin=None):
  return subprocess.run([sys.executable, '-m', f'transformer_jax.{command}', *flags], cwd=repo,
                        input=stdin, capture_output=True, timeout=900,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))


def test_translate_from_stdin_keeps_order_and_empty_lines(trained, repo):
  workdir, _ = trained
  result = run(repo, 'translate', f'--workdir={workdir}',
               stdin=''.join(s + '\n' for s in SENTENCES).encode())
  assert result.returncode == 0, result.stderr.decode()
  lines = result.stdout.decode().split('\n')
  assert len(lines) == 4 and lines[3] == ''  # three lines, each ending in a newline
  assert lines[1] == ''  # an empty line translates to an empty line
  assert lines[0] and lines[2] and lines[0] != lines[2]
  # The same lines in reverse order come back reversed. (Batches are formed by length,
  # so both runs decode the same batches; a 300-step model's wording is not asserted.)
  reverse = run(repo, 'translate', f'--workdir={workdir}',
                stdin=''.join(s + '\n' for s in SENTENCES[::-1]).encode())
  assert reverse.stdout.decode().split('\n')[:3] == lines[:3][::-1]


def test_translate_files_greedy_equals_beam_one(trained, repo, tmp_path):
  workdir, _ = trained
  (tmp_path / 'in.txt').write_text(''.join(s + '\n' for s in SENTENCES))
  outputs = []
  for flags in (['--decode=greedy'], ['--beam_size=1']):
    out = tmp_path / f'out{len(outputs)}.txt'
    result = run(repo, 'translate', f'--workdir={workdir}', f'--input={tmp_path / "in.txt"}',
                 f'--output={out}', *flags)
    assert result.returncode == 0, result.stderr.decode()
    outputs.append(out.read_text())
  assert outputs[0] == outputs[1]


def test_evaluate_scores_far_above_an_untrained_model(trained, repo, tmp_path):
  workdir, config = trained
  result_file = tmp_path / 'result.json'
  result = run(repo, 'evaluate', f'--workdir={workdir}', '--split=validation',
               f'--json={result_file}', f'--hypotheses={tmp_path / "hyp.txt"}')
  assert result.returncode == 0, result.stderr.decode()
  assert 'BLEU' in result.stdout.decode() and 'nrefs:1|case:mixed' in result.stdout.decode()
  scores = json.loads(result_file.read_text())
  assert scores['step'] == 300 and scores['sentences'] == 1000
  assert scores['chrf'] > 0 and 'tok:13a' in scores['bleu_signature']
  # The same pipeline with an untrained model of the same shape.
  restored = inference.restore(str(workdir))
  restored.model = Transformer(restored.config.model, rngs=nnx.Rngs(params=123))
  sources, references = evaluate_lib.split_pairs(restored.config, 'validation')
  untrained = translate_lib.translate_texts(restored, sources[:200],
                                            translate_lib.Settings(method='greedy'))
  baseline = evaluate_lib.scores(untrained, references[:200])['bleu']
  # 300 steps of a d_model-64 model: ~9 BLEU; an untrained one scores ~0.
  assert scores['bleu'] > 5 and scores['bleu'] > 10 * baseline + 2, (scores['bleu'], baseline)


def test_evaluate_src_ref_files_with_tokenize_and_lowercase(trained, repo, tmp_path):
  workdir, _ = trained
  (tmp_path / 'src').write_text('The dog sleeps.\nThe cats sleep.\n')
  (tmp_path / 'ref').write_text('Der Hund schläft.\nDie Katzen schlafen.\n')
  result = run(repo, 'evaluate', f'--workdir={workdir}', f'--src={tmp_path / "src"}',
               f'--ref={tmp_path / "ref"}', '--tokenize=intl', '--lowercase',
               f'--json={tmp_path / "r.json"}')
  assert result.returncode == 0, result.stderr.decode()
  scores = json.loads((tmp_path / 'r.json').read_text())
  assert 'tok:intl' in scores['bleu_signature'] and 'case:lc' in scores['bleu_signature']


def test_average_of_the_last_checkpoints(trained, repo):
  workdir, config = trained
  result = run(repo, 'average', f'--workdir={workdir}', '--last=3')
  assert result.returncode == 0, result.stderr.decode()
  assert_average_of(workdir, (200, 250, 300))
  result = run(repo, 'translate', f'--workdir={workdir}', '--averaged', stdin=b'The dog sleeps.\n')
  assert result.returncode == 0 and result.stdout.decode().strip()
  # An earlier point of the run: the new average replaces the later one.
  result = run(repo, 'average', f'--workdir={workdir}', '--last=2', '--until_step=260')
  assert result.returncode == 0, result.stderr.decode()
  assert_average_of(workdir, (200, 250))
  result = run(repo, 'average', f'--workdir={workdir}', '--last=3', '--until_step=260')
  assert result.returncode == 2 and b'at or before step 260 (200, 250)' in result.stderr


def assert_average_of(workdir, steps):
  averaged = inference.restore(str(workdir), averaged=True)
  assert averaged.step == steps[-1]
  expected = None
  for step in steps:
    params = nnx.state(inference.restore(str(workdir), step=step).model, nnx.Param)
    leaves = [np.asarray(x) for x in jax.tree.leaves(params)]
    expected = leaves if expected is None else [a + b for a, b in zip(expected, leaves)]
  got = jax.tree.leaves(nnx.state(averaged.model, nnx.Param))
  for e, g in zip(expected, got):
    np.testing.assert_allclose(e / len(steps), np.asarray(g), rtol=1e-5, atol=1e-7)


def test_training_tracks_bleu_and_keeps_the_best_checkpoints(trained, repo):
  workdir, config = trained
  bleu = {r['step']: r['bleu'] for r in metrics_lib.read(str(workdir), 'eval') if 'bleu' in r}
  assert sorted(bleu) == [100, 200, 300] and bleu[300] > bleu[100]
  best = checkpoint_lib.Checkpoints(str(workdir / 'best'), config).steps()
  assert best == sorted(sorted(bleu, key=bleu.get)[-2:])
  result = run(repo, 'translate', f'--workdir={workdir / "best"}', stdin=b'The dog sleeps.\n')
  assert result.returncode == 0 and result.stdout.decode().strip()


# ----------------------------------------------------------------------- bad input


def test_missing_or_empty_workdir(repo, tmp_path):
  for workdir in (tmp_path / 'nope', tmp_path):
    result = run(repo, 'translate', f'--workdir={workdir}', stdin=b'x\n')
    assert result.returncode == 2
    assert 'holds no checkpoints' in result.stderr.decode()


def test_step_that_does_not_exist_lists_those_that_do(trained, repo):
  workdir, _ = trained
  result = run(repo, 'translate', f'--workdir={workdir}', '--step=7', stdin=b'x\n')
  assert result.returncode == 2
  assert 'No checkpoint at step 7' in result.stderr.decode()
  assert '200, 250, 300' in result.stderr.decode()


def test_vocabulary_that_does_not_match_the_checkpoint(trained, repo, tmp_path):
  workdir, _ = trained
  other = tmp_path / 'work'
  os.makedirs(other)
  os.symlink(workdir / 'checkpoints', other / 'checkpoints')
  (other / 'vocab.model').write_bytes(b'another vocabulary')
  result = run(repo, 'translate', f'--workdir={other}', stdin=b'x\n')
  assert result.returncode == 2
  assert 'does not match the vocabulary the checkpoint was trained with' in result.stderr.decode()
  assert (other / 'vocab.model').read_bytes() == b'another vocabulary'


def test_bad_bytes_name_the_line(trained, repo):
  workdir, _ = trained
  result = run(repo, 'translate', f'--workdir={workdir}', stdin=b'fine\nbad \xff here\n')
  assert result.returncode == 2
  assert 'stdin, line 2: bytes that are not UTF-8' in result.stderr.decode()


def test_very_long_line_is_truncated_with_a_warning(trained, repo):
  workdir, _ = trained
  long_line = ' '.join(['the dog sees the cat'] * 40)
  result = run(repo, 'translate', f'--workdir={workdir}', '--max_input_len=20',
               stdin=f'The dog sleeps.\n{long_line}\n'.encode())
  assert result.returncode == 0, result.stderr.decode()
  assert 'line 2 has' in result.stderr.decode() and 'translating its first 19' in result.stderr.decode()
  assert len(result.stdout.decode().split('\n')) == 3
