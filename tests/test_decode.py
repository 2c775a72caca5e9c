"""Incremental decoding equals the full forward pass; beam search is exact where it can
be checked by enumeration; beam 1 is greedy; the length penalty acts as its formula says."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import model_options
from flax import nnx

from transformer_jax import config as config_lib
from transformer_jax import decode
from transformer_jax.data.tokenizer import EOS_ID, PAD_ID
from transformer_jax.model import Transformer, shift_right


@nnx.jit
def forward(model, source, target):
  """The full forward pass, compiled (one program per shape; op by op it starts ~5x
  slower)."""
  return model(source, target)


def model_config(**changes):
  m = config_lib.defaults().model
  m.update({**dict(vocab_size=30, d_model=32, num_heads=4, d_ff=48, num_encoder_layers=2,
                   num_decoder_layers=2), **changes})
  return m


def sources(seed=0, rows=3, vocab=30):
  rng = np.random.default_rng(seed)
  out = np.zeros((rows, 7), np.int32)
  for r in range(rows):
    n = rng.integers(2, 7)
    out[r, :n - 1] = rng.integers(3, vocab, n - 1)
    out[r, n - 1] = EOS_ID
  return jnp.asarray(out)


@pytest.mark.parametrize('changes', [{}, dict(pre_norm=True),
                                     dict(share_embeddings=False, tie_output_embedding=False),
                                     dict(matmul_dtype='bfloat16'),  # a bf16 cache
                                     model_options.MARIAN])
def test_cached_decoding_equals_full_forward(changes):
  model = Transformer(model_config(**changes), rngs=nnx.Rngs(0))
  if changes.get('attention_bias'):
    model_options.randomize_biases(model)  # the fp32 cases: bf16 roundings would amplify
  source = sources()
  target = jax.random.randint(jax.random.key(1), (3, 6), 3, 30)
  full = forward(model, source, shift_right(target))
  cross_kv, source_segments, cache = decode._prepare(model, source, 1, 6)
  assert cache[0]['key'].dtype == jnp.dtype(changes.get('matmul_dtype', 'float32'))
  inputs = shift_right(target)
  steps = []
  for t in range(6):
    logits, cache = model.decode_step(inputs[:, t], t, cache, cross_kv, source_segments)
    steps.append(logits)
  np.testing.assert_allclose(np.stack(steps, 1), full, atol=2e-5)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_beam_size_one_is_greedy(seed):
  model = Transformer(model_config(), rngs=nnx.Rngs(seed))
  source = sources(seed, rows=4)
  beam, _ = decode.beam_search(model, source, beam_size=1, max_len=12)
  greedy, _ = decode.sample(model, source, max_len=12)
  np.testing.assert_array_equal(beam, greedy)


def enumerate_scores(model, source, max_len, alpha):
  """Every output the decoder may produce (no PAD; not empty; EOS forced at max_len),
  scored with the full forward pass: log p / ((5 + len) / 6)^alpha. For a list of models
  (an ensemble), p is the mean of their probabilities at every position."""
  models = model if isinstance(model, list) else [model]
  vocab = models[0].vocab_size
  words = [t for t in range(vocab) if t not in (PAD_ID, EOS_ID)]
  candidates = [list(prefix) + [EOS_ID] for n in range(1, max_len)
                for prefix in itertools.product(words, repeat=n)]
  scores = []
  for seq in candidates:
    target = jnp.asarray([seq])
    # PAD gets no probability, nor EOS as the first token.
    each = jnp.stack([jax.nn.log_softmax(forward(m, source, shift_right(target)).at[
        ..., PAD_ID].set(decode.NEG_INF).at[:, 0, EOS_ID].set(decode.NEG_INF))[0]
        for m in models])
    logp = jax.nn.logsumexp(each, axis=0) - np.log(len(models))
    total = float(sum(logp[i, tok] for i, tok in enumerate(seq)))
    scores.append(total / decode.length_penalty(len(seq), alpha))
  return candidates, np.asarray(scores)


def as_list(tokens):
  tokens = list(np.asarray(tokens))
  return tokens[:tokens.index(EOS_ID) + 1]


@pytest.mark.parametrize('seed', [0, 1])
def test_beam_search_finds_the_best_of_all_candidates(seed):
  model = Transformer(model_config(vocab_size=6), rngs=nnx.Rngs(seed))
  source = sources(seed, rows=1, vocab=6)
  candidates, scores = enumerate_scores(model, source, max_len=3, alpha=0.6)
  assert len(candidates) == 4 + 16  # 1, 2 words, then EOS
  tokens, score = decode.beam_search(model, source, beam_size=32, alpha=0.6, max_len=3)
  assert as_list(tokens[0]) == candidates[int(np.argmax(scores))]
  np.testing.assert_allclose(float(score[0]), scores.max(), rtol=1e-4)


def test_an_ensemble_of_one_is_the_model_and_a_model_with_itself_too():
  model = Transformer(model_config(), rngs=nnx.Rngs(0))
  source = sources(0, rows=4)
  tokens, scores = decode.beam_search(model, source, beam_size=3, max_len=12)
  one = decode.beam_search(decode.Ensemble([model]), source, beam_size=3, max_len=12)
  np.testing.assert_array_equal(one[0], tokens)
  np.testing.assert_array_equal(one[1], scores)  # the same program: bit for bit
  twice = decode.beam_search(decode.Ensemble([model, model]), source, beam_size=3, max_len=12)
  np.testing.assert_array_equal(twice[0], tokens)
  np.testing.assert_allclose(twice[1], scores, rtol=1e-5)
  greedy = decode.sample(model, source, max_len=12)
  np.testing.assert_array_equal(decode.sample(decode.Ensemble([model, model]), source,
                                              max_len=12)[0], greedy[0])


@pytest.mark.parametrize('seed', [0, 1])
def test_beam_search_over_an_ensemble_finds_the_best_of_all_candidates(seed):
  """Two different models (one a different size): the exhaustive best under the mean of
  their probabilities, which neither model alone need prefer."""
  models = [Transformer(model_config(vocab_size=6), rngs=nnx.Rngs(seed)),
            Transformer(model_config(vocab_size=6, d_model=16, d_ff=24, num_heads=2),
                        rngs=nnx.Rngs(seed + 10))]
  source = sources(seed, rows=1, vocab=6)
  candidates, scores = enumerate_scores(models, source, max_len=3, alpha=0.6)
  tokens, score = decode.beam_search(decode.Ensemble(models), source, beam_size=32, alpha=0.6,
                                     max_len=3)
  assert as_list(tokens[0]) == candidates[int(np.argmax(scores))]
  np.testing.assert_allclose(float(score[0]), scores.max(), rtol=1e-4)


def test_length_penalty_changes_the_choice_as_the_formula_says():
  """Find a model where alpha = 0 and alpha = 3 prefer outputs of different lengths;
  beam search must pick each formula's winner."""
  for seed in range(20):
    model = Transformer(model_config(vocab_size=6), rngs=nnx.Rngs(seed))
    source = sources(seed, rows=1, vocab=6)
    winners = {}
    for alpha in (0.0, 3.0):
      candidates, scores = enumerate_scores(model, source, max_len=3, alpha=alpha)
      winners[alpha] = candidates[int(np.argmax(scores))]
    if len(winners[0.0]) != len(winners[3.0]):
      break
  else:
    pytest.fail('no model among 20 seeds where the length penalty changes the winner')
  assert len(winners[3.0]) > len(winners[0.0])  # a larger alpha favours longer outputs
  for alpha, winner in winners.items():
    tokens, _ = decode.beam_search(model, source, beam_size=32, alpha=alpha, max_len=3)
    assert as_list(tokens[0]) == winner


