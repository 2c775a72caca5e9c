"""The pod path as it runs on a TPU pod slice, rehearsed on one machine.

N processes (default 4) of D CPU devices each (default 2), joined by `jax.distributed`
with gloo collectives (transformer_jax/local_pod.py), the workdirs and vocabulary in a
gs:// bucket on a local GCS emulator (or a local directory with --local), a corpus of
distinct sentences. Phases:

  prepare          the dataset and vocabulary, once (as `launch/tpu.py prepare` does)
  reference        train N processes with evaluation, BLEU and checkpoints, uninterrupted
  killed           the same in a second workdir; SIGKILL the last process mid-run: the
                   others must exit non-zero by themselves (JAX's heartbeat timeout)
  resumed          relaunch all N: the run finishes from its last checkpoint
  bitwise          losses and final parameters of `resumed` equal `reference`'s exactly
  average          `average --last=2` on N processes
  evaluate         `evaluate` of the averaged model on N processes equals it on 1
  translate        `translate` on 1 process writes the lines `evaluate` scored

  python bench/pod_rehearsal.py [--processes=4] [--devices=2] [--local] [--record=FILE]

Prints one JSON object: every phase's `ok` and seconds, and `"ok": true` only if all hold.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BUCKET = 'pod-rehearsal'
# A dozen steps teach beam search nothing but to stop at once; seeded sampling writes
# distinct lines, so a row put in the wrong place by the gathering would show.
SAMPLING = ['--decode=sample', '--seed=1', '--max_extra_len=10']


def cpu_model() -> str:
  """The CPU's name, and whether it has AMX or AVX-512 bf16 (figures depend on them: one
  name, AMD EPYC, covers Zen 3 without bf16 units and Zen 4 with them)."""
  info = pathlib.Path('/proc/cpuinfo')
  if not info.exists():
    return platform.processor()
  text = info.read_text()
  name = next((line.split(':', 1)[1].strip() for line in text.splitlines()
               if line.startswith('model name')), platform.processor())
  from transformer_jax import precision  # noqa: PLC0415 (jax loads only when asked)
  units = precision.cpu_bf16_units(text)
  if units is None:
    return name
  labels = {'amx_bf16': 'AMX', 'avx512_bf16': 'AVX-512 bf16'}
  return f'{name} ({", ".join(labels[flag] for flag in units) or "no bf16 units"})'


def commit() -> str:
  """HEAD, marked -dirty when the working tree has changes; 'unknown' without git or a
  repository (a copy of the tree, as the lent accelerator gets)."""
  def git(*args):
    return subprocess.run(['git', *args], cwd=REPO, capture_output=True, text=True).stdout
  try:
    head = git('rev-parse', '--short', 'HEAD').strip()
    dirty = bool(head) and bool(git('status', '--porcelain', '--untracked-files=no').strip())
  except OSError:
    return 'unknown'
  return (head + ('-dirty' if dirty else '')) if head else 'unknown'


def emit(record: dict, path: str = '', args: list[str] | None = None) -> None:
  """Print a bench's JSON with what makes it a record (commit, date, machine and the
  command, `args` defaulting to this one's); with `path`, write it there too."""
  script = pathlib.Path(sys.argv[0]).name
  record.update(commit=commit(), date=time.strftime('%Y-%m-%d'), machine=cpu_model(),
                command=' '.join(['python', f'bench/{script}',
                                  *(sys.argv[1:] if args is None else args)]))
  text = json.dumps(record, indent=2)
  print(text)
  if path:
    pathlib.Path(path).write_text(text + '\n')


def committed(checkpoint) -> bool:
  """Whether Orbax finished the checkpoint: in a bucket its directory exists while it is
  written (the commit marker comes last); locally, it appears only when complete."""
  import orbax.checkpoint as ocp
  return checkpoint.exists() and ocp.step.is_checkpoint_finalized(checkpoint)


def run_phase(phases: dict, name: str, body) -> bool:
  """Run `body()` -> (ok, details) as phase `name` of a rehearsal: its result, details
  and seconds go into `phases`, a line to stderr; an exception is a failed phase."""
  started = time.perf_counter()
  try:
    ok, details = body()
  except Exception as e:  # noqa: BLE001 (a failed phase is a result, not a crash)
    ok, details = False, {'error': f'{type(e).__name__}: {e}'[:2000]}
  phases[name] = {'ok': bool(ok), 'seconds': round(time.perf_counter() - started, 1),
                  **details}
  print(f'{name}: {"ok" if ok else "FAILED"} ({phases[name]["seconds"]} s)',
        file=sys.stderr, flush=True)
  return ok


