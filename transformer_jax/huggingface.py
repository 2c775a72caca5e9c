"""Our model as a Hugging Face Transformers `MarianMTModel` with its `MarianTokenizer`, and
back: one table of which of our parameters is which of Marian's (`_table`), read one way
by export (`marian_state`) and the other by import_model.py (`our_weights`).

Marian (the engine of OPUS-MT) is the paper's post-norm Transformer too, the decoder
started from the pad id. Where it differs our model has an option (model.activation,
attention_bias, logits_bias, scale_embedding, layer_norm_epsilon, untied embeddings);
two differences need none:
- its sinusoidal positions are not interleaved (sin in the first half of the channels,
  cos in the second) and are recomputed at load, not read. A model is the same function
  under any consistent order of its residual channels, so every weight's model-dimension
  axis is permuted between the two orders (`channel_order`);
- its ids: ours reserve 0, 1, 2 for pad, eos and unk; OPUS-MT's vocabularies put eos at
  0, unk at 1 and pad last. Embedding rows are permuted by `marian_ids` (our id i is
  Marian's marian_ids[i]; the identity for a vocabulary trained here).
Its LayerNorm epsilon is fixed at 1e-5; a model of ours with another (1e-6 by default)
exports with that change (measured in docs/translating.md). Pre-norm models have no
Marian counterpart and are refused.
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np
from ml_collections import ConfigDict

from transformer_jax.data.marian import MarianVocabulary
from transformer_jax.data.tokenizer import EOS_ID, PAD_ID, UNK_ID
from transformer_jax.errors import UserError
from transformer_jax.serving import weights

LAYER_NORM_EPSILON = 1e-5  # Marian's (torch.nn.LayerNorm's default); not configurable


def library():
  try:
    import torch  # noqa: PLC0415, F401 (the export extra; nothing else needs them)
    import transformers  # noqa: PLC0415
  except ImportError:
    raise UserError("Hugging Face models need Transformers and PyTorch: "
                    "pip install -e '.[export]'.") from None
  transformers.utils.logging.disable_progress_bar()  # our commands print one line each
  return transformers


def channel_order(d_model: int) -> np.ndarray:
  """Marian's channel k is our channel order[k]: our sin channels (even) first, then our
  cos channels (odd), at the same frequencies."""
  return np.concatenate([np.arange(0, d_model, 2), np.arange(1, d_model, 2)])


def marian_ids(tokenizer) -> np.ndarray:
  """Our id i is Marian's id marian_ids(tokenizer)[i]."""
  if isinstance(tokenizer, MarianVocabulary):
    return np.asarray(tokenizer.marian_ids)
  return np.arange(tokenizer.vocab_size)


def check_exportable(cfg: ConfigDict) -> None:
  if cfg.pre_norm:
    raise UserError('This model is pre-norm (model.pre_norm=True); MarianMTModel is '
                    'post-norm only. Export it with --format=ctranslate2.')


def marian_config(cfg: ConfigDict, ids: np.ndarray, max_positions: int):
  transformers = library()
  pad, eos = int(ids[PAD_ID]), int(ids[EOS_ID])
  return transformers.MarianConfig(
      vocab_size=cfg.vocab_size, decoder_vocab_size=cfg.vocab_size, d_model=cfg.d_model,
      encoder_layers=cfg.num_encoder_layers, decoder_layers=cfg.num_decoder_layers,
      encoder_attention_heads=cfg.num_heads, decoder_attention_heads=cfg.num_heads,
      encoder_ffn_dim=cfg.d_ff, decoder_ffn_dim=cfg.d_ff,
      activation_function=cfg.activation,  # Transformers' names for ours (ACT2FN)
      dropout=cfg.dropout_rate,
      attention_dropout=cfg.attention_dropout_rate, activation_dropout=0.0,
      scale_embedding=cfg.scale_embedding, max_position_embeddings=max_positions,
      share_encoder_decoder_embeddings=cfg.share_embeddings,
      tie_word_embeddings=cfg.tie_output_embedding, pad_token_id=pad,
      decoder_start_token_id=pad, eos_token_id=eos, forced_eos_token_id=eos,
      bos_token_id=None)


# ----------------------------------------------------------------------------- the table
# Each row: (Marian's name, our parameter's path, how the two are laid out, our shape,
# Marian's shape where the path is None: ours has no such parameter, Marian's is zeros).
# Layouts: 'in'/'out': a linear whose input/output is the model dimension (torch's are
# [out, in]); 'bias': as is; 'model': a vector over the model dimension; 'embedding'
# [V, D], 'projection' (ours [D, V]), 'logits' (Marian's [1, V]): rows by id.


