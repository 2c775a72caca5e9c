"""Our model in CTranslate2, the engine people serve translation with: the model spec
built from the weights with CTranslate2's own API (`TransformerSpec`).

Our model is the one CTranslate2 implements for OpenNMT and Marian: post- or pre-norm,
the feed-forward activation, attention and logits biases, embedding scale and LayerNorm
epsilon as configured, the output layer tied to the target embedding. Two things are
ours and go into the spec: the interleaved
sinusoidal positions (sin, cos per channel pair; given as a table) and the decoder's
start, the pad id's own embedding. Padding is never produced: the output layer gets a
bias of 0 everywhere but -1e9 at the pad id (the weights stay tied).
"""
from __future__ import annotations


import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from transformer_jax.data.marian import MarianVocabulary
from transformer_jax.data.tokenizer import EOS_ID, PAD_ID, UNK_ID
from transformer_jax.errors import UserError
from transformer_jax.model import sinusoidal_positions

SPM_FILE = 'sentencepiece.model'
_ACTIVATIONS = {'relu': 'RELU', 'gelu': 'GELU', 'swish': 'SWISH'}  # ours -> CTranslate2's
_NEVER = -1e9  # the output bias at the pad id


def engine():
  try:
    import ctranslate2  # noqa: PLC0415 (the export extra; nothing else needs it)
  except ImportError:
    raise UserError("export needs CTranslate2: pip install -e '.[export]'.") from None
  return ctranslate2


def check_exportable(cfg: ConfigDict, tokenizer=None) -> None:
  """The output layer must be tied to the target embedding, as the paper's is; the
  vocabulary our own (a Marian model's goes through Transformers' converter)."""
  if not cfg.tie_output_embedding:
    raise UserError('This model has a separate output projection (model.'
                    'tie_output_embedding=False); --format=ctranslate2 exports tied ones '
                    'only. Export it with --format=huggingface.')
  if isinstance(tokenizer, MarianVocabulary):
    raise UserError('This model has an imported Marian vocabulary; export it with '
                    '--format=huggingface, then convert that with CTranslate2\'s own '
                    'ct2-transformers-converter.')


def weights(model) -> dict[str, np.ndarray]:
  """Every parameter as float32 numpy, by its path ('encoder_layers/0/...')."""
  state = nnx.state(model, nnx.Param)
  # Copies, writable: CTranslate2 quantizes in place.
  return {'/'.join(map(str, path)): np.array(value, np.float32)
          for path, value in nnx.to_flat_state(state)}


def ctranslate2_spec(model, cfg: ConfigDict, pieces: list[str], positions: int):
  """The CTranslate2 `TransformerSpec` of `model` (of model config `cfg`, vocabulary
  `pieces`: id i is pieces[i]), weights set; `positions` rows of position table."""
  check_exportable(cfg)
  engine()
  from ctranslate2.specs import common_spec, transformer_spec  # noqa: PLC0415
  w = weights(model)
  spec = transformer_spec.TransformerSpec.from_config(
      (cfg.num_encoder_layers, cfg.num_decoder_layers), cfg.num_heads,
      pre_norm=cfg.pre_norm, activation=common_spec.Activation[_ACTIVATIONS[cfg.activation]])
  table = w['source_embedding/table/embedding']
  target_table = w.get('target_embedding/table/embedding', table)
  position_table = np.asarray(sinusoidal_positions(np.arange(positions), cfg.d_model))
  for stack, embedding in ((spec.encoder, table), (spec.decoder, target_table)):
    embeddings = stack.embeddings if isinstance(stack.embeddings, list) else [stack.embeddings]
    embeddings[0].weight = embedding
    stack.scale_embeddings = cfg.scale_embedding
    stack.position_encodings.encodings = position_table
  for i, layer in enumerate(spec.encoder.layer):
    prefix = f'encoder_layers/{i}'
    _attention(layer.self_attention, w, f'{prefix}/self_attention', fused=True)
    _norm(layer.self_attention.layer_norm, w, f'{prefix}/attention_block/norm')
    _feed_forward(layer.ffn, w, prefix)
  for i, layer in enumerate(spec.decoder.layer):
    prefix = f'decoder_layers/{i}'
    _attention(layer.self_attention, w, f'{prefix}/self_attention', fused=True)
    _norm(layer.self_attention.layer_norm, w, f'{prefix}/self_attention_block/norm')
    _attention(layer.attention, w, f'{prefix}/cross_attention', fused=False)
    _norm(layer.attention.layer_norm, w, f'{prefix}/cross_attention_block/norm')
    _feed_forward(layer.ffn, w, prefix)
  if cfg.pre_norm:
    _norm(spec.encoder.layer_norm, w, 'encoder_norm')
    _norm(spec.decoder.layer_norm, w, 'decoder_norm')
  spec.decoder.projection.weight = target_table
  bias = w.get('logits_bias', np.zeros(cfg.vocab_size, np.float32))
  bias[PAD_ID] = _NEVER
  spec.decoder.projection.bias = bias
  spec.decoder.start_from_zero_embedding = False
  spec.register_source_vocabulary(pieces)
  spec.register_target_vocabulary(pieces)
  spec.config.add_source_bos = spec.config.add_source_eos = False
  spec.config.bos_token = spec.config.decoder_start_token = pieces[PAD_ID]
  spec.config.eos_token, spec.config.unk_token = pieces[EOS_ID], pieces[UNK_ID]
  spec.config.layer_norm_epsilon = cfg.layer_norm_epsilon
  return spec


def _attention(spec, w, prefix: str, fused: bool) -> None:
  """Our projections [D, H, K] (query/key/value) and [H, K, D] (output) as CTranslate2's
  linear layers [out, in]; self-attention fuses Q, K and V, cross-attention K and V."""
  q, k, v = (w[f'{prefix}/{n}/kernel'] for n in ('query', 'key', 'value'))
  q, k, v = (x.reshape(x.shape[0], -1).T for x in (q, k, v))
  if fused:
    spec.linear[0].weight = np.concatenate([q, k, v])
  else:
    spec.linear[0].weight = q
    spec.linear[1].weight = np.concatenate([k, v])
  out = w[f'{prefix}/output/kernel']
  spec.linear[-1].weight = out.reshape(-1, out.shape[-1]).T
  if f'{prefix}/query/bias' in w:  # model.attention_bias
    q, k, v = (w[f'{prefix}/{n}/bias'].reshape(-1) for n in ('query', 'key', 'value'))
    biases = [np.concatenate([q, k, v])] if fused else [q, np.concatenate([k, v])]
    for linear, bias in zip(spec.linear, biases + [w[f'{prefix}/output/bias']]):
      linear.bias = bias


def _norm(spec, w, prefix: str) -> None:
  spec.gamma, spec.beta = w[f'{prefix}/scale'], w[f'{prefix}/bias']


def _feed_forward(spec, w, prefix: str) -> None:
  _norm(spec.layer_norm, w, f'{prefix}/feed_forward_block/norm')
  for linear, name in ((spec.linear_0, 'w1'), (spec.linear_1, 'w2')):
    linear.weight = w[f'{prefix}/feed_forward/{name}/kernel'].T
    linear.bias = w[f'{prefix}/feed_forward/{name}/bias']


def write_ctranslate2(model, cfg: ConfigDict, pieces: list[str], output: str,
                      quantization: str = 'float32', positions: int = 1024) -> None:
  """The CTranslate2 model directory `output` (which must exist), weights `quantization`."""
  spec = ctranslate2_spec(model, cfg, pieces, positions)
  spec.validate()
  spec.optimize(quantization=None if quantization == 'float32' else quantization)
  spec.save(output)
