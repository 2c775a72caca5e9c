"""Commands as several processes on this machine, as on a pod slice's workers
(`local_pod`: `jax.distributed` on localhost, gloo collectives, 4 or 2 CPU devices
each): training with evaluation and BLEU from a corpus nobody prepared, `evaluate` and
`translate` equal to one process, a run resumed on another number of processes, and
the losses of 2 processes equal to 1's.
"""
import json
import os
import re

import numpy as np
import pytest

from transformer_jax import local_pod, precision, profiling, segments
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


@pytest.mark.parametrize('variant', [[], ['--config.train.rdrop_alpha=2',
                                            '--config.model.matmul_dtype=bfloat16',
                                            '--config.mesh.shard_update=True']],
                         ids=['plain', 'rdrop_bf16_shard_update'])
def test_two_processes_match_one(repo, synthetic, tmp_path, variant):
  """Distinct sentences: the global batches do not depend on the number of processes, so
  2 processes x 4 devices train as 1 x 8; the data position is saved once. R-Drop's two
  dropout passes hash global row indices, so they too match; a CPU that emulates bf16
  products is warned about once, by process 0; Adam's state split over the 8 data
  replicas (mesh.shard_update) is gathered across the processes. Both runs end at step 6
  by a FLOPs budget (train.budget_flops), which counts the same on any number of
  processes."""
  from transformer_jax import config as config_lib
  from transformer_jax import costs
  tiny = config_lib.load(str(repo / 'configs' / 'tiny.py'))
  tiny.train.rdrop_alpha = 2.0 if variant else 0.0
  flags = [*TINY, *(f'--config.data.{k}={v}' for k, v in synthetic.data.items()),
           f'--config.data.vocab_path={synthetic.vocab}', '--config.train.num_steps=1000',
           f'--config.train.budget_flops={5.5 * costs.step_flops(tiny)!r}',
           '--config.train.checkpoint_every=1000', '--config.train.profile_steps=(2,2)',
           '--config.train.profile_every_process=True', *variant]
  one, two = tmp_path / 'one', tmp_path / 'two'
  run(repo, tmp_path, ['train', f'--workdir={one}', *flags], processes=1, devices=8)
  results = run(repo, tmp_path, ['train', f'--workdir={two}', *flags], processes=2)
  single, multi = metrics_lib.read(str(one)), metrics_lib.read(str(two))
  assert [r['step'] for r in multi] == list(range(1, 7)) == [r['step'] for r in single]
  for workdir in (one, two):
    assert json.loads((workdir / 'done.json').read_text())['step'] == 6
  np.testing.assert_allclose([r['loss'] for r in multi], [r['loss'] for r in single], rtol=1e-6)
  if variant:
    np.testing.assert_allclose([r['rdrop_kl'] for r in multi], [r['rdrop_kl'] for r in single],
                               rtol=1e-5)
    emulated = precision.cpu_bf16_units() == ()
    assert results[0].err.count('without bf16 units') == int(emulated)
    assert 'without bf16 units' not in results[1].err
  assert single[-1]['loss'] < single[0]['loss']
  saved = os.listdir(two / 'checkpoints' / '6' / 'data')
  assert 'metadata' in saved and not any(n.startswith('process_') for n in saved)
  # Each process traced steps 2-3 into a file of its own (one host, one hostname); the
  # run's record is process 0's alone.
  traces = sorted(p.name.split('.', 1)[1] for p in two.joinpath(*profiling.PROFILE_DIR)
                  .glob('*/*.xplane.pb'))
  assert traces == ['process0.xplane.pb', 'process1.xplane.pb'], traces
  [record] = segments.read(str(two))
  assert record['exit'] == 'done' and record['step'] == 6 and record['restored_step'] == 0


def test_training_with_bleu_from_a_corpus_nobody_prepared(repo, synthetic, tmp_path):
  """Both processes start on an unbuilt dataset and no vocabulary: process 0 builds them
  while the other waits, then each tokenizes its share of the token store; validation
  BLEU every 3 steps; the best checkpoints kept."""
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


