"""`python -m transformer_jax.prepare --config=FILE [--workdir=DIR]`: build the dataset and
the vocabulary before training.

Builds the TFDS dataset `data.name` selects into `data.tfds_dir` (TensorFlow is needed
only by TFDS catalog builders such as `wmt14_translate/de-en`) and trains the
SentencePiece vocabulary at `data.vocab_path` (or WORKDIR/vocab.model). On a pod slice,
run it once with both in a bucket; the workers' `train` then only reads them and needs
no TensorFlow. `train` does the same on its own if nothing is prepared, so this command
is optional off a pod. Prints what it built, as JSON.
"""
from __future__ import annotations

import json

from transformer_jax import cli, distributed
from transformer_jax.data import datasets, pipeline
from transformer_jax.errors import UserError


def main(argv):
  del argv
  config = cli.resolved_config()
  workdir = cli.WORKDIR.value
  if workdir is None and not config.data.vocab_path:
    raise UserError('Say where the vocabulary goes: --config.data.vocab_path=PATH (e.g. '
                    'gs://BUCKET/vocab.model) or --workdir=DIR (DIR/vocab.model).')
  tokenizer = pipeline.prepare(config, workdir, new_vocab_path=True)
  b = datasets.builder(config.data)
  distributed.say(json.dumps({
      'dataset': config.data.name, 'tfds_dir': str(b.data_dir),
      'splits': {name: split.num_examples for name, split in sorted(b.info.splits.items())},
      'vocabulary': tokenizer.path, 'vocab_size': tokenizer.vocab_size}))


if __name__ == '__main__':
  cli.run(main)
