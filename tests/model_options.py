"""The model options an imported Marian (OPUS-MT) model sets, for tests that check each
path carries them; biases start at zero, so tests randomize them."""
import numpy as np
from flax import nnx

MARIAN = dict(activation='swish', attention_bias=True, logits_bias=True,
              scale_embedding=False, layer_norm_epsilon=1e-5)


def randomize_biases(model, seed=0):
  """Every bias of `model` non-zero, in place, so that each is tested as carried over."""
  rng = np.random.default_rng(seed)
  for path, value in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    if path[-1] in ('bias', 'logits_bias'):
      value[...] = rng.normal(0, 0.1, value.shape).astype(np.float32)