def test_outputs_end_within_the_length_limit_and_never_emit_padding():
  model = Transformer(model_config(), rngs=nnx.Rngs(3))
  source = sources(3, rows=4)
  for tokens in (decode.beam_search(model, source, beam_size=3, max_len=5)[0],
                 decode.sample(model, source, jax.random.key(0), max_len=5,
                               temperature=1.0, top_k=5)[0]):
    for row in np.asarray(tokens):
      seq = as_list(row)
      assert seq[-1] == EOS_ID and len(seq) <= 5 and PAD_ID not in seq


def test_eos_can_be_ignored_for_fixed_length_decoding():
  model = Transformer(model_config(), rngs=nnx.Rngs(0))
  tokens, scores = decode.beam_search(model, sources(), beam_size=2, max_len=6, eos_id=-1)
  assert (np.asarray(tokens) != PAD_ID).all() and np.isfinite(np.asarray(scores)).all()


def test_sampling_depends_on_the_key_and_top_k_one_is_greedy():
  model = Transformer(model_config(), rngs=nnx.Rngs(0))
  source = sources(0, rows=4)
  a = decode.sample(model, source, jax.random.key(1), max_len=10, temperature=2.0)[0]
  b = decode.sample(model, source, jax.random.key(2), max_len=10, temperature=2.0)[0]
  assert not np.array_equal(a, b)
  top1 = decode.sample(model, source, jax.random.key(1), max_len=10, temperature=2.0,
                       top_k=1)[0]
  np.testing.assert_array_equal(top1, decode.sample(model, source, max_len=10)[0])


@pytest.mark.parametrize('n,k,group', [(32768, 4, 128), (2400, 4, 128), (1000, 6, 16),
                                       (300, 5, 7)])
