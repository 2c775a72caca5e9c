"""The Multi30k recipe end to end (issue 8, README "Results"); writes JSON and a PNG.

  python bench/quality_multi30k.py --workdir=DIR [--config=configs/multi30k.py]
      [--budgets_minutes=60,120 | --budget_flops=F] [--phase=all|run|analyze]
      [--config.KEY=VALUE ...]
  python bench/quality_multi30k.py --phase=ensemble --runs=DIR1,DIR2 --workdir=OUT
      [--budgets_minutes=60 | --budget_flops=F]

A budget is minutes of this machine (`--budgets_minutes`), or training FLOPs
(`--budget_flops`, passed to train as `train.budget_flops`: the run ends at the step that
spends them, the same step on any machine; the analysis then takes the whole run, budget
`all`). Every result carries both the minutes and the FLOPs it used.

`run` trains `--config` in a fresh DIR as its own process (`python -m
transformer_jax.train`) and notes the command's start and end times, so the wall-clock
covers everything: tokenizer, data preparation, compilation, validation during training
and checkpoints. `analyze` then, for every time budget: takes the checkpoints committed
within it (counted from the command's start), chooses how many of the last ones to
average and the beam settings (`--beam_size`, `--alpha`: lists to try) by validation
BLEU, translates test_2016_flickr with beam search from that average, and scores it
with sacreBLEU (lowercased 13a, the literature's comparable figure; cased detokenized
13a with its signature; chrF). Results go to
DIR/quality.json and DIR/quality.png (training loss and validation BLEU against time).

`ensemble` decodes runs trained apart (seeds; two 1-hour runs are 2 hours of compute) as
one model (`decode.Ensemble`): at each budget every run's checkpoint average as its own
analysis chose it, the decode settings chosen again on validation, then test; beside it
the members' own test BLEU and their mean. It writes OUT/ensemble.json.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
RUN_FILE = 'quality_run.json'


def run(args) -> None:
  """Train in a fresh workdir, timing the whole command."""
  workdir = pathlib.Path(args.workdir)
  if workdir.exists() and any(workdir.iterdir()):
    sys.exit(f'error: {workdir} is not empty; the recipe is timed from scratch, so give a '
             'new --workdir (or --phase=analyze to score a finished run).')
  workdir.mkdir(parents=True, exist_ok=True)
  command = [sys.executable, '-m', 'transformer_jax.train', f'--config={args.config}',
             f'--workdir={workdir}', *args.overrides]
  record = {'command': command, 'start_time': time.time()}
  (workdir / RUN_FILE).write_text(json.dumps(record, indent=2))
  with open(workdir / 'train.log', 'w') as log:
    code = subprocess.call(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
  record.update(end_time=time.time(), returncode=code)
  (workdir / RUN_FILE).write_text(json.dumps(record, indent=2))
  if code:
    sys.exit(f'error: training exited with {code}; see {workdir / "train.log"}')


def checkpoint_times(workdir: pathlib.Path) -> dict[int, float]:
  """Step -> when its checkpoint was committed (Orbax renames the finished directory into
  place, which sets its ctime)."""
  root = workdir / 'checkpoints'
  return {int(p.name): p.stat().st_ctime for p in root.iterdir() if p.name.isdigit()}


def decode_and_score(restored, sources, references, settings) -> dict:
  """Beam-search translations scored four ways: lowercased 13a BLEU, lowercased BLEU on
  Moses-tokenized text (how Multi30k papers report it), cased detokenized 13a BLEU, and
  chrF (cased and lowercased)."""
  from transformer_jax import inference, scoring  # noqa: PLC0415 (jax only for analyze)
  started = time.perf_counter()
  hypotheses = inference.translate_texts(restored, sources, settings)
  lower = scoring.scores(hypotheses, references, '13a', lowercase=True,
                         moses_lang=restored.config.data.target_lang)
  cased = scoring.scores(hypotheses, references, '13a', lowercase=False)
  return {'bleu_lowercased_13a': lower['bleu'],
          'bleu_lowercased_signature': lower['bleu_signature'],
          'bleu_moses_lc': lower['bleu_moses_lc'],
          'bleu_moses_lc_signature': lower['bleu_moses_lc_signature'],
          'bleu_cased_13a': cased['bleu'], 'bleu_cased_signature': cased['bleu_signature'],
          'chrf': cased['chrf'], 'chrf_signature': cased['chrf_signature'],
          'chrf_lowercased': lower['chrf'],  # the fair chrF of a lowercasing model
          'sentences': len(hypotheses), 'translate_seconds': time.perf_counter() - started,
          'hypotheses': hypotheses}


def validate(restored, splits, grid, label: str, **candidate) -> list[dict]:
  """Validation BLEU (lowercased 13a) of `restored` under each decode setting in `grid`."""
  tried = []
  for settings in grid:
    bleu = decode_and_score(restored, *splits['validation'], settings)['bleu_lowercased_13a']
    tried.append({**candidate, 'beam_size': settings.beam_size, 'alpha': settings.alpha,
                  'bleu_lowercased_13a': bleu})
    print(f'{label}, beam {settings.beam_size}, alpha {settings.alpha}: validation BLEU '
          f'{bleu:.2f} lowercased', flush=True)
  return tried


def best_of(tried: list[dict]) -> tuple[dict, object]:
  """The candidate with the best validation BLEU (ties: the first tried), and its decode
  settings."""
  from transformer_jax import inference  # noqa: PLC0415
  best = max(tried, key=lambda t: t['bleu_lowercased_13a'])
  return best, inference.Settings(beam_size=best['beam_size'], alpha=best['alpha'])


def score_test(restored, splits, settings, hypotheses_path: pathlib.Path, label: str) -> dict:
  """test_2016_flickr scored under the chosen settings; the translations go to a file."""
  test = decode_and_score(restored, *splits['test'], settings)
  hypotheses_path.write_text(''.join(h + '\n' for h in test.pop('hypotheses')))
  print(f'{label}: test BLEU {test["bleu_lowercased_13a"]:.2f} lowercased, '
        f'{test["bleu_cased_13a"]:.2f} cased ({test["bleu_cased_signature"]})', flush=True)
  return test


def label(minutes: float | None) -> str:
  """A budget's name: '60 min', or 'all' (the whole run: a FLOPs budget ended it)."""
  return 'all' if minutes is None else f'{minutes:g} min'


