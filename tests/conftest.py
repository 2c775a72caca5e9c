"""Every test runs on 8 simulated CPU devices, so sharding is tested for real; and the
fixtures several test files share: the tiny config, the synthetic corpus built once with
its vocabulary, a briefly trained workdir, and running a command in this process.

XLA reads the device-count flag when JAX initializes its backend, so it is set before
any test module imports jax.
"""
import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# The commands' compilation cache (cli.py): the tests, and the commands they start, share
# one of their own that outlives the run, so the everyday loop compiles only what changed
# (XLA keys each program by its HLO, options, devices and versions). Set the variable to
# a fresh directory to measure a cold run.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.expanduser('~/.cache/transformer_jax/xla-tests'))
# Keep every program, however quick to compile: the model tests run eagerly, and each
# operation compiled anew for each shape costs about 5 s per forward pass of the test
# model, 1 s when read back from the cache.
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import dataclasses  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO / 'tests' / 'data'


@pytest.fixture(scope='session', autouse=True)
def compilation_cache():
  """The commands' compilation cache for this process too, from the first test on (the
  commands run in-process would turn it on midway)."""
  from transformer_jax import cli
  cli.use_compilation_cache(os.environ['JAX_COMPILATION_CACHE_DIR'])


@pytest.fixture(scope='session')
def repo():
  return REPO


@dataclasses.dataclass(frozen=True)
class Corpus:
  data: dict     # the config's `data` keys that read it
  vocab: str     # a vocabulary of configs/tiny.py's size trained on it


@pytest.fixture(scope='session')
def synthetic(tmp_path_factory) -> Corpus:
  """Sentence pairs of the built-in synthetic task as a `parallel_text` corpus (2,000
  training, 200 validation and 200 test pairs), built once for the whole run with a
  vocabulary of configs/tiny.py's size: small enough that reading, tokenizing and
  training a vocabulary cost a test nothing (the full `synthetic` dataset has 100,000)."""
  from transformer_jax import config as config_lib
  from transformer_jax.data import pipeline
  from transformer_jax.data import synthetic as synthetic_lib
  root = tmp_path_factory.mktemp('synthetic')
  for split, pairs in synthetic_lib.splits(train_size=2000, eval_size=200).items():
    for lang, side in (('en', 0), ('de', 1)):
      (root / 'corpus' / f'{split}.{lang}').parent.mkdir(exist_ok=True)
      (root / 'corpus' / f'{split}.{lang}').write_text(''.join(p[side] + '\n' for p in pairs))
  data = dict(name='parallel_text', data_dir=str(root / 'corpus'), source_lang='en',
              target_lang='de', tfds_dir=str(root / 'tfds'))
  config = config_lib.load(str(REPO / 'configs' / 'tiny.py'))
  config.data.update(data)
  tokenizer = pipeline.get_tokenizer(config_lib.validate(config), str(root))
  return Corpus(data, tokenizer.path)


@pytest.fixture(scope='session')
def pipeline_corpus(synthetic, tmp_path_factory):
  """(config, tokenizer, training token store) of the shared corpus with a 256-piece
  vocabulary, 32-token rows of 8: what the data pipeline tests read."""
  from transformer_jax import config as config_lib
  from transformer_jax.data import pipeline
  c = config_lib.defaults()
  c.model.vocab_size = 256
  c.data.update(max_len=32, batch_size=8, **synthetic.data)
  config = config_lib.validate(c)
  workdir = str(tmp_path_factory.mktemp('vocab256'))
  tokenizer = pipeline.get_tokenizer(config, workdir)
  return config, tokenizer, pipeline.training_store(config, workdir, tokenizer)


@pytest.fixture(scope='session')
def with_data():
  """with_data(config, **data) -> a copy of `config` with `data` keys changed."""
  from transformer_jax import config as config_lib

  def change(config, **data):
    c = config.copy_and_resolve_references()
    c.data.update(data)
    return config_lib.validate(c)

  return change


