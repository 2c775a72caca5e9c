"""A trained model, anywhere: checkpoint -> config, vocabulary and parameters on the
devices of this machine, whatever mesh it was trained on."""
from __future__ import annotations

import base64
import dataclasses
import os

import jax
from flax import nnx
from ml_collections import ConfigDict

from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import config as config_lib
from transformer_jax import files
from transformer_jax import sharding
from transformer_jax.data import tokenizer as tokenizer_lib
from transformer_jax.errors import UserError
from transformer_jax.steps import build
from transformer_jax.model import Transformer

AVERAGED_DIR = 'averaged'  # `average` writes its checkpoint under WORKDIR/averaged


@dataclasses.dataclass
class Restored:
  config: ConfigDict
  tokenizer: tokenizer_lib.Tokenizer
  model: Transformer
  mesh: jax.sharding.Mesh
  step: int


def checkpoint_root(workdir: str, averaged: bool) -> str:
  root = os.path.join(workdir, AVERAGED_DIR) if averaged else workdir
  if not (files.path(root) / checkpoint_lib.CHECKPOINT_DIR).is_dir():
    what = 'an averaged checkpoint (run transformer_jax.average first)' if averaged else \
        'checkpoints (train first, or point --workdir at a training run)'
    raise UserError(f'{workdir} holds no {what}.')
  return root


def restore(workdir: str, step: int | None = None, averaged: bool = False) -> Restored:
  """The latest (or `step`'s, or the averaged) checkpoint's model on this machine."""
  root = checkpoint_root(workdir, averaged)
  probe = checkpoint_lib.Checkpoints(root, config_lib.defaults(), async_save=False)
  steps = probe.steps()
  if not steps:
    raise UserError(f'{probe.directory} holds no complete checkpoint.')
  step = steps[-1] if step is None else step
  if step not in steps:
    raise UserError(f'No checkpoint at step {step} in {probe.directory}; there are: '
                    f'{", ".join(map(str, steps))}.')
  meta = probe.meta(step)
  probe.close()
  config = config_lib.from_checkpoint(meta['config'])
  config.mesh.update(dict(data=-1, fsdp=1, tensor=1))  # whatever devices this machine has
  tokenizer = _checkpoint_vocabulary(workdir, meta, config)
  mesh = sharding.make_mesh(config.mesh)
  setup = build(config, mesh)
  checkpoints = checkpoint_lib.Checkpoints(root, config, async_save=False)
  state = checkpoints.restore(step, setup.abstract_state)
  checkpoints.close()
  model = nnx.merge(setup.graphdef, state.params)
  return Restored(config, tokenizer, model, mesh, step)


def _checkpoint_vocabulary(workdir, meta, config) -> tokenizer_lib.Tokenizer:
  """The vocabulary stored in the checkpoint; a vocab.model beside it must be the same."""
  proto = base64.b64decode(meta['vocab_model'])
  local = os.path.join(workdir, tokenizer_lib.VOCAB_FILE)
  if files.path(local).exists():
    if checkpoint_lib.vocab_fingerprint(local)[0] != meta['vocab_sha256']:
      raise UserError(f'{local} does not match the vocabulary the checkpoint was trained '
                      'with. Restore the original file, or remove it to use the copy '
                      'stored in the checkpoint.')
  tokenizer = tokenizer_lib.Tokenizer(proto, local, config.data.lowercase)
  if tokenizer.vocab_size != config.model.vocab_size:
    raise UserError('The checkpoint is inconsistent: its vocabulary has '
                    f'{tokenizer.vocab_size} pieces, its config {config.model.vocab_size}.')
  return tokenizer
