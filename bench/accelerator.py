"""What a GPU or TPU user asks first, measured on whatever JAX backend is here, in one
JSON record written as it goes (a run cut short keeps what it measured).

  python bench/accelerator.py [--budget_s=540] [--record=FILE] [--data_dir=DIR]
      [--workdir=DIR] [--size=auto|full|tiny] [--sections=smoke,train_base,...]

Sections, in priority order, each given a share of --budget_s (what one leaves unspent
goes to the next):
- `smoke` (first, seconds): versions against the minimum ones, the devices, a jitted
  float32 and bfloat16 product checked against numpy. If it fails, the record says why
  and nothing else runs.
- `train_base`, `train_big`: the real train step of configs/base.py and configs/big.py
  (bfloat16 compute, float32 parameters and Adam, the presets' sequence length) at the
  largest power-of-two batch that fits (compiled, not run, while doubling: the compiled
  program's own memory figure against the device's limit; the search is bounded): the
  median step time of >= 10 steps after warm-up, target tokens/s, MFU against the
  device's published peak (`costs.PEAK_FLOPS`), peak device memory; compile time apart.
- `decode`: beam 4 and greedy sentences/s of the base model on 256 sentences of 32
  tokens, a fixed 32 output steps (random weights: speed only).
- `quality`: the Multi30k protocol (docs/multi30k.md) at the FLOPs budget B_lc on
  `--data_dir` (else tests/data/multi30k, which checks the plumbing only): the
  lowercased recipe and the R-Drop recipe, one seed each, sharing one vocabulary, each
  averaged and scored as bench/quality_multi30k.py does; then the two as an ensemble.

`--size=tiny` (the default on a CPU) shrinks every model, batch and budget so that all
sections run in about a minute: the test suite runs it so. docs/performance.md gives the
command that runs this on the lent accelerator, and where its record lands.
"""
from __future__ import annotations

import time

START = time.monotonic()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import pathlib  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from importlib import metadata  # noqa: E402

from packaging.version import Version  # noqa: E402

from pod_rehearsal import commit, cpu_model  # noqa: E402 (bench/: standard library only)

REPO = pathlib.Path(__file__).resolve().parents[1]
# The lowest versions this code runs on (setup.py pins them); newer ones are the device's.
MINIMUM = {'jax': '0.10.2', 'jaxlib': '0.10.2', 'flax': '0.12.8', 'optax': '0.2.8',
           'orbax-checkpoint': '0.12.8'}
B_LC = 10_451 * 97_039_417_344.0  # docs/multi30k.md: the lowercased recipe's recorded run
SHARES = {'smoke': 0.03, 'train_base': 0.15, 'train_big': 0.12, 'decode': 0.08,
          'quality': 0.62}
TINY_MODEL = dict(vocab_size=256, d_model=64, d_ff=128, num_heads=4, num_encoder_layers=1,
                  num_decoder_layers=1)


class Record(dict):
  """The record, rewritten whole after every section."""

  def __init__(self, path: str):
    super().__init__(benchmark='accelerator', started=time.strftime('%Y-%m-%dT%H:%M:%S'))
    self.path = path

  def save(self) -> None:
    self['elapsed_s'] = time.monotonic() - START
    text = json.dumps(self, indent=2, default=str)
    if self.path:
      pathlib.Path(self.path).parent.mkdir(parents=True, exist_ok=True)
      pathlib.Path(self.path + '.tmp').write_text(text)
      os.replace(self.path + '.tmp', self.path)
    print(text, flush=True)


def smoke(tiny: bool, seconds: float) -> dict:
  del tiny, seconds
  versions = {p: metadata.version(p) for p in MINIMUM}
  old = [f'{p} {v} < {MINIMUM[p]}' for p, v in versions.items()
         if Version(v) < Version(MINIMUM[p])]
  if old:
    raise RuntimeError(f'needs at least {", ".join(f"{p} {v}" for p, v in MINIMUM.items())};'
                       f' found {", ".join(old)}')
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  from transformer_jax import costs  # noqa: PLC0415 (imports the project's dependencies)
  x = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
  for dtype, tolerance in ((jnp.float32, 1e-3), (jnp.bfloat16, 0.1)):
    y = jax.jit(lambda a: (a @ a.T).astype(jnp.float32))(jnp.asarray(x, dtype))
    np.testing.assert_allclose(np.asarray(y), x @ x.T, atol=tolerance * 16, rtol=tolerance)
  device = jax.devices()[0]
  return {'versions': {**versions, 'python': sys.version.split()[0]},
          'backend': jax.default_backend(), 'device_kind': device.device_kind,
          'device_count': jax.device_count(), 'process_count': jax.process_count(),
          'peak_flops_per_device': costs.peak_flops(device.device_kind),
          'memory_bytes_limit': (device.memory_stats() or {}).get('bytes_limit'),
          'driver': _driver(), 'host_cpu': cpu_model()}



