"""The `evaluate` command: sacreBLEU scores of a split or of files, as a console line and
a JSON record, far above an untrained model's; and its bad inputs."""
import json

import pytest
from flax import nnx

from transformer_jax import evaluate, inference, scoring
from transformer_jax.data import pipeline
from transformer_jax.model import Transformer


def test_src_ref_files_with_tokenize_and_lowercase(command, briefly_trained, tmp_path):
  (tmp_path / 'src').write_text('The dog sleeps.\nThe cats sleep.\n')
  (tmp_path / 'ref').write_text('Der Hund schläft.\nDie Katzen schlafen.\n')
  result = command(evaluate, f'--workdir={briefly_trained}', f'--src={tmp_path / "src"}',
                   f'--ref={tmp_path / "ref"}', '--tokenize=intl', '--lowercase', '--step=4',
                   f'--json={tmp_path / "r.json"}', f'--hypotheses={tmp_path / "hyp"}')
  assert result.code == 0, result.err
  scores = json.loads((tmp_path / 'r.json').read_text())
  assert 'tok:intl' in scores['bleu_signature'] and 'case:lc' in scores['bleu_signature']
  assert scores['step'] == 4 and scores['sentences'] == 2
  assert scores['data'] == str(tmp_path / 'src')
  assert scores['decode']['beam_size'] == 4
  assert len((tmp_path / 'hyp').read_text().splitlines()) == 2
  assert f'step 4: BLEU {scores["bleu"]:.2f}' in result.out


def test_an_ensemble_is_scored_into_its_first_members_workdir(command, briefly_trained,
                                                             tmp_path):
  import shutil
  workdir = tmp_path / 'work'
  shutil.copytree(briefly_trained, workdir)
  (tmp_path / 'src').write_text('The dog sleeps.\nThe cats sleep.\n')
  (tmp_path / 'ref').write_text('Der Hund schläft.\nDie Katzen schlafen.\n')
  result = command(evaluate, f'--ensemble={workdir}@6,{workdir}@2', f'--src={tmp_path / "src"}',
                   f'--ref={tmp_path / "ref"}', '--decode=greedy')
  assert result.code == 0, result.err
  scores = json.loads((workdir / f'eval_{str(tmp_path / "src").replace("/", "_")}_ensemble2.json')
                      .read_text())
  assert scores['ensemble_steps'] == [6, 2] and scores['sentences'] == 2
  assert f'ensemble of 2 (steps 6, 2): BLEU {scores["bleu"]:.2f}' in result.out


def test_a_split_is_scored_into_the_workdir(command, briefly_trained, tmp_path):
  result = command(evaluate, f'--workdir={briefly_trained}', '--split=test', '--decode=greedy',
                   '--max_extra_len=2', f'--json={tmp_path / "r.json"}')
  assert result.code == 0, result.err
  scores = json.loads((tmp_path / 'r.json').read_text())
  assert scores['data'] == 'parallel_text/test' and scores['sentences'] == 200
  assert scores['decode']['method'] == 'greedy' and scores['decode']['max_extra_len'] == 2


@pytest.mark.parametrize('files, message', [
    ({'src': 'a\nb\n'}, '--src and --ref go together'),
    ({'src': 'a\nb\n', 'ref': 'a\n'}, 'has 2 lines but'),
    ({'src': 'a\n', 'ref': b'\xff\n'}, 'line 1: bytes that are not UTF-8')])
def test_bad_files_are_one_line_errors(command, briefly_trained, tmp_path, files, message):
  flags = []
  for name, text in files.items():
    (tmp_path / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    flags.append(f'--{name}={tmp_path / name}')
  result = command(evaluate, f'--workdir={briefly_trained}', *flags)
  assert result.code == 2 and message in result.err
  assert len(result.err.strip().splitlines()) == 1


@pytest.mark.slow
def test_scores_far_above_an_untrained_model(command_process, trained, tmp_path):
  workdir, _ = trained
  result_file = tmp_path / 'result.json'
  result = command_process('evaluate', f'--workdir={workdir}', '--split=validation',
                           f'--json={result_file}', f'--hypotheses={tmp_path / "hyp.txt"}')
  assert result.code == 0, result.err
  assert 'BLEU' in result.out and 'nrefs:1|case:mixed' in result.out
  scores = json.loads(result_file.read_text())
  assert scores['step'] == 300 and scores['sentences'] == 1000
  assert scores['chrf'] > 0 and 'tok:13a' in scores['bleu_signature']
  # The same pipeline with an untrained model of the same shape.
  restored = inference.restore(str(workdir))
  restored.model = Transformer(restored.config.model, rngs=nnx.Rngs(params=123))
  sources, references = pipeline.split_pairs(restored.config, 'validation')
  untrained = inference.translate_texts(restored, sources[:200],
                                        inference.Settings(method='greedy'))
  baseline = scoring.scores(untrained, references[:200])['bleu']
  # 300 steps of a d_model-64 model: ~9 BLEU; an untrained one scores ~0.
  assert scores['bleu'] > 5 and scores['bleu'] > 10 * baseline + 2, (scores['bleu'], baseline)
