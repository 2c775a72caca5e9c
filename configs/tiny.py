"""A model small enough for unit tests: compiles and steps in well under a second."""
from transformer_jax.config import defaults


def get_config():
  c = defaults()
  c.model.vocab_size = 128
  c.model.d_model = 32
  c.model.num_heads = 4
  c.model.d_ff = 64
  c.model.num_encoder_layers = 2
  c.model.num_decoder_layers = 2
  c.model.dropout_rate = 0.1
  c.data.max_len = 24
  c.data.truncate = True  # with 128 pieces most synthetic sentences exceed 24 tokens
  c.data.batch_size = 8
  c.train.num_steps = 20
  c.train.warmup_steps = 10
  return c
