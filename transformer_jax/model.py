"""The Transformer of "Attention Is All You Need" (Vaswani et al., 2017), in Flax NNX.

Each class is one idea of the paper (section numbers in the docstrings). Every
parameter carries logical axis names; `sharding.py` maps them onto the device mesh,
so the layers never mention the mesh.

Shape letters: B batch, S source length, T target length, L any length,
D d_model, H heads, K head dim (d_k = d_v = d_model / H), F d_ff, V vocab.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict

from transformer_jax import precision
from transformer_jax.dropout import Dropout
from transformer_jax.data.tokenizer import PAD_ID  # the vocabulary reserves id 0 for padding

# Logical axis names (DESIGN.md); one rule table in sharding.py maps them to the mesh.
BATCH, LENGTH, EMBED, HEADS, KV, MLP, VOCAB = (
    'batch', 'length', 'embed', 'heads', 'kv', 'mlp', 'vocab')

_xavier = nnx.initializers.xavier_uniform  # Glorot, as in tensor2tensor (the paper's code)


def _init(initializer, *axes):
  # Logical names only: the mesh placement happens in sharding.py, not at creation.
  return nnx.with_partitioning(initializer, axes, eager_sharding=False)


def _matmul_dtype(cfg: ConfigDict) -> str | None:
  """The dtype of matrix-product operands when it differs from the compute dtype."""
  return cfg.matmul_dtype if cfg.matmul_dtype not in ('', cfg.dtype) else None


def _dtypes(cfg: ConfigDict, product_arg: str | None = None) -> dict:
  """Module dtype arguments; `product_arg` names the module's injectable product
  ('einsum_op' or 'dot_general'), given precision.py's when matmul_dtype is in force."""
  kwargs = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))
  matmul_dtype = _matmul_dtype(cfg)
  if product_arg and matmul_dtype:
    op = precision.einsum_op if product_arg == 'einsum_op' else precision.dot_general_op
    kwargs[product_arg] = op(matmul_dtype)
  return kwargs


def sinusoidal_positions(positions: jax.Array, d_model: int) -> jax.Array:
  """Section 3.5: PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(...).

  `positions` is an int array [..., L]; returns float32 [..., L, d_model].
  """
  two_i = jnp.arange(0, d_model, 2, dtype=jnp.float32)
  angles = positions[..., None].astype(jnp.float32) / (10000.0 ** (two_i / d_model))
  # Interleave so that even channels are sin and odd channels cos, as the formula says.
  return jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(
      *positions.shape, d_model)


def attention_mask(query_segments: jax.Array, key_segments: jax.Array,
                   causal: bool = False) -> jax.Array:
  """Boolean [B, 1, Lq, Lk]: True where a query may attend to a key.

  Segment ids are 0 for padding and 1, 2, ... for the sentences in a row, so one rule
  covers plain padding (segments = tokens != PAD) and rows packed with several pairs.
  """
  mask = (query_segments[:, :, None] == key_segments[:, None, :]) & (
      key_segments[:, None, :] > 0)
  if causal:  # the decoder may not look ahead (section 3.2.3)
    lq, lk = query_segments.shape[1], key_segments.shape[1]
    mask &= jnp.tril(jnp.ones((lq, lk), dtype=bool))
  return mask[:, None, :, :]


