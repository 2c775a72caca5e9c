"""Our model as a Hugging Face Transformers `MarianMTModel`, with its `MarianTokenizer`:
a directory `AutoModelForSeq2SeqLM` and `AutoTokenizer` load with no other file.

Marian is the paper's post-norm Transformer too (ReLU here, scaled embeddings shared with
the output layer, the decoder started from the pad id), with three differences:
- its sinusoidal positions are not interleaved (sin in the first half of the channels,
  cos in the second) and are recomputed at load, not read. A model is the same function
  under any consistent order of its residual channels, so we write every weight with its
  model-dimension axis permuted into Marian's order (`channel_order`);
- its linear layers have biases: ours have none in attention, so they are zeros;
- its LayerNorm epsilon is fixed at 1e-5 (ours 1e-6), which nothing can carry over: the
  scores differ slightly (measured in docs/translating.md).
Pre-norm models have no Marian counterpart and are refused.
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np
from ml_collections import ConfigDict

from transformer_jax.data.tokenizer import EOS_ID, PAD_ID, UNK_ID
from transformer_jax.errors import UserError
from transformer_jax.serving import check_tied, weights

LAYER_NORM_EPSILON = 1e-5  # Marian's (torch.nn.LayerNorm's default); not configurable


def library():
  try:
    import torch  # noqa: PLC0415, F401 (the export extra; nothing else needs them)
    import transformers  # noqa: PLC0415
  except ImportError:
    raise UserError("export --format=huggingface needs Transformers and PyTorch: "
                    "pip install -e '.[export]'.") from None
  return transformers


def channel_order(d_model: int) -> np.ndarray:
  """Marian's channel k is our channel order[k]: our sin channels (even) first, then our
  cos channels (odd), at the same frequencies."""
  return np.concatenate([np.arange(0, d_model, 2), np.arange(1, d_model, 2)])


def check_exportable(cfg: ConfigDict) -> None:
  if cfg.pre_norm:
    raise UserError('This model is pre-norm (model.pre_norm=True); MarianMTModel is '
                    'post-norm only. Export it with --format=ctranslate2.')
  check_tied(cfg)


def marian_config(cfg: ConfigDict, max_positions: int):
  transformers = library()
  return transformers.MarianConfig(
      vocab_size=cfg.vocab_size, decoder_vocab_size=cfg.vocab_size, d_model=cfg.d_model,
      encoder_layers=cfg.num_encoder_layers, decoder_layers=cfg.num_decoder_layers,
      encoder_attention_heads=cfg.num_heads, decoder_attention_heads=cfg.num_heads,
      encoder_ffn_dim=cfg.d_ff, decoder_ffn_dim=cfg.d_ff, activation_function='relu',
      dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, scale_embedding=True,
      max_position_embeddings=max_positions,
      share_encoder_decoder_embeddings=cfg.share_embeddings, tie_word_embeddings=True,
      pad_token_id=PAD_ID, decoder_start_token_id=PAD_ID, eos_token_id=EOS_ID,
      forced_eos_token_id=EOS_ID, bos_token_id=None)


def marian_state(model, cfg: ConfigDict) -> dict[str, np.ndarray]:
  """Our parameters under Marian's names and layouts (torch's [out, in] linears), the
  model dimension in Marian's channel order."""
  w, order = weights(model), channel_order(cfg.d_model)
  state = {}

  def linear(name, kernel, bias=None, into_model=False, from_model=False):
    """Our kernel [in, out] (its model-dimension side(s) named) as Marian's weight."""
    kernel = kernel.T
    kernel = kernel[order] if into_model else kernel
    kernel = kernel[:, order] if from_model else kernel
    state[f'{name}.weight'] = np.ascontiguousarray(kernel)
    bias = np.zeros(kernel.shape[0], np.float32) if bias is None else bias
    state[f'{name}.bias'] = bias[order] if into_model else bias

  def attention(name, prefix):
    for ours, theirs in (('query', 'q_proj'), ('key', 'k_proj'), ('value', 'v_proj')):
      kernel = w[f'{prefix}/{ours}/kernel']  # [D, H, K]
      linear(f'{name}.{theirs}', kernel.reshape(kernel.shape[0], -1), from_model=True)
    out = w[f'{prefix}/output/kernel']  # [H, K, D]
    linear(f'{name}.out_proj', out.reshape(-1, out.shape[-1]), into_model=True)

  def norm(name, prefix):
    state[f'{name}.weight'] = w[f'{prefix}/scale'][order]
    state[f'{name}.bias'] = w[f'{prefix}/bias'][order]

  def feed_forward(name, prefix):
    linear(f'{name}.fc1', w[f'{prefix}/feed_forward/w1/kernel'],
           w[f'{prefix}/feed_forward/w1/bias'], from_model=True)
    linear(f'{name}.fc2', w[f'{prefix}/feed_forward/w2/kernel'],
           w[f'{prefix}/feed_forward/w2/bias'], into_model=True)
    norm(f'{name}.final_layer_norm', f'{prefix}/feed_forward_block/norm')

  source = w['source_embedding/table/embedding'][:, order]
  target = w.get('target_embedding/table/embedding', w['source_embedding/table/embedding'])
  target = target[:, order]
  state['model.encoder.embed_tokens.weight'] = source
  state['model.decoder.embed_tokens.weight'] = state['lm_head.weight'] = target
  if cfg.share_embeddings:
    state['model.shared.weight'] = source
  state['final_logits_bias'] = np.zeros((1, cfg.vocab_size), np.float32)
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
  return state


