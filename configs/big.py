"""Transformer (big) of the paper, Table 3: d_model=1024, d_ff=4096, h=16, P_drop=0.3."""
from transformer_jax.config import defaults


def get_config():
  c = defaults()
  c.model.vocab_size = 37000
  c.model.d_model = 1024
  c.model.num_heads = 16
  c.model.d_ff = 4096
  c.model.num_encoder_layers = 6
  c.model.num_decoder_layers = 6
  c.model.dropout_rate = 0.3  # the paper's En-De big model; En-Fr used 0.1
  c.data.name = 'wmt14_translate/de-en'
  c.data.max_len = 256
  c.train.label_smoothing = 0.1
  c.train.warmup_steps = 4000
  c.train.num_steps = 300_000
  return c
