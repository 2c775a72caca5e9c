"""import_model: Hugging Face `MarianMTModel`s (OPUS-MT's layout: Marian's ids, attention
and logits biases, swish) become workdirs whose model computes and decodes as Transformers
does, tokenizes as `MarianTokenizer` does, exports back unchanged, and fine-tunes with
`train.init_from` as 1 and 2 processes. Models and tokenizers are made in the test
(tests/opus_mt.py): nothing is downloaded."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

import opus_mt
from transformer_jax import decode, export, import_model, inference, local_pod
from transformer_jax.data import synthetic
from transformer_jax.data.tokenizer import EOS_ID, PAD_ID
from transformer_jax.model import shift_right


def _import(command, directory, workdir, *flags):
  result = command(import_model, f'--input={directory}', f'--workdir={workdir}', *flags)
  assert result.code == 0, result.err
  return inference.restore(str(workdir))


def _ours_log_probs(model, source, target):
  """log p of each token of `target` (our ids, [B, T]) given `source`, pad excluded as
  the decoder excludes it."""
  logits = model(jnp.asarray(source), shift_right(jnp.asarray(target)))
  logits = logits.at[..., PAD_ID].set(decode.NEG_INF)
  return np.asarray(jnp.take_along_axis(jax.nn.log_softmax(logits),
                                        jnp.asarray(target)[..., None], -1)[..., 0])


def _their_log_probs(marian, ids, source, target):
  """The same by Transformers, fed Marian's ids (`ids[ours]`)."""
  pad = marian.config.pad_token_id
  to_marian = lambda x: torch.as_tensor(ids[np.asarray(x)])
  shifted = to_marian(shift_right(jnp.asarray(target)))
  with torch.no_grad():
    logits = marian(input_ids=to_marian(source), attention_mask=to_marian(source) != pad,
                    decoder_input_ids=shifted).logits
  logits[..., pad] = -1e9
  return torch.log_softmax(logits, -1).gather(-1, to_marian(target)[..., None])[..., 0].numpy()


def _padded(rows: list[list[int]]) -> np.ndarray:
  out = np.full((len(rows), max(map(len, rows))), PAD_ID, np.int32)
  for i, row in enumerate(rows):
    out[i, :len(row)] = row
  return out


@pytest.mark.parametrize('share, tie, activation, scale', [
    (True, True, 'swish', True), (False, True, 'gelu', True), (False, False, 'relu', False)],
    ids=['shared-swish', 'separate-gelu', 'untied-relu-unscaled'])
def test_a_random_opus_mt_model_scores_and_tokenizes_as_in_transformers(
    command, tmp_path, share, tie, activation, scale):
  """64 sentence pairs, some sources opening with a target-language token: our ids are
  MarianTokenizer's (source and target side, each by its own SentencePiece model), and
  each target token's log-probability is Transformers' within 1e-4."""
  directory = tmp_path / 'hf'
  directory.mkdir()
  opus_mt.build(directory, share=share, tie=tie, activation=activation, scale=scale)
  restored = _import(command, directory, tmp_path / 'imported')
  assert (restored.config.data.source_lang, restored.config.data.target_lang) == ('en', 'de')
  m = restored.config.model
  assert (m.activation, m.share_embeddings, m.tie_output_embedding, m.scale_embedding,
          m.attention_bias, m.logits_bias, m.layer_norm_epsilon) == (
              activation, share, tie, scale, True, True, 1e-5)
  pairs = opus_mt.pairs(64, seed=5)
  sources = [f'{opus_mt.LANGUAGE_TOKENS[i % 3]} {s}' if i % 3 < 2 else s
             for i, (s, _) in enumerate(pairs)]
  targets = [t for _, t in pairs]
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
  ids = np.asarray(restored.tokenizer.marian_ids)
  ours = inference.encode_sources(restored.tokenizer, sources, 256)
  assert [list(ids[s]) for s in ours] == tokenizer(sources)['input_ids']
  our_targets = [t + [EOS_ID] for t in restored.tokenizer.encode_batch(targets, 'target')]
  assert [list(ids[t]) for t in our_targets] == tokenizer(text_target=targets)['input_ids']
  assert restored.tokenizer.decode(our_targets[0]) == tokenizer.decode(
      tokenizer(text_target=targets[:1])['input_ids'][0], skip_special_tokens=True)
  marian = transformers.MarianMTModel.from_pretrained(str(directory)).eval()
  source, target = _padded(ours), _padded(our_targets)
  mask = target != PAD_ID
  np.testing.assert_allclose(_their_log_probs(marian, ids, source, target)[mask],
                             _ours_log_probs(restored.model, source, target)[mask], atol=1e-4)


