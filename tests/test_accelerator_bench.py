"""bench/accelerator.py on this CPU at tiny sizes: every section runs and measures (none
skipped), inside its time budget, and the record is written as it goes; a smoke test that
fails still leaves a record that says why."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def bench(repo, *flags, env=None):
  return subprocess.run([sys.executable, 'bench/accelerator.py', *flags], cwd=repo,
                        capture_output=True, text=True, timeout=900,
                        env=dict(os.environ, JAX_PLATFORMS='cpu', **(env or {})))


def test_every_section_measures_at_tiny_sizes_within_the_budget(repo, tmp_path):
  path = tmp_path / 'record.json'
  result = bench(repo, '--budget_s=120', f'--record={path}', f'--workdir={tmp_path / "quality"}')
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads(path.read_text())
  sections = record['sections']
  assert list(sections) == ['smoke', 'train_base', 'train_big', 'decode', 'quality']
  assert not [name for name, s in sections.items() if 'error' in s]
  assert record['size'] == 'tiny' and record['elapsed_s'] < 130  # the budget, + writing it
  smoke = sections['smoke']
  assert smoke['backend'] == 'cpu' and smoke['versions']['jax']
  for name in ('train_base', 'train_big'):
    train = sections[name]
    assert train['steps_timed'] >= 10 and train['step_s_median'] > 0 and train['loss_finite']
    assert train['target_tokens_per_s'] == pytest.approx(
        train['batch'] * train['max_len'] / train['step_s_median'])
    assert [t['batch'] for t in train['batch_search']][-1] == train['batch']
  for method in ('beam4', 'greedy'):
    assert sections['decode'][method]['sentences_per_s'] > 0
  quality = sections['quality']
  for run in quality['runs'].values():
    assert run['budget_reached'] and 0 <= run['test_bleu_lowercased_13a'] <= 100
  # A FLOPs budget of 4.5 plain steps: 5 steps, or 3 of R-Drop's double ones.
  assert quality['runs']['lc']['steps'] == 5 and quality['runs']['rdrop']['steps'] == 3
  assert quality['ensemble']['training_flops_total'] == pytest.approx(
      quality['runs']['lc']['train_flops'] + quality['runs']['rdrop']['train_flops'])
  (vocab,) = (tmp_path / 'quality').glob('*/lc/vocab.model')
  assert not (vocab.parent.parent / 'rdrop' / 'vocab.model').exists()  # it read lc's


def test_a_failed_smoke_test_still_writes_a_record(repo, tmp_path):
  """Versions below the minimum (as an old install would report them) stop the run
  after the smoke test, with the reason in the record."""
  path = tmp_path / 'record.json'
  shim = tmp_path / 'shim'
  shim.mkdir()
  # A sitecustomize that makes importlib.metadata report jax 0.4.0, as an old install does.
  (shim / 'sitecustomize.py').write_text(
      'from importlib import metadata\n'
      '_version = metadata.version\n'
      'metadata.version = lambda p: "0.4.0" if p == "jax" else _version(p)\n')
  result = bench(repo, '--budget_s=60', f'--record={path}',
                 env={'PYTHONPATH': str(shim)})
  assert result.returncode != 0 and 'smoke test failed' in result.stderr
  record = json.loads(path.read_text())
  assert list(record['sections']) == ['smoke']
  assert 'jax 0.4.0 < 0.10.2' in record['sections']['smoke']['error']