def write_corpus(root: pathlib.Path) -> None:
  """Distinct sentence pairs of the synthetic task as a parallel_text corpus."""
  from transformer_jax.data import synthetic
  root.mkdir(parents=True, exist_ok=True)
  for split, pairs in synthetic.splits(train_size=2000, eval_size=64).items():
    for lang, side in (('en', 0), ('de', 1)):
      (root / f'{split}.{lang}').write_text(''.join(p[side] + '\n' for p in pairs))


class Rehearsal:
  def __init__(self, a, root: pathlib.Path, store: str):
    self.a, self.root, self.store = a, root, store
    self.phases: dict[str, dict] = {}
    self.data = [f'--config={REPO / "configs" / "tiny.py"}',
                 '--config.data.name=parallel_text', f'--config.data.data_dir={root / "corpus"}',
                 f'--config.data.tfds_dir={root / "tfds"}',
                 f'--config.data.vocab_path={store}/vocab.model']
    steps = a.steps
    self.train = [*self.data, f'--config.train.num_steps={steps}',
                  '--config.train.log_every=1', '--config.train.eval_every=4',
                  '--config.train.bleu_every=4', '--config.train.bleu_sentences=32',
                  '--config.train.checkpoint_every=4', '--config.train.keep_checkpoints=3']

  def phase(self, name: str, body) -> bool:
    return run_phase(self.phases, name, body)

  def pod(self, command, processes=None, **kwargs):
    from transformer_jax import local_pod
    name = f'{command[0]}-{len(self.phases)}'
    return local_pod.start([f'transformer_jax.{command[0]}', *command[1:]],
                           processes=processes or self.a.processes, devices=self.a.devices,
                           log_dir=str(self.root / 'logs' / name), cwd=str(REPO), **kwargs)

  @staticmethod
  def all_ok(results) -> tuple[bool, dict]:
    codes = [r.code for r in results]
    details = {'exit_codes': codes}
    if any(codes):
      details['stderr_tail'] = next(r.err for r in results if r.code)[-1500:]
    return not any(codes), details

  # ------------------------------------------------------------------------ phases

  def prepare(self):
    return self.all_ok(self.pod(['prepare', *self.data], processes=1).wait())

  def reference(self):
    ok, details = self.all_ok(self.pod(['train', f'--workdir={self.store}/reference',
                                        *self.train]).wait())
    return ok and self.last_step('reference') == self.a.steps, details

  def killed(self):
    from etils import epath
    workdir = f'{self.store}/resumed'
    pod = self.pod(['train', f'--workdir={workdir}', *self.train])
    checkpoint = epath.Path(workdir) / 'checkpoints' / '4'
    deadline = time.monotonic() + 600
    while not (self.last_step('resumed') >= 6 and committed(checkpoint)):
      if time.monotonic() > deadline or any(p.poll() is not None for p in pod.processes):
        return False, {'error': 'no checkpoint at step 4 and step 6 reached'}
      time.sleep(0.2)
    victim = len(pod.processes) - 1
    pod.kill(victim)
    killed_at = time.monotonic()
    results = pod.wait(timeout=120)
    seconds = time.monotonic() - killed_at
    survivors = [r.code for i, r in enumerate(results) if i != victim]
    return all(code not in (0, -9) for code in survivors), {
        'killed_after_step': self.last_step('resumed'), 'survivor_exit_codes': survivors,
        'survivors_exited_after_seconds': round(seconds, 1)}

  def resumed(self):
    results = self.pod(['train', f'--workdir={self.store}/resumed', *self.train]).wait()
    ok, details = self.all_ok(results)
    return ok and 'resumed from the checkpoint' in results[0].out, details

  def bitwise(self):
    import jax
    import numpy as np
    from transformer_jax import checkpoint as checkpoint_lib
    from transformer_jax import config as config_lib
    from transformer_jax import metrics, sharding
    from transformer_jax.steps import build
    a, b = (metrics.read(f'{self.store}/{w}') for w in ('reference', 'resumed'))
    same_losses = [r['loss'] for r in a] == [r['loss'] for r in b]
    checkpoints = checkpoint_lib.Checkpoints(f'{self.store}/reference', config_lib.defaults())
    config = config_lib.from_checkpoint(checkpoints.meta(self.a.steps)['config'])
    checkpoints.close()
    setup = build(config, sharding.make_mesh(config_lib.defaults().mesh, jax.devices()[:1]))
    params = []
    for w in ('reference', 'resumed'):
      checkpoints = checkpoint_lib.Checkpoints(f'{self.store}/{w}', config)
      params.append(jax.device_get(checkpoints.restore_params(self.a.steps,
                                                              setup.abstract_state.params)))
      checkpoints.close()
    same_params = all(np.array_equal(x, y) for x, y in zip(*map(jax.tree.leaves, params)))
    return same_losses and same_params, {'steps': len(b), 'same_losses': same_losses,
                                         'same_parameters': same_params}

  def average(self):
    return self.all_ok(self.pod(['average', f'--workdir={self.store}/resumed',
                                 '--last=2']).wait())

  def evaluate(self):
    scored = {}
    for n in (self.a.processes, 1):
      out = self.root / f'evaluate_{n}'
      ok, details = self.all_ok(self.pod(
          ['evaluate', f'--workdir={self.store}/resumed', '--averaged', f'--json={out}.json',
           f'--hypotheses={out}.txt', *SAMPLING], processes=n).wait())
      if not ok:
        return ok, details
      scored[n] = (json.loads(out.with_suffix('.json').read_text())['bleu'],
                   out.with_suffix('.txt').read_text())
    (bleu_n, lines_n), (bleu_1, lines_1) = scored[self.a.processes], scored[1]
    distinct = len(set(lines_n.splitlines()))
    return bleu_n == bleu_1 and lines_n == lines_1 and distinct > 1, {
        'bleu': bleu_n, 'bleu_1_process': bleu_1, 'same_translations': lines_n == lines_1,
        'distinct_translations': distinct}

  def translate(self):
    out = self.root / 'translate.txt'
    ok, details = self.all_ok(self.pod(
        ['translate', f'--workdir={self.store}/resumed', '--averaged',
         f'--input={self.root / "corpus" / "test.en"}', f'--output={out}', *SAMPLING],
        processes=1).wait())
    scored = (self.root / f'evaluate_{self.a.processes}.txt').read_text()
    return ok and out.read_text() == scored, {**details, 'lines': len(scored.splitlines())}

  def last_step(self, workdir: str) -> int:
    from transformer_jax import metrics
    try:
      return max((r['step'] for r in metrics.read(f'{self.store}/{workdir}')), default=0)
    except FileNotFoundError:
      return 0


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--processes', type=int, default=4)
  parser.add_argument('--devices', type=int, default=2, help='CPU devices per process')
  parser.add_argument('--steps', type=int, default=12, help='training steps (>= 8)')
  parser.add_argument('--local', action='store_true', help='a local directory, not a bucket')
  parser.add_argument('--root', default='', help='scratch directory (default: a temporary one)')
  parser.add_argument('--record', default='', help='also write the JSON here')
  a = parser.parse_args()
  root = pathlib.Path(a.root or tempfile.mkdtemp(prefix='pod_rehearsal_'))
  server = None
  if a.local:
    store = str(root / 'store')
  else:
    sys.path.insert(0, str(REPO / 'tests'))
    import gcs_emulator  # noqa: PLC0415 (the tests' emulator; needs the test extra)
    server, env = gcs_emulator.start(BUCKET)
    os.environ.update(env)  # for the processes started, and for reading results here
    store = f'gs://{BUCKET}'
  os.environ['JAX_PLATFORMS'] = 'cpu'
  write_corpus(root / 'corpus')
  rehearsal = Rehearsal(a, root, store)
  started = time.perf_counter()
  try:
    for name in ('prepare', 'reference', 'killed', 'resumed', 'bitwise', 'average',
                 'evaluate', 'translate'):
      if not rehearsal.phase(name, getattr(rehearsal, name)):
        break  # later phases need this one
  finally:
    if server is not None:
      server.terminate()
      server.wait()
  record = {'ok': len(rehearsal.phases) == 8 and all(p['ok'] for p in rehearsal.phases.values()),
            'processes': a.processes, 'devices_per_process': a.devices, 'steps': a.steps,
            'storage': 'local directory' if a.local else 'gs:// bucket (GCS emulator)',
            'seconds': round(time.perf_counter() - started, 1), 'cpus': os.cpu_count(),
            'phases': rehearsal.phases}
  emit(record, a.record)
  if not a.root:
    shutil.rmtree(root, ignore_errors=True)
  sys.exit(0 if record['ok'] else 1)


if __name__ == '__main__':
  main()