def marian_model(model, cfg: ConfigDict, max_positions: int = 1024):
  """The `MarianMTModel` (torch, float32, eval mode) computing what `model` computes."""
  check_exportable(cfg)
  transformers = library()
  import torch  # noqa: PLC0415
  marian = transformers.MarianMTModel(marian_config(cfg, max_positions)).eval()
  state = {k: torch.from_numpy(v) for k, v in marian_state(model, cfg).items()}
  missing, unexpected = marian.load_state_dict(state, strict=False)
  # Positions are computed by Marian itself; everything else must have come from us.
  missing = [k for k in missing if not k.endswith('embed_positions.weight')]
  if missing or unexpected:
    raise RuntimeError(f'Marian weights missing {missing}, unexpected {unexpected}')
  marian.generation_config = transformers.GenerationConfig(
      decoder_start_token_id=PAD_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
      forced_eos_token_id=EOS_ID, bad_words_ids=[[PAD_ID]], num_beams=4,
      min_new_tokens=1, max_length=max_positions)  # no empty output, as our decoder
  return marian


def write_tokenizer(spm_model: bytes, pieces: list[str], output: str,
                    max_positions: int = 1024) -> None:
  """A `MarianTokenizer` of our SentencePiece model into `output`: ids are ours, EOS
  appended to every source as our pipeline does."""
  transformers = library()
  with tempfile.TemporaryDirectory() as tmp:
    spm_path, vocab_path = os.path.join(tmp, 'spm.model'), os.path.join(tmp, 'vocab.json')
    with open(spm_path, 'wb') as f:
      f.write(spm_model)
    with open(vocab_path, 'w', encoding='utf-8') as f:
      json.dump({piece: i for i, piece in enumerate(pieces)}, f, ensure_ascii=False)
    tokenizer = transformers.MarianTokenizer(
        spm_path, spm_path, vocab_path, unk_token=pieces[UNK_ID], eos_token=pieces[EOS_ID],
        pad_token=pieces[PAD_ID], model_max_length=max_positions)
    tokenizer.save_pretrained(output)


def write_huggingface(model, cfg: ConfigDict, spm_model: bytes, pieces: list[str],
                      output: str, max_positions: int = 1024) -> None:
  """The Hugging Face directory `output` (which must exist): model and tokenizer."""
  marian_model(model, cfg, max_positions).save_pretrained(output)
  write_tokenizer(spm_model, pieces, output, max_positions)
