"""bench/quality_multi30k.py end to end on files in Multi30k's layout (the synthetic
fixture in tests/data/multi30k), with a tiny model: the timed run, the budgets, the choice
of checkpoint average on validation, the JSON and PNG."""
import json
import os
import subprocess
import sys

import pytest

DATA = os.path.join(os.path.dirname(__file__), 'data', 'multi30k')
TINY = ['--config.model.vocab_size=256', '--config.model.d_model=32', '--config.model.d_ff=64',
        '--config.model.num_heads=2', '--config.model.num_encoder_layers=1',
        '--config.model.num_decoder_layers=1', '--config.model.matmul_dtype=',
        '--config.data.batch_size=8', '--config.data.max_len=32',
        '--config.train.num_steps=6', '--config.train.checkpoint_every=2',
        '--config.train.eval_every=3', '--config.train.bleu_every=3',
        '--config.train.bleu_sentences=8', '--config.train.log_every=1',
        '--config.train.warmup_steps=2']


def bench(repo, *flags):
  return subprocess.run([sys.executable, 'bench/quality_multi30k.py', *flags], cwd=repo,
                        capture_output=True, text=True, timeout=900,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))


@pytest.mark.slow
def test_recipe_bench_records_budgets_scores_and_plot(repo, tmp_path):
  workdir = tmp_path / 'run'
  flags = [f'--workdir={workdir}', '--budgets_minutes=0.0001,1000', '--sentences=8',
           '--average_candidates=1,2,5', '--alpha=0.6,2.0', f'--config.data.data_dir={DATA}',
           f'--config.data.tfds_dir={tmp_path / "tfds"}', *TINY]
  result = bench(repo, *flags)
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads((workdir / 'quality.json').read_text())
  early, late = record['budgets']
  assert 'no checkpoint' in early['error']  # nothing is committed within 6 ms
  assert late['last_checkpoint_step'] == 6 and late['averaged_steps'][-1] == 6
  by_average = late['validation_bleu_lowercased_by_average']
  assert set(by_average) == {'1', '2'}  # 5 > the 3 checkpoints (2, 4, 6): not tried
  assert str(late['averaged_last']) == max(by_average, key=by_average.get)
  tried = late['validation_tried']  # every average x alpha, beam 4
  assert ([(t['average'], t['alpha']) for t in tried]
          == [(1, 0.6), (1, 2.0), (2, 0.6), (2, 2.0)])
  best = max(tried, key=lambda t: t['bleu_lowercased_13a'])
  assert late['decode'] == {'beam_size': 4, 'alpha': best['alpha']}
  assert late['averaged_last'] == best['average']
  test = late['test']
  assert test['sentences'] == 8
  for key in ('bleu_lowercased_13a', 'bleu_cased_13a', 'chrf', 'chrf_lowercased'):
    assert 0 <= test[key] <= 100
  assert test['chrf_lowercased'] >= test['chrf']  # case differences only remove matches
  assert 'lc' in test['bleu_lowercased_signature'] and 'mixed' in test['bleu_cased_signature']
  run = record['run']
  assert run['steps'] == 6 and run['target_tokens_seen'] > 0
  assert late['flops'] == run['train_flops'] == 6 * tiny_step_flops(repo)
  assert 0 < run['phases_s']['startup'] < run['wall_clock_s']
  assert len(run['validation_bleu_curve']) == 2  # steps 3 and 6
  assert record['versions']['jax'] and record['machine']['cores'] >= 1
  assert (workdir / 'quality.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert len((workdir / 'test_hypotheses_1000min.txt').read_text().splitlines()) == 8

  # The recipe is timed from scratch: a used workdir is refused, and nothing in it changes.
  before = sorted(os.listdir(workdir))
  again = bench(repo, *flags)
  assert again.returncode != 0 and 'not empty' in again.stderr
  assert sorted(os.listdir(workdir)) == before


def tiny_step_flops(repo) -> float:
  """Training FLOPs of one step of configs/multi30k.py under TINY."""
  from transformer_jax import config as config_lib
  from transformer_jax import costs
  config = config_lib.load(str(repo / 'configs' / 'multi30k.py'))
  config.model.update(vocab_size=256, d_model=32, d_ff=64, num_heads=2, num_encoder_layers=1,
                      num_decoder_layers=1)
  config.data.update(batch_size=8, max_len=32)
  return costs.step_flops(config)


@pytest.mark.slow
def test_ensemble_of_seeds_decodes_analyzed_runs_as_one(repo, tmp_path):
  """Two seeds, each ended by a FLOPs budget at step 5 (not TINY's 6), analyzed whole
  and decoded as one; the records carry the FLOPs."""
  runs = [tmp_path / f'seed{seed}' for seed in (0, 1)]
  budget = f'--budget_flops={4.5 * tiny_step_flops(repo)!r}'
  for seed, run in enumerate(runs):
    result = bench(repo, f'--workdir={run}', budget, '--sentences=8',
                   '--average_candidates=1,2', f'--config.data.data_dir={DATA}',
                   f'--config.data.tfds_dir={tmp_path / "tfds"}', f'--config.seed={seed}',
                   *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
  out = tmp_path / 'ensemble'
  result = bench(repo, '--phase=ensemble', f'--runs={runs[0]},{runs[1]}', f'--workdir={out}',
                 budget, '--sentences=8', '--alpha=0.6,2.0')
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads((out / 'ensemble.json').read_text())
  records = [json.loads((run / 'quality.json').read_text()) for run in runs]
  members = [r['budgets'][0] for r in records]
  assert [r['run']['steps'] for r in records] == [5, 5]
  assert [r['run']['train_flops'] for r in records] == [5 * tiny_step_flops(repo)] * 2
  assert [(m['minutes'], m['last_checkpoint_step'], m['flops']) for m in members] == \
      [(None, 5, 5 * tiny_step_flops(repo))] * 2
  assert [r['seed'] for r in record['runs']] == [0, 1]
  (budget,) = record['budgets']
  assert [m['averaged_steps'] for m in budget['members']] == [
      m['averaged_steps'] for m in members]  # each run's own choice on validation
  alone = [m['test']['bleu_lowercased_13a'] for m in members]
  assert budget['members_mean_test_bleu_lowercased_13a'] == pytest.approx(sum(alone) / 2)
  assert budget['training_minutes_total'] == pytest.approx(
      sum(m['last_checkpoint_minutes'] for m in members))
  assert budget['training_flops_total'] == 10 * tiny_step_flops(repo)
  tried = budget['validation_tried']
  assert [t['alpha'] for t in tried] == [0.6, 2.0]
  assert budget['decode']['alpha'] == max(tried, key=lambda t: t['bleu_lowercased_13a'])['alpha']
  assert budget['test']['sentences'] == 8 and 0 <= budget['test']['bleu_lowercased_13a'] <= 100
  assert len((out / 'ensemble_test_hypotheses_all.txt').read_text().splitlines()) == 8
  assert str(out) not in (out / 'ensemble.json').read_text()  # the data flags name tmp_path


def test_ensemble_phase_refuses_runs_it_cannot_use(repo, tmp_path):
  one = bench(repo, '--phase=ensemble', f'--runs={tmp_path}', f'--workdir={tmp_path / "o"}')
  assert one.returncode != 0 and 'needs --runs=DIR1,DIR2' in one.stderr
  unscored = bench(repo, '--phase=ensemble', f'--runs={tmp_path / "a"},{tmp_path / "b"}',
                   f'--workdir={tmp_path / "o"}')
  assert unscored.returncode != 0 and 'quality.json does not exist' in unscored.stderr
  for run in ('a', 'b'):  # scored at 60 minutes only
    (tmp_path / run).mkdir()
    (tmp_path / run / 'quality.json').write_text(json.dumps({'budgets': [
        {'minutes': 60.0, 'test': {'bleu_lowercased_13a': 30.0}}]}))
  unbudgeted = bench(repo, '--phase=ensemble', f'--runs={tmp_path / "a"},{tmp_path / "b"}',
                     f'--workdir={tmp_path / "o"}', '--budgets_minutes=60,120')
  assert unbudgeted.returncode != 0 and 'no scored budget 120 min' in unbudgeted.stderr
  assert not (tmp_path / 'o').exists()  # every budget is checked before anything is written


@pytest.mark.parametrize('flag,message', [('--bogus=1', 'only --config.KEY=VALUE'),
                                          ('stray', 'only --config.KEY=VALUE'),
                                          ('--alpha=0.6,high', 'comma-separated numbers'),
                                          ('--beam_size=4,0', 'comma-separated numbers')])
def test_recipe_bench_rejects_unknown_arguments(repo, tmp_path, flag, message):
  result = bench(repo, f'--workdir={tmp_path}', flag)
  assert result.returncode == 2 and message in result.stderr
  assert not os.listdir(tmp_path)  # refused before anything is written


def test_records_name_no_path_of_this_machine(repo):
  sys.path.insert(0, str(repo / 'bench'))
  import quality_multi30k as quality
  record = {'command': [sys.executable, '-m', 'transformer_jax.train',
                        f'--config={quality.REPO}/configs/multi30k.py', '--workdir=/runs/q1/'],
            'config': {'data': {'data_dir': str(quality.REPO.parent / 'corpora' / 'multi30k')}},
            'steps': 3}
  assert quality.portable(record, '/runs/q1/') == {
      'command': ['python', '-m', 'transformer_jax.train', '--config=configs/multi30k.py',
                  '--workdir=WORKDIR/'],
      'config': {'data': {'data_dir': '../corpora/multi30k'}}, 'steps': 3}
