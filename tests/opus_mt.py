"""A small OPUS-MT-layout Hugging Face directory made in the test (nothing downloaded):
a random `MarianMTModel` (swish, non-zero attention and logits biases, Marian's ids: eos
0, unk 1, pad last) with a `MarianTokenizer` of two SentencePiece models trained here on
the synthetic corpus's two sides, and two target-language tokens (`>>deu<<`, `>>nld<<`)."""
import io
import json

import numpy as np
import sentencepiece as spm
import torch
import transformers

from transformer_jax.data import synthetic

LANGUAGE_TOKENS = ('>>deu<<', '>>nld<<')


def pairs(count: int = 2000, seed: int = 11) -> list[tuple[str, str]]:
  return synthetic.generate_pairs(seed, count)


def _spm(sentences, vocab_size: int) -> bytes:
  model = io.BytesIO()
  # Marian's own SentencePiece ids (unk 0, <s> 1, </s> 2) are never used: vocab.json's are.
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size,
      model_type='unigram', character_coverage=1.0, minloglevel=2, num_threads=1)
  return model.getvalue()


def write_tokenizer(directory, vocab_size=120) -> int:
  """source.spm, target.spm (each trained on its side of the synthetic corpus), vocab.json
  (Marian's numbering, two language tokens) and the MarianTokenizer's config; returns the
  number of pieces."""
  text = pairs()
  models = {'source.spm': _spm([p[0] for p in text], vocab_size // 2),
            'target.spm': _spm([p[1] for p in text], vocab_size // 2)}
  pieces = []
  for data in models.values():
    sp = spm.SentencePieceProcessor(model_proto=data)
    pieces += [sp.id_to_piece(i) for i in range(3, sp.get_piece_size())]
  pieces = list(dict.fromkeys(pieces))
  vocab = {'</s>': 0, '<unk>': 1}
  for piece in (*LANGUAGE_TOKENS, *pieces):
    vocab.setdefault(piece, len(vocab))
  vocab['<pad>'] = len(vocab)
  for name, data in models.items():
    (directory / name).write_bytes(data)
  (directory / 'vocab.json').write_text(json.dumps(vocab, ensure_ascii=False))
  tokenizer = transformers.MarianTokenizer(
      str(directory / 'source.spm'), str(directory / 'target.spm'),
      str(directory / 'vocab.json'), source_lang='en', target_lang='de')
  tokenizer.save_pretrained(str(directory))
  return len(vocab)


def build(directory, *, share=True, tie=True, activation='swish', scale=True, seed=0):
  """Write the directory (tokenizer and a random model); returns its MarianConfig."""
  v = write_tokenizer(directory)
  config = transformers.MarianConfig(
      vocab_size=v, decoder_vocab_size=v, d_model=32, encoder_layers=2, decoder_layers=2,
      encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
      decoder_ffn_dim=64, activation_function=activation, scale_embedding=scale,
      max_position_embeddings=256, share_encoder_decoder_embeddings=share,
      tie_word_embeddings=tie, pad_token_id=v - 1, decoder_start_token_id=v - 1,
      eos_token_id=0, forced_eos_token_id=0, bad_words_ids=[[v - 1]], dropout=0.1)
  torch.manual_seed(seed)
  model = transformers.MarianMTModel(config).eval()
  with torch.no_grad():  # far from Transformers' tiny init: every weight's error would show
    for name, p in model.named_parameters():
      if 'layer_norm' in name and name.endswith('weight'):
        p.copy_(1 + 0.2 * torch.randn_like(p))
      elif 'embed_positions' not in name:
        p.copy_((0.3 if p.dim() > 1 else 0.2) * torch.randn_like(p))
    model.final_logits_bias.normal_(0, 0.2)  # a buffer, not a parameter
  model.save_pretrained(str(directory))
  return config


def from_trained(restored, directory, activation='swish', seed=0):
  """Our trained model (whose translations end) rewritten in OPUS-MT's layout: Marian's
  ids (eos 0, unk 1, pad last), non-zero attention and logits biases, and `activation`
  in place of ReLU (a close function: its translations still end). Returns the config."""
  from transformer_jax import huggingface  # noqa: PLC0415
  cfg, tokenizer = restored.config.model, restored.tokenizer
  state = {k: v for k, v in huggingface.marian_model(restored.model, cfg).state_dict().items()
           if 'embed_positions' not in k}  # Marian computes those
  v = cfg.vocab_size
  marian = np.concatenate([[v - 1, 0, 1], np.arange(2, v - 1)])  # of our ids 0, 1, 2, ...
  rng = torch.Generator().manual_seed(seed)
  for name, value in state.items():
    if name.endswith(('embed_tokens.weight', 'shared.weight', 'lm_head.weight')):
      state[name] = torch.empty_like(value)
      state[name][marian] = value
    elif name == 'final_logits_bias':
      state[name] = torch.empty_like(value)
      state[name][0, marian] = value[0] + 0.2 * torch.randn(v, generator=rng)
    elif 'attn.' in name and name.endswith('.bias'):
      state[name] = value + 0.1 * torch.randn(value.shape, generator=rng)
  config = transformers.MarianConfig(
      vocab_size=v, decoder_vocab_size=v, d_model=cfg.d_model,
      encoder_layers=cfg.num_encoder_layers, decoder_layers=cfg.num_decoder_layers,
      encoder_attention_heads=cfg.num_heads, decoder_attention_heads=cfg.num_heads,
      encoder_ffn_dim=cfg.d_ff, decoder_ffn_dim=cfg.d_ff, activation_function=activation,
      scale_embedding=True, max_position_embeddings=512, pad_token_id=v - 1,
      decoder_start_token_id=v - 1, eos_token_id=0, forced_eos_token_id=0,
      bad_words_ids=[[v - 1]])
  model = transformers.MarianMTModel(config).eval()
  missing, unexpected = model.load_state_dict(state, strict=False)
  assert not unexpected and all('embed_positions' in k for k in missing)
  model.save_pretrained(str(directory))
  for side in ('source', 'target'):
    (directory / f'{side}.spm').write_bytes(tokenizer.serialized())
  vocab = {tokenizer.piece(i): int(marian[i]) for i in range(v)}
  (directory / 'vocab.json').write_text(json.dumps(vocab, ensure_ascii=False))
  transformers.MarianTokenizer(
      str(directory / 'source.spm'), str(directory / 'target.spm'),
      str(directory / 'vocab.json'), source_lang='en', target_lang='de',
      unk_token=tokenizer.piece(2), eos_token=tokenizer.piece(1),
      pad_token=tokenizer.piece(0)).save_pretrained(str(directory))
  return config
