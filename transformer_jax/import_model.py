"""`python -m transformer_jax.import_model --format=huggingface --input=HF_DIR --workdir=DIR`:
a Hugging Face `MarianMTModel` (an OPUS-MT model, or one we exported) as a workdir that
`translate`, `evaluate`, `export` and `train.init_from` take, export's mirror.

HF_DIR holds config.json, the weights (safetensors or PyTorch), and the MarianTokenizer's
source.spm, target.spm and vocab.json. DIR gets a checkpoint at step 0 (verified
checksums, a fresh optimizer state) whose config is the model's, and the vocabulary, as
WORKDIR/vocab.model (data/marian.py). The table of which weight is which lives in
huggingface.py. What our model cannot represent is refused in one line, naming the field,
before anything is written.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import flags
from ml_collections import ConfigDict

from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import cli, distributed, files, huggingface, inference_flags, sharding
from transformer_jax import config as config_lib
from transformer_jax.data import tokenizer as tokenizer_lib
from transformer_jax.data.marian import MarianVocabulary
from transformer_jax.errors import UserError
from transformer_jax.steps import build, state_around

FORMATS = ('huggingface',)
TOKENIZER_FILES = ('source.spm', 'target.spm', 'vocab.json')
# Transformers' other name of one of ours (its names of relu, gelu and swish are ours).
ACTIVATION_ALIASES = {'silu': 'swish'}
SAME = (('encoder_attention_heads', 'decoder_attention_heads'),  # one value of ours each
        ('encoder_ffn_dim', 'decoder_ffn_dim'))

_LANGS = flags.DEFINE_string(
    'langs', None, 'SOURCE-TARGET language codes to record in the config (e.g. en-de; '
    'default: the tokenizer\'s, else the config\'s data.source_lang/target_lang).')


def model_config(hf: dict) -> ConfigDict:
  """Our model section for Marian's config.json `hf`; refused in one line where ours
  cannot be that model."""
  if hf.get('model_type') != 'marian':
    raise UserError(f'config.json is of model_type {hf.get("model_type")!r}; import_model '
                    'takes MarianMTModel (OPUS-MT) directories only.')
  defaults = huggingface.library().MarianConfig().to_dict()
  get = lambda key: hf.get(key, defaults.get(key))
  for a, b in SAME:
    if get(a) != get(b):
      raise UserError(f'config.json: {a}={get(a)} but {b}={get(b)}; our model has one '
                      f'value (model.{"num_heads" if "heads" in a else "d_ff"}) for both.')
  if get('decoder_vocab_size') not in (None, get('vocab_size')):
    raise UserError(f'config.json: decoder_vocab_size={get("decoder_vocab_size")} differs '
                    f'from vocab_size={get("vocab_size")}; separate source and target '
                    'vocabularies are not supported (model.vocab_size is shared).')
  if get('decoder_start_token_id') != get('pad_token_id'):
    raise UserError(f'config.json: decoder_start_token_id={get("decoder_start_token_id")} '
                    f'is not pad_token_id={get("pad_token_id")}; our decoder starts from pad.')
  activation = get('activation_function')
  activation = ACTIVATION_ALIASES.get(activation, activation)
  if activation not in config_lib.ACTIVATIONS:
    raise UserError(f'config.json: activation_function={get("activation_function")!r} is '
                    f'not one of model.activation\'s: {", ".join(config_lib.ACTIVATIONS)}.')
  m = config_lib.defaults().model
  m.update(vocab_size=get('vocab_size'), d_model=get('d_model'),
           num_heads=get('encoder_attention_heads'), d_ff=get('encoder_ffn_dim'),
           num_encoder_layers=get('encoder_layers'), num_decoder_layers=get('decoder_layers'),
           dropout_rate=float(get('dropout')), attention_dropout_rate=float(
               get('attention_dropout')), activation=activation,
           layer_norm_epsilon=huggingface.LAYER_NORM_EPSILON,
           scale_embedding=bool(get('scale_embedding')),
           share_embeddings=bool(get('share_encoder_decoder_embeddings')),
           tie_output_embedding=bool(get('tie_word_embeddings')))
  return m


def vocabulary(directory: str, hf: dict) -> MarianVocabulary:
  """The MarianTokenizer's files as one vocabulary; its ids must be the model's."""
  missing = [name for name in TOKENIZER_FILES
             if not os.path.isfile(os.path.join(directory, name))]
  if missing:
    raise UserError(f'{directory} lacks {", ".join(missing)}: import_model takes '
                    'MarianTokenizer vocabularies (two SentencePiece models and vocab.json).')
  settings = _json(directory, 'tokenizer_config.json', required=False)
  if settings.get('separate_vocabs') or os.path.exists(
      os.path.join(directory, 'target_vocab.json')):
    raise UserError(f'{directory} has separate source and target vocabularies '
                    '(separate_vocabs); model.vocab_size is shared, so they are not supported.')
  vocab = _json(directory, 'vocab.json')
  special = {name: _token(settings.get(f'{name}_token'), default)
             for name, default in (('pad', '<pad>'), ('eos', '</s>'), ('unk', '<unk>'))}
  for name in ('pad', 'eos'):
    if vocab.get(special[name]) != hf.get(f'{name}_token_id'):
      raise UserError(f'vocab.json numbers {special[name]!r} {vocab.get(special[name])}, '
                      f'config.json {name}_token_id={hf.get(f"{name}_token_id")}: not one model.')
  if special['unk'] not in vocab or sorted(vocab.values()) != list(range(len(vocab))):
    raise UserError('vocab.json must number its pieces 0..N-1 and hold the unk piece.')
  if len(vocab) != hf.get('vocab_size'):
    raise UserError(f'vocab.json has {len(vocab)} pieces, config.json vocab_size='
                    f'{hf.get("vocab_size")}; not one model.')
  read = lambda name: files.path(os.path.join(directory, name)).read_bytes()
  try:
    return MarianVocabulary.build(read('source.spm'), read('target.spm'), vocab, special)
  except UserError:
    raise UserError(f'{directory}: source.spm or target.spm is not a SentencePiece '
                    'model.') from None


def _token(value, default: str) -> str:
  """A token as tokenizer_config.json writes it: a string, or an AddedToken's dict."""
  return value.get('content', default) if isinstance(value, dict) else value or default


