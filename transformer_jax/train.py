"""`python -m transformer_jax.train --config=FILE --workdir=DIR`: train, resuming from DIR.

The loop reads as a short story: build the mesh, the vocabulary and the data; restore
the latest checkpoint or initialize; then step, log, evaluate and checkpoint until done
or preempted. The steps are pure jitted functions of (state, batch) with explicit
shardings; the RNG for dropout is folded from the state's key and step, so a resumed run
repeats an uninterrupted one exactly.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import threading
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from absl import flags
from jax.sharding import NamedSharding, PartitionSpec as P
from ml_collections import ConfigDict

from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import cli, optim, sharding
from transformer_jax import loss as loss_lib
from transformer_jax import metrics as metrics_lib
from transformer_jax.data import datasets, pipeline
from transformer_jax.data.tokenizer import PAD_ID
from transformer_jax.errors import UserError
from transformer_jax.model import Transformer, shift_right


# ----------------------------------------------------------------------------- loss


def model_inputs(batch: dict) -> dict:
  """The model's keyword arguments for a (possibly packed) batch from data.pipeline."""
  return dict(source_positions=batch['source_positions'],
              source_segments=batch['source_segment_ids'],
              target_positions=batch['target_positions'],
              target_segments=batch['target_segment_ids'])


def token_sums(model: Transformer, batch: dict, label_smoothing: float, rngs=None) -> dict:
  """Sums over the batch's non-padding target tokens: loss, nll, correct, tokens."""
  decoder_input = shift_right(batch['target'], batch['target_segment_ids'])
  states = model(batch['source'], decoder_input, rngs=rngs, logits=False, **model_inputs(batch))
  targets = batch['target'].reshape(-1)
  kernel, layout = model.output_kernel()
  loss, nll, correct = loss_lib.projected_cross_entropy(
      states.reshape(targets.shape[0], -1), kernel, targets, label_smoothing, layout,
      model.matmul_dtype)
  weights = (targets != PAD_ID).astype(jnp.float32)
  return {'loss': jnp.sum(loss * weights), 'nll': jnp.sum(nll * weights),
          'correct': jnp.sum(correct * weights), 'tokens': jnp.sum(weights)}


# ----------------------------------------------------------------------------- state


@flax.struct.dataclass
class TrainState:
  step: jax.Array       # int32 scalar: updates applied so far
  params: Any           # nested dict of arrays (nnx.to_pure_dict of the model's Params)
  opt_state: Any
  rng: jax.Array        # uint32 key data; dropout keys are folded from it and the step


@dataclasses.dataclass
class Setup:
  """What the steps need besides the state: the model's structure, the optimizer and
  where every array lives on the mesh."""
  config: ConfigDict
  mesh: jax.sharding.Mesh
  graphdef: Any
  tx: optax.GradientTransformation
  state_shardings: TrainState
  abstract_state: TrainState  # shapes + shardings, the target for restoring


def build(config: ConfigDict, mesh) -> Setup:
  abstract_model = nnx.eval_shape(lambda: Transformer(config.model, rngs=nnx.Rngs(0)))
  graphdef, abstract_params = nnx.split(abstract_model)
  replicated = NamedSharding(mesh, P())
  param_shardings = sharding.named(mesh, nnx.to_pure_dict(sharding.state_specs(abstract_params)))
  tx = optim.make_optimizer(config)
  params_shape = nnx.to_pure_dict(abstract_params)
  opt_shape = jax.eval_shape(tx.init, params_shape)
  # Optimizer moments mirror the parameters, so they are sharded the same way.
  opt_shardings = optax.tree_map_params(tx, lambda _, s: s, opt_shape, param_shardings,
                                        transform_non_params=lambda _: replicated)
  state_shardings = TrainState(step=replicated, params=param_shardings,
                               opt_state=opt_shardings, rng=replicated)
  abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params_shape,
                        opt_state=opt_shape, rng=jax.ShapeDtypeStruct((2,), jnp.uint32))
  abstract = checkpoint_lib.abstract_with_shardings(abstract, state_shardings)
  return Setup(config, mesh, graphdef, tx, state_shardings, abstract)