@pytest.fixture(scope='session')
def tiny_config(synthetic):
  """tiny_config(**train) -> configs/tiny.py on the shared corpus and vocabulary, logging
  every step, no evaluation, `train` keys overridden (a fresh config each call)."""
  from transformer_jax import config as config_lib

  def make(**train):
    c = config_lib.load(str(REPO / 'configs' / 'tiny.py'))
    c.data.update(vocab_path=synthetic.vocab, **synthetic.data)
    c.train.update({**dict(log_every=1, eval_every=0, checkpoint_every=4), **train})
    return config_lib.validate(c)

  return make


@pytest.fixture(scope='session')
def briefly_trained(tmp_path_factory, tiny_config):
  """A workdir of 6 tiny training steps, with checkpoints at steps 2, 4 and 6; tests
  that write must copy it."""
  from transformer_jax import loop
  workdir = tmp_path_factory.mktemp('briefly_trained')
  config = tiny_config(num_steps=6, checkpoint_every=2, keep_checkpoints=3, log_every=2)
  loop.train(config, str(workdir))
  return workdir


def _fake_batch(config, seed=0):
  """A training batch of random tokens, one pair per row, random real lengths."""
  import numpy as np
  rows, length = config.data.batch_size, config.data.max_len
  rng = np.random.default_rng(seed)
  batch = {}
  for field in ('source', 'target'):
    lengths = rng.integers(3, length, rows)
    mask = np.arange(length)[None] < lengths[:, None]
    batch[field] = np.where(mask, rng.integers(3, config.model.vocab_size, (rows, length)),
                            0).astype(np.int32)
    batch[f'{field}_segment_ids'] = mask.astype(np.int32)
    batch[f'{field}_positions'] = np.where(mask, np.arange(length)[None], 0).astype(np.int32)
  return batch


@pytest.fixture(scope='session')
def fake_batch():
  """fake_batch(config, seed=0) -> a batch of random tokens of the config's shape."""
  return _fake_batch


def _saved_params(workdir, config, step):
  """The parameters of the checkpoint at `step`, restored onto one device, as numpy."""
  import jax
  from transformer_jax import checkpoint as checkpoint_lib
  from transformer_jax import config as config_lib
  from transformer_jax import sharding
  from transformer_jax.steps import build
  mesh = sharding.make_mesh(config_lib.defaults().mesh, jax.devices()[:1])
  setup = build(config, mesh)
  checkpoints = checkpoint_lib.Checkpoints(str(workdir), config)
  try:
    return jax.device_get(checkpoints.restore_params(step, setup.abstract_state.params))
  finally:
    checkpoints.close()


@pytest.fixture(scope='session')
def saved_params():
  """saved_params(workdir, config, step) -> the checkpoint's parameters as numpy."""
  return _saved_params


def _flip_bytes(path, offset=None, count=64):
  """Invert `count` bytes of a file at `offset` (default: its middle), as a bad disk or
  a bad copy would; returns the original bytes."""
  import pathlib
  path = pathlib.Path(path)
  data = path.read_bytes()
  start = len(data) // 2 if offset is None else offset
  damaged = bytearray(data)
  for i in range(start, min(start + count, len(data))):
    damaged[i] ^= 0xFF
  path.write_bytes(bytes(damaged))
  return data


@pytest.fixture(scope='session')
def flip_bytes():
  """flip_bytes(path, offset=None, count=64) -> the file's original bytes."""
  return _flip_bytes


def _damage_arrays(step_dir):
  """Flip 64 bytes in every 2 KB of every array data file each process of a checkpoint
  step wrote (Orbax's OCDBT `ocdbt.process_N/d/` files): the parameters and the Adam
  moments both change, whichever order Orbax wrote them in."""
  import pathlib
  files = [p for p in pathlib.Path(step_dir, 'state').glob('ocdbt.process_*/d/*')
           if p.stat().st_size > 1024]
  assert files, f'no array data files in {step_dir}'
  for path in files:
    for offset in range(100, path.stat().st_size, 2048):
      _flip_bytes(path, offset)


