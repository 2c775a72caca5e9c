"""The train step (steps.py): sharded equals unsharded on 8 devices, gradient
accumulation equals one big batch, the O1-compiled initializer and the step compiled in
the background give the same bits, and R-Drop equals a plain implementation."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import model_options

from transformer_jax import config as config_lib
from transformer_jax import sharding
from transformer_jax.steps import (abstract_batch, build, compile_in_background, compile_steps,
                                   init_state, initializer)


def steps_on(mesh_sizes, config, fake_batch, n=2, devices=None):
  config = config_lib.validate(config.copy_and_resolve_references())
  config.mesh.update(dict(zip(('data', 'fsdp', 'tensor'), mesh_sizes)))
  mesh = sharding.make_mesh(config.mesh, devices)
  setup = build(config, mesh)
  train_step, _ = compile_steps(setup)
  state = init_state(setup)
  for i in range(n):
    state, metrics = train_step(state, sharding.place_batch(fake_batch(config, i), mesh))
  return setup, state, metrics


# Adam's update m / (sqrt(v) + eps) turns a near-zero gradient's fp32 reduction-order
# noise (which any change of layout or summation order makes) into up to a whole update
# at the paper's eps=1e-9; at 1e-6 that noise stays far below the tolerances below.
NOISE_EPS = 1e-6


def test_sharded_step_equals_single_device_step(tiny_config, fake_batch):
  config = tiny_config()
  assert config.model.dropout_rate > 0  # dropout masks are the same on every mesh
  config.train.adam_eps = NOISE_EPS
  _, single, m1 = steps_on((1, 1, 1), config, fake_batch, devices=jax.devices()[:1])
  setup, sharded, m8 = steps_on((2, 2, 2), config, fake_batch)
  assert len(jax.devices()) == 8
  np.testing.assert_allclose(float(m1['loss']), float(m8['loss']), rtol=1e-5)
  np.testing.assert_allclose(float(m1['grad_norm']), float(m8['grad_norm']), rtol=1e-5)
  # Parameters are compared to 1% of one update (lr ~ 5e-3 at these steps).
  for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(sharded.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=5e-5)
  # The parameters really are split as the rules say.
  layer = sharded.params['encoder_layers'][0]
  w1 = layer['feed_forward']['w1']['kernel']
  assert w1.sharding.spec == jax.sharding.PartitionSpec('fsdp', 'tensor')
  assert w1.addressable_shards[0].data.shape == (w1.shape[0] // 2, w1.shape[1] // 2)
  query = layer['self_attention']['query']['kernel']
  assert query.sharding.spec == jax.sharding.PartitionSpec('fsdp', 'tensor', None)
  table = sharded.params['source_embedding']['table']['embedding']
  assert table.sharding.spec == jax.sharding.PartitionSpec('tensor', 'fsdp')
  mu = optax.tree_utils.tree_get(sharded.opt_state, 'mu')
  mu = mu['encoder_layers'][0]['feed_forward']['w1']['kernel']
  assert mu.sharding.spec == w1.sharding.spec  # Adam moments follow their parameter


def test_the_marian_options_train_sharded_as_on_one_device(tiny_config, fake_batch):
  """Attention and logits biases (placed by their logical axes), swish, no embedding
  scale: 8 devices on every mesh axis equal 1, and every bias is trained."""
  config = tiny_config(adam_eps=NOISE_EPS)
  config.model.update(**model_options.MARIAN)
  _, single, m1 = steps_on((1, 1, 1), config, fake_batch, devices=jax.devices()[:1])
  _, sharded, m8 = steps_on((2, 2, 2), config, fake_batch)
  np.testing.assert_allclose(float(m1['loss']), float(m8['loss']), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(sharded.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=5e-5)
  attention = sharded.params['decoder_layers'][0]['cross_attention']
  assert attention['query']['bias'].sharding.spec == jax.sharding.PartitionSpec('tensor', None)
  for bias in (sharded.params['logits_bias'], attention['query']['bias'],
               attention['output']['bias']):
    assert np.any(np.asarray(bias) != 0)  # started at zero


@pytest.mark.parametrize('mesh_sizes, accum', [((4, 2, 1), 1), ((2, 2, 2), 2)],
                         ids=['data_fsdp', 'all_axes_accumulated'])
def test_weight_update_sharding_splits_adams_state_and_equals_the_replicated_update(
    tiny_config, fake_batch, mesh_sizes, accum):
  """mesh.shard_update: Adam's moments split over `data` (on top of fsdp and tensor),
  parameters placed as the rules say; three steps equal the same mesh's replicated
  update, with and without gradient accumulation."""
  config = tiny_config(grad_accum_steps=accum)
  config.train.adam_eps = NOISE_EPS
  _, replicated, m1 = steps_on(mesh_sizes, config, fake_batch, n=3)
  config.mesh.shard_update = True
  _, split, m2 = steps_on(mesh_sizes, config, fake_batch, n=3)
  np.testing.assert_allclose(float(m1['loss']), float(m2['loss']), rtol=1e-5)
  np.testing.assert_allclose(float(m1['grad_norm']), float(m2['grad_norm']), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(replicated), jax.tree.leaves(split), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=5e-5)
  w1 = split.params['encoder_layers'][0]['feed_forward']['w1']['kernel']
  assert w1.sharding.spec == jax.sharding.PartitionSpec('fsdp', 'tensor')
  mu = optax.tree_utils.tree_get(split.opt_state, 'mu')['encoder_layers'][0]
  mu = mu['feed_forward']['w1']['kernel']
  assert mu.sharding.spec == jax.sharding.PartitionSpec('fsdp', ('tensor', 'data'))
  assert mu.addressable_shards[0].data.size == w1.size // 8  # each device holds 1/8


def test_initializer_compiled_at_o1_gives_the_same_bits_as_the_default(tiny_config, fake_batch):
  config = tiny_config()
  setup = build(config, sharding.make_mesh(config.mesh))  # all 8 devices
  default = jax.jit(initializer(setup), out_shardings=setup.state_shardings)()
  fast = init_state(setup)
  for a, b in zip(jax.tree.leaves(default), jax.tree.leaves(fast), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert fast.params['encoder_layers'][0]['feed_forward']['w1']['kernel'].sharding == \
      setup.state_shardings.params['encoder_layers'][0]['feed_forward']['w1']['kernel']


def test_step_compiled_in_background_equals_the_jitted_step(tiny_config, fake_batch):
  config = tiny_config()
  mesh = sharding.make_mesh(config.mesh)
  setup = build(config, mesh)
  jitted, _ = compile_steps(setup)
  background = compile_in_background(jitted, setup.abstract_state, abstract_batch(config, mesh))
  batch = sharding.place_batch(fake_batch(config), mesh)
  expected = jitted(init_state(setup), batch)  # each call donates its state: make two
  got = background(init_state(setup), batch)
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # A compile error is raised by the first call, not lost on the thread.
  wrong = compile_in_background(jax.jit(jnp.dot), jax.ShapeDtypeStruct((2, 3), jnp.float32),
                                jax.ShapeDtypeStruct((4, 5), jnp.float32))
  with pytest.raises(TypeError, match='dot'):
    wrong(jnp.ones((2, 3)), jnp.ones((4, 5)))


def test_gradient_accumulation_equals_one_big_batch(tiny_config, fake_batch):
  config = tiny_config()
  config.model.dropout_rate = 0.0
  config.train.adam_eps = NOISE_EPS
  _, whole, _ = steps_on((1, 1, 1), config, fake_batch, n=1, devices=jax.devices()[:1])
  config.train.grad_accum_steps = 4
  _, accumulated, _ = steps_on((1, 1, 1), config, fake_batch, n=1, devices=jax.devices()[:1])
  for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(accumulated.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=5e-5)


def _plain_rdrop_loss(model, batch, label_smoothing, alpha, rngs):
  """R-Drop written the obvious way (full logits, optax's smoothed cross-entropy, the two
  KL directions separately): what `rdrop_sums`' fused version must equal."""
  from transformer_jax.model import shift_right
  from transformer_jax.steps import model_inputs
  twice = jax.tree.map(lambda x: jnp.repeat(x, 2, axis=0), batch)
  logits = model(twice['source'], shift_right(twice['target'], twice['target_segment_ids']),
                 rngs=rngs, **model_inputs(twice)).astype(jnp.float32)
  vocab = logits.shape[-1]
  labels = optax.smooth_labels(jax.nn.one_hot(twice['target'], vocab), label_smoothing)
  ce = optax.softmax_cross_entropy(logits, labels)
  weights = (twice['target'] != 0).astype(jnp.float32)
  logp = jax.nn.log_softmax(logits).reshape(-1, 2, *logits.shape[1:])
  p1, p2 = logp[:, 0], logp[:, 1]
  kl = (jnp.sum(jnp.exp(p1) * (p1 - p2), -1) + jnp.sum(jnp.exp(p2) * (p2 - p1), -1))
  once = (batch['target'] != 0).astype(jnp.float32)
  return 0.5 * jnp.sum(ce * weights) + alpha / 4 * jnp.sum(kl * once)