def initializer(setup: Setup):
  """The function that makes fresh parameters and optimizer state (jit it to use it)."""
  config = setup.config

  def init():
    key = jax.random.key(config.seed)
    model = Transformer(config.model, rngs=nnx.Rngs(params=jax.random.fold_in(key, 0)))
    params = nnx.to_pure_dict(nnx.state(model))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=setup.tx.init(params),
                      rng=jax.random.key_data(jax.random.fold_in(key, 1)))

  return init


def init_state(setup: Setup) -> TrainState:
  """Fresh parameters and optimizer state, created directly in their shards."""
  init = jax.jit(initializer(setup), out_shardings=setup.state_shardings).lower()
  # The initializer runs once, so on a CPU its compile time is what counts: LLVM's -O1
  # compiles it in about half the time of the default -O2, to the same bits (tested).
  cpu = all(d.platform == 'cpu' for d in setup.mesh.devices.flat)
  return init.compile({'xla_backend_optimization_level': 1} if cpu else None)()


# ----------------------------------------------------------------------------- steps


def train_step(setup: Setup, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
  """One update: gradients summed over `grad_accum_steps` micro-batches, divided by
  their total target tokens; a non-finite loss or gradient leaves the state unchanged."""
  t = setup.config.train
  rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  # Micro-batch i takes rows i, i+k, i+2k, ...: each device's rows split evenly, so the
  # reshape keeps the batch sharding instead of moving rows between devices.
  micro = jax.tree.map(
      lambda x: x.reshape(-1, t.grad_accum_steps, *x.shape[1:]).swapaxes(0, 1), batch)

  def micro_step(grads_and_sums, inputs):
    index, micro_batch = inputs
    def loss(params):
      model = nnx.merge(setup.graphdef, params)
      sums = token_sums(model, micro_batch, t.label_smoothing,
                        nnx.Rngs(dropout=jax.random.fold_in(rng, index)))
      return sums['loss'], sums
    grads, sums = jax.grad(loss, has_aux=True)(state.params)
    return jax.tree.map(jnp.add, grads_and_sums, (grads, sums)), None

  zeros = (jax.tree.map(jnp.zeros_like, state.params),
           {k: jnp.zeros((), jnp.float32) for k in ('loss', 'nll', 'correct', 'tokens')})
  if t.grad_accum_steps == 1:  # no loop: its carry would copy every gradient once more
    (grads, sums), _ = micro_step(zeros, (0, jax.tree.map(lambda x: x[0], micro)))
  else:
    (grads, sums), _ = jax.lax.scan(micro_step, zeros,
                                    (jnp.arange(t.grad_accum_steps), micro))
  grads = jax.tree.map(lambda g: g / jnp.maximum(sums['tokens'], 1.0), grads)
  updates, opt_state = setup.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(sums['loss']) & jnp.isfinite(grad_norm)
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
  new_state = TrainState(step=state.step + 1, params=keep(params, state.params),
                         opt_state=keep(opt_state, state.opt_state), rng=state.rng)
  metrics = {**sums, 'grad_norm': grad_norm,
             'learning_rate': optim.learning_rate_schedule(setup.config)(state.step),
             'finite': finite}
  return new_state, metrics


def eval_step(setup: Setup, params, batch: dict) -> dict:
  model = nnx.merge(setup.graphdef, params)
  return token_sums(model, batch, setup.config.train.label_smoothing)


def compile_steps(setup: Setup):
  """The jitted steps: explicit shardings in and out; the old state's buffers are donated."""
  batch_sharding = sharding.batch_sharding(setup.mesh)
  train = jax.jit(functools.partial(train_step, setup),
                  in_shardings=(setup.state_shardings, batch_sharding),
                  out_shardings=(setup.state_shardings, None), donate_argnums=0)
  evaluate = jax.jit(functools.partial(eval_step, setup),
                     in_shardings=(setup.state_shardings.params, batch_sharding))
  return train, evaluate


def abstract_batch(config: ConfigDict, mesh) -> dict:
  """Every training batch's shapes and shardings: the pipeline packs rows to max_len."""
  shape = (config.data.batch_size, config.data.max_len)
  return {f + s: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding.batch_sharding(mesh))
          for f in ('source', 'target') for s in ('', '_segment_ids', '_positions')}


