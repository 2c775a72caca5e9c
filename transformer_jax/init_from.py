"""`train.init_from=DIR[@STEP|@averaged|@best]`: a new run that starts from another run's
trained parameters (fine-tuning, domain adaptation), as fairseq's `--restore-file` with
`--reset-optimizer` or T5X's initial checkpoint.

Only the parameters are read, verified as `translate` verifies them, and placed on this
run's mesh (any mesh, any number of processes). The optimizer state, the schedule's step
and the data position start fresh. The model is the source's: its architecture keys
replace the config's (one line lists those that differed), except the knobs a fine-tune
may change (`FINE_TUNING_KEYS`: dropout, compute dtypes); so is its vocabulary, written
to WORKDIR/vocab.model, and its `data.lowercase`. A `--config.model.*`,
`--config.data.vocab_path` or `--config.data.lowercase` on the command line that
contradicts the source is refused before anything is written. A workdir that already
holds checkpoints resumes from them: `init_from` only ever starts a run.
"""
from __future__ import annotations

import base64
import dataclasses

from ml_collections import ConfigDict

from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import config as config_lib
from transformer_jax import distributed, files, inference
from transformer_jax.data import tokenizer as tokenizer_lib
from transformer_jax.errors import UserError

FLAG = 'train.init_from'
# Model keys the new run sets for itself: they change how the parameters are trained or
# computed with, never what they are.
FINE_TUNING_KEYS = ('dropout_rate', 'attention_dropout_rate', 'dtype', 'matmul_dtype')
DATA_KEYS = ('lowercase',)  # how text meets the vocabulary


@dataclasses.dataclass
class Source:
  spec: str
  root: str   # the directory whose checkpoints/ holds it
  step: int
  meta: dict  # the step's record: its config and vocabulary

  @property
  def config(self) -> ConfigDict:
    return config_lib.from_checkpoint(self.meta['config'])


def find(spec: str) -> Source:
  """The checkpoint `spec` names, its record read (not its arrays): the newest step unless
  it names one. Refused in one line if there is none such."""
  workdir, step, averaged = inference.checkpoint_spec(spec, f'--config.{FLAG}')
  root = checkpoint_lib.checkpoint_root(workdir, averaged)
  probe = checkpoint_lib.Checkpoints(root, config_lib.defaults(), async_save=False)
  try:
    steps = inference.existing_steps(probe, step)
    step = steps[-1] if step is None else step
    return Source(spec, root, step, probe.meta(step))
  except UserError as e:
    raise UserError(f'{FLAG}: {e}') from None
  finally:
    probe.close()


def resumed(workdir: str) -> Source | None:
  """The workdir's own newest checkpoint, if it has one: a rerun resumes from it, with
  the model and vocabulary the run started with (the source may be gone by then)."""
  if not (files.path(workdir) / checkpoint_lib.CHECKPOINT_DIR).is_dir():
    return None
  try:
    return find(workdir)
  except UserError:  # none complete, or its record unreadable: restoring will tell
    return None


def adopt(config: ConfigDict, source: Source, given: set[str]) -> ConfigDict:
  """`config` with the source's model and vocabulary. `given`: the keys set on the command
  line (`section.key`), which must agree with the source."""
  theirs = source.config
  changes = {f'model.{k}': theirs.model[k] for k in theirs.model.keys()
             if k not in FINE_TUNING_KEYS and config.model[k] != theirs.model[k]}
  changes.update({f'data.{k}': theirs.data[k] for k in DATA_KEYS
                  if config.data[k] != theirs.data[k]})
  vocab = config.data.vocab_path
  if vocab and not (files.path(vocab).exists() and checkpoint_lib.vocab_fingerprint(vocab)[0]
                    == source.meta['vocab_sha256']):
    changes['data.vocab_path'] = ''
  ours = {k: config[k.split('.')[0]][k.split('.')[1]] for k in changes}
  refused = sorted(k for k in changes if k in given)
  if refused:
    raise UserError(
        f'{FLAG}={source.spec} fixes the model and vocabulary, and the command line '
        'contradicts it: ' + '; '.join(
            f'{k}={ours[k]!r} (the source has '
            f'{"another vocabulary" if k == "data.vocab_path" else repr(changes[k])})'
            for k in refused) + '. Drop those flags, or train from scratch.')
  if changes:
    distributed.say(f'{FLAG}: the model and vocabulary of {source.spec} (step {source.step}) '
                    'replace the config\'s ' + ', '.join(
                        f'{k}={ours[k]!r}->{v!r}' for k, v in changes.items()))
  adopted = ConfigDict(config.to_dict())
  for key, value in changes.items():
    section, name = key.split('.')
    adopted[section][name] = value
  return config_lib.validate(adopted)


def place_vocabulary(source: Source, workdir: str) -> None:
  """The source's vocabulary as WORKDIR/vocab.model (process 0; before the data is
  prepared, whose barrier the other processes wait at). One already there (`prepare`
  made it, with this `init_from`) must be the source's: any other would tokenize the
  corpus for another model."""
  path = files.path(workdir) / tokenizer_lib.VOCAB_FILE
  if path.exists():  # every process: a file process 0 writes now is the source's
    if checkpoint_lib.vocab_fingerprint(str(path))[0] != source.meta['vocab_sha256']:
      raise UserError(f'{path} is not the vocabulary of {FLAG}={source.spec}. Remove it and '
                      'the token store beside it (WORKDIR/store), or prepare with the same '
                      f'--config.{FLAG}.')
  elif distributed.is_writer():
    files.write_atomically(path, base64.b64decode(source.meta['vocab_model']))


def parameters(source: Source, abstract_params):
  """The source's parameters, verified, placed as `abstract_params` says (this run's
  mesh). A damaged step stops the run: the source is another run's, left as it is."""
  probe = checkpoint_lib.Checkpoints(source.root, source.config, async_save=False)
  try:
    return probe.restore_params(source.step, abstract_params)
  except checkpoint_lib.CorruptCheckpoint as e:
    raise UserError(f'{FLAG}: {e} Name another step: {FLAG}='
                    f'{source.spec.partition("@")[0]}@STEP.') from None
  finally:
    probe.close()