def _imported_as_a_command(directory, repo, tmp_path_factory):
  """`python -m transformer_jax.import_model` of `directory` into a new workdir."""
  imported = tmp_path_factory.mktemp('imported') / 'workdir'
  result = local_pod.run(['transformer_jax.import_model', f'--input={directory}',
                          f'--workdir={imported}'], processes=1, devices=1, cwd=repo,
                         log_dir=str(tmp_path_factory.mktemp('logs')))[0]
  assert result.code == 0, result.err[-2000:]
  return imported


@pytest.fixture(scope='module')
def opus(trained, repo, tmp_path_factory):
  """(an OPUS-MT-layout directory made from the 300-step model, the workdir imported from
  it, 64 test sentences)."""
  workdir, _ = trained
  directory = tmp_path_factory.mktemp('opus')
  opus_mt.from_trained(inference.restore(str(workdir)), directory)
  imported = _imported_as_a_command(directory, repo, tmp_path_factory)
  lines = [p[0] for p in synthetic.splits(train_size=10, eval_size=64)['test']]
  return directory, imported, lines


def _outputs(generated: torch.Tensor, pad: int, eos: int) -> list[list[int]]:
  rows = []
  for row in generated.tolist():
    row = [t for t in row[1:] if t != pad]
    rows.append(row[:row.index(eos)] if eos in row else row)
  return rows


def test_the_imported_model_translates_as_transformers(opus):
  """Greedy and beam 4 (no length penalty on either side) on 64 test sentences that end:
  the same outputs; where the beams differ, ours scores at least as high by Transformers'
  own log-probabilities. Per-token log-probs of the outputs within 1e-4."""
  directory, imported, lines = opus
  restored = inference.restore(str(imported))
  ids = np.asarray(restored.tokenizer.marian_ids)
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
  marian = transformers.MarianMTModel.from_pretrained(str(directory)).eval()
  pad, eos = marian.config.pad_token_id, marian.config.eos_token_id
  sources = inference.encode_sources(restored.tokenizer, lines, 256)
  batch = tokenizer(lines, return_tensors='pt', padding=True)
  limit = dict(max_new_tokens=max(map(len, sources)) + 50, min_new_tokens=1)  # as ours
  with torch.no_grad():
    greedy = _outputs(marian.generate(**batch, num_beams=1, do_sample=False, **limit),
                      pad, eos)
    beam = _outputs(marian.generate(**batch, num_beams=4, length_penalty=0.0, **limit),
                    pad, eos)
  ours = inference.translate_ids(restored.model, restored.mesh, sources,
                                 inference.Settings(method='greedy', beam_size=1))
  assert [list(ids[o]) for o in ours] == greedy
  assert sum(map(len, ours)) / len(ours) > 5  # real sentences, which end
  ours_beam = inference.translate_ids(restored.model, restored.mesh, sources,
                                      inference.Settings(beam_size=4, alpha=0.0))
  inverse = np.argsort(ids)
  score = lambda s, o: _their_log_probs(marian, ids, [s], [list(o) + [EOS_ID]]).sum()
  differ = [(s, o, inverse[t]) for s, o, t in zip(sources, ours_beam, beam)
            if list(ids[o]) != t]
  assert len(differ) <= 3, len(differ)  # 1 of 64 measured
  for source, o, t in differ:
    assert score(source, o) >= score(source, t) - 1e-4
  assert tokenizer.batch_decode([[pad] + g + [eos] for g in greedy], skip_special_tokens=True) \
      == [restored.tokenizer.decode(o) for o in ours]
  for source, output in zip(sources, ours):
    target = [list(output) + [EOS_ID]]
    np.testing.assert_allclose(_their_log_probs(marian, ids, [source], target),
                               _ours_log_probs(restored.model, [source], target), atol=1e-4)