def _driver() -> str | None:
  try:
    out = subprocess.run(['nvidia-smi', '--query-gpu=driver_version,name', '--format=csv,noheader'],
                         capture_output=True, text=True, timeout=10)
    return out.stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    return None


def preset(name: str, tiny: bool):
  from transformer_jax import config as config_lib  # noqa: PLC0415
  config = config_lib.load(str(REPO / 'configs' / f'{name}.py'))
  config.model.dtype = 'bfloat16'  # compute; parameters and Adam stay float32
  if tiny:
    config.model.update(TINY_MODEL)
    config.data.max_len = 32
  return config


def random_batch(config, seed: int = 0) -> dict:
  """Full rows of random tokens: every slot a real token, as packing nearly makes them."""
  import numpy as np  # noqa: PLC0415
  rng, shape = np.random.default_rng(seed), (config.data.batch_size, config.data.max_len)
  batch = {}
  for field in ('source', 'target'):
    batch[field] = rng.integers(3, config.model.vocab_size, shape, dtype=np.int32)
    batch[f'{field}_segment_ids'] = np.ones(shape, np.int32)
    batch[f'{field}_positions'] = np.broadcast_to(np.arange(shape[1], dtype=np.int32), shape)
  return batch


def largest_batch(config, mesh, limit: int | None, deadline: float, first: int, last: int):
  """Double the batch from `first` while the compiled step fits `limit` bytes (any, if
  unknown) and time remains; returns (batch, setup, compiled step, compile s) of the
  largest that fitted, and what each try said."""
  from transformer_jax.steps import abstract_batch, build, compile_steps  # noqa: PLC0415
  best, tries, batch = None, [], first
  while batch <= last and (best is None or time.monotonic() < deadline):
    config.data.batch_size = batch
    setup = build(config, mesh)
    started = time.perf_counter()
    try:
      compiled = compile_steps(setup)[0].lower(
          setup.abstract_state, abstract_batch(config, mesh)).compile()
    except Exception as e:  # noqa: BLE001 - XLA says RESOURCE_EXHAUSTED its own way
      tries.append({'batch': batch, 'error': str(e).splitlines()[0][:300]})
      break
    seconds = time.perf_counter() - started
    m = compiled.memory_analysis()
    need = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
            + m.temp_size_in_bytes) if m is not None else None
    tries.append({'batch': batch, 'compile_s': seconds, 'compiled_bytes': need})
    if limit and need and need > limit:
      break
    best, batch = (batch, setup, compiled, seconds), 2 * batch
  return best, tries


def train(name: str, tiny: bool, seconds: float) -> dict:
  import jax  # noqa: PLC0415
  from transformer_jax import costs, sharding  # noqa: PLC0415
  from transformer_jax.steps import init_state  # noqa: PLC0415
  config = preset(name, tiny)
  mesh = sharding.make_mesh(config.mesh)
  device = jax.devices()[0]
  limit = (device.memory_stats() or {}).get('bytes_limit')
  limit = limit * jax.device_count() if limit else None
  first = max(8 if tiny else 128, jax.device_count())
  best, tries = largest_batch(config, mesh, limit, time.monotonic() + seconds / 2, first,
                              32 if tiny else 8192)
  if best is None:
    return {'error': 'no batch fitted', 'tries': tries}
  batch_size, setup, step, compile_s = best
  config.data.batch_size = batch_size
  state = init_state(setup)
  batch = sharding.place_batch(random_batch(config), mesh)
  for _ in range(2):  # warm-up
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  times = []
  deadline = time.monotonic() + seconds / 3
  while len(times) < 10 or (time.monotonic() < deadline and len(times) < 50):
    started = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - started)
  median = statistics.median(times)
  stats = device.memory_stats() or {}
  return {'preset': name, 'batch': batch_size, 'max_len': config.data.max_len,
          'params': costs.count_params(config.model)['params'],
          'compile_s': compile_s, 'steps_timed': len(times), 'step_s_median': median,
          'step_s_min': min(times), 'target_tokens_per_s': batch_size * config.data.max_len / median,
          'model_flops_per_step': costs.step_flops(config),
          'mfu': costs.mfu(config, median, jax.devices()),
          'peak_device_bytes': stats.get('peak_bytes_in_use'),
          'loss_finite': bool(jax.numpy.isfinite(metrics['loss'])), 'batch_search': tries}


