"""The train step and what it needs: the loss, the state, its initialization and the
compiled steps. Pure functions of (state, batch) with explicit shardings; the RNG for
dropout is folded from the state's key and step, so a resumed run repeats an
uninterrupted one exactly. The loop around them is `train.py`; this module imports no
data or checkpoint libraries, so the benchmarks and tools that only step start fast.
"""
from __future__ import annotations

import dataclasses
import functools
import threading
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from ml_collections import ConfigDict

from transformer_jax import optim, sharding
from transformer_jax import loss as loss_lib
from transformer_jax.data.tokenizer import PAD_ID
from transformer_jax.model import Transformer, shift_right


# ----------------------------------------------------------------------------- loss


def model_inputs(batch: dict) -> dict:
  """The model's keyword arguments for a (possibly packed) batch from data.pipeline."""
  return dict(source_positions=batch['source_positions'],
              source_segments=batch['source_segment_ids'],
              target_positions=batch['target_positions'],
              target_segments=batch['target_segment_ids'])


def token_sums(model: Transformer, batch: dict, label_smoothing: float, rngs=None,
               shardings=None) -> dict:
  """Sums over the batch's non-padding target tokens: loss, nll, correct, tokens.
  `shardings`: sharding.token_shardings of the mesh, for the loss's backward pass."""
  decoder_input = shift_right(batch['target'], batch['target_segment_ids'])
  states = model(batch['source'], decoder_input, rngs=rngs, logits=False, **model_inputs(batch))
  targets = batch['target'].reshape(-1)
  kernel, layout = model.output_kernel()
  loss, nll, correct = loss_lib.projected_cross_entropy(
      states.reshape(targets.shape[0], -1), kernel, targets, label_smoothing, layout,
      model.matmul_dtype, shardings, model.output_bias())
  weights = (targets != PAD_ID).astype(jnp.float32)
  return {'loss': jnp.sum(loss * weights), 'nll': jnp.sum(nll * weights),
          'correct': jnp.sum(correct * weights), 'tokens': jnp.sum(weights)}


def rdrop_sums(model: Transformer, batch: dict, label_smoothing: float, alpha: float,
               rngs, shardings=None) -> dict:
  """R-Drop (Liang et al., 2021): the batch through the model twice, with independent
  dropout masks (one pass over the batch with every row twice: each row's masks hash its
  own index), and a consistency term between the two output distributions P1, P2. Per token,
  the paper's objective halved, so `alpha` means what it does there:
    loss = (CE1 + CE2) / 2 + alpha / 4 * (KL(P1||P2) + KL(P2||P1)),
  CE label-smoothed; KL(P1||P2) + KL(P2||P1) = sum_v (p1 - p2) (log p1 - log p2).
  Sums over non-padding target tokens, counted once; `rdrop_kl` is the symmetric KL."""
  # Each row next to its copy: [2B, T], a device's rows stay on it; then [B, 2, T].
  twice = jax.tree.map(lambda x: jnp.repeat(x, 2, axis=0), batch)
  decoder_input = shift_right(twice['target'], twice['target_segment_ids'])
  states = model(twice['source'], decoder_input, rngs=rngs, logits=False, **model_inputs(twice))
  pairs = batch['target'].shape[0], 2, batch['target'].shape[1]
  targets = twice['target'].reshape(pairs)
  kernel, layout = model.output_kernel()
  loss, nll, correct, kl = loss_lib.projected_rdrop(
      states.reshape(*pairs, -1), kernel, targets, label_smoothing, layout, model.matmul_dtype,
      shardings, model.output_bias())
  weights = (targets != PAD_ID).astype(jnp.float32)
  once = (batch['target'] != PAD_ID).astype(jnp.float32)
  mean_of_passes = lambda x: 0.5 * jnp.sum(x * weights)  # noqa: E731
  return {'loss': mean_of_passes(loss) + 0.25 * alpha * jnp.sum(kl * once),
          'nll': mean_of_passes(nll), 'correct': mean_of_passes(correct),
          'tokens': jnp.sum(once), 'rdrop_kl': jnp.sum(kl * once)}


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
  param_specs = nnx.to_pure_dict(sharding.state_specs(abstract_params))
  params_shape = nnx.to_pure_dict(abstract_params)
  moment_specs = (sharding.update_specs(param_specs, params_shape, mesh)
                  if config.mesh.shard_update else param_specs)
  param_shardings = sharding.named(mesh, param_specs)
  tx = optim.make_optimizer(config)
  opt_shape = jax.eval_shape(tx.init, params_shape)
  # Optimizer moments mirror the parameters (split over `data` too with mesh.shard_update:
  # XLA then computes each device's slice of the update from its slice of the moments).
  opt_shardings = optax.tree_map_params(tx, lambda _, s: s, opt_shape,
                                        sharding.named(mesh, moment_specs),
                                        transform_non_params=lambda _: replicated)
  state_shardings = TrainState(step=replicated, params=param_shardings,
                               opt_state=opt_shardings, rng=replicated)
  abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params_shape,
                        opt_state=opt_shape, rng=jax.ShapeDtypeStruct((2,), jnp.uint32))
  abstract = sharding.abstract_with_shardings(abstract, state_shardings)
  return Setup(config, mesh, graphdef, tx, state_shardings, abstract)


