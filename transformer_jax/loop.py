"""The training loop, resuming from the workdir (the `train` command is its main).

The loop reads as a short story: build the mesh and start compiling the step; build the
vocabulary and the data meanwhile; restore the latest checkpoint or initialize; then
step, log, evaluate and checkpoint until done or preempted. The steps themselves, and
the state they update, are in `steps.py`.
"""
from __future__ import annotations

import json
import os
import signal
import time

import jax
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import (costs, distributed, files, inference, init_from, precision,
                             profiling, scoring, segments, sharding)
from transformer_jax import metrics as metrics_lib
from transformer_jax.data import datasets, pipeline
from transformer_jax.data.stream import Prefetch
from transformer_jax.errors import UserError
from transformer_jax.steps import (abstract_batch, build, compile_in_background, compile_steps,
                                   init_state, state_around)


DONE_FILE = 'done.json'  # written when the run reaches its last step: a supervisor's signal


class Preemption:
  """SIGTERM (the preemption notice of TPU VMs and schedulers) or the end of the run's
  time budget (`train.stop_after_minutes`) sets a flag; the loop saves a checkpoint at
  the next step boundary and exits cleanly."""

  def __init__(self, stop_after_minutes: float = 0.0):
    self._requested = False
    self.deadline = (time.monotonic() + 60 * stop_after_minutes
                     if stop_after_minutes > 0 else float('inf'))
    signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self._requested = True

  @property
  def reason(self) -> str:
    return 'SIGTERM' if self._requested else 'train.stop_after_minutes reached'

  def requested(self, step: int, every: int) -> bool:
    stop = self._requested or time.monotonic() > self.deadline
    if jax.process_count() == 1:
      return stop
    if step % every:  # agreeing costs a host sync: only every `every` steps
      return False
    from jax.experimental import multihost_utils  # every host must stop at the same step
    return bool(np.any(multihost_utils.process_allgather(np.asarray(stop))))


def evaluate(config, eval_step, params, split, mesh) -> dict:
  sums = []
  for batch in pipeline.eval_batches(config, split, batch_size=config.train.eval_batch_size):
    del batch['index']
    sums.append(eval_step(params, sharding.place_batch(batch, mesh)))
  return metrics_lib.device_sums(sums)


class BleuTracker:
  """Validation BLEU with the decoding `translate` and `evaluate` use, and the best
  checkpoints by it, kept in WORKDIR/best (translate and evaluate accept
  --workdir=WORKDIR/best)."""

  def __init__(self, config, workdir, tokenizer, mesh):
    sources, references = pipeline.split_pairs(config, 'validation')
    n = config.train.bleu_sentences
    self.sources = inference.encode_sources(tokenizer, sources[:n], 4 * config.data.max_len)
    self.references = references[:n]
    self.tokenizer, self.mesh = tokenizer, mesh
    self.best = checkpoint_lib.Checkpoints(os.path.join(workdir, 'best'), config,
                                           max_to_keep=config.train.keep_best,
                                           best_metric='bleu', writer=True)

  def __call__(self, graphdef, params) -> float:
    model = nnx.merge(graphdef, params)
    outputs = inference.translate_ids(model, self.mesh, self.sources, inference.Settings())
    hypotheses = [self.tokenizer.decode(ids) for ids in outputs]
    # A lowercasing model writes no case: score it case-insensitively.
    return scoring.scores(hypotheses, self.references,
                          lowercase=self.tokenizer.lowercase)['bleu']

  def close(self):
    self.best.close()


def _validation_split(config, tokenizer):
  try:
    source = datasets.data_source(config.data, 'validation')
  except UserError:
    return None  # a corpus without a validation split trains without evaluation
  return pipeline.TokenizedSplit(source, config.data, tokenizer)