def compile_in_background(jitted, *abstract_args):
  """Start compiling `jitted` for these argument shapes on a thread; the returned function
  waits for it on its first call. XLA compiles without holding Python's lock, so the
  train step's seconds of compilation overlap the data preparation and the state's
  creation or restoring."""
  compiled = {}

  def compile_it():
    try:
      compiled['fn'] = jitted.lower(*abstract_args).compile()
    except Exception as e:  # noqa: BLE001 - raised again by the first call
      compiled['error'] = e

  thread = threading.Thread(target=compile_it, daemon=True)  # an error exit need not wait
  thread.start()

  def call(*args):
    thread.join()
    if 'error' in compiled:
      raise compiled['error']
    return compiled['fn'](*args)

  return call


# ----------------------------------------------------------------------------- loop


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
  """Validation BLEU with the decoding code `evaluate` uses, and the best checkpoints by
  it, kept in WORKDIR/best (translate and evaluate accept --workdir=WORKDIR/best)."""

  def __init__(self, config, workdir, tokenizer, mesh):
    from transformer_jax import evaluate as evaluate_lib  # noqa: PLC0415
    from transformer_jax import translate as translate_lib  # noqa: PLC0415
    self._evaluate, self._translate = evaluate_lib, translate_lib
    sources, self.references = evaluate_lib.split_pairs(config, 'validation')
    n = config.train.bleu_sentences
    self.sources = translate_lib.encode_sources(tokenizer, sources[:n], 4 * config.data.max_len)
    self.references = self.references[:n]
    self.tokenizer, self.mesh = tokenizer, mesh
    self.best = checkpoint_lib.Checkpoints(os.path.join(workdir, 'best'), config,
                                           max_to_keep=config.train.keep_best,
                                           best_metric='bleu')

  def __call__(self, graphdef, params) -> float:
    model = nnx.merge(graphdef, params)
    outputs = self._translate.translate_ids(model, self.mesh, self.sources,
                                            self._translate.Settings())
    hypotheses = [self.tokenizer.decode(ids) for ids in outputs]
    return self._evaluate.scores(hypotheses, self.references)['bleu']

  def close(self):
    self.best.close()


def _validation_split(config, tokenizer):
  try:
    source = datasets.data_source(config.data, 'validation')
  except UserError:
    return None  # a corpus without a validation split trains without evaluation
  return pipeline.TokenizedSplit(source, config.data, tokenizer)


def restore_or_init(setup, checkpoints, data_iterator, say):
  """The latest checkpoint (state and data position), or a fresh state."""
  step = checkpoints.latest_step()
  if step is None:
    return init_state(setup)
  state = checkpoints.restore(step, setup.abstract_state, data_iterator)
  say(f'resumed from the checkpoint at step {step} in {checkpoints.directory}')
  return state