def test_grouped_top_k_equals_lax_top_k(n, k, group):
  """Values, indices and tie-breaking, on rows full of ties, NEG_INF blocks and -inf."""
  for trial in range(6):
    rng = np.random.default_rng(trial)
    x = np.round(rng.normal(size=(8, n)) * (1 if trial % 2 else 30)).astype(np.float32)
    if trial % 3 == 0:
      x[:, ::3] = decode.NEG_INF
      x[0, :] = -np.inf
      x[0, 5] = 0.0
    expected = jax.lax.top_k(x, k)
    actual = decode._top_k(jnp.asarray(x), k, group)
    np.testing.assert_array_equal(actual[0], expected[0])
    np.testing.assert_array_equal(actual[1], expected[1])


def test_beam_search_outputs_equal_those_with_lax_top_k(monkeypatch):
  """The grouped top-k (vocabulary 600: beam 4 x 600 candidates per sentence) changes
  no token and no score of the decoder's outputs."""
  model = Transformer(model_config(vocab_size=600), rngs=nnx.Rngs(4))
  source = sources(4, rows=6, vocab=600)
  with monkeypatch.context() as patch:
    patch.setattr(decode, '_top_k', jax.lax.top_k)
    jax.clear_caches()  # beam_search is jit-compiled: trace it again with lax.top_k
    expected = decode.beam_search(model, source, beam_size=4, max_len=10)
  jax.clear_caches()
  actual = decode.beam_search(model, source, beam_size=4, max_len=10)
  np.testing.assert_array_equal(actual[0], expected[0])
  np.testing.assert_array_equal(actual[1], expected[1])


def test_cache_lengths_grow_to_max_len():
  assert decode.cache_lengths(12) == [12]
  assert decode.cache_lengths(32) == [16, 32]
  assert decode.cache_lengths(82) == [16, 32, 82]  # 64 is within 1.5x of 82: merged
  assert decode.cache_lengths(256) == [16, 32, 64, 128, 256]


@pytest.mark.parametrize('changes', [{}, dict(matmul_dtype='bfloat16')])
def test_growing_cache_equals_one_sized_for_max_len(monkeypatch, changes):
  """Decoding with the cache grown in segments (max_len 40: 16, then 40) gives the same
  tokens and scores, bit for bit, as with one cache of length 40, for beam search (with
  and without EOS) and greedy decoding."""
  model = Transformer(model_config(**changes), rngs=nnx.Rngs(3))
  source = sources(1, rows=5)

  def outputs():
    jax.clear_caches()  # the decoders are jit-compiled: trace them again
    return [*decode.beam_search(model, source, beam_size=3, max_len=40, eos_id=-1),
            *decode.beam_search(model, source, beam_size=3, max_len=40),
            *decode.sample(model, source, max_len=40, eos_id=-1)]

  with monkeypatch.context() as patch:
    patch.setattr(decode, 'cache_lengths', lambda max_len: [max_len])
    expected = outputs()
  actual = outputs()
  assert decode.cache_lengths(40) == [16, 40]
  for a, e in zip(actual, expected):
    np.testing.assert_array_equal(a, e)


def test_no_translation_is_empty_even_where_the_model_would_end_at_once():
  """End of sentence gets no probability as the first token (as in CTranslate2 and
  fairseq): a model that favours it at every step still writes a word first."""
  model = Transformer(model_config(), rngs=nnx.Rngs(0))
  table = model.source_embedding.table.embedding
  table[...] = table[...].at[EOS_ID].multiply(50.0)  # EOS's logit dwarfs every other
  source = sources(0, rows=4)
  for tokens in (decode.beam_search(model, source, beam_size=4, max_len=12)[0],
                 decode.sample(model, source, max_len=12)[0]):
    tokens = np.asarray(tokens)
    assert (tokens[:, 0] != EOS_ID).all() and (tokens[:, 1] == EOS_ID).all()


def test_a_length_limit_of_one_gives_the_end_of_sentence_and_a_real_score():
  """Where a sentence's limit leaves room for nothing but the end of sentence, the
  first-token ban yields: the empty translation, scored, not a failed search."""
  model = Transformer(model_config(), rngs=nnx.Rngs(0))
  source = sources(0, rows=2)
  tokens, scores = decode.beam_search(model, source, beam_size=2, max_len=1)
  assert (np.asarray(tokens)[:, 0] == EOS_ID).all() and np.isfinite(scores).all()
  assert (np.asarray(scores) > decode.NEG_INF / 2).all()
  sampled, _ = decode.sample(model, source, max_len=1)
  assert (np.asarray(sampled)[:, 0] == EOS_ID).all()