def parse_budgets(text: str) -> list[float | None]:
  return [None if m == 'all' else float(m) for m in text.split(',')]


def score_budget(workdir, minutes, start, times, splits, grid, candidates,
                 flops_per_step: float) -> dict:
  """The recipe's result at a time budget: the checkpoints committed within it, the number
  of them to average and the beam settings (one of `grid`) chosen by validation BLEU,
  then the test scores of that choice."""
  from transformer_jax import checkpoint, inference  # noqa: PLC0415
  within = sorted(step for step, t in times.items()
                  if minutes is None or t - start <= 60 * minutes)
  if not within:
    return {'minutes': minutes, 'error': 'no checkpoint was committed within the budget'}
  last = within[-1]
  tried = []
  for n in (n for n in candidates if n <= len(within)):
    checkpoint.average(str(workdir), n, until_step=last)
    tried += validate(inference.restore(str(workdir), averaged=True), splits, grid,
                      f'{label(minutes)}, step {last}, average of {n}', average=n)
  best, settings = best_of(tried)
  checkpoint.average(str(workdir), best['average'], until_step=last)
  test = score_test(inference.restore(str(workdir), averaged=True), splits, settings,
                     workdir / f'test_hypotheses_{label(minutes).replace(" ", "")}.txt',
                     label(minutes))
  return {'minutes': minutes, 'last_checkpoint_step': last,
          'last_checkpoint_minutes': (times[last] - start) / 60,
          'flops': last * flops_per_step,  # training FLOPs up to that checkpoint
          'averaged_last': best['average'], 'averaged_steps': within[-best['average']:],
          'decode': {'beam_size': settings.beam_size, 'alpha': settings.alpha},
          'validation_bleu_lowercased_by_average': {
              n: max(t['bleu_lowercased_13a'] for t in tried if t['average'] == n)
              for n in dict.fromkeys(t['average'] for t in tried)},
          'validation_tried': tried, 'test': test}


def scored_budgets(runs, records, minutes: float) -> list[dict]:
  """Each run's analysis at `minutes`; exits naming the run that has none."""
  chosen = []
  for run, record in zip(runs, records):
    budget = next((b for b in record['budgets'] if b['minutes'] == minutes), None)
    if budget is None or 'test' not in budget:
      which = label(minutes).replace(' min', '')
      sys.exit(f'error: {run / "quality.json"} has no scored budget {label(minutes)}; run '
               f'--phase=analyze there with --budgets_minutes={which} first.')
    chosen.append(budget)
  return chosen