def decode(tiny: bool, seconds: float) -> dict:
  del seconds
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415
  from transformer_jax import decode as decode_lib  # noqa: PLC0415
  from transformer_jax.model import Transformer  # noqa: PLC0415
  config = preset('base', tiny)
  model = Transformer(config.model, rngs=nnx.Rngs(0))
  sentences, length = (16, 8) if tiny else (256, 32)
  source = np.random.default_rng(0).integers(3, config.model.vocab_size, (sentences, length),
                                             dtype=np.int32)
  runs = {'beam4': lambda: decode_lib.beam_search(model, source, beam_size=4, max_len=length,
                                                  eos_id=-1)[0],
          'greedy': lambda: decode_lib.sample(model, source, max_len=length, eos_id=-1)[0]}
  result = {'preset': 'base', 'sentences': sentences, 'source_tokens': length,
            'output_steps': length}
  for name, run in runs.items():
    started = time.perf_counter()
    jax.block_until_ready(run())
    first = time.perf_counter() - started
    times = []
    for _ in range(3):
      started = time.perf_counter()
      jax.block_until_ready(run())
      times.append(time.perf_counter() - started)
    result[name] = {'sentences_per_s': sentences / statistics.median(times),
                    'first_call_s_including_compile': first}
  return result


def quality(tiny: bool, seconds: float, data_dir: str, workdir: str) -> dict:
  """Both recipes at B_lc (tiny: 4.5 tiny steps), one vocabulary, then their ensemble;
  the runs go to a new folder in `workdir`."""
  from transformer_jax import config as config_lib, costs  # noqa: PLC0415
  root = pathlib.Path(workdir) / time.strftime('%Y%m%d-%H%M%S')
  flags = [f'--config.data.data_dir={data_dir}', f'--config.data.tfds_dir={root / "tfds"}']
  averages, sentences = ['--average_candidates=1,5'], []
  budget = B_LC
  if tiny:
    flags += [f'--config.model.{k}={v}' for k, v in TINY_MODEL.items()]
    flags += ['--config.data.batch_size=8', '--config.data.max_len=32',
              '--config.train.log_every=1', '--config.train.checkpoint_every=2',
              '--config.train.warmup_steps=2', '--config.model.matmul_dtype=']
    averages, sentences = ['--average_candidates=1,2'], ['--sentences=8']
    config = config_lib.load(str(REPO / 'configs' / 'experiments' / 'multi30k_lc.py'))
    config.model.update(TINY_MODEL)
    config.data.update(batch_size=8, max_len=32)
    budget = 4.5 * costs.step_flops(config)
  result = {'budget_flops': budget, 'data_dir': data_dir, 'runs': {}}
  deadline = time.monotonic() + seconds
  # Shares of the time left: 45 % to the first run, 75 % of the rest to the second.
  recipes = (('lc', 'multi30k_lc.py', 0.45), ('rdrop', 'multi30k_rdrop.py', 0.75))
  for name, recipe, fraction in recipes:
    share = (deadline - time.monotonic()) * fraction
    extra = [] if name == 'lc' else [f'--config.data.vocab_path={root / "lc" / "vocab.model"}']
    # A guard only: training stops (and is scored) if the budget would not fit the share.
    guard = f'--config.train.stop_after_minutes={max(0.6 * share / 60, 0.05):.3f}'
    command = [sys.executable, 'bench/quality_multi30k.py', f'--workdir={root / name}',
               f'--config={REPO / "configs" / "experiments" / recipe}',
               f'--budget_flops={budget!r}', *averages, *sentences, *flags, *extra, guard]
    result['runs'][name] = _scored_run(command, root / name, share, budget)
  if all('test_bleu_lowercased_13a' in r for r in result['runs'].values()):
    command = [sys.executable, 'bench/quality_multi30k.py', '--phase=ensemble',
               f'--runs={root / "lc"},{root / "rdrop"}', f'--workdir={root / "ensemble"}',
               f'--budget_flops={budget!r}', *sentences]
    out = _run(command, max(deadline - time.monotonic(), 30))
    if out:
      result['ensemble'] = {'error': out}
    else:
      (b,) = json.loads((root / 'ensemble' / 'ensemble.json').read_text())['budgets']
      result['ensemble'] = {'test_bleu_lowercased_13a': b['test']['bleu_lowercased_13a'],
                            'test_bleu_cased_13a': b['test']['bleu_cased_13a'],
                            'training_flops_total': b['training_flops_total']}
  failed = [name for name, run in result['runs'].items() if 'error' in run]
  if failed or 'error' in result.get('ensemble', {}):
    result['error'] = f'failed: {", ".join(failed) or "ensemble"} (see runs)'
  return result


