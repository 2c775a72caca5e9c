"""Transformer (base) of the paper, Table 3: N=6, d_model=512, d_ff=2048, h=8, P_drop=0.1."""
from transformer_jax.config import defaults


def get_config():
  c = defaults()
  c.model.vocab_size = 37000  # the paper's shared WMT En-De byte-pair vocabulary
  c.model.d_model = 512
  c.model.num_heads = 8
  c.model.d_ff = 2048
  c.model.num_encoder_layers = 6
  c.model.num_decoder_layers = 6
  c.model.dropout_rate = 0.1
  c.data.name = 'wmt14_translate/de-en'
  c.data.max_len = 256
  c.train.label_smoothing = 0.1
  c.train.warmup_steps = 4000
  c.train.num_steps = 100_000
  return c