def score_ensemble(runs, chosen, minutes, splits, grid, out: pathlib.Path) -> dict:
  """Runs trained apart (seeds), decoded as one model at a budget each: every run's
  checkpoint average as its own analysis chose it on validation (`chosen`), the decode
  settings chosen again on validation, then test. Beside it, each member's own test BLEU
  and their mean, the figure a single-model recipe reports over seeds."""
  from transformer_jax import checkpoint, inference  # noqa: PLC0415
  for run, budget in zip(runs, chosen):
    checkpoint.average(str(run), budget['averaged_last'],
                       until_step=budget['last_checkpoint_step'])
  restored = inference.restore_ensemble([f'{run}@averaged' for run in runs])
  tried = validate(restored, splits, grid, f'ensemble of {len(runs)} at {label(minutes)}')
  best, settings = best_of(tried)
  test = score_test(restored, splits, settings, out / f'ensemble_test_hypotheses_'
                     f'{label(minutes).replace(" ", "")}.txt', f'ensemble at {label(minutes)}')
  alone = [b['test']['bleu_lowercased_13a'] for b in chosen]
  return {'minutes_per_run': minutes,
          'training_minutes_total': sum(b['last_checkpoint_minutes'] for b in chosen),
          'training_flops_total': sum(b.get('flops', 0.0) for b in chosen),
          'members': [{'run': run.name, 'averaged_steps': b['averaged_steps'],
                       'test_bleu_lowercased_13a': b['test']['bleu_lowercased_13a']}
                      for run, b in zip(runs, chosen)],
          'members_mean_test_bleu_lowercased_13a': statistics.mean(alone),
          'members_spread_test_bleu_lowercased_13a': max(alone) - min(alone),
          'decode': {'beam_size': settings.beam_size, 'alpha': settings.alpha},
          'validation_tried': tried, 'test': test}


def run_summary(workdir: pathlib.Path, start: float, end: float) -> dict:
  """Steps, tokens and where the wall-clock went, from metrics.jsonl."""
  from transformer_jax import metrics  # noqa: PLC0415
  train, evals = metrics.read(str(workdir)), metrics.read(str(workdir), 'eval')
  first = train[0]
  # The first interval's start: everything before it is start-up (imports, vocabulary,
  # TFDS build, reading and tokenizing, initialization); the interval holds compilation.
  loop_start = first['time'] - first['step_time'] * first['step']
  return {'wall_clock_s': end - start, 'steps': train[-1]['step'],
          'train_flops': train[-1].get('train_flops'),  # none in records before 2026-12
          'target_tokens_seen': sum(r['tokens'] for r in train),
          'phases_s': {'startup': loop_start - start,
                       'first_interval_with_compilation': first['time'] - loop_start,
                       'validation_bleu': sum(r.get('bleu_seconds', 0) for r in evals),
                       'training_loop_total': train[-1]['time'] - loop_start,
                       'after_last_record': end - train[-1]['time']},
          'median_step_s': statistics.median(r['step_time'] for r in train),
          'train_curve': [(r['time'] - start, r['step'], r['loss']) for r in train],
          'validation_bleu_curve': [(r['time'] - start, r['step'], r['bleu'])
                                    for r in evals if 'bleu' in r]}


def environment() -> dict:
  import platform  # noqa: PLC0415
  from importlib import metadata  # noqa: PLC0415
  from pod_rehearsal import commit, cpu_model  # noqa: PLC0415 (bench/ is on the path)
  memory = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2 ** 30
  packages = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'grain', 'sentencepiece',
              'sacrebleu', 'tensorflow-datasets')
  return {'commit': commit(),
          'machine': {'cpu': cpu_model(), 'cores': os.cpu_count(), 'memory_gib': round(memory, 1),
                      'platform': platform.platform(), 'python': platform.python_version()},
          'versions': {p: metadata.version(p) for p in packages}}