def _run(command: list[str], seconds: float) -> str | None:
  """None if `command` succeeded within `seconds`, else the end of what it said."""
  try:
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=seconds)
  except subprocess.TimeoutExpired:
    return f'timed out after {seconds:.0f} s'
  return None if out.returncode == 0 else out.stderr[-1500:]


def _scored_run(command, workdir, seconds, budget) -> dict:
  error = _run(command, seconds)
  if error:
    return {'error': error}
  record = json.loads((workdir / 'quality.json').read_text())
  (b,) = record['budgets']
  return {'steps': record['run']['steps'], 'minutes': record['run']['wall_clock_s'] / 60,
          'train_flops': record['run']['train_flops'],
          'budget_reached': record['run']['train_flops'] >= budget * (1 - 1e-12),
          'averaged_last': b['averaged_last'], 'decode': b['decode'],
          'test_bleu_lowercased_13a': b['test']['bleu_lowercased_13a'],
          'test_bleu_cased_13a': b['test']['bleu_cased_13a']}


SECTIONS = {'smoke': smoke, 'train_base': lambda tiny, s: train('base', tiny, s),
            'train_big': lambda tiny, s: train('big', tiny, s), 'decode': decode}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--budget_s', type=float, default=540)
  parser.add_argument('--record', default='')
  parser.add_argument('--data_dir', default='', help='Multi30k files (default: the tests\' '
                      'fixture, tests/data/multi30k: plumbing only)')
  parser.add_argument('--workdir', default='/tmp/accelerator_quality',
                      help='where the quality runs go (a new folder each time)')
  parser.add_argument('--size', default='auto', choices=('auto', 'full', 'tiny'))
  parser.add_argument('--sections', default=','.join(SHARES))
  args = parser.parse_args()
  record = Record(args.record)
  record.update(commit=commit(), date=time.strftime('%Y-%m-%d'), budget_s=args.budget_s,
                command='python bench/accelerator.py ' + ' '.join(sys.argv[1:]), sections={})
  names = [s for s in SHARES if s in args.sections.split(',')]
  tiny = args.size == 'tiny'
  for i, name in enumerate(names):
    left = args.budget_s - (time.monotonic() - START)
    share = left * SHARES[name] / sum(SHARES[n] for n in names[i:])
    started = time.monotonic()
    try:
      if name == 'smoke' and args.size == 'auto':
        import jax  # noqa: PLC0415 (inside: a broken install is recorded, not raised)
        tiny = jax.default_backend() == 'cpu'
      if name == 'quality':
        data_dir = args.data_dir or str(REPO / 'tests' / 'data' / 'multi30k')
        out = quality(tiny, share, data_dir, args.workdir)
      else:
        out = SECTIONS[name](tiny, share)
    except Exception as e:  # noqa: BLE001 - recorded; the record is the product
      out = {'error': f'{type(e).__name__}: {e}'[:1500],
             'traceback': traceback.format_exc()[-3000:]}
    record['sections'][name] = {**out, 'seconds': time.monotonic() - started,
                                'share_s': share}
    record['size'] = 'tiny' if tiny else 'full'
    record.save()
    if name == 'smoke' and 'error' in out:
      sys.exit('smoke test failed; the record says why')



if __name__ == '__main__':
  main()