@pytest.fixture(scope='session')
def damage_arrays():
  """damage_arrays(step_dir): what a bad disk does to a checkpoint's array data."""
  return _damage_arrays


@pytest.fixture(scope='session')
def trained(tmp_path_factory):
  """A small model trained for 300 steps on the built-in synthetic dataset (~9 BLEU), with
  validation BLEU every 100 steps; checkpoints at 200, 250 and 300 are kept, the best 2 by
  BLEU in WORKDIR/best."""
  from transformer_jax import config as config_lib
  from transformer_jax import loop
  workdir = tmp_path_factory.mktemp('trained')
  c = config_lib.load(str(REPO / 'configs' / 'tiny.py'))
  c.model.update(vocab_size=256, d_model=64, d_ff=128, dropout_rate=0.0)
  c.data.update(tfds_dir=str(workdir / 'tfds'), max_len=32, batch_size=32)
  c.train.update(num_steps=300, warmup_steps=100, learning_rate=1.0, log_every=50,
                 eval_every=0, checkpoint_every=50, keep_checkpoints=3, bleu_every=100,
                 bleu_sentences=100, keep_best=2)
  loop.train(config_lib.validate(c), str(workdir))
  return workdir, c


@pytest.fixture
def command(capsys, monkeypatch):
  """command(module, *flags) -> Result: a command's `main`, run in this process exactly as
  `python -m transformer_jax.NAME FLAGS` runs it (flag parsing, one-line errors, exit
  code), without the seconds a new process spends importing JAX."""
  from absl import flags
  from transformer_jax import cli
  from transformer_jax.local_pod import Result

  def reset_flags():
    flags.FLAGS.unparse_flags()  # every flag back to its default
    for name in list(flags.FLAGS):  # ml_collections defines one per --config.KEY parsed
      if name.startswith('config.'):
        delattr(flags.FLAGS, name)

  def run(module, *argv, stdin: bytes | None = None):
    reset_flags()
    if stdin is not None:
      monkeypatch.setattr(sys, 'stdin', _Stdin(stdin))
    monkeypatch.setattr(sys, 'argv', [module.__name__, *map(str, argv)])
    capsys.readouterr()
    try:
      cli.run(module.main)
      code = 0
    except SystemExit as e:
      code = e.code or 0
    finally:
      reset_flags()
    out, err = capsys.readouterr()
    return Result(code, out, err)

  return run


class _Stdin:
  """What a command reads from stdin: bytes, through .buffer."""

  def __init__(self, data: bytes):
    import io
    self.buffer = io.BytesIO(data)



@pytest.fixture(scope='session')
def command_process():
  """command_process(name, *flags, stdin=None) -> Result: `python -m transformer_jax.NAME
  FLAGS` in a new process, from the repository root, as a user runs it."""
  import subprocess
  from transformer_jax.local_pod import Result

  def run(name, *argv, stdin: bytes | None = None):
    result = subprocess.run([sys.executable, '-m', f'transformer_jax.{name}', *map(str, argv)],
                            cwd=REPO, input=stdin, capture_output=True, timeout=900,
                            env=dict(os.environ, JAX_PLATFORMS='cpu'))
    return Result(result.returncode, result.stdout.decode(), result.stderr.decode())

  return run


class BrokenInput:
  """A real training stream that fails at its `fail_at`-th batch, as a broken input
  would (an injected fault: what tests assert is how its consumer behaves)."""

  def __init__(self, stream, fail_at):
    from transformer_jax.errors import UserError
    self.stream, self.fail_at, self.made, self.error = stream, fail_at, 0, UserError

  def __next__(self):
    self.made += 1
    if self.made == self.fail_at:
      raise self.error('the input broke')
    return next(self.stream)

  def __getattr__(self, name):  # local_state, get_state, set_state
    return getattr(self.stream, name)


@pytest.fixture(scope='session')
def broken_input():
  """broken_input(stream, fail_at) -> `stream`, failing at batch `fail_at`."""
  return BrokenInput