def plot(summary: dict, budgets: list[dict], path: pathlib.Path) -> None:
  import matplotlib  # noqa: PLC0415
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # noqa: PLC0415
  fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(8, 6))
  minutes, _, loss = zip(*summary['train_curve'])
  top.plot([m / 60 for m in minutes], loss, lw=1)
  top.set_ylabel('training loss (label-smoothed)')
  if summary['validation_bleu_curve']:
    minutes, _, bleu = zip(*summary['validation_bleu_curve'])
    bottom.plot([m / 60 for m in minutes], bleu, 'o-', label='validation BLEU (cased, beam 4)')
  for b in budgets:
    if 'test' in b:
      bottom.plot(b['last_checkpoint_minutes'], b['test']['bleu_lowercased_13a'], 's',
                  label=f'test BLEU lowercased, budget {label(b["minutes"])}')
  for axis in (top, bottom):
    for b in budgets:
      if b['minutes'] is not None:
        axis.axvline(b['minutes'], color='grey', ls=':', lw=1)
  bottom.set_xlabel('minutes since the training command started')
  bottom.set_ylabel('BLEU')
  bottom.legend(loc='lower right')
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def portable(value, workdir: str, repo: str = str(REPO)):
  """`value` (a JSON tree) with no path of this machine: the interpreter is 'python', the
  run's directory WORKDIR, other paths relative to the repository ('../shared/...')."""
  if isinstance(value, dict):
    return {k: portable(v, workdir, repo) for k, v in value.items()}
  if isinstance(value, list):
    return [portable(v, workdir, repo) for v in value]
  if not isinstance(value, str):
    return value
  if value == sys.executable or value.endswith(('/bin/python', '/bin/python3')):
    return 'python'
  parent = os.path.dirname(repo.rstrip('/'))
  return (value.replace(workdir.rstrip('/'), 'WORKDIR').replace(repo.rstrip('/') + '/', '')
          .replace(parent + '/', '../'))


def load_splits(config, sentences: int) -> dict:
  """Validation and test (sources, references), the first `sentences` of each if set."""
  from transformer_jax.data import pipeline  # noqa: PLC0415
  splits = {}
  for split in ('validation', 'test'):
    sources, references = pipeline.split_pairs(config, split)
    splits[split] = (sources[:sentences or None], references[:sentences or None])
  return splits


def decode_grid(args) -> list:
  from transformer_jax import inference  # noqa: PLC0415
  return [inference.Settings(beam_size=b, alpha=a) for b in args.beam_sizes for a in args.alphas]


def analyze(args) -> dict:
  from transformer_jax import inference  # noqa: PLC0415
  workdir = pathlib.Path(args.workdir)
  record = json.loads((workdir / RUN_FILE).read_text())
  if 'end_time' not in record:
    sys.exit(f'error: the run in {workdir} has not finished (no end_time in {RUN_FILE}).')
  start = record['start_time']
  config = inference.restore(str(workdir)).config
  splits, grid = load_splits(config, args.sentences), decode_grid(args)
  times = checkpoint_times(workdir)
  from transformer_jax import costs  # noqa: PLC0415
  budgets = [score_budget(workdir, m, start, times, splits, grid,
                          [int(n) for n in args.average_candidates.split(',')],
                          costs.step_flops(config))
             for m in parse_budgets(args.budgets_minutes)]
  summary = run_summary(workdir, start, record['end_time'])
  result = {'benchmark': 'quality_multi30k', 'date': time.strftime('%Y-%m-%d'),
            'command': record['command'], 'config': config.to_dict(),
            'data': f'{config.data.name} {config.data.source_lang}->{config.data.target_lang}, '
                    'test = test split',
            'decode_tried': {'beam_size': args.beam_sizes, 'alpha': args.alphas},
            **environment(), 'run': summary, 'budgets': budgets}
  result = portable(result, str(workdir.resolve()))
  (workdir / 'quality.json').write_text(json.dumps(result, indent=2))
  plot(summary, budgets, workdir / 'quality.png')
  print(json.dumps({'budgets': [{k: v for k, v in b.items() if k != 'test'} | {
      k: b['test'][k] for k in ('bleu_lowercased_13a', 'bleu_cased_13a', 'chrf')}
      if 'test' in b else b for b in budgets],
      'wall_clock_s': summary['wall_clock_s'], 'steps': summary['steps'],
      'train_flops': summary['train_flops']}, indent=2))
  return result