def attention_weights(query: jax.Array, key: jax.Array, mask: jax.Array,
                      matmul_dtype: str | None = None) -> jax.Array:
  """Section 3.2.1: softmax(Q K^T / sqrt(d_k)), masked positions excluded. [B, H, Lq, Lk].

  Queries and keys are head-major, [B, H, L, K], so both products are plain batched
  matrix products: no transpose of a key/value cache at every decoding step.

  Masked logits get the dtype's lowest value rather than -inf, so a fully masked row
  (a padding query) yields finite uniform weights instead of NaN.
  """
  depth = query.shape[-1]
  logits = precision.einsum('bhqk,bhsk->bhqs', query, key, matmul_dtype)
  logits = logits / jnp.sqrt(depth).astype(query.dtype)
  logits = jnp.where(mask, logits.astype(jnp.float32), jnp.finfo(jnp.float32).min)
  return softmax(logits, query.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def softmax(logits: jax.Array, dtype) -> jax.Array:
  """softmax over the last axis, computed in fp32 from fp32 `logits`, returned in `dtype`.

  Its gradient is computed in fp32 from the returned weights, the only thing kept for
  the backward pass: with bf16 activations that halves what attention stores and reads
  back (autodiff of `jax.nn.softmax(...).astype(dtype)` keeps the fp32 weights)."""
  return jax.nn.softmax(logits, axis=-1).astype(dtype)


def _softmax_forward(logits, dtype):
  weights = softmax(logits, dtype)
  return weights, weights


def _softmax_backward(dtype, weights, g):
  del dtype
  p, g = weights.astype(jnp.float32), g.astype(jnp.float32)
  return (p * (g - jnp.sum(g * p, axis=-1, keepdims=True)),)


softmax.defvjp(_softmax_forward, _softmax_backward)


class MultiHeadAttention(nnx.Module):
  """Section 3.2.2: h parallel scaled dot-product attentions over learned projections.

  Projections have no bias, as in tensor2tensor, unless `attention_bias` (Marian's have).
  Keys and values are projected by `project_kv` separately from the attention itself, so
  incremental decoding can cache them (self-attention) or compute them once per sentence
  (encoder-decoder attention).
  """

  def __init__(self, cfg: ConfigDict, *, rngs: nnx.Rngs):
    d, h = cfg.d_model, cfg.num_heads
    dt = _dtypes(cfg, 'einsum_op')
    self.matmul_dtype = _matmul_dtype(cfg)
    proj_in = _init(_xavier(in_axis=0, out_axis=(1, 2)), EMBED, HEADS, KV)
    sizes = {HEADS: h, KV: d // h, EMBED: d}

    def bias(*axes):  # nnx.Einsum's bias arguments: a bias over the output's `axes`
      if not cfg.attention_bias:
        return {}
      return dict(bias_shape=tuple(sizes[a] for a in axes),
                  bias_init=_init(nnx.initializers.zeros_init(), *axes))

    def projection():  # to head-major [B, H, L, K]
      return nnx.Einsum('bld,dhk->bhlk', (d, h, d // h), kernel_init=proj_in,
                        rngs=rngs, **bias(HEADS, KV), **dt)

    self.query, self.key, self.value = projection(), projection(), projection()
    self.output = nnx.Einsum(
        'bhlk,hkd->bld', (h, d // h, d),
        kernel_init=_init(_xavier(in_axis=(0, 1), out_axis=2), HEADS, KV, EMBED),
        rngs=rngs, **bias(EMBED), **dt)
    self.dropout = Dropout(cfg.attention_dropout_rate)

  def project_kv(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.key(x), self.value(x)

  def __call__(self, x: jax.Array, kv: tuple[jax.Array, jax.Array], mask: jax.Array,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    query = self.query(x)
    copies = query.shape[0] // kv[0].shape[0]
    if copies > 1:  # beam search: one query per hypothesis, [B*c, H, 1, K]
      query = _copies_as_rows(query, copies)
    weights = attention_weights(query, kv[0], mask, self.matmul_dtype)
    weights = self.dropout(weights, deterministic=rngs is None, rngs=rngs)
    context = precision.einsum('bhqs,bhsk->bhqk', weights, kv[1], self.matmul_dtype)
    if copies > 1:
      context = _rows_as_copies(context)
    return self.output(context)


def _copies_as_rows(query: jax.Array, copies: int) -> jax.Array:
  """[B*c, H, 1, K] -> [B, H, c, K]: the c hypotheses of a sentence attend to its one set
  of encoder keys/values as the rows of one product, so those are neither repeated per
  hypothesis nor read c times per step."""
  _, heads, _, depth = query.shape
  return query.reshape(-1, copies, heads, depth).transpose(0, 2, 1, 3)


def _rows_as_copies(context: jax.Array) -> jax.Array:
  """[B, H, c, K] -> [B*c, H, 1, K], the inverse of `_copies_as_rows`."""
  _, heads, _, depth = context.shape
  return context.transpose(0, 2, 1, 3).reshape(-1, heads, 1, depth)


ACTIVATIONS = {'relu': jax.nn.relu, 'swish': jax.nn.silu,
               'gelu': functools.partial(jax.nn.gelu, approximate=False)}  # torch's GELU


class FeedForward(nnx.Module):
  """Section 3.3: FFN(x) = max(0, x W1 + b1) W2 + b2; `activation` may replace the max."""

  def __init__(self, cfg: ConfigDict, *, rngs: nnx.Rngs):
    dt = _dtypes(cfg, 'dot_general')
    self.activation = ACTIVATIONS[cfg.activation]
    self.w1 = nnx.Linear(cfg.d_model, cfg.d_ff, rngs=rngs,
                         kernel_init=_init(_xavier(), EMBED, MLP),
                         bias_init=_init(nnx.initializers.zeros_init(), MLP), **dt)
    self.w2 = nnx.Linear(cfg.d_ff, cfg.d_model, rngs=rngs,
                         kernel_init=_init(_xavier(), MLP, EMBED),
                         bias_init=_init(nnx.initializers.zeros_init(), EMBED), **dt)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.w2(self.activation(self.w1(x)))


def _layer_norm(cfg: ConfigDict, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(
      cfg.d_model, epsilon=cfg.layer_norm_epsilon, rngs=rngs,
      **_dtypes(cfg),
      scale_init=_init(nnx.initializers.ones_init(), EMBED),
      bias_init=_init(nnx.initializers.zeros_init(), EMBED))


class SubLayer(nnx.Module):
  """Section 5.4: residual dropout and LayerNorm around one sub-layer.

  Post-norm, as in the paper: LayerNorm(x + Dropout(Sublayer(x))). With `pre_norm`:
  x + Dropout(Sublayer(LayerNorm(x))), which trains deep stacks without warm-up tricks.
  """

  def __init__(self, cfg: ConfigDict, *, rngs: nnx.Rngs):
    self.norm = _layer_norm(cfg, rngs)
    self.dropout = Dropout(cfg.dropout_rate)
    self.pre_norm = cfg.pre_norm

  def __call__(self, x: jax.Array, sublayer, rngs: nnx.Rngs | None) -> jax.Array:
    y = sublayer(self.norm(x) if self.pre_norm else x)
    x = x + self.dropout(y, deterministic=rngs is None, rngs=rngs)
    return x if self.pre_norm else self.norm(x)


class EncoderLayer(nnx.Module):
  """Section 3.1: self-attention, then the feed-forward network."""

  def __init__(self, cfg: ConfigDict, *, rngs: nnx.Rngs):
    self.self_attention = MultiHeadAttention(cfg, rngs=rngs)
    self.attention_block = SubLayer(cfg, rngs=rngs)
    self.feed_forward = FeedForward(cfg, rngs=rngs)
    self.feed_forward_block = SubLayer(cfg, rngs=rngs)

  def __call__(self, x, mask, rngs=None):
    attend = lambda y: self.self_attention(y, self.self_attention.project_kv(y), mask, rngs)
    x = self.attention_block(x, attend, rngs)
    return self.feed_forward_block(x, self.feed_forward, rngs)


class DecoderLayer(nnx.Module):
  """Section 3.1: masked self-attention, encoder-decoder attention, feed-forward."""

  def __init__(self, cfg: ConfigDict, *, rngs: nnx.Rngs):
    self.self_attention = MultiHeadAttention(cfg, rngs=rngs)
    self.self_attention_block = SubLayer(cfg, rngs=rngs)
    self.cross_attention = MultiHeadAttention(cfg, rngs=rngs)
    self.cross_attention_block = SubLayer(cfg, rngs=rngs)
    self.feed_forward = FeedForward(cfg, rngs=rngs)
    self.feed_forward_block = SubLayer(cfg, rngs=rngs)

  def __call__(self, x, encoder_kv, self_mask, cross_mask, rngs=None):
    """`encoder_kv` is this layer's (keys, values) of the encoder output."""
    attend_self = lambda y: self.self_attention(
        y, self.self_attention.project_kv(y), self_mask, rngs)
    x = self.self_attention_block(x, attend_self, rngs)
    attend_source = lambda y: self.cross_attention(y, encoder_kv, cross_mask, rngs)
    x = self.cross_attention_block(x, attend_source, rngs)
    return self.feed_forward_block(x, self.feed_forward, rngs)

  def step(self, x, cache: dict, index, encoder_kv, cross_mask):
    """Incremental decoding: position `index` only ([B, 1, D]). Its self-attention keys
    and values are written into `cache` ([B, H, max_len, K] each); returns (x, cache)."""
    new_cache = {}

    def attend_self(y):
      key, value = self.self_attention.project_kv(y)
      new_cache['key'] = jax.lax.dynamic_update_slice_in_dim(
          cache['key'], key.astype(cache['key'].dtype), index, 2)
      new_cache['value'] = jax.lax.dynamic_update_slice_in_dim(
          cache['value'], value.astype(cache['value'].dtype), index, 2)
      visible = (jnp.arange(cache['key'].shape[2]) <= index)[None, None, None, :]
      return self.self_attention(y, (new_cache['key'], new_cache['value']), visible)

    x = self.self_attention_block(x, attend_self, None)
    x = self.cross_attention_block(
        x, lambda y: self.cross_attention(y, encoder_kv, cross_mask), None)
    return self.feed_forward_block(x, self.feed_forward, None), new_cache


class Embedding(nnx.Module):
  """Section 3.4 + 3.5: token embedding * sqrt(d_model) + positional encoding, dropout.
  Without `scale_embedding` the embedding is added unscaled."""

  def __init__(self, cfg: ConfigDict, *, rngs: nnx.Rngs):
    self.table = nnx.Embed(
        cfg.vocab_size, cfg.d_model, rngs=rngs,
        **_dtypes(cfg),
        # N(0, d_model^-0.5): after the sqrt(d_model) scaling, inputs have unit scale.
        embedding_init=_init(nnx.initializers.normal(cfg.d_model ** -0.5), VOCAB, EMBED))
    self.dropout = Dropout(cfg.dropout_rate)
    self.d_model = cfg.d_model
    self.scale_embedding = cfg.scale_embedding

  def __call__(self, tokens, positions, rngs=None):
    x = self.table(tokens)
    if self.scale_embedding:
      x = x * jnp.sqrt(self.d_model).astype(self.table.dtype)
    x = x + sinusoidal_positions(positions, self.d_model).astype(x.dtype)
    return self.dropout(x, deterministic=rngs is None, rngs=rngs)


def _positions_and_segments(tokens, positions, segments):
  """Defaults for unpacked rows: positions 0..L-1, segment 1 for tokens, 0 for padding."""
  if segments is None:
    segments = (tokens != PAD_ID).astype(jnp.int32)
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[-1]), tokens.shape)
  return positions, segments


class Transformer(nnx.Module):
  """Figure 1: an encoder stack and a decoder stack, then a linear + softmax.

  `__call__(source, target_input)` returns float32 logits [B, T, V] for teacher forcing.
  Dropout is active exactly when `rngs` (with a 'dropout' stream) is given.
  Rows may be packed with several sentence pairs: pass segment ids and positions.
  """

  def __init__(self, cfg: ConfigDict, *, rngs: nnx.Rngs):
    self.vocab_size, self.dtype = cfg.vocab_size, jnp.dtype(cfg.dtype)
    self.matmul_dtype = _matmul_dtype(cfg)
    self.num_heads, self.head_dim = cfg.num_heads, cfg.d_model // cfg.num_heads
    self.source_embedding = Embedding(cfg, rngs=rngs)
    self.target_embedding = (self.source_embedding if cfg.share_embeddings
                             else Embedding(cfg, rngs=rngs))
    self.encoder_layers = nnx.List(
        [EncoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_encoder_layers)])
    self.decoder_layers = nnx.List(
        [DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_decoder_layers)])
    # Pre-norm stacks need a final LayerNorm; post-norm outputs are already normalized.
    self.encoder_norm = _layer_norm(cfg, rngs) if cfg.pre_norm else None
    self.decoder_norm = _layer_norm(cfg, rngs) if cfg.pre_norm else None
    self.output_projection = None if cfg.tie_output_embedding else nnx.Linear(
        cfg.d_model, cfg.vocab_size, use_bias=False, rngs=rngs,
        **_dtypes(cfg),
        kernel_init=_init(_xavier(), EMBED, VOCAB))
    self.logits_bias = nnx.Param(_init(nnx.initializers.zeros_init(), VOCAB)(
        rngs.params(), (cfg.vocab_size,), jnp.dtype(cfg.param_dtype))) \
        if cfg.logits_bias else None

  def encode(self, source, source_positions=None, source_segments=None, rngs=None):
    """Source tokens [B, S] -> encoder output [B, S, D]."""
    positions, segments = _positions_and_segments(source, source_positions, source_segments)
    x = self.source_embedding(source, positions, rngs)
    mask = attention_mask(segments, segments)
    for layer in self.encoder_layers:
      x = layer(x, mask, rngs)
    return self.encoder_norm(x) if self.encoder_norm is not None else x

  def decode(self, encoded, source, target_input, *, source_segments=None,
             target_positions=None, target_segments=None, rngs=None):
    """Encoder output [B, S, D] and shifted target tokens [B, T] -> the decoder's output
    states [B, T, D] (`output_logits` turns them into logits [B, T, V])."""
    _, source_segments = _positions_and_segments(source, None, source_segments)
    positions, segments = _positions_and_segments(
        target_input, target_positions, target_segments)
    if target_segments is None:
      # Position 0 holds BOS, which equals the pad id: mark it real so it is attended.
      segments = segments.at[:, 0].set(1)
    x = self.target_embedding(target_input, positions, rngs)
    self_mask = attention_mask(segments, segments, causal=True)
    cross_mask = attention_mask(segments, source_segments)
    for layer in self.decoder_layers:
      x = layer(x, layer.cross_attention.project_kv(encoded), self_mask, cross_mask, rngs)
    return self.decoder_norm(x) if self.decoder_norm is not None else x

  def init_cache(self, batch: int, max_len: int) -> list[dict]:
    """Empty self-attention key/value caches, one per decoder layer. They are stored in
    the matrix-product dtype: the attention products round them to it anyway, and beam
    search copies the whole cache at every step."""
    shape = (batch, self.num_heads, max_len, self.head_dim)
    dtype = self.matmul_dtype or self.dtype
    return [{'key': jnp.zeros(shape, dtype), 'value': jnp.zeros(shape, dtype)}
            for _ in self.decoder_layers]

  @staticmethod
  def grow_cache(cache: list[dict], max_len: int) -> list[dict]:
    """The caches padded (empty positions at the end) to `max_len` positions."""
    pad = lambda x: jnp.pad(x, [(0, 0), (0, 0), (0, max_len - x.shape[2]), (0, 0)])
    return jax.tree.map(pad, cache)

  def decode_step(self, tokens, index, cache, cross_kv, source_segments):
    """One decoder position for every hypothesis: tokens [B*c] at position `index` ->
    (logits [B*c, V], updated cache), c hypotheses per sentence. `cross_kv` holds each
    layer's projected encoder output, computed once per sentence ([B, H, S, K]), and
    `source_segments` [B, S] marks its real tokens."""
    positions = jnp.full((tokens.shape[0], 1), index)
    x = self.target_embedding(tokens[:, None], positions)
    cross_mask = (source_segments > 0)[:, None, None, :]
    new_cache = []
    for layer, layer_cache, kv in zip(self.decoder_layers, cache, cross_kv):
      x, layer_cache = layer.step(x, layer_cache, index, kv, cross_mask)
      new_cache.append(layer_cache)
    if self.decoder_norm is not None:
      x = self.decoder_norm(x)
    return self.output_logits(x)[:, 0], new_cache

  def output_kernel(self) -> tuple[jax.Array, str]:
    """The pre-softmax linear and its layout: the shared embedding, [V, D] ('vd',
    section 3.4), or a separate projection, [D, V] ('dv'). Used as stored, so its
    gradient needs no transpose."""
    if self.output_projection is None:
      return self.target_embedding.table.embedding[...].astype(self.dtype), 'vd'
    return self.output_projection.kernel[...].astype(self.dtype), 'dv'

  def output_bias(self) -> jax.Array | None:
    """The pre-softmax linear's bias (`logits_bias`), fp32, or None."""
    return None if self.logits_bias is None else self.logits_bias[...].astype(jnp.float32)

  def output_logits(self, x):
    kernel, layout = self.output_kernel()
    logits = precision.einsum(f'bld,{layout}->blv', x, kernel, self.matmul_dtype)
    logits = logits.astype(jnp.float32)  # the softmax and loss run in fp32
    bias = self.output_bias()
    return logits if bias is None else logits + bias

  def __call__(self, source, target_input, *, source_positions=None, source_segments=None,
               target_positions=None, target_segments=None, rngs=None, logits=True):
    """Logits [B, T, V] (or, with `logits=False`, the decoder's output states)."""
    encoded = self.encode(source, source_positions, source_segments, rngs)
    states = self.decode(encoded, source, target_input, source_segments=source_segments,
                         target_positions=target_positions,
                         target_segments=target_segments, rngs=rngs)
    return self.output_logits(states) if logits else states


def shift_right(target: jax.Array, segments: jax.Array | None = None) -> jax.Array:
  """Decoder input: the target shifted one step right, starting from BOS (= PAD_ID).

  Like tensor2tensor and the Flax WMT example, BOS reuses the pad id; the decoder masks
  treat it as real (see `Transformer.decode`). In packed rows (`segments` given) every
  sentence starts from BOS instead of the previous sentence's last token.
  """
  shifted = jnp.pad(target, ((0, 0), (1, 0)), constant_values=PAD_ID)[:, :-1]
  if segments is not None:
    previous = jnp.pad(segments, ((0, 0), (1, 0)))[:, :-1]
    shifted = jnp.where(segments == previous, shifted, PAD_ID)
  return shifted
