"""Incremental decoding over a key/value cache: beam search (section 6.1), greedy and
sampling.

The encoder runs once per batch, and each decoder layer projects the encoder output to
cross-attention keys and values once per sentence (not at every step). Each step feeds
one token per hypothesis through the decoder, appending its self-attention keys and
values to the cache, which grows in segments as the steps need it (`_decoding_loop`).
Everything is jit-compiled per source shape. An `Ensemble` of models decodes as one
(fairseq's `--path a:b`): each step takes the log of the mean of their next-token
probabilities, and each model keeps its own cache.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from transformer_jax.data.tokenizer import EOS_ID, PAD_ID
from transformer_jax.model import Transformer

NEG_INF = -1.0e9  # finite, so that 0 * NEG_INF and NEG_INF - NEG_INF stay defined


def length_penalty(length, alpha: float):
  """GNMT (Wu et al., 2016): ((5 + |Y|) / 6)^alpha; the paper used alpha = 0.6."""
  return ((5.0 + length) / 6.0) ** alpha


def output_limits(source: jax.Array, max_len: int, max_extra_len=50) -> jax.Array:
  """Per sentence: at most source length + `max_extra_len` target tokens (the paper's
  rule, with 50), and never more than the `max_len` steps the loop runs."""
  source_len = jnp.sum(source != PAD_ID, axis=-1)
  return jnp.minimum(source_len + max_extra_len, max_len)


def _gather_beams(x, indices):
  """x [batch, beams, ...] -> x[b, indices[b, i], ...]: [batch, len(indices[b]), ...].

  Whole rows are gathered by one flat row index each, which XLA copies as blocks (an
  index per element, as take_along_axis makes, is several times slower on a CPU)."""
  batch, beams = x.shape[:2]
  rows = (jnp.arange(batch)[:, None] * beams + indices).reshape(-1)
  flat = x.reshape(batch * beams, *x.shape[2:])
  return flat[rows].reshape(batch, indices.shape[1], *x.shape[2:])


def _gather_cache(cache, indices, batch: int):
  """The same for the cache, whose leaves are [batch * beams, ...]."""
  def gather(x):
    y = _gather_beams(x.reshape(batch, -1, *x.shape[1:]), indices)
    return y.reshape(-1, *x.shape[1:])
  return jax.tree.map(gather, cache)


def _top_k(x: jax.Array, k: int, group: int = 128) -> tuple[jax.Array, jax.Array]:
  """`jax.lax.top_k` over the last axis of x [rows, n]: the same values, indices and
  tie-breaking (lower index first), faster on a CPU when k << n, as in beam search:
  XLA's CPU TopK costs ~3 ns per element (on the dev machine, [32, 32768] with k = 4:
  3.1 ms, against 0.19 ms here; bench/decode.py measures the whole decoder's gain).

  The k best elements lie in the k groups with the best maxima (each one's group max is
  at least as good), so only those k * `group` elements go through TopK. They are taken
  in index order, so ties still break towards the lower index."""
  rows, n = x.shape
  if n <= k * group:
    return jax.lax.top_k(x, k)
  x = jnp.pad(x, ((0, 0), (0, -n % group)), constant_values=-jnp.inf)  # never chosen
  groups = x.reshape(rows, -1, group)
  best = jnp.sort(jax.lax.top_k(jnp.max(groups, axis=-1), k)[1], axis=-1)
  values, pos = jax.lax.top_k(
      jnp.take_along_axis(groups, best[:, :, None], axis=1).reshape(rows, -1), k)
  return values, jnp.take_along_axis(best, pos // group, axis=1) * group + pos % group


def _jit_over_split(*static_argnames: str):
  """Like nnx.jit for a function of a model, but jax.jit over nnx.split(model): nnx.jit
  walks the module graph in Python on the way in and out of every call (about 0.1 s for
  the cpu-small model, a tenth of a beam search); one split costs about 0.01 s."""
  def wrap(fn):
    jitted = jax.jit(lambda graphdef, state, *args, **kwargs:
                     fn(nnx.merge(graphdef, state), *args, **kwargs),
                     static_argnames=('graphdef', *static_argnames))

    @functools.wraps(fn)
    def call(model, *args, **kwargs):
      return jitted(*nnx.split(model), *args, **kwargs)
    return call
  return wrap


def cache_lengths(max_len: int, first: int = 16) -> list[int]:
  """The self-attention cache's lengths as decoding proceeds: powers of two from `first`,
  ending at `max_len` (a last power within 1.5x of it is merged into it)."""
  lengths = [first]
  while lengths[-1] * 1.5 < max_len:
    lengths.append(lengths[-1] * 2)
  return [n for n in lengths[:-1] if n < max_len] + [max_len]


class Ensemble(nnx.Module):
  """Several trained models (same vocabulary; any sizes) that decode as one."""

  def __init__(self, models: list[Transformer]):
    self.models = nnx.List(models)


def _members(model) -> tuple[Transformer, ...]:
  return tuple(model.models) if isinstance(model, Ensemble) else (model,)


def _prepare_all(model, source: jax.Array, copies: int, max_len: int):
  """`_prepare` for each member: (cross_kv per member, source segments, cache per member)."""
  prepared = [_prepare(m, source, copies, max_len) for m in _members(model)]
  return (tuple(p[0] for p in prepared), prepared[0][1], tuple(p[2] for p in prepared))


def _next_logp(model, tokens, t, caches, cross_kvs, source_segments, limits, eos_id: int):
  """(log p(next token) [B, V], the caches one step longer). For an ensemble, the log of
  the mean of the models' probabilities (as fairseq ensembles). What cannot be produced
  gets no probability, so the distribution is over the tokens that can be (as
  CTranslate2, which an export must match): padding never, and the end of sentence not
  as the first token, so that no translation is empty (fairseq's min_len=1 too), unless
  the sentence's length limit (`limits` [B]) allows nothing else."""
  steps = [m.decode_step(tokens, t, cache, kv, source_segments)
           for m, cache, kv in zip(_members(model), caches, cross_kvs, strict=True)]
  vocab = jnp.arange(_members(model)[0].vocab_size)
  banned = vocab == PAD_ID
  if eos_id >= 0:
    banned = banned | ((t == 0) & (limits[:, None] > 1) & (vocab == eos_id))
  steps = [(jnp.where(banned, NEG_INF, logits), cache) for logits, cache in steps]
  caches = tuple(cache for _, cache in steps)
  if len(steps) == 1:
    return jax.nn.log_softmax(steps[0][0]), caches
  # A mean of softmaxes costs one exp per model and one log per token, against two exps
  # per model and a log-softmax again through log_softmax + logsumexp. A token that every
  # model gives less than fp32's smallest normal gets log(tiny) = -87.3, not -inf.
  p = sum(jax.nn.softmax(logits) for logits, _ in steps) / len(steps)
  return jnp.log(jnp.maximum(p, jnp.finfo(p.dtype).tiny)), caches


def _prepare(model: Transformer, source: jax.Array, copies: int, max_len: int):
  """Encode once; cross-attention keys/values once per sentence (shared by its `copies`
  hypotheses); an empty self-attention cache per hypothesis, at its first length."""
  encoded = model.encode(source)
  cross_kv = [layer.cross_attention.project_kv(encoded) for layer in model.decoder_layers]
  source_segments = (source != PAD_ID).astype(jnp.int32)
  cache = model.init_cache(source.shape[0] * copies, cache_lengths(max_len)[0])
  return cross_kv, source_segments, cache


def _decoding_loop(cond, body, state: dict, max_len: int) -> dict:
  """`lax.while_loop(cond, body, state)` with a cache that grows as the steps need it.

  Each step reads (attention) and, in beam search, copies (reorder) the whole cache, so
  a cache sized for `max_len` from the start costs its full length at every step, while
  most outputs end far earlier (translation sets max_len to source length + 50). So the
  steps run in segments, one loop per cache length (`cache_lengths`), and the cache is
  padded between them; a search that has ended skips the later loops. Each length
  compiles its own loop body."""
  for i, length in enumerate(cache_lengths(max_len)):
    if i:  # (a cache per model of an ensemble)
      state = dict(state, cache=tuple(Transformer.grow_cache(c, length) for c in state['cache']))
    state = jax.lax.while_loop(lambda s, n=length: (s['step'] < n) & cond(s), body, state)
  return state


def _allowed_logp(logp, t, limits, eos_id: int):
  """`logp` [B, V] where a sentence at its length limit may only end."""
  vocab = jnp.arange(logp.shape[-1])
  if eos_id < 0:  # fixed-length decoding: nothing ends, every step is a real token
    return logp
  at_limit = (t + 1 >= limits)[:, None]
  return jnp.where(at_limit & (vocab != eos_id), NEG_INF, logp)


def _has_source(source: jax.Array) -> jax.Array:
  """[B] whether each row holds a sentence (a row of padding decodes nothing)."""
  return jnp.any(source != PAD_ID, axis=-1)


def line_keys(seed: int, numbers) -> jax.Array:
  """Sampling's key data [B, 2] per sentence: from the seed and the sentence's line
  number only, so batches, windows, resumes and process counts do not change a line's
  sample."""
  base = jax.random.key(seed)
  return jax.vmap(lambda n: jax.random.key_data(jax.random.fold_in(base, n)))(
      jnp.asarray(numbers, jnp.uint32))


@dataclasses.dataclass(frozen=True)
class BeamSearch:
  """Section 6.1: beam search with width `beam_size` and the GNMT length penalty.

  Each step extends every live hypothesis by every token and keeps the k best; those
  that end (EOS) move to the finished pool, so the beam narrows as hypotheses end. Scores
  are log p(Y|X) / length_penalty(|Y|). A sentence is done (`active` false) when its
  best candidate ends or none can still beat its worst finished one; from then on its
  state is frozen, so a sentence's translation does not depend on the others in its
  batch. With k = 1 this is exactly greedy decoding. `eos_id=-1` never ends a
  hypothesis (benchmarks that decode a fixed number of steps). `n_best` = n > 0: the n
  best finished hypotheses per sentence instead of the best one.
  """
  beam_size: int = 4
  alpha: float = 0.6
  max_len: int = 256
  max_extra_len: int = 50
  eos_id: int = EOS_ID
  n_best: int = 0

  def start(self, model, source: jax.Array, keys=None) -> dict:
    del keys  # deterministic
    batch, k = source.shape[0], self.beam_size
    cross_kv, source_segments, cache = _prepare_all(model, source, k, self.max_len)
    first = jnp.array([0.0] + [NEG_INF] * (k - 1))
    return dict(
        step=jnp.array(0), cache=cache, cross_kv=cross_kv, source_segments=source_segments,
        limits=output_limits(source, self.max_len, self.max_extra_len),
        tokens=jnp.full((batch * k,), PAD_ID, jnp.int32),  # BOS = PAD
        live_seqs=jnp.full((batch, k, self.max_len), PAD_ID, jnp.int32),
        live_logp=jnp.where(_has_source(source)[:, None], first, NEG_INF),
        done_seqs=jnp.full((batch, k, self.max_len), PAD_ID, jnp.int32),
        done_scores=jnp.full((batch, k), NEG_INF))

  def active(self, s: dict) -> jax.Array:
    """Whether each sentence still searches: its best candidate of the last step did not
    end (CTranslate2's and fairseq's early exit), and its best live hypothesis, at its most
    favourable length, could still beat its worst finished one."""
    best = s['live_logp'][:, 0]  # NEG_INF where the best candidate ended (`step`)
    can_improve = (best / length_penalty(s['limits'].astype(jnp.float32), self.alpha)
                   > jnp.min(s['done_scores'], axis=1))
    return (best > NEG_INF / 2) & can_improve

  def step(self, model, s: dict) -> dict:
    t, k, eos_id = s['step'], self.beam_size, self.eos_id
    batch = s['live_logp'].shape[0]
    beam_limits = jnp.repeat(s['limits'], k)
    logp, cache = _next_logp(model, s['tokens'], t, s['cache'], s['cross_kv'],
                             s['source_segments'], beam_limits, eos_id)
    logp = _allowed_logp(logp, t, beam_limits, eos_id)
    vocab = logp.shape[-1]
    candidates = s['live_logp'][:, :, None] + logp.reshape(batch, k, vocab)
    top_logp, top_ids = _top_k(candidates.reshape(batch, -1), k)
    parent, token = top_ids // vocab, top_ids % vocab
    seqs = _gather_beams(s['live_seqs'], parent).at[:, :, t].set(token)
    ended = (token == eos_id) & (top_logp > NEG_INF / 2)
    # Finished: merge those that ended now with the earlier ones; keep the best k.
    ended_scores = jnp.where(ended, top_logp / length_penalty(t + 1.0, self.alpha), NEG_INF)
    done_scores, done_idx = jax.lax.top_k(
        jnp.concatenate([s['done_scores'], ended_scores], axis=1), k)
    done_seqs = _gather_beams(jnp.concatenate([s['done_seqs'], seqs], axis=1), done_idx)
    # A sentence that is done stays as it is, however long its batch goes on.
    active = self.active(s)
    return dict(s, step=t + 1, tokens=token.reshape(-1),
                cache=_gather_cache(cache, parent, batch), live_seqs=seqs,
                live_logp=jnp.where(active[:, None] & ~ended, top_logp, NEG_INF),
                done_seqs=jnp.where(active[:, None, None], done_seqs, s['done_seqs']),
                done_scores=jnp.where(active[:, None], done_scores, s['done_scores']))

  def result(self, s: dict):
    """(tokens [B, max_len], scores [B]), or [B, n, max_len] and [B, n] for n-best."""
    if self.n_best:
      return s['done_seqs'][:, :self.n_best], s['done_scores'][:, :self.n_best]
    # Without any finished hypothesis (only when EOS is never allowed): the best live one.
    has_done = s['done_scores'][:, 0] > NEG_INF / 2
    best_live = jnp.argmax(s['live_logp'], axis=1)
    live_tokens = _gather_beams(s['live_seqs'], best_live[:, None])[:, 0]
    live_scores = (jnp.max(s['live_logp'], axis=1)
                   / length_penalty(s['step'].astype(jnp.float32), self.alpha))
    tokens = jnp.where(has_done[:, None], s['done_seqs'][:, 0], live_tokens)
    return tokens, jnp.where(has_done, s['done_scores'][:, 0], live_scores)


@dataclasses.dataclass(frozen=True)
class Sampling:
  """Greedy (temperature 0) or sampled decoding, optionally from the top k tokens; each
  sentence's randomness comes from its own key (`line_keys`). The result is (tokens
  [B, max_len], log-probability [B] of the chosen tokens under the model)."""
  temperature: float = 0.0
  top_k: int = 0
  max_len: int = 256
  max_extra_len: int = 50
  eos_id: int = EOS_ID

  def start(self, model, source: jax.Array, keys=None) -> dict:
    batch = source.shape[0]
    cross_kv, source_segments, cache = _prepare_all(model, source, 1, self.max_len)
    if keys is None:
      keys = line_keys(0, jnp.arange(batch))
    return dict(step=jnp.array(0), cache=cache, cross_kv=cross_kv,
                source_segments=source_segments,
                limits=output_limits(source, self.max_len, self.max_extra_len), keys=keys,
                tokens=jnp.full((batch,), PAD_ID, jnp.int32),
                seqs=jnp.full((batch, self.max_len), PAD_ID, jnp.int32),
                logp=jnp.zeros((batch,)), finished=~_has_source(source))

  def active(self, s: dict) -> jax.Array:
    return ~s['finished']

  def step(self, model, s: dict) -> dict:
    t, eos_id = s['step'], self.eos_id
    logp, cache = _next_logp(model, s['tokens'], t, s['cache'], s['cross_kv'],
                             s['source_segments'], s['limits'], eos_id)
    logp = _allowed_logp(logp, t, s['limits'], eos_id)
    if self.top_k:
      kth = jax.lax.top_k(logp, self.top_k)[0][:, -1:]
      logp = jnp.where(logp < kth, NEG_INF, logp)
    if self.temperature > 0:
      draw = lambda key, row: jax.random.categorical(
          jax.random.fold_in(jax.random.wrap_key_data(key), t), row)
      token = jax.vmap(draw)(s['keys'], logp / self.temperature)
    else:
      token = jnp.argmax(logp, axis=-1)
    token = jnp.where(s['finished'], PAD_ID, token.astype(jnp.int32))
    chosen = jnp.take_along_axis(logp, token[:, None], axis=1)[:, 0]
    return dict(s, step=t + 1, tokens=token, cache=cache, seqs=s['seqs'].at[:, t].set(token),
                logp=s['logp'] + jnp.where(s['finished'], 0.0, chosen),
                finished=s['finished'] | (token == eos_id))

  def result(self, s: dict):
    return s['seqs'], s['logp']


@_jit_over_split('search')
def run(model, source: jax.Array, keys=None, *, search: BeamSearch | Sampling):
  """`search` over a whole batch in one program, until every sentence is done."""
  state = _decoding_loop(lambda s: jnp.any(search.active(s)),
                         functools.partial(search.step, model), search.start(model, source, keys),
                         search.max_len)
  return search.result(state)


def beam_search(model: Transformer | Ensemble, source: jax.Array, *, beam_size: int = 4,
                alpha: float = 0.6, max_len: int = 256, max_extra_len: int = 50,
                eos_id: int = EOS_ID, n_best: int = 0):
  """`BeamSearch` over a whole batch: (tokens [B, max_len] ending in EOS then PAD, score
  [B]); with `n_best` = n, (tokens [B, n, max_len], scores [B, n]), a slot no hypothesis
  filled scoring NEG_INF."""
  return run(model, source, search=BeamSearch(beam_size, alpha, max_len, max_extra_len,
                                              eos_id, n_best))


def sample(model: Transformer | Ensemble, source: jax.Array, key: jax.Array | None = None, *,
           max_len: int = 256, max_extra_len: int = 50, temperature: float = 0.0,
           top_k: int = 0, eos_id: int = EOS_ID):
  """`Sampling` over a whole batch; row i's key is `key` folded with i."""
  keys = None if key is None else jax.vmap(
      lambda n: jax.random.key_data(jax.random.fold_in(key, n)))(jnp.arange(source.shape[0]))
  return run(model, source, keys, search=Sampling(temperature, top_k, max_len,
                                                  max_extra_len, eos_id))


# ------------------------------------------------------------------ step by step, compacting
# The pieces `inference.decode_batch` drives from the host: it runs a batch until three
# quarters of its sentences are done, drops them (`take`), and goes on with a quarter of
# the rows,
# so finished sentences stop costing steps (as CTranslate2 drops finished batch entries).
# Each takes the model as nnx.split's (graphdef, params), split once per call of the driver.


@functools.partial(jax.jit, static_argnames=('graphdef', 'search'))
def start(graphdef, params, source, keys, *, search):
  return search.start(nnx.merge(graphdef, params), source, keys)


@functools.partial(jax.jit, static_argnames=('graphdef', 'search'), donate_argnames='state')
def advance(graphdef, params, state, until, min_active, *, search):
  """Steps while step < `until` and more than `min_active` sentences are active:
  (state, active [B], the search's result so far: one program, not two, to compile)."""
  model = nnx.merge(graphdef, params)

  def cond(s):
    active = search.active(s)
    return (s['step'] < until) & (jnp.sum(active) > jnp.maximum(min_active, 0))

  state = jax.lax.while_loop(cond, functools.partial(search.step, model), state)
  return state, search.active(state), search.result(state)


@functools.partial(jax.jit, static_argnames=('length',))
def grow(state, *, length: int):
  """The self-attention cache padded to `length` positions (the next segment)."""
  return dict(state, cache=tuple(Transformer.grow_cache(c, length) for c in state['cache']))


@functools.partial(jax.jit, static_argnames=('rows_sharding',))
def take(state, rows, *, rows_sharding=None):
  """The state of sentences `rows` (in that order): every leaf indexed by sentence, or by
  hypothesis ([B * copies, ...]), keeps those rows; placed as `rows_sharding` says."""
  batch = state['limits'].shape[0]

  def pick(x):
    if x.ndim == 0:
      return x
    y = x.reshape(batch, -1, *x.shape[1:])[rows]
    y = y.reshape(-1, *x.shape[1:])
    return y if rows_sharding is None else jax.lax.with_sharding_constraint(y, rows_sharding)

  return jax.tree.map(pick, state)