@pytest.mark.parametrize('options', [{}, model_options.MARIAN], ids=['paper', 'marian'])
def test_rdrop_loss_and_gradient_equal_a_plain_implementation(tiny_config, fake_batch, options):
  """With the Marian options too: the fused loss's gradient reaches the logits bias as
  autodiff of the model's own logits does."""
  from flax import nnx
  from transformer_jax.steps import rdrop_sums
  config = tiny_config(rdrop_alpha=3.0)
  config.model.update(**options)
  setup = build(config, sharding.make_mesh(config.mesh, jax.devices()[:1]))
  params = init_state(setup).params
  batch = {k: jnp.asarray(v) for k, v in fake_batch(config).items()}

  def ours(p):
    model = nnx.merge(setup.graphdef, p)
    return rdrop_sums(model, batch, 0.1, 3.0, nnx.Rngs(dropout=jax.random.key(5)))['loss']

  def plain(p):
    model = nnx.merge(setup.graphdef, p)
    return _plain_rdrop_loss(model, batch, 0.1, 3.0, nnx.Rngs(dropout=jax.random.key(5)))

  (a, ga), (b, gb) = jax.value_and_grad(ours)(params), jax.value_and_grad(plain)(params)
  np.testing.assert_allclose(float(a), float(b), rtol=1e-5)
  for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-4, atol=2e-6)
  # The two passes did differ (independent masks), so the KL term was not zero.
  model = nnx.merge(setup.graphdef, params)
  kl = rdrop_sums(model, batch, 0.1, 3.0, nnx.Rngs(dropout=jax.random.key(5)))['rdrop_kl']
  assert float(kl) > 1e-3