def ensemble(args) -> dict:
  """--phase=ensemble: the analyzed runs in --runs decoded as one model; the record goes to
  --workdir/ensemble.json."""
  from transformer_jax import inference  # noqa: PLC0415
  runs = [pathlib.Path(r) for r in args.runs.split(',') if r]
  if len(runs) < 2:
    sys.exit('error: --phase=ensemble needs --runs=DIR1,DIR2[,...], runs analyzed apart.')
  records = []
  for run in runs:
    if not (run / 'quality.json').is_file():
      sys.exit(f'error: {run / "quality.json"} does not exist; train and score that run first '
               f'(--workdir={run} --phase=all).')
    records.append(json.loads((run / 'quality.json').read_text()))
  minutes = parse_budgets(args.budgets_minutes)
  chosen = [scored_budgets(runs, records, m) for m in minutes]  # all checked before any work
  out = pathlib.Path(args.workdir)
  out.mkdir(parents=True, exist_ok=True)
  config = inference.restore(str(runs[0])).config
  splits, grid = load_splits(config, args.sentences), decode_grid(args)
  budgets = [score_ensemble(runs, c, m, splits, grid, out) for m, c in zip(minutes, chosen)]
  result = {'benchmark': 'quality_multi30k_ensemble', 'date': time.strftime('%Y-%m-%d'),
            'runs': [{'run': run.name, 'command': record['command'],
                      'seed': record['config']['seed'], 'machine': record['machine']}
                     for run, record in zip(runs, records)],
            'data': records[0]['data'],
            'decode_tried': {'beam_size': args.beam_sizes, 'alpha': args.alphas},
            **environment(), 'budgets': budgets}
  result = portable(result, str(out.resolve()))
  (out / 'ensemble.json').write_text(json.dumps(result, indent=2))
  print(json.dumps([{k: b[k] for k in ('minutes_per_run', 'training_minutes_total',
                                       'members_mean_test_bleu_lowercased_13a', 'decode')}
                    | {'test_bleu_lowercased_13a': b['test']['bleu_lowercased_13a']}
                    for b in budgets], indent=2))
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--config', default=str(REPO / 'configs' / 'multi30k.py'))
  parser.add_argument('--budgets_minutes', default=None,
                      help="minutes from the command's start, e.g. 60,120, or 'all' (default: "
                      "60,120; with --budget_flops, all)")
  parser.add_argument('--budget_flops', type=float, default=0.0,
                      help='end training at the step that spends these training FLOPs '
                      '(train.budget_flops); docs/multi30k.md names the standard one, B_lc')
  parser.add_argument('--phase', default='all', choices=('all', 'run', 'analyze', 'ensemble'))
  parser.add_argument('--runs', default='',
                      help='--phase=ensemble: analyzed run directories to decode as one model')
  parser.add_argument('--average_candidates', default='1,5,10,20',
                      help='how many last checkpoints to try averaging (chosen on validation)')
  parser.add_argument('--beam_size', default='4',
                      help='beam widths to try on validation, e.g. 4,5 (chosen with the '
                      'average)')
  parser.add_argument('--alpha', default='0.6',
                      help='length-penalty exponents to try on validation, e.g. 0.6,1.0')
  parser.add_argument('--sentences', type=int, default=0,
                      help='score only the first N sentences of each split (tests); 0 = all')
  args, args.overrides = parser.parse_known_args()  # --config.KEY=VALUE: for train
  if not all(o.startswith('--config.') for o in args.overrides):
    parser.error(f'unknown arguments {args.overrides}; only --config.KEY=VALUE pass to train')
  try:
    args.beam_sizes = [int(b) for b in args.beam_size.split(',')]
    args.alphas = [float(a) for a in args.alpha.split(',')]
    if min(args.beam_sizes) < 1:
      raise ValueError
  except ValueError:
    parser.error(f'--beam_size and --alpha take comma-separated numbers (beams >= 1), e.g. '
                 f'--beam_size=4,5 --alpha=0.6,1.0; got {args.beam_size!r} and {args.alpha!r}')
  if args.budgets_minutes is None:
    args.budgets_minutes = 'all' if args.budget_flops else '60,120'
  if args.budget_flops:
    args.overrides.append(f'--config.train.budget_flops={args.budget_flops!r}')
  if args.phase in ('all', 'run'):
    run(args)
  if args.phase in ('all', 'analyze'):
    analyze(args)
  if args.phase == 'ensemble':
    ensemble(args)


if __name__ == '__main__':
  main()