def _state(directory) -> dict:
  marian = transformers.MarianMTModel.from_pretrained(str(directory))
  return {k: v.numpy() for k, v in marian.state_dict().items() if 'embed_positions' not in k}


def test_import_then_export_gives_back_the_model(opus, command, tmp_path):
  """Every weight equal, the architecture, ids and vocabulary the same."""
  directory, imported, _ = opus
  out = tmp_path / 'exported'
  result = command(export, f'--workdir={imported}', '--format=huggingface',
                   f'--output={out}', '--max_positions=512')
  assert result.code == 0, result.err
  before, after = _state(directory), _state(out)
  assert before.keys() == after.keys()
  for name in before:
    np.testing.assert_array_equal(before[name], after[name], err_msg=name)
  keys = ('vocab_size', 'd_model', 'encoder_layers', 'decoder_layers', 'encoder_ffn_dim',
          'activation_function', 'scale_embedding', 'pad_token_id', 'eos_token_id',
          'decoder_start_token_id', 'max_position_embeddings', 'tie_word_embeddings',
          'share_encoder_decoder_embeddings', 'encoder_attention_heads')
  config = lambda d: json.loads((d / 'config.json').read_text())
  assert {k: config(out).get(k) for k in keys} == {k: config(directory).get(k) for k in keys}
  for name in ('source.spm', 'target.spm'):
    assert (out / name).read_bytes() == (directory / name).read_bytes(), name
  assert json.loads((out / 'vocab.json').read_text()) == \
      json.loads((directory / 'vocab.json').read_text())


def test_ours_exported_and_imported_is_the_same_model_bitwise(trained, command, tmp_path):
  """Our 300-step model through Transformers and back: every parameter bit for bit, the
  model config the same but for Marian's LayerNorm epsilon; no biases invented."""
  workdir, _ = trained
  out = tmp_path / 'hf'
  assert command(export, f'--workdir={workdir}', '--format=huggingface',
                 f'--output={out}').code == 0
  original = inference.restore(str(workdir))
  data = original.config.data
  back = _import(command, out, tmp_path / 'back', f'--langs={data.target_lang}-{data.source_lang}')
  assert (back.config.data.source_lang, back.config.data.target_lang) == (
      data.target_lang, data.source_lang)  # as --langs says (the tokenizer names none)
  params = lambda r: jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(r.model, nnx.Param)))
  a, b = params(original), params(back)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  theirs = {**back.config.model.to_dict(), 'layer_norm_epsilon': 1e-6}
  assert theirs == original.config.model.to_dict()
  assert back.tokenizer.marian_ids == list(range(original.config.model.vocab_size))
  lines = [p[0] for p in synthetic.splits(train_size=10, eval_size=8)['test']]
  assert inference.encode_sources(back.tokenizer, lines, 256) == \
      inference.encode_sources(original.tokenizer, lines, 256)


@pytest.mark.parametrize('change, message', [
    (lambda c, d: c.update(model_type='bart'), "model_type 'bart'; import_model takes"),
    (lambda c, d: c.update(activation_function='tanh'),
     "activation_function='tanh' is not one of model.activation's"),
    (lambda c, d: c.update(decoder_attention_heads=2), 'decoder_attention_heads=2; our model'),
    (lambda c, d: (d / 'target_vocab.json').write_text('{}'), 'separate source and target'),
    (lambda c, d: (d / 'target.spm').unlink(), 'lacks target.spm'),
    (lambda c, d: (d / 'source.spm').write_bytes(b'not a model'), 'is not a SentencePiece'),
    (lambda c, d: c.update(encoder_ffn_dim=32, decoder_ffn_dim=32),
     'Transformers cannot load the weights'),
], ids=['other-model', 'activation', 'heads', 'separate-vocabs', 'no-spm', 'bad-spm',
        'weights-of-another-shape'])
