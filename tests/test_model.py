"""The model against the paper: shapes, masks, causality, positions, bf16 compute,
dropout, logical axes."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from transformer_jax import config as config_lib
from transformer_jax.model import (PAD_ID, Transformer, attention_mask, attention_weights,
                                   shift_right, sinusoidal_positions)


def small_config(**changes):
  c = config_lib.defaults().model
  c.update(dict(vocab_size=50, d_model=32, num_heads=4, d_ff=48, num_encoder_layers=2,
                num_decoder_layers=2, **changes))
  return c


def build(cfg, seed=0):
  return Transformer(cfg, rngs=nnx.Rngs(params=seed))


def random_tokens(seed, shape, vocab=50):
  return jax.random.randint(jax.random.key(seed), shape, 3, vocab)


@nnx.jit
def forward(model, source, target, **segments):
  """The model's logits, compiled as the train step compiles it (one program per shape,
  which the tests' compilation cache keeps; op-by-op it is ~5x slower to start)."""
  return model(source, target, **segments)


@nnx.jit
def encode(model, source):
  return model.encode(source)


@pytest.mark.parametrize('pre_norm', [False, True])
def test_output_shapes(pre_norm):
  model = build(small_config(pre_norm=pre_norm))
  source, target = random_tokens(0, (3, 7)), random_tokens(1, (3, 5))
  logits = forward(model, source, shift_right(target))
  assert logits.shape == (3, 5, 50) and logits.dtype == jnp.float32
  assert encode(model, source).shape == (3, 7, 32)
  assert np.isfinite(np.asarray(logits)).all()


def test_attention_weights_sum_to_one_and_ignore_padded_keys():
  q = jax.random.normal(jax.random.key(0), (2, 3, 4, 8))  # [B, H, L, K]
  k = jax.random.normal(jax.random.key(1), (2, 3, 6, 8))
  segments = jnp.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
  weights = attention_weights(q, k, attention_mask(jnp.ones((2, 4), jnp.int32), segments))
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)
  assert float(jnp.abs(weights[0, :, :, 4:]).max()) == 0.0  # padded keys get nothing
  assert float(weights[1, :, :, 4:].min()) > 0.0


def test_packed_segments_do_not_attend_across_sentences():
  segments = jnp.array([[1, 1, 2, 2, 2, 0]])
  mask = attention_mask(segments, segments, causal=True)[0, 0]
  assert bool(mask[1, 0]) and not bool(mask[2, 1]) and not bool(mask[2, 3])
  assert not mask[:, 5].any()


def test_decoder_is_causal():
  model = build(small_config())
  source, target = random_tokens(0, (2, 6)), random_tokens(1, (2, 8))
  t = 5
  changed = target.at[:, t].set((target[:, t] + 7) % 47 + 3)
  before, after = forward(model, source, target), forward(model, source, changed)
  np.testing.assert_allclose(before[:, :t], after[:, :t], atol=1e-6)
  assert float(jnp.abs(before[:, t:] - after[:, t:]).max()) > 1e-3


def test_source_padding_changes_no_output():
  model = build(small_config())
  source, target = random_tokens(0, (2, 6)), random_tokens(1, (2, 5))
  padded = jnp.pad(source, ((0, 0), (0, 4)), constant_values=PAD_ID)
  np.testing.assert_allclose(encode(model, padded)[:, :6], encode(model, source), atol=1e-5)
  np.testing.assert_allclose(forward(model, padded, target), forward(model, source, target),
                             atol=1e-5)


def test_target_padding_changes_no_real_output():
  model = build(small_config())
  source, target = random_tokens(0, (2, 6)), random_tokens(1, (2, 5))
  padded = jnp.pad(target, ((0, 0), (0, 3)), constant_values=PAD_ID)
  inputs = shift_right(padded)
  np.testing.assert_allclose(forward(model, source, inputs)[:, :5],
                             forward(model, source, shift_right(target)),
                             atol=1e-5)


def test_packed_row_equals_separate_rows():
  """Two pairs packed in one row give the same logits as each pair alone."""
  model = build(small_config())
  s1, s2 = random_tokens(0, (1, 4)), random_tokens(1, (1, 3))
  t1, t2 = random_tokens(2, (1, 3)), random_tokens(3, (1, 5))
  def pack(a, b):
    tokens = jnp.concatenate([a, b], 1)
    segments = jnp.array([[1] * a.shape[1] + [2] * b.shape[1]])
    positions = jnp.array([list(range(a.shape[1])) + list(range(b.shape[1]))])
    return tokens, segments, positions
  source, source_seg, source_pos = pack(s1, s2)
  target, target_seg, target_pos = pack(t1, t2)
  target = shift_right(target, target_seg)  # each sentence starts from BOS
  packed = forward(model, source, target, source_positions=source_pos,
                   source_segments=source_seg, target_positions=target_pos,
                   target_segments=target_seg)
  np.testing.assert_allclose(packed[:, :3], forward(model, s1, shift_right(t1)), atol=1e-5)
  np.testing.assert_allclose(packed[:, 3:], forward(model, s2, shift_right(t2)), atol=1e-5)