def restore_or_init(setup, checkpoints, data_iterator, vocab_path, source=None):
  """The newest checkpoint that verifies (state and data position), or a fresh state
  where there never were checkpoints or the config says to restart without them: around
  the parameters of `source` (`train.init_from`) if given."""
  had = checkpoints.steps() or checkpoints.quarantined()

  def restore(step):
    checkpoints.check_compatible(step, vocab_path)  # a mismatch stops, never quarantines
    return checkpoints.restore(step, setup.abstract_state, data_iterator)
  step, state = checkpoints.restore_newest(restore)
  if step is not None:
    distributed.say(f'resumed from the checkpoint at step {step} in {checkpoints.directory}')
    return state
  if had:
    where = checkpoints.directory.parent / checkpoint_lib.QUARANTINE_DIR
    if not setup.config.train.restart_if_no_valid_checkpoint:
      raise UserError(
          f'No checkpoint in {checkpoints.directory} passed verification; the damaged ones '
          f'are in {where} ({", ".join(checkpoints.quarantined()) or "none moved"}). To '
          'train from step 0 beside them, set '
          '--config.train.restart_if_no_valid_checkpoint=True.')
    distributed.warn(f'no checkpoint in {checkpoints.directory} passed verification; '
                     'training from step 0, as train.restart_if_no_valid_checkpoint says '
                     f'(the damaged ones stay in {where}).')
  if source is not None:
    distributed.say(f'{init_from.FLAG}: parameters of {source.spec} (step {source.step}, '
                    f'{source.root}); optimizer and data from the start')
    return state_around(setup, init_from.parameters(source, setup.abstract_state.params))
  return init_state(setup)


def _done(workdir: str, record: dict | None) -> None:
  """Write WORKDIR/done.json, the last metrics of a run that reached its last step
  (None: remove it, the run is about to train past it)."""
  done = files.path(workdir) / DONE_FILE
  if not distributed.is_writer():
    return
  if record is None:
    if done.exists():
      done.unlink()
  else:
    files.write_atomically(done, json.dumps(record).encode())


def train(config: ConfigDict, workdir: str, given: set[str] = frozenset()) -> dict:
  """Train until `train.num_steps` (or the step that spends `train.budget_flops`),
  resuming from the workdir; returns the last metrics and their `step` (only the step if
  there was nothing left to train). A run that reaches that last step writes
  WORKDIR/done.json, the signal `launch/tpu.py supervise` waits for; one that trains past
  it removes it first. `given`: the config keys set on the command line (`section.key`),
  which `train.init_from` must not contradict."""
  source = None
  if config.train.init_from:  # refused before anything is written
    own = init_from.resumed(workdir)
    source = own or init_from.find(config.train.init_from)
    config = init_from.adopt(config, source, given)
    source = None if own else source
  checkpoint_lib.check_writable(workdir)
  segment = segments.Segment(workdir)
  if (warning := precision.cpu_warning(config.model)) is not None:
    distributed.warn(warning)
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch(config.data.batch_size, mesh)
  setup = build(config, mesh)
  train_step_fn, eval_step_fn = compile_steps(setup)
  train_step_fn = compile_in_background(train_step_fn, setup.abstract_state,
                                        abstract_batch(config, mesh))
  if source is not None:
    init_from.place_vocabulary(source, workdir)
  tokenizer = pipeline.prepare(config, workdir)
  checkpoints = checkpoint_lib.Checkpoints(workdir, config, writer=True)
  if checkpoints.latest_step() is not None:  # a mismatch fails before any data is read
    checkpoints.check_compatible(checkpoints.latest_step(), tokenizer.path)
  store = pipeline.training_store(config, workdir, tokenizer)
  eval_split = _validation_split(config, tokenizer)
  stream = pipeline.train_stream(config, store, tokenizer)
  segments.mark('data_ready')
  state = restore_or_init(setup, checkpoints, stream, tokenizer.path, source)
  batches = Prefetch(stream, config.data.prefetch)  # from the restored position
  step = int(state.step)
  t, end = config.train, costs.last_step(config)
  if step < end:  # past every refusal: a refused run leaves done.json alone
    _done(workdir, None)
  segment.open(step)
  preemption = Preemption(t.stop_after_minutes)
  reporter = metrics_lib.Reporter(workdir, config, step, end, preemption.deadline)
  bleu = BleuTracker(config, workdir, tokenizer, mesh) if t.bleu_every and eval_split else None
  history, last = [], {}
  waited, interval_start = 0.0, None  # time the loop waited for input, since when
  profile = profiling.StepProfile(workdir, t.profile_steps, t.profile_every_process)
  preempted = False
  try:
    while step < end:
      profile.before(step + 1)
      started = time.perf_counter()
      interval_start = interval_start or started  # (evaluation and saving left out)
      batch = next(batches)
      wait = time.perf_counter() - started
      waited += wait
      segment.waited(wait)
      state, metrics = train_step_fn(state, sharding.place_batch(batch, mesh))
      step += 1
      segment.stepped(step, metrics)
      profile.after(step, state)
      history.append(metrics)
      reporter.progress(step)
      preempted = preemption.requested(step, t.log_every)
      checkpoint_due = step % t.checkpoint_every == 0 or step == end or preempted
      if step % t.log_every == 0 or checkpoint_due:
        input_wait = waited / max(time.perf_counter() - interval_start, 1e-9)
        last = {**_log_interval(reporter, step, history, t.skip_nonfinite, input_wait,
                                lambda: _newest_verified(checkpoints, setup)),
                'step': step}
        history, waited, interval_start = [], 0.0, None
        segment.progress(step)
      if eval_split is not None and ((t.eval_every and step % t.eval_every == 0)
                                     or step == end):
        with segment.timing('eval_s'):
          sums = evaluate(config, eval_step_fn, state.params, eval_split, mesh)
        last.update({f'eval_{k}': v for k, v in reporter.eval(step, sums).items()})
      if bleu is not None and (step % t.bleu_every == 0 or step == end):
        started = time.perf_counter()
        with segment.timing('eval_s'):
          last['eval_bleu'] = bleu(setup.graphdef, state.params)
        reporter.eval(step, {}, {'bleu': last['eval_bleu'],
                                 'bleu_seconds': time.perf_counter() - started})
        bleu.best.save(step, state, None, tokenizer.path, metrics={'bleu': last['eval_bleu']})
      if checkpoint_due:
        with segment.timing('checkpoint_s'):
          checkpoints.save(step, state, batches, tokenizer.path, force=preempted)
        segment.progress(step)
      if preempted:
        checkpoints.wait()
        distributed.say(f'{preemption.reason}: saved the checkpoint at step {step}; '
                        'exiting. Run the same command to resume.')
        break
  finally:
    profile.stop()
    batches.close()
    with segment.timing('checkpoint_s'):  # the last save's wait
      checkpoints.close()
    segment.progress(step)
    segment.exit('done' if step >= end else 'preempted' if preempted else 'error')
    reporter.close()
    if bleu is not None:
      bleu.close()
  if step >= end:  # saved (closing waited for it): a supervisor may stop now
    if end < t.num_steps:
      distributed.say(f'train.budget_flops reached at step {step} '
                      f'({step * costs.step_flops(config):.4g} FLOPs); the run is done.')
    _done(workdir, {**last, 'step': step})
    # No process ends before done.json exists: a supervisor that saw one worker's
    # training gone while the run was not yet marked done would relaunch it.
    distributed.barrier('see done.json written', 300)
  return last or {'step': step}