def _json(directory: str, name: str, required: bool = True) -> dict:
  path = os.path.join(directory, name)
  if not os.path.isfile(path):
    if required:
      raise UserError(f'{directory} has no {name}: not a Hugging Face model directory.')
    return {}
  try:
    return json.loads(files.path(path).read_text(encoding='utf-8'))
  except (ValueError, UnicodeDecodeError) as e:
    raise UserError(f'{path} is not valid JSON ({e}); download it again.') from None


def marian_weights(directory: str) -> dict[str, np.ndarray]:
  """The model's weights, float32 numpy by name, as Transformers loads them (safetensors
  or PyTorch files, tied weights filled in)."""
  import torch  # noqa: PLC0415 (huggingface.library() checked it is installed)
  transformers = huggingface.library()
  try:
    model = transformers.MarianMTModel.from_pretrained(directory, dtype=torch.float32)
  except (OSError, ValueError, RuntimeError) as e:
    raise UserError(f'Transformers cannot load the weights in {directory}: '
                    f'{str(e).splitlines()[0]}') from None
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def biases_used(state: dict[str, np.ndarray]) -> dict[str, bool]:
  """Whether the model's attention biases and its logits bias hold anything but zeros:
  those that do not are left out (a model we exported comes back as it was)."""
  attention = [v for k, v in state.items()
               if 'attn.' in k and k.endswith('.bias') and 'layer_norm' not in k]
  return dict(attention_bias=any(np.any(v) for v in attention),
              logits_bias=bool(np.any(state.get('final_logits_bias', 0))))


def config_for(hf: dict, state, settings: dict) -> ConfigDict:
  config = config_lib.defaults()
  config.model = model_config(hf)
  config.model.update(**biases_used(state))
  source, target = settings.get('source_lang'), settings.get('target_lang')
  if _LANGS.value:
    source, _, target = _LANGS.value.partition('-')
  config.data.update(source_lang=source or config.data.source_lang,
                     target_lang=target or config.data.target_lang)
  config.mesh.update(data=-1, fsdp=1, tensor=1)
  return config_lib.validate(config)


def write_workdir(workdir: str, config: ConfigDict, vocab: MarianVocabulary,
                  ours: dict[str, np.ndarray]) -> None:
  """The vocabulary, then the checkpoint at step 0 (its record holds the vocabulary)."""
  vocab_path = os.path.join(workdir, tokenizer_lib.VOCAB_FILE)

  def write(first: bool) -> None:  # process 0; the others read it to fingerprint the save
    if first:
      files.path(workdir).mkdir(parents=True, exist_ok=True)
      files.write_atomically(vocab_path, vocab.serialized())
  distributed.once('write the imported vocabulary', write, timeout_s=600)
  setup = build(config, sharding.make_mesh(config.mesh))
  place = lambda path, spec: jax.device_put(
      ours.pop('/'.join(str(getattr(k, 'key', k)) for k in path)), spec.sharding)
  params = jax.tree_util.tree_map_with_path(place, setup.abstract_state.params)
  # (`ours` is emptied as it is placed: host copies go before the optimizer state comes.)
  checkpoints = checkpoint_lib.Checkpoints(workdir, config, async_save=False, writer=True)
  try:
    checkpoints.save(0, state_around(setup, params), None, vocab_path, force=True)
    checkpoints.wait()
  finally:
    checkpoints.close()


def main(argv):
  del argv
  fmt = inference_flags.FORMAT.value or FORMATS[0]
  if fmt not in FORMATS:
    raise UserError(f'--format={fmt}: import_model reads {", ".join(FORMATS)}.')
  directory, workdir = inference_flags.INPUT.value, cli.required_workdir()
  if not directory or not os.path.isdir(directory):
    raise UserError(f'--input={directory}: give the Hugging Face model directory to import.')
  if files.path(workdir).exists() and any(files.path(workdir).iterdir()):
    raise UserError(f'--workdir={workdir} exists and is not empty; give a new one '
                    '(nothing was written).')
  # Several processes (a pod slice's workers): all have looked before process 0 writes.
  distributed.barrier('look at the workdir before the import', timeout_s=600)
  hf = _json(directory, 'config.json')
  model_config(hf)  # refusals before the weights are read
  vocab = vocabulary(directory, hf)
  state = marian_weights(directory)
  config = config_for(hf, state, _json(directory, 'tokenizer_config.json', required=False))
  ours = huggingface.our_weights(state, config.model, np.asarray(vocab.marian_ids))
  del state  # Transformers' copy
  write_workdir(workdir, config, vocab, ours)
  m = config.model
  distributed.say(f'imported {directory} into {workdir} (step 0): {m.num_encoder_layers}+'
                  f'{m.num_decoder_layers} layers, d_model {m.d_model}, {m.vocab_size} '
                  f'pieces, {m.activation}, attention biases {m.attention_bias}, logits '
                  f'bias {m.logits_bias}; {config.data.source_lang} -> '
                  f'{config.data.target_lang}')


if __name__ == '__main__':
  cli.run(main)