def test_positional_encoding_matches_the_paper():
  d_model = 16
  pe = np.asarray(sinusoidal_positions(jnp.arange(100), d_model))
  for pos in (0, 1, 7, 63, 99):
    for i in range(d_model // 2):
      angle = pos / 10000 ** (2 * i / d_model)
      assert pe[pos, 2 * i] == pytest.approx(math.sin(angle), abs=1e-5)
      assert pe[pos, 2 * i + 1] == pytest.approx(math.cos(angle), abs=1e-5)


def test_bfloat16_compute_stays_close_to_float32():
  source, target = random_tokens(0, (2, 6)), random_tokens(1, (2, 5))
  fp32 = build(small_config())(source, target)
  bf16_model = build(small_config(dtype='bfloat16'))
  leaves = jax.tree.leaves(nnx.state(bf16_model, nnx.Param))
  assert all(x.dtype == jnp.float32 for x in leaves)  # parameters stay fp32
  bf16 = bf16_model(source, target)
  assert bf16.dtype == jnp.float32  # logits come back in fp32 for the loss
  probs32, probs16 = jax.nn.softmax(fp32), jax.nn.softmax(bf16)
  assert float(jnp.abs(probs32 - probs16).max()) < 0.02
  assert float(jnp.abs(fp32 - bf16).max()) > 0  # the bf16 path really ran


def test_bfloat16_products_stay_close_to_float32_and_keep_fp32_activations():
  source, target = random_tokens(0, (2, 6)), random_tokens(1, (2, 5))
  fp32 = build(small_config())(source, target)
  mixed = build(small_config(matmul_dtype='bfloat16'))(source, target)
  assert mixed.dtype == jnp.float32
  probs32, probs16 = jax.nn.softmax(fp32), jax.nn.softmax(mixed)
  assert float(jnp.abs(probs32 - probs16).max()) < 0.02
  assert float(jnp.abs(fp32 - mixed).max()) > 0  # the bf16 products really ran


def test_attention_softmax_gradient_from_its_stored_weights():
  """model.softmax keeps only its output for the backward pass: in fp32 its gradient is
  autodiff's; with bf16 weights (the TPU presets' activations) it stays within bf16's
  rounding of the fp32 gradient (tolerance: 1 % of the largest entry)."""
  from transformer_jax.model import softmax
  logits = 3.0 * jax.random.normal(jax.random.key(0), (2, 4, 8, 16), jnp.float32)
  upstream = jax.random.normal(jax.random.key(1), logits.shape, jnp.float32)
  reference = jax.grad(lambda z: jnp.sum(upstream * jax.nn.softmax(z, axis=-1)))(logits)
  fp32 = jax.grad(lambda z: jnp.sum(upstream * softmax(z, jnp.float32)))(logits)
  np.testing.assert_allclose(fp32, reference, atol=1e-6)
  bf16 = jax.grad(lambda z: jnp.sum(upstream * softmax(z, jnp.bfloat16)))(logits)
  assert bf16.dtype == jnp.float32
  assert float(jnp.abs(bf16 - reference).max()) < 0.01 * float(jnp.abs(reference).max())
  assert float(jnp.abs(bf16 - reference).max()) > 0  # bf16 weights really were used


def test_dropout_only_with_rngs():
  model = build(small_config(dropout_rate=0.3))
  source, target = random_tokens(0, (2, 6)), random_tokens(1, (2, 5))
  np.testing.assert_array_equal(model(source, target), model(source, target))
  a = model(source, target, rngs=nnx.Rngs(dropout=1))
  b = model(source, target, rngs=nnx.Rngs(dropout=2))
  assert float(jnp.abs(a - b).max()) > 1e-3


def test_every_parameter_has_logical_axes():
  model = nnx.eval_shape(lambda: build(small_config(share_embeddings=False,
                                                    tie_output_embedding=False)))
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    axes = var.get_metadata().get('out_sharding')
    assert axes is not None and len(axes) == len(var.shape), path
    assert set(axes) <= {'embed', 'heads', 'kv', 'mlp', 'vocab'}, path
