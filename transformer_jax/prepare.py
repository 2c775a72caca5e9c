"""`python -m transformer_jax.prepare --config=FILE [--workdir=DIR]`: build the dataset and
the vocabulary before training.

Builds the TFDS dataset `data.name` selects into `data.tfds_dir` (TensorFlow is needed
only by TFDS catalog builders such as `wmt14_translate/de-en`) and trains the
SentencePiece vocabulary at `data.vocab_path` (or WORKDIR/vocab.model), then tokenizes
the training split into the token store (`data.store_dir`, or WORKDIR/store; every
process of a multi-process run tokenizes its share of the shards). On a pod slice run it
once with the vocabulary and store in a bucket; the workers' `train` then only reads
them and needs no TensorFlow. `train` does the same on its own if nothing is prepared,
so this command is optional off a pod. With `train.init_from` the vocabulary is the
source checkpoint's (init_from.py), as `train` will take it. Prints what it built, as JSON.
"""
from __future__ import annotations

import json
import sys

from absl import flags

from transformer_jax import cli, distributed, init_from
from transformer_jax.data import datasets, pipeline
from transformer_jax.errors import UserError


def main(argv):
  del argv
  config = cli.resolved_config()
  workdir = cli.WORKDIR.value
  if workdir is None and not config.data.vocab_path:
    raise UserError('Say where the vocabulary goes: --config.data.vocab_path=PATH (e.g. '
                    'gs://BUCKET/vocab.model) or --workdir=DIR (DIR/vocab.model).')
  if config.train.init_from:  # the source's vocabulary and model, as `train` takes them
    if workdir is None:
      raise UserError(f'--config.{init_from.FLAG} needs --workdir: the vocabulary goes '
                      'to WORKDIR/vocab.model.')
    source = init_from.resumed(workdir) or init_from.find(config.train.init_from)
    config = init_from.adopt(config, source, set(cli.given_keys(sys.argv)))
    init_from.place_vocabulary(source, workdir)
  tokenizer = pipeline.prepare(config, workdir, new_vocab_path=True)
  b = datasets.builder(config.data)
  report = {'dataset': config.data.name, 'tfds_dir': str(b.data_dir),
            'splits': {name: s.num_examples for name, s in sorted(b.info.splits.items())},
            'vocabulary': tokenizer.path, 'vocab_size': tokenizer.vocab_size}
  if _STORE.value and (workdir or config.data.store_dir):
    store = pipeline.training_store(config, workdir, tokenizer)
    report.update(store=store.directory, store_tokens=store.tokens_total())
  distributed.say(json.dumps(report))


_STORE = flags.DEFINE_bool('store', True, 'Also tokenize the training split into the token '
                           'store (--nostore: the dataset and vocabulary only).')

if __name__ == '__main__':
  cli.run(main)