def test_a_run_resumes_on_another_number_of_processes(repo, synthetic, tmp_path):
  """Saved at step 6 on 2 processes, continued on 1; and from 1 to 2: steps 7-12 have the
  losses of an uninterrupted run (the batches are the same: the data order depends on
  the seed and the step only). 4 devices in every run."""
  flags = [*TINY, *(f'--config.data.{k}={v}' for k, v in synthetic.data.items()),
           f'--config.data.vocab_path={synthetic.vocab}', '--config.train.checkpoint_every=6']

  def train(workdir, steps, processes):
    run(repo, tmp_path, ['train', f'--workdir={workdir}', *flags,
                         f'--config.train.num_steps={steps}'], processes=processes,
        devices=4 // processes)
    return [r['loss'] for r in metrics_lib.read(str(workdir))]

  uninterrupted = train(tmp_path / 'one', 12, 1)
  for first, then in ((2, 1), (1, 2)):
    workdir = tmp_path / f'{first}_then_{then}'
    train(workdir, 6, first)
    losses = train(workdir, 12, then)
    assert len(losses) == 12
    np.testing.assert_allclose(losses[6:], uninterrupted[6:], rtol=1e-5)
    assert losses[6:] != losses[:6]


def test_two_processes_agree_on_a_damaged_checkpoint(repo, synthetic, tmp_path, damage_arrays):
  """Written by 2 processes, the newest step damaged: both find it fails verification,
  process 0 moves it aside, both resume from the step before, and training goes on to
  the same losses (steps 5-8 again) and saves past it. Then every step damaged: both
  stop with the same refusal."""
  flags = [*TINY, *(f'--config.data.{k}={v}' for k, v in synthetic.data.items()),
           f'--config.data.vocab_path={synthetic.vocab}', '--config.train.checkpoint_every=4',
           '--config.mesh.data=1', '--config.mesh.fsdp=-1']  # each process its own shards
  workdir = tmp_path / 'run'
  run(repo, tmp_path, ['train', f'--workdir={workdir}', *flags, '--config.train.num_steps=8'],
      processes=2, devices=2)
  first = [r['loss'] for r in metrics_lib.read(str(workdir))]
  damage_arrays(workdir / 'checkpoints' / '8')
  results = run(repo, tmp_path, ['train', f'--workdir={workdir}', *flags,
                                 '--config.train.num_steps=12'], processes=2, devices=2)
  assert 'step 8 in' in results[0].err and 'failed verification' in results[0].err
  assert 'resumed from the checkpoint at step 4 ' in results[0].out
  assert [p.name.split('-')[1] for p in (workdir / 'quarantine').iterdir()] == ['8']
  losses = [r['loss'] for r in metrics_lib.read(str(workdir))]
  assert len(losses) == 12 and losses[4:8] == first[4:8]  # exactly
  assert sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir()
                if p.name.isdigit())[-2:] == [8, 12]
  # Every step damaged: both processes stop alike, naming the flag; none trains from 0.
  for step in sorted(p for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()):
    damage_arrays(step)
  refused = local_pod.run(['transformer_jax.train', f'--workdir={workdir}', *flags,
                           '--config.train.num_steps=16'], processes=2, devices=2,
                          log_dir=str(tmp_path / 'all_damaged'), cwd=repo)
  for r in refused:
    assert r.code == 2, r.err[-3000:]
    assert 'passed verification' in r.err and 'restart_if_no_valid_checkpoint=True' in r.err
  assert not any(p.name.isdigit() for p in (workdir / 'checkpoints').iterdir())
  assert len(metrics_lib.read(str(workdir))) == 12  # nothing trained, nothing rewritten