def test_what_our_model_cannot_be_is_refused_in_one_line(command, tmp_path, change, message):
  directory = tmp_path / 'hf'
  directory.mkdir()
  opus_mt.build(directory)
  config = json.loads((directory / 'config.json').read_text())
  change(config, directory)
  (directory / 'config.json').write_text(json.dumps(config))
  result = command(import_model, f'--input={directory}', f'--workdir={tmp_path / "w"}')
  assert result.code == 2 and message in result.err, result.err
  assert len(result.err.strip().splitlines()) == 1
  assert not (tmp_path / 'w').exists()


def test_a_workdir_in_use_is_refused(command, tmp_path, opus):
  directory, imported, _ = opus
  before = sorted(os.listdir(imported))
  result = command(import_model, f'--input={directory}', f'--workdir={imported}')
  assert result.code == 2 and 'is not empty' in result.err
  assert sorted(os.listdir(imported)) == before


def test_an_imported_model_goes_to_ctranslate2_through_transformers(command, tmp_path, opus):
  """CTranslate2 has its own converter for Marian models: our ctranslate2 export refuses
  an imported vocabulary in one line that says so, and writes nothing."""
  _, imported, _ = opus
  out = tmp_path / 'ct2'
  result = command(export, f'--workdir={imported}', f'--output={out}')
  assert result.code == 2 and 'ct2-transformers-converter' in result.err, result.err
  assert not out.exists()


def test_the_training_store_tokenizes_as_marian_does(random_opus, tmp_path):
  """A corpus whose sources open with a target-language token, through the data
  pipeline's token store with the imported vocabulary: each side's ids are
  MarianTokenizer's (source and target models), EOS appended."""
  from transformer_jax import config as config_lib
  from transformer_jax.data import datasets, pipeline, store as store_lib
  directory, imported = random_opus
  pairs = opus_mt.pairs(40, seed=21)
  sources = [f'{opus_mt.LANGUAGE_TOKENS[i % 2]} {s}' for i, (s, _) in enumerate(pairs)]
  targets = [t for _, t in pairs]
  corpus = tmp_path / 'corpus'
  corpus.mkdir()
  (corpus / 'train.en').write_text(''.join(f'{s}\n' for s in sources))
  (corpus / 'train.de').write_text(''.join(f'{t}\n' for t in targets))
  config = inference.restore(str(imported)).config
  config.data.update(name='parallel_text', data_dir=str(corpus), tfds_dir=str(tmp_path / 'tfds'),
                     vocab_path=str(imported / 'vocab.model'))
  config = config_lib.validate(config)
  tokenizer = pipeline.get_tokenizer(config, str(tmp_path))
  datasets.builder(config.data)  # the TFDS build of the corpus
  source = datasets.data_source(config.data, 'train')
  store_lib.build(source, config.data, tokenizer, str(tmp_path / 'store'), shards=2)
  store = store_lib.TokenStore(str(tmp_path / 'store'))
  examples = list(pipeline.read(source, range(len(source))))
  marian = transformers.AutoTokenizer.from_pretrained(str(directory))
  ids = np.asarray(tokenizer.marian_ids)
  for field, lang, encode in (('source', 'en', lambda x: marian(x)['input_ids']),
                              ('target', 'de', lambda x: marian(text_target=x)['input_ids'])):
    texts = [ex[lang].decode() for ex in examples]
    stored = [list(ids[t]) for t in store.tokens(np.arange(len(source)), field)]
    assert stored == encode(texts), field
  assert sorted(ex['en'].decode() for ex in examples) == sorted(sources)