def train(config: ConfigDict, workdir: str) -> dict:
  """Train until `train.num_steps`, resuming from the workdir; returns the last metrics."""
  checkpoint_lib.check_writable(workdir)
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch(config.data.batch_size, mesh)
  say = (lambda text: print(text, flush=True)) if jax.process_index() == 0 else (lambda _: 0)
  setup = build(config, mesh)
  train_step_fn, eval_step_fn = compile_steps(setup)
  train_step_fn = compile_in_background(train_step_fn, setup.abstract_state,
                                        abstract_batch(config, mesh))
  tokenizer = pipeline.get_tokenizer(config, workdir)
  checkpoints = checkpoint_lib.Checkpoints(workdir, config)
  if checkpoints.latest_step() is not None:  # a mismatch fails before any data is read
    checkpoints.check_compatible(checkpoints.latest_step(), tokenizer.path)
  train_split = pipeline.TokenizedSplit(datasets.data_source(config.data, 'train'),
                                        config.data, tokenizer)
  eval_split = _validation_split(config, tokenizer)
  batches = iter(pipeline.train_dataset(config, train_split))
  state = restore_or_init(setup, checkpoints, batches, say)
  step = int(state.step)
  t = config.train
  preemption = Preemption(t.stop_after_minutes)
  reporter = metrics_lib.Reporter(workdir, config, step, t.num_steps, preemption.deadline)
  bleu = BleuTracker(config, workdir, tokenizer, mesh) if t.bleu_every and eval_split else None
  history, last = [], {}
  try:
    while step < t.num_steps:
      state, metrics = train_step_fn(state, sharding.place_batch(next(batches), mesh))
      step += 1
      history.append(metrics)
      reporter.progress(step)
      preempted = preemption.requested(step, t.log_every)
      checkpoint_due = step % t.checkpoint_every == 0 or step == t.num_steps or preempted
      if step % t.log_every == 0 or checkpoint_due:
        last = _log_interval(reporter, step, history, checkpoints, t.skip_nonfinite)
        history = []
      if eval_split is not None and ((t.eval_every and step % t.eval_every == 0)
                                     or step == t.num_steps):
        sums = evaluate(config, eval_step_fn, state.params, eval_split, mesh)
        last.update({f'eval_{k}': v for k, v in reporter.eval(step, sums).items()})
      if bleu is not None and (step % t.bleu_every == 0 or step == t.num_steps):
        started = time.perf_counter()
        last['eval_bleu'] = bleu(setup.graphdef, state.params)
        reporter.eval(step, {}, {'bleu': last['eval_bleu'],
                                 'bleu_seconds': time.perf_counter() - started})
        bleu.best.save(step, state, None, tokenizer.path, metrics={'bleu': last['eval_bleu']})
      if checkpoint_due:
        checkpoints.save(step, state, batches, tokenizer.path, force=preempted)
      if preempted:
        checkpoints.wait()
        say(f'{preemption.reason}: saved the checkpoint at step {step}; exiting. Run the '
            'same command to resume.')
        break
  finally:
    checkpoints.close()
    reporter.close()
    if bleu is not None:
      bleu.close()
  return last


def _log_interval(reporter, step, history, checkpoints, skip_nonfinite) -> dict:
  """Log the steps since the last line; stop on a non-finite loss unless told to skip."""
  sums = metrics_lib.device_sums(history)
  bad = int(len(history) - sums.pop('finite'))
  if bad and not skip_nonfinite:
    good = checkpoints.latest_step()
    raise UserError(
        f'Non-finite loss or gradient within steps {step - len(history) + 1}..{step}; '
        f'stopped without saving (the update was not applied). Last good checkpoint: '
        f'{"step " + str(good) if good is not None else "none"} in {checkpoints.directory}. '
        'Lower train.learning_rate, set train.clip_grad_norm, or set '
        'train.skip_nonfinite=True to skip such updates.')
  extra = {'learning_rate': float(jax.device_get(history[-1]['learning_rate'])),
           'grad_norm': sums.pop('grad_norm') / len(history), 'skipped_steps': bad}
  sums.pop('learning_rate')
  return reporter.train(step, sums, extra)


def initialize_distributed() -> None:
  """Multi-host runs: connect the processes before any other JAX call.

  On a TPU pod slice every worker runs the same command and JAX finds its peers itself;
  elsewhere (e.g. several CPU processes) the coordinator is given by flags or the
  standard JAX environment variables.
  """
  if _COORDINATOR.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  elif len(os.environ.get('TPU_WORKER_HOSTNAMES', '').split(',')) > 1:
    jax.distributed.initialize()


def main(argv):
  del argv
  config = cli.resolved_config()
  workdir = cli.required_workdir()
  initialize_distributed()
  last = train(config, workdir)
  if jax.process_index() == 0:
    print(json.dumps({'final': last}), flush=True)


_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'host:port of process 0, for multi-process runs off TPU.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in a multi-process run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, 0..num_processes-1.')

if __name__ == '__main__':
  cli.run(main)
