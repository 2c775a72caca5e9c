"""What every command shares: the --config and --workdir flags, clean exits on user
errors, progress lines, and the `transformer-jax COMMAND ...` console script."""
from __future__ import annotations

import glob
import math
import os
import runpy
import sys
import time

import jax

from absl import app, flags, logging
from ml_collections import config_flags

from transformer_jax import config as config_lib
from transformer_jax import distributed, segments
from transformer_jax.errors import UserError

COMMANDS = ('prepare', 'train', 'translate', 'evaluate', 'average', 'verify', 'goodput', 'info',
            'aot', 'export', 'import_model')


# The flags every command shares, defined once (absl forbids defining a flag twice, and
# tests import several command modules into one process).
CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/default.py. Override any key with '
    '--config.KEY=VALUE, e.g. --config.model.d_model=256.', lock_config=True)
WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, vocabulary and logs.')
COMPILATION_CACHE = flags.DEFINE_string(
    'compilation_cache', os.environ.get('JAX_COMPILATION_CACHE_DIR',
                                        '~/.cache/transformer_jax/xla'),
    'Directory of compiled XLA programs reused by later runs (resumes after preemption, '
    'repeated translate/evaluate calls); empty = off.')


def resolved_config():
  """The parsed --config, validated against the schema."""
  if CONFIG.value is None:
    raise UserError('--config is required, e.g. --config=configs/default.py.')
  return config_lib.validate(CONFIG.value)


def required_workdir() -> str:
  if WORKDIR.value is None:
    raise UserError('--workdir is required: the directory for checkpoints and logs.')
  return WORKDIR.value


def stderr_progress(every_s: float = 2.0):
  """A progress(done, total) callback printing to stderr at most every `every_s` seconds
  (on process 0 only; None elsewhere)."""
  if not distributed.is_writer():
    return None
  last = [-math.inf]  # the first call always reports

  def report(done, total):
    now = time.perf_counter()
    if now - last[0] >= every_s or done == total:
      last[0] = now
      print(f'translated {done}/{total} sentences', file=sys.stderr, flush=True)

  return report


def use_compilation_cache(directory: str) -> None:
  """Keep compiled programs on disk: a run of an unchanged config skips XLA compilation
  (about half of the time to the first train step on a CPU). Keys cover the program,
  devices and flags, so a changed config only misses the cache."""
  if directory:
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(directory))
    if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in os.environ:  # JAX's own setting
      jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.2)


def _fail(message: str, code: int = UserError.exit_code):
  print(f'error: {message}', file=sys.stderr)
  sys.exit(code)


def given_keys(argv: list[str]) -> list[str]:
  """The config keys (`section.key`) that `--config.section.key=VALUE` flags set."""
  return [arg[len('--config.'):].split('=', 1)[0] for arg in argv[1:]
          if arg.startswith('--config.')]


def _parse_flags(argv):
  """absl flag parsing, with every error one line (exit 2): --config.KEY overrides are
  checked against the schema first (ml_collections would raise a traceback for an
  unknown key), a missing or broken config file is named with its line, and absl's own
  errors (a wrong type, a bad boolean) lose their FATAL banner and usage hint."""
  try:
    for key in given_keys(argv):
      config_lib.check_key(key)
    for arg in argv[1:]:
      if arg.startswith('--config='):
        path = arg[len('--config='):].split(':', 1)[0]  # FILE[:ARGS]
        if not os.path.isfile(path):
          raise UserError(f'Config file {path!r} does not exist; pick one under configs/, '
                          'e.g. --config=configs/default.py.')
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      raise UserError(f'{str(e).rstrip(".")}. Check the value\'s type against the key\'s default '
                      '(python -m transformer_jax.info --config=FILE prints them).') from None
    except SyntaxError as e:
      raise UserError(f'{e.filename}, line {e.lineno}: {e.msg}; fix the config file.'
                      ) from None
  except UserError as e:
    _fail(str(e))


def _quiet_platforms() -> None:
  """Off a TPU VM, do not let JAX probe for a TPU: with libtpu installed (the tpu and test
  extras) the probe prints screens of initialization errors before falling back to the
  CPU. An explicit JAX_PLATFORMS, a GPU, or --verbosity keeps JAX's own choice; `aot`
  compiles for TPU topologies without a TPU backend."""
  if not ('JAX_PLATFORMS' in os.environ or flags.FLAGS['verbosity'].present
          or distributed.tpu_present() or glob.glob('/dev/nvidia[0-9]*')):
    jax.config.update('jax_platforms', 'cpu')


def run(main):
  """absl's app.run, but a UserError prints one line (no traceback) and exits with its
  `exit_code` (2; 75 when other processes of the run were lost).

  Every command joins a multi-process run first (`distributed.initialize`): on a pod
  slice, the same command runs on every worker."""
  def guarded(argv):
    if not flags.FLAGS['verbosity'].present:
      # Orbax, TFDS and JAX are chatty at INFO and WARNING (`--verbosity=0` shows it); our
      # own warnings are printed lines. absl's app.run turns INFO on by itself, so its
      # flag's "default" cannot tell.
      logging.set_verbosity(logging.ERROR)
    _quiet_platforms()
    use_compilation_cache(COMPILATION_CACHE.value)
    try:
      distributed.initialize()
      segments.mark('joined')
      return main(argv)
    except UserError as e:
      _fail(str(e), e.exit_code)
  app.run(guarded, flags_parser=_parse_flags)


def main():
  """Console script: `transformer-jax train --config=...` == `python -m transformer_jax.train`."""
  if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
    print(f"usage: transformer-jax {{{','.join(COMMANDS)}}} [flags]", file=sys.stderr)
    sys.exit(2)
  command = sys.argv.pop(1)
  sys.argv[0] = f'transformer-jax {command}'
  runpy.run_module(f'transformer_jax.{command}', run_name='__main__', alter_sys=True)
