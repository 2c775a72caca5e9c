"""Restoring a model for decoding (parameters only), and translating lists of sentences:
order, empty lines, truncation, batching; each bad setting gets one clear error."""
import shutil

import jax
import numpy as np
import pytest
import tensorstore as ts
from flax import nnx

from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import decode, inference, sharding
from transformer_jax.data.tokenizer import EOS_ID
from transformer_jax.errors import UserError


def damage_optimizer_arrays(workdir, step):
  """Overwrite every stored chunk of the Adam state at `step` with junk bytes."""
  store = ts.KvStore.open({'driver': 'ocdbt', 'base': f'file://{workdir}/checkpoints/{step}/state/'
                           }).result()
  damaged = 0
  for key in store.list().result():
    if key.startswith(b'opt_state') and not key.endswith(b'.zarray'):
      store.write(key, b'damaged').result()
      damaged += 1
  assert damaged


def test_restore_reads_the_parameters_only(briefly_trained, tiny_config, tmp_path):
  """A checkpoint whose optimizer state is damaged still restores and translates, to the
  same parameters; training from it (which needs that state) fails."""
  intact = inference.restore(str(briefly_trained))
  workdir = tmp_path / 'work'
  shutil.copytree(briefly_trained, workdir)
  damage_optimizer_arrays(workdir, 6)
  restored = inference.restore(str(workdir))
  assert restored.step == 6
  for a, b in zip(jax.tree.leaves(nnx.state(intact.model, nnx.Param)),
                  jax.tree.leaves(nnx.state(restored.model, nnx.Param)), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  settings = inference.Settings(method='greedy', max_extra_len=4)
  assert (inference.translate_texts(restored, ['The dog sleeps.'], settings)
          == inference.translate_texts(intact, ['The dog sleeps.'], settings))
  # The damage is real: the whole train state no longer restores.
  from transformer_jax.steps import build
  config = tiny_config()
  setup = build(config, sharding.make_mesh(config.mesh))
  checkpoints = checkpoint_lib.Checkpoints(str(workdir), config, async_save=False)
  with pytest.raises(checkpoint_lib.CorruptCheckpoint, match='step 6 .* failed verification'):
    checkpoints.restore(6, setup.abstract_state)
  checkpoints.close()


def test_restore_picks_the_latest_or_the_asked_step(briefly_trained):
  assert inference.restore(str(briefly_trained)).step == 6
  assert inference.restore(str(briefly_trained), step=2).step == 2
  with pytest.raises(UserError, match=r'No checkpoint at step 3 .*there are: 2, 4, 6\.'):
    inference.restore(str(briefly_trained), step=3)
  with pytest.raises(UserError, match='holds no averaged checkpoint'):
    inference.restore(str(briefly_trained), averaged=True)


def test_translate_ids_keeps_order_and_empty_inputs_and_matches_one_by_one(briefly_trained):
  restored = inference.restore(str(briefly_trained))
  rng = np.random.default_rng(0)
  # Lengths 10..16 with EOS: one bucket (16), so alone or together the same length limit.
  sources = [[int(t) for t in rng.integers(3, 100, n)] + [EOS_ID] for n in (9, 14, 12, 15, 10)]
  sources.insert(2, [])
  s = inference.Settings(method='greedy', batch_size=2, max_extra_len=3)
  together = inference.translate_ids(restored.model, restored.mesh, sources, s)
  assert together[2] == []
  for source, output in zip(sources, together):
    if source:  # alone in its batch (other rows padding): the same output
      alone = inference.translate_ids(restored.model, restored.mesh, [source], s)[0]
      assert alone == output
      assert len(output) <= len(source) + 3 and EOS_ID not in output and 0 not in output


def test_translate_ids_uses_beam_search_by_default(briefly_trained):
  restored = inference.restore(str(briefly_trained))
  source = [5, 6, 7, 8, EOS_ID]
  ours = inference.translate_ids(restored.model, restored.mesh, [source],
                                 inference.Settings(max_extra_len=5))[0]
  batch = np.zeros((8, 8), np.int32)
  batch[0, :5] = source
  tokens = np.asarray(decode.beam_search(restored.model, batch, beam_size=4, alpha=0.6,
                                         max_len=8 + 5, max_extra_len=5)[0])[0].tolist()
  expected = tokens[:tokens.index(EOS_ID)] if EOS_ID in tokens else [t for t in tokens if t]
  assert ours == expected


def test_encode_sources_appends_eos_and_truncates_long_lines(briefly_trained, capsys):
  tokenizer = inference.restore(str(briefly_trained)).tokenizer
  long_line = ' '.join(['the dog sees the cat'] * 10)
  sources = inference.encode_sources(tokenizer, ['The dog sleeps.', '', long_line], 12)
  assert sources[0][-1] == EOS_ID and sources[0][:-1] == tokenizer.encode('The dog sleeps.')
  assert sources[1] == []
  assert len(sources[2]) == 12 and sources[2][-1] == EOS_ID
  err = capsys.readouterr().err
  assert 'warning: line 3 has' in err and 'translating its first 11' in err


@pytest.mark.parametrize('changes, message', [
    (dict(method='topp'), 'must be beam, greedy or sample'),
    (dict(beam_size=0), '--beam_size must be at least 1'),
    (dict(batch_size=0), '--batch_size must be at least 1'),
    (dict(max_input_len=0), '--max_input_len must be at least 1'),
    (dict(max_extra_len=-5), '--max_extra_len must be at least 0')])
def test_bad_settings_are_refused(changes, message):
  with pytest.raises(UserError, match=message):
    inference.Settings(**changes)


def test_a_lowercasing_model_lowercases_its_input(tiny_config, tmp_path):
  """The checkpoint's config decides: a model trained on lowercased text gets lowercased
  input, whoever restores it."""
  from transformer_jax.steps import build, init_state
  config = tiny_config()
  config.data.lowercase = True
  setup = build(config, sharding.make_mesh(config.mesh))
  checkpoints = checkpoint_lib.Checkpoints(str(tmp_path), config, async_save=False)
  checkpoints.save(1, init_state(setup), None, config.data.vocab_path, force=True)
  checkpoints.close()
  tokenizer = inference.restore(str(tmp_path)).tokenizer
  assert tokenizer.encode('The Dog SLEEPS.') == tokenizer.encode('the dog sleeps.')
  assert inference.encode_sources(tokenizer, ['The Dog'], 16) == inference.encode_sources(
      tokenizer, ['the dog'], 16)


@pytest.mark.parametrize('method', ['beam', 'greedy'])
def test_compacted_token_budget_batches_translate_as_one_whole_batch(briefly_trained, method):
  """256 sentences of mixed lengths: in small token-budget batches that drop finished
  sentences as they go (`decode_batch`), against all of them decoded as one batch to the
  end (`decode.run`): at least 99 % of the outputs alike, each difference a near-tie."""
  from transformer_jax.data import synthetic
  restored = inference.restore(str(briefly_trained))
  rng = np.random.default_rng(1)
  lines = [' '.join(en.split()[:rng.integers(1, 30)])
           for en, _ in synthetic.generate_pairs(3, 256)]
  sources = inference.encode_sources(restored.tokenizer, lines, 256)
  s = inference.Settings(method=method, beam_size=4 if method == 'beam' else 1,
                         max_extra_len=12, batch_tokens=600)
  compacted = inference.translate_hypotheses(restored.model, restored.mesh, sources, s)
  length = inference.source_bucket(max(map(len, sources)))
  batch = np.zeros((256, length), np.int32)
  for row, src in enumerate(sources):
    batch[row, :len(src)] = src
  tokens, scores = jax.device_get(decode.run(
      restored.model, batch, search=inference._search(s, length + s.max_extra_len)))
  whole = [(inference._strip(t.tolist()), float(score)) for t, score in zip(tokens, scores)]
  alike = [c[0][0] == w[0] for c, w in zip(compacted, whole)]
  assert np.mean(alike) >= 0.99
  for same, c, w in zip(alike, compacted, whole):
    assert same or abs(c[0][1] - w[1]) <= 1e-4 * abs(w[1]), (c[0], w)


def test_batches_fill_a_token_budget_in_length_order():
  rng = np.random.default_rng(0)
  lengths = [int(n) for n in rng.integers(0, 120, 500)]
  s = inference.Settings(batch_size=48)
  batches = inference.plan_batches(lengths, s, data_parallel=4, batch_tokens=4000)
  flat = [i for batch in batches for i in batch]
  assert sorted(flat) == [i for i, n in enumerate(lengths) if n]  # each once, no empty ones
  assert [lengths[i] for i in flat] == sorted(lengths[i] for i in flat)
  for batch in batches:
    padded = inference.source_bucket(max(lengths[i] for i in batch))
    rows = inference.batch_rows(padded, s, 4, 4000)
    assert len(batch) <= min(48, rows) and rows % 4 == 0 and rows & (rows - 1) == 0
    assert rows * 2 * padded <= 4000 or rows == 4
  assert inference.batch_rows(16, s, 4, 4000) == 64  # 48 sentences at most, in 64 rows
  # A budget smaller than one row per device still fills those rows.
  assert [len(b) for b in inference.plan_batches([100] * 8, s, 4, 10)] == [4, 4]