def _newest_verified(checkpoints, setup) -> str:
  """'step N' (a rerun resumes there), 'none', or why it could not be told."""
  try:
    step = checkpoints.newest_verified(setup.abstract_state.params)
  except checkpoint_lib.RestoreFailed as e:
    return f'unknown ({e.cause})'
  return 'none' if step is None else f'step {step}'


def _log_interval(reporter, step, history, skip_nonfinite, input_wait, newest_verified
                  ) -> dict:
  """Log the steps since the last line; stop on a non-finite loss unless told to skip.
  `input_wait`: the fraction of the interval the loop waited for the next batch;
  `newest_verified()`: the step a rerun would resume from."""
  sums = metrics_lib.device_sums(history)
  bad = int(len(history) - sums.pop('finite'))
  if bad and not skip_nonfinite:
    raise UserError(
        f'Non-finite loss or gradient within steps {step - len(history) + 1}..{step}; '
        f'stopped without saving (the update was not applied). Newest verified checkpoint: '
        f'{newest_verified()}; a rerun resumes there. '
        'Lower train.learning_rate, set train.clip_grad_norm, or set '
        'train.skip_nonfinite=True to skip such updates.')
  extra = {'learning_rate': float(jax.device_get(history[-1]['learning_rate'])),
           'grad_norm': sums.pop('grad_norm') / len(history), 'skipped_steps': bad,
           'input_wait': input_wait}
  if 'rdrop_kl' in sums:  # R-Drop's symmetric KL per token
    extra['rdrop_kl'] = sums.pop('rdrop_kl') / max(float(sums['tokens']), 1.0)
  sums.pop('learning_rate')
  return reporter.train(step, sums, extra)
