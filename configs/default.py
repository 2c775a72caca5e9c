"""The CPU demo (the README's main job): a small Transformer on the built-in synthetic
corpus, sized to reach low loss in a few minutes on a 2-core CPU."""
from transformer_jax.config import defaults


def get_config():
  c = defaults()
  c.model.vocab_size = 512  # the synthetic corpus supports up to ~570 pieces
  c.model.d_model = 128
  c.model.num_heads = 4
  c.model.d_ff = 512
  c.model.num_encoder_layers = 2
  c.model.num_decoder_layers = 2
  c.model.dropout_rate = 0.1
  c.data.name = 'synthetic'
  c.data.max_len = 48
  c.data.batch_size = 32
  c.train.num_steps = 1500
  c.train.warmup_steps = 300
  c.train.learning_rate = 2.0
  c.train.log_every = 50
  c.train.eval_every = 250
  c.train.checkpoint_every = 250
  return c