def initializer(setup: Setup):
  """The function that makes fresh parameters and optimizer state (jit it to use it)."""
  config = setup.config

  def init():
    key = jax.random.key(config.seed)
    model = Transformer(config.model, rngs=nnx.Rngs(params=jax.random.fold_in(key, 0)))
    return _fresh(setup, nnx.to_pure_dict(nnx.state(model)))

  return init


def _fresh(setup: Setup, params) -> TrainState:
  """Step 0 around `params`: a new optimizer state, the dropout key from the seed."""
  key = jax.random.key(setup.config.seed)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=setup.tx.init(params),
                    rng=jax.random.key_data(jax.random.fold_in(key, 1)))


def state_around(setup: Setup, params) -> TrainState:
  """A fresh training state around given parameters (`train.init_from`), in its shards."""
  return jax.jit(lambda p: _fresh(setup, p), out_shardings=setup.state_shardings)(params)


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
      # As the rules place them: the optimizer's sharding (mesh.shard_update) stays there.
      params = jax.lax.with_sharding_constraint(params, setup.state_shardings.params)
      model = nnx.merge(setup.graphdef, params)
      rngs = nnx.Rngs(dropout=jax.random.fold_in(rng, index))
      tokens = sharding.token_shardings(setup.mesh)
      sums = (rdrop_sums(model, micro_batch, t.label_smoothing, t.rdrop_alpha, rngs, tokens)
              if t.rdrop_alpha else
              token_sums(model, micro_batch, t.label_smoothing, rngs, tokens))
      return sums['loss'], sums
    grads, sums = jax.grad(loss, has_aux=True)(state.params)
    return jax.tree.map(jnp.add, grads_and_sums, (grads, sums)), None

  keys = ('loss', 'nll', 'correct', 'tokens') + (('rdrop_kl',) if t.rdrop_alpha else ())
  zeros = (jax.tree.map(jnp.zeros_like, state.params),
           {k: jnp.zeros((), jnp.float32) for k in keys})
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

  # Not a daemon: an error exit (a refused checkpoint, say) waits for the compile to end.
  # A daemon thread killed inside XLA at exit aborts the process ('FATAL: exception not
  # rethrown', exit -6) instead of exiting 2 with the error's message.
  thread = threading.Thread(target=compile_it)
  thread.start()

  def call(*args):
    thread.join()
    if 'error' in compiled:
      raise compiled['error']
    return compiled['fn'](*args)

  return call