def _table(cfg: ConfigDict) -> list[tuple]:
  d, h, f, v = cfg.d_model, cfg.num_heads, cfg.d_ff, cfg.vocab_size
  k = d // h
  rows = []

  def row(name, path, layout, shape, marian_shape=None):
    rows.append((name, path, layout, shape, marian_shape))

  def attention(name, prefix):
    optional = lambda path: path if cfg.attention_bias else None  # noqa: E731
    for ours, theirs in (('query', 'q_proj'), ('key', 'k_proj'), ('value', 'v_proj')):
      row(f'{name}.{theirs}.weight', f'{prefix}/{ours}/kernel', 'in', (d, h, k))
      row(f'{name}.{theirs}.bias', optional(f'{prefix}/{ours}/bias'), 'bias', (h, k), (d,))
    row(f'{name}.out_proj.weight', f'{prefix}/output/kernel', 'out', (h, k, d))
    row(f'{name}.out_proj.bias', optional(f'{prefix}/output/bias'), 'model', (d,), (d,))

  def norm(name, prefix):
    row(f'{name}.weight', f'{prefix}/scale', 'model', (d,))
    row(f'{name}.bias', f'{prefix}/bias', 'model', (d,))

  def feed_forward(name, prefix):
    row(f'{name}.fc1.weight', f'{prefix}/feed_forward/w1/kernel', 'in', (d, f))
    row(f'{name}.fc1.bias', f'{prefix}/feed_forward/w1/bias', 'bias', (f,))
    row(f'{name}.fc2.weight', f'{prefix}/feed_forward/w2/kernel', 'out', (f, d))
    row(f'{name}.fc2.bias', f'{prefix}/feed_forward/w2/bias', 'model', (d,))
    norm(f'{name}.final_layer_norm', f'{prefix}/feed_forward_block/norm')

  source = 'source_embedding/table/embedding'
  target = source if cfg.share_embeddings else 'target_embedding/table/embedding'
  row('model.encoder.embed_tokens.weight', source, 'embedding', (v, d))
  row('model.decoder.embed_tokens.weight', target, 'embedding', (v, d))
  if cfg.share_embeddings:
    row('model.shared.weight', source, 'embedding', (v, d))
  if cfg.tie_output_embedding:
    row('lm_head.weight', target, 'embedding', (v, d))
  else:
    row('lm_head.weight', 'output_projection/kernel', 'projection', (d, v))
  row('final_logits_bias', 'logits_bias' if cfg.logits_bias else None, 'logits', (v,), (1, v))
  for i in range(cfg.num_encoder_layers):
    name, prefix = f'model.encoder.layers.{i}', f'encoder_layers/{i}'
    attention(f'{name}.self_attn', f'{prefix}/self_attention')
    norm(f'{name}.self_attn_layer_norm', f'{prefix}/attention_block/norm')
    feed_forward(name, prefix)
  for i in range(cfg.num_decoder_layers):
    name, prefix = f'model.decoder.layers.{i}', f'decoder_layers/{i}'
    attention(f'{name}.self_attn', f'{prefix}/self_attention')
    norm(f'{name}.self_attn_layer_norm', f'{prefix}/self_attention_block/norm')
    attention(f'{name}.encoder_attn', f'{prefix}/cross_attention')
    norm(f'{name}.encoder_attn_layer_norm', f'{prefix}/cross_attention_block/norm')
    feed_forward(name, prefix)
  return rows


def _to_marian(x: np.ndarray, layout: str, order, ids) -> np.ndarray:
  if layout == 'in':
    return x.reshape(x.shape[0], -1).T[:, order]
  if layout == 'out':
    return x.reshape(-1, x.shape[-1]).T[order]
  if layout == 'bias':
    return x.reshape(-1)
  if layout == 'model':
    return x[order]
  out = np.empty_like(x if layout != 'projection' else x.T)
  if layout == 'logits':  # [V] -> [1, V]
    out[ids] = x
    return out[None]
  out[ids] = (x if layout == 'embedding' else x.T)[:, order]
  return out


def _from_marian(x: np.ndarray, layout: str, shape, inverse, ids) -> np.ndarray:
  if layout == 'in':
    return x[:, inverse].T.reshape(shape)
  if layout == 'out':
    return x[inverse].T.reshape(shape)
  if layout == 'bias':
    return x.reshape(shape)
  if layout == 'model':
    return x[inverse]
  if layout == 'logits':
    return x[0, ids]
  rows = x[ids][:, inverse]
  return rows if layout == 'embedding' else rows.T