def test_two_processes_carry_the_optimizer_over_and_refuse_another_structure_alike(
    repo, synthetic, tmp_path, tiny_config):
  """Written by 2 processes: resumed by 2 with clipping turned on (both carry the Adam
  moments over, nothing is quarantined); then a step of another structure: both stop
  with the same line, and not a file of the workdir changes."""
  import hashlib

  import jax.numpy as jnp

  from transformer_jax import checkpoint as checkpoint_lib
  from transformer_jax import sharding
  from transformer_jax.steps import build
  flags = [*TINY, *(f'--config.data.{k}={v}' for k, v in synthetic.data.items()),
           f'--config.data.vocab_path={synthetic.vocab}', '--config.train.checkpoint_every=4',
           '--config.mesh.data=1', '--config.mesh.fsdp=-1']
  workdir = tmp_path / 'run'
  train = ['train', f'--workdir={workdir}', *flags]
  run(repo, tmp_path, [*train, '--config.train.num_steps=4'], processes=2, devices=2)
  results = run(repo, tmp_path, [*train, '--config.train.num_steps=6',
                                 '--config.train.clip_grad_norm=1.0'], processes=2, devices=2)
  assert 'train.clip_grad_norm turned on' in results[0].out
  assert 'resumed from the checkpoint at step 4 ' in results[0].out
  assert not (workdir / 'quarantine').exists()

  config = tiny_config(clip_grad_norm=1.0)
  setup = build(config, sharding.make_mesh(config.mesh))
  checkpoints = checkpoint_lib.Checkpoints(str(workdir), config, async_save=False)
  state = checkpoints.restore(6, setup.abstract_state)
  checkpoints.save(7, state.replace(params={**state.params, 'extra': jnp.zeros(3)}), None,
                   synthetic.vocab)
  checkpoints.close()
  snapshot = lambda: {p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
                      for p in sorted(workdir.rglob('*')) if p.is_file()}
  before = snapshot()
  refused = local_pod.run([f'transformer_jax.{train[0]}', *train[1:],
                           '--config.train.num_steps=8', '--config.train.clip_grad_norm=1.0'],
                          processes=2, devices=2, log_dir=str(tmp_path / 'refused'), cwd=repo)
  for r in refused:
    assert r.code == 2, r.err[-3000:]
    assert 'error: Could not restore the checkpoint at step 7 ' in r.err
    assert 'another structure (it also holds: params/extra)' in r.err
  assert snapshot() == before


def test_a_read_that_fails_on_one_process_only_stops_both(repo, synthetic, tmp_path):
  """Process 1 runs out of memory restoring, process 0 does not (tests/one_process_fails.py):
  both stop with one line each and nothing is moved, where process 0 used to wait in
  Orbax's barrier after its read for a process that was waiting in the agreement."""
  flags = [*TINY, *(f'--config.data.{k}={v}' for k, v in synthetic.data.items()),
           f'--config.data.vocab_path={synthetic.vocab}', '--config.train.checkpoint_every=2',
           '--config.mesh.data=1', '--config.mesh.fsdp=-1', '--config.train.num_steps=4']
  workdir = tmp_path / 'run'
  run(repo, tmp_path, ['train', f'--workdir={workdir}', *flags], processes=2, devices=2)
  before = sorted(p.as_posix() for p in workdir.rglob('*'))
  results = local_pod.run(['one_process_fails', f'--workdir={workdir}'], processes=2,
                          devices=2, log_dir=str(tmp_path / 'fails'), cwd=repo / 'tests',
                          timeout=300)
  assert [r.code for r in results] == [2, 2], [r.err[-2000:] for r in results]
  assert re.search(r'error: Could not restore the checkpoint at step 4 in \S+: process 1 '
                   r'could not read it\. Its log names the cause\.', results[0].err)
  assert re.search(r'error: Could not restore the checkpoint at step 4 in \S+: it ran out of '
                   r'memory \(RESOURCE_EXHAUSTED', results[1].err)
  assert sorted(p.as_posix() for p in workdir.rglob('*')) == before


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
  """Beam search over distinct sentences: the same lines, in order, and the same BLEU; an
  ensemble of two checkpoints too."""
  workdir, _ = trained
  src, ref = test_files
  out = {}
  for n in (2, 1):
    run(repo, tmp_path, ['evaluate', f'--workdir={workdir}', f'--src={src}', f'--ref={ref}',
                         f'--json={tmp_path}/eval{n}.json', f'--hypotheses={tmp_path}/hyp{n}.txt',
                         '--batch_size=16'], processes=n)
    run(repo, tmp_path, ['translate', f'--workdir={workdir}', f'--input={src}',
                         f'--output={tmp_path}/out{n}.txt', '--batch_size=16'], processes=n)
    run(repo, tmp_path, ['translate', f'--ensemble={workdir}@200,{workdir}@300',
                         f'--input={src}', f'--output={tmp_path}/ens{n}.txt', '--batch_size=16'],
        processes=n)
    out[n] = (json.loads((tmp_path / f'eval{n}.json').read_text())['bleu'],
              (tmp_path / f'hyp{n}.txt').read_text(), (tmp_path / f'out{n}.txt').read_text(),
              (tmp_path / f'ens{n}.txt').read_text())
  assert out[2] == out[1]
  bleu, hypotheses, translations, ensemble = out[2]
  assert bleu > 1 and hypotheses == translations
  assert len(set(translations.splitlines())) > 24  # distinct lines, a row out of place shows
  assert len(ensemble.splitlines()) == 48 and ensemble != translations  # two models, not one