def test_rdrop_off_is_the_plain_step_and_on_shards_like_it(tiny_config, fake_batch):
  """alpha 0: the step of token_sums, bit for bit; alpha > 0: 8 sharded devices equal 1,
  with gradient accumulation."""
  from flax import nnx
  from transformer_jax.steps import token_sums
  config = tiny_config(rdrop_alpha=0.0)
  config.train.adam_eps = NOISE_EPS
  setup, state, metrics = steps_on((1, 1, 1), config, fake_batch, n=1,
                                   devices=jax.devices()[:1])
  fresh = init_state(setup)
  batch = {k: jnp.asarray(v) for k, v in fake_batch(config, 0).items()}
  rng = jax.random.fold_in(jax.random.wrap_key_data(fresh.rng), 0)
  plain = token_sums(nnx.merge(setup.graphdef, fresh.params), batch, 0.1,
                     nnx.Rngs(dropout=jax.random.fold_in(rng, 0)))
  assert float(metrics['loss']) == float(plain['loss'])
  config.train.update(rdrop_alpha=2.0, grad_accum_steps=2)
  _, single, m1 = steps_on((1, 1, 1), config, fake_batch, devices=jax.devices()[:1])
  _, sharded, m8 = steps_on((2, 2, 2), config, fake_batch)
  np.testing.assert_allclose(float(m1['loss']), float(m8['loss']), rtol=1e-5)
  np.testing.assert_allclose(float(m1['rdrop_kl']), float(m8['rdrop_kl']), rtol=1e-4)
  assert float(m1['loss']) != float(metrics['loss'])
  for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(sharded.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=5e-5)