def marian_state(model, cfg: ConfigDict, ids: np.ndarray) -> dict[str, np.ndarray]:
  """Our parameters under Marian's names and layouts."""
  w, order = weights(model), channel_order(cfg.d_model)
  return {name: np.ascontiguousarray(_to_marian(w[path], layout, order, ids))
          if path else np.zeros(marian_shape, np.float32)
          for name, path, layout, _, marian_shape in _table(cfg)}


def our_weights(state: dict[str, np.ndarray], cfg: ConfigDict,
                ids: np.ndarray) -> dict[str, np.ndarray]:
  """Marian's parameters (`state`, float32 numpy by name) as ours, by path; raises
  UserError naming one that is missing or of another shape."""
  inverse = np.argsort(channel_order(cfg.d_model))
  ours = {}
  for name, path, layout, shape, _ in _table(cfg):
    if path is None or path in ours:
      continue
    if name not in state:
      raise UserError(f'The model lacks {name}: not a MarianMTModel of this config.')
    try:
      ours[path] = _from_marian(np.asarray(state[name], np.float32), layout, shape,
                                inverse, ids)
      if ours[path].shape != tuple(shape):
        raise ValueError
    except (ValueError, IndexError):
      raise UserError(f'{name} has shape {tuple(state[name].shape)}, not what config.json '
                      'says.') from None
  return ours


# ----------------------------------------------------------------------------- writing


def marian_model(model, cfg: ConfigDict, ids: np.ndarray | None = None,
                 max_positions: int = 1024):
  """The `MarianMTModel` (torch, float32, eval mode) computing what `model` computes."""
  check_exportable(cfg)
  transformers = library()
  import torch  # noqa: PLC0415
  ids = np.arange(cfg.vocab_size) if ids is None else ids
  marian = transformers.MarianMTModel(marian_config(cfg, ids, max_positions)).eval()
  state = {k: torch.from_numpy(v) for k, v in marian_state(model, cfg, ids).items()}
  missing, unexpected = marian.load_state_dict(state, strict=False)
  # Positions are computed by Marian itself; everything else must have come from us.
  missing = [k for k in missing if not k.endswith('embed_positions.weight')]
  if missing or unexpected:
    raise RuntimeError(f'Marian weights missing {missing}, unexpected {unexpected}')
  pad, eos = int(ids[PAD_ID]), int(ids[EOS_ID])
  marian.generation_config = transformers.GenerationConfig(
      decoder_start_token_id=pad, eos_token_id=eos, pad_token_id=pad,
      forced_eos_token_id=eos, bad_words_ids=[[pad]], num_beams=4,
      min_new_tokens=1, max_length=max_positions)  # no empty output, as our decoder
  return marian


def write_tokenizer(tokenizer, output: str, max_positions: int = 1024) -> None:
  """`tokenizer` (ours, or an imported Marian vocabulary) as a `MarianTokenizer` into
  `output`, numbering pieces as the exported model does; EOS appended to every source as
  our pipeline does."""
  transformers = library()
  ids = marian_ids(tokenizer)
  pieces = [tokenizer.piece(i) for i in range(tokenizer.vocab_size)]
  with tempfile.TemporaryDirectory() as tmp:
    paths = {side: os.path.join(tmp, f'{side}.spm') for side in ('source', 'target')}
    for side, path in paths.items():
      with open(path, 'wb') as f:
        f.write(tokenizer.spm_model(side) if isinstance(tokenizer, MarianVocabulary)
                else tokenizer.serialized())
    vocab_path = os.path.join(tmp, 'vocab.json')
    with open(vocab_path, 'w', encoding='utf-8') as f:
      json.dump({piece: int(ids[i]) for i, piece in enumerate(pieces)}, f,
                ensure_ascii=False)
    marian = transformers.MarianTokenizer(
        paths['source'], paths['target'], vocab_path, unk_token=pieces[UNK_ID],
        eos_token=pieces[EOS_ID], pad_token=pieces[PAD_ID], model_max_length=max_positions)
    marian.save_pretrained(output)


def write_huggingface(model, cfg: ConfigDict, tokenizer, output: str,
                      max_positions: int = 1024) -> None:
  """The Hugging Face directory `output` (which must exist): model and tokenizer."""
  marian_model(model, cfg, marian_ids(tokenizer), max_positions).save_pretrained(output)
  write_tokenizer(tokenizer, output, max_positions)