def _mean_loss(restored, pairs) -> float:
  tokenizer = restored.tokenizer
  source = _padded([s + [EOS_ID] for s in tokenizer.encode_batch([p[0] for p in pairs])])
  target = _padded([t + [EOS_ID] for t in tokenizer.encode_batch([p[1] for p in pairs],
                                                                   'target')])
  log_probs = _ours_log_probs(restored.model, source, target)
  return float(-log_probs[target != PAD_ID].mean())


@pytest.fixture(scope='module')
def random_opus(repo, tmp_path_factory):
  """(a random OPUS-MT-layout directory, the workdir imported from it)."""
  directory = tmp_path_factory.mktemp('random_opus')
  opus_mt.build(directory)
  return directory, _imported_as_a_command(directory, repo, tmp_path_factory)


@pytest.mark.slow
def test_two_processes_import_the_same_workdir(repo, random_opus, tmp_path):
  """On a pod slice every worker runs the command: 2 processes x 2 devices write one
  workdir, the same checkpoint and vocabulary as one process wrote, bit for bit."""
  directory, imported = random_opus
  workdir = tmp_path / 'pod'
  results = local_pod.run(['transformer_jax.import_model', f'--input={directory}',
                           f'--workdir={workdir}'], processes=2, devices=2, cwd=repo,
                          log_dir=str(tmp_path / 'logs'))
  for r in results:
    assert r.code == 0, r.err[-3000:]
  assert (workdir / 'vocab.model').read_bytes() == (imported / 'vocab.model').read_bytes()
  params = lambda w: jax.tree.leaves(nnx.to_pure_dict(nnx.state(
      inference.restore(str(w)).model, nnx.Param)))
  for a, b in zip(params(workdir), params(imported), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
@pytest.mark.parametrize('processes', [1, 2])
def test_an_imported_model_fine_tunes_and_exports_back(
    repo, synthetic, random_opus, tmp_path, command, processes):
  """`train.init_from` on an imported (random) OPUS-MT-layout workdir, on the synthetic
  corpus tokenized by its Marian vocabulary (two SentencePiece models), as 1 or 2
  processes (FSDP over 2 processes x 2 devices): the loss on held-out pairs falls, and
  the fine-tuned model exports to Transformers with the imported architecture and
  vocabulary."""
  directory, imported = random_opus
  workdir = tmp_path / 'tuned'
  flags = ['--config=configs/tiny.py', '--config.train.num_steps=30',
           '--config.train.eval_every=0', '--config.train.log_every=10',
           '--config.train.warmup_steps=10', '--config.train.learning_rate=1.0',
           '--config.mesh.fsdp=2', *(f'--config.data.{k}={v}' for k, v in synthetic.data.items()),
           f'--config.train.init_from={imported}']
  results = local_pod.run(['transformer_jax.train', f'--workdir={workdir}', *flags],
                          processes=processes, devices=2, cwd=repo, log_dir=str(tmp_path / 'l'))
  for r in results:
    assert r.code == 0, r.err[-3000:]
  held_out = opus_mt.pairs(64, seed=99)
  before, after = inference.restore(str(imported)), inference.restore(str(workdir))
  assert after.step == 30 and after.tokenizer.serialized() == before.tokenizer.serialized()
  assert _mean_loss(after, held_out) < _mean_loss(before, held_out) - 0.5
  out = tmp_path / 'hf'
  assert command(export, f'--workdir={workdir}', '--format=huggingface', f'--output={out}',
                 '--max_positions=512').code == 0
  config = lambda d: json.loads((d / 'config.json').read_text())
  keys = ('vocab_size', 'd_model', 'activation_function', 'pad_token_id', 'eos_token_id')
  assert {k: config(out)[k] for k in keys} == {k: config(directory)[k] for k in keys}
  assert json.loads((out / 'vocab.json').read_text()) == \
      json.loads((directory / 'vocab.json').read_text())
  assert _state(out).keys() == _state(directory).keys()
