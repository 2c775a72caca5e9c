"""The flags of the commands that restore a model (`translate`, `evaluate`, `export`):
which checkpoint, where to write, and how to decode. Defined once here, since absl forbids
defining a flag twice and both commands may be imported into one process."""
from __future__ import annotations

from absl import flags

from transformer_jax import cli, inference
from transformer_jax.errors import UserError

STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
AVERAGED = flags.DEFINE_bool('averaged', False, 'Use the checkpoint written by `average`.')
ENSEMBLE = flags.DEFINE_list(
    'ensemble', None, 'Decode with several models as one instead of --workdir\'s: '
    'DIR[@STEP|@averaged|@best],... (the mean of their next-token probabilities; the '
    'vocabularies must be the same).')
OUTPUT = flags.DEFINE_string(
    'output', None, 'translate: the file to write translations to (default: stdout); '
    'export: the directory to write the model to.')
INPUT = flags.DEFINE_string(
    'input', None, 'translate: the text file to translate (default: stdin); import_model: '
    'the model directory to import.')
FORMAT = flags.DEFINE_string(
    'format', None, 'export: ctranslate2 (default) or huggingface; import_model: '
    'huggingface (default).')
_BEAM = flags.DEFINE_integer('beam_size', 4, 'Beam width (the paper: 4).')
_ALPHA = flags.DEFINE_float('alpha', 0.6, 'Length penalty exponent (the paper: 0.6).')
_MAX_EXTRA_LEN = flags.DEFINE_integer(
    'max_extra_len', 50, 'Output length limit: source length + this many tokens.')
flags.DEFINE_alias('max_len', 'max_extra_len')  # its name before 2026-12
_BATCH = flags.DEFINE_integer('batch_size', 256, 'Sentences per batch, at most.')
_BATCH_TOKENS = flags.DEFINE_integer(
    'batch_tokens', None, 'Batches hold this many source + expected target tokens (as '
    'Marian\'s --mini-batch-words; default: measured best for the device kind).')
_MAX_INPUT_LEN = flags.DEFINE_integer('max_input_len', 256, 'Source tokens kept per line.')
_METHOD = flags.DEFINE_string('decode', 'beam', 'beam, greedy or sample.')
_TEMPERATURE = flags.DEFINE_float('temperature', 1.0, 'Sampling temperature (--decode=sample).')
_TOP_K = flags.DEFINE_integer('top_k', 0, 'Sample from the k most likely tokens (0 = all).')
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed of --decode=sample.')


def restore():
  """The model the flags name: --ensemble's, or --workdir's (--step, --averaged)."""
  if ENSEMBLE.value:
    if STEP.value is not None or AVERAGED.value:
      raise UserError('--step and --averaged do not go with --ensemble; give each member '
                      'its own: --ensemble=DIR@STEP,DIR@averaged,DIR@best.')
    return inference.restore_ensemble(ENSEMBLE.value)
  return inference.restore(cli.required_workdir(), STEP.value, AVERAGED.value)


def settings() -> inference.Settings:
  """The decoding settings the flags give (a bad value raises a UserError)."""
  return inference.Settings(
      beam_size=_BEAM.value, alpha=_ALPHA.value, max_extra_len=_MAX_EXTRA_LEN.value,
      batch_size=_BATCH.value, batch_tokens=_BATCH_TOKENS.value, max_input_len=_MAX_INPUT_LEN.value, method=_METHOD.value,
      temperature=_TEMPERATURE.value, top_k=_TOP_K.value, seed=_SEED.value)
