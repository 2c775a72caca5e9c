"""Experiment configs: the schema with its defaults, loading, and validation.

`defaults()` is the one place every config key is declared, with its type and default.
Config files under configs/ start from it and change values; the command line changes
them further (`--config.model.d_model=256`). `validate` rejects unknown keys, wrong
types and inconsistent values with one message that names the key and the fix.
"""
from __future__ import annotations

import difflib
import math
import importlib.util
from typing import Any

from ml_collections import ConfigDict

from transformer_jax.errors import ConfigError

DTYPES = ('float32', 'bfloat16', 'float16')
ACTIVATIONS = ('relu', 'gelu', 'swish')  # model.FeedForward's
SCHEDULES = ('rsqrt', 'linear_decay')  # optim.learning_rate_schedule


def defaults() -> ConfigDict:
  """Every key, with a safe default. Names follow the paper where it names them."""
  c = ConfigDict()
  c.seed = 0

  c.model = ConfigDict()
  m = c.model
  m.vocab_size = 8192            # shared source/target SentencePiece vocabulary
  m.d_model = 512
  m.num_heads = 8
  m.d_ff = 2048
  m.num_encoder_layers = 6       # N in the paper
  m.num_decoder_layers = 6
  m.dropout_rate = 0.1           # P_drop: residual and embedding dropout
  m.attention_dropout_rate = 0.0 # dropout on attention weights (not in the paper)
  m.share_embeddings = True      # one embedding table for source and target
  m.tie_output_embedding = True  # pre-softmax linear = target embedding^T (section 3.4)
  m.pre_norm = False             # the paper is post-norm
  # What other Transformers (Marian / OPUS-MT, import_model.py) differ in; the paper's here.
  m.activation = 'relu'          # of the feed-forward network: relu | gelu | swish (SiLU)
  m.layer_norm_epsilon = 1e-6
  m.attention_bias = False       # biases on the query, key, value and output projections
  m.logits_bias = False          # a bias on the pre-softmax linear
  m.scale_embedding = True       # embeddings times sqrt(d_model) (section 3.4)
  m.dtype = 'float32'            # compute dtype
  m.matmul_dtype = ''            # operands of matrix products ('' = dtype); bfloat16 with
                                 # dtype float32: bf16 products, fp32 all else (precision.py)
  m.param_dtype = 'float32'      # storage dtype of parameters and optimizer state

  c.data = ConfigDict()
  c.data.name = 'synthetic'      # synthetic | multi30k | parallel_text | a TFDS catalog name
  c.data.data_dir = ''           # local corpus files (multi30k, parallel_text)
  c.data.tfds_dir = ''           # where TFDS builds live ('' = TFDS default, ~/tensorflow_datasets)
  c.data.source_lang = 'en'      # the direction: source -> target
  c.data.target_lang = 'de'
  c.data.vocab_path = ''         # a SentencePiece model to use ('' = WORKDIR/vocab.model)
  c.data.max_len = 64            # tokens per sentence, EOS included
  c.data.truncate = False        # training pairs over max_len: truncate (True) or drop
  c.data.packing = True          # pack several pairs into each row (segment ids + positions)
  c.data.batch_size = 64         # rows per global batch: a pair each, or max_len tokens if packed
  c.data.subword_samples = 0     # subword regularization (Kudo, 2018): K sampled
                                 # segmentations of each pair, one per epoch in turn,
                                 # drawn on the fly; 0 = the best one only
  c.data.subword_alpha = 0.3     # their sampling sharpness: lower = more varied pieces
  c.data.lowercase = False       # lowercase all text first (the literature's Multi30k
                                 # setting); output is lowercased, validation BLEU too
  c.data.store_dir = ''          # the training split's token store ('' = WORKDIR/store)
  c.data.store_cache = ''        # local copies of a store in a bucket ('' = ~/.cache/...)
  c.data.prefetch = 2            # training batches made ahead, in a thread
  c.data.prepare_timeout_minutes = 180.0  # several processes: how long the others wait
                                 # while process 0 builds the dataset and vocabulary

  c.train = ConfigDict()
  c.train.num_steps = 1000
  c.train.label_smoothing = 0.1  # epsilon_ls (section 5.4)
  c.train.rdrop_alpha = 0.0      # R-Drop (Liang et al., 2021): weight of the KL term; 0 = off
  c.train.learning_rate = 1.0    # scale on d_model^-0.5 * min(step^-0.5, step*warmup^-1.5)
  c.train.warmup_steps = 4000
  c.train.schedule = 'rsqrt'     # the paper's; linear_decay: same warm-up, then to 0 at num_steps
  c.train.adam_b1 = 0.9
  c.train.adam_b2 = 0.98
  c.train.adam_eps = 1e-9
  c.train.weight_decay = 0.0     # decoupled (AdamW); the paper uses none
  c.train.clip_grad_norm = 0.0   # global-norm clipping; 0 = off, as in the paper
  c.train.grad_accum_steps = 1   # micro-batches per update (data.batch_size is split)
  c.train.skip_nonfinite = False # NaN/inf loss: skip that update (True) or stop (False)
  # A workdir whose checkpoints all failed verification (quarantined): stop (False) or
  # train from step 0 beside them (True).
  c.train.restart_if_no_valid_checkpoint = False
  # A new run's parameters from another run's checkpoint, DIR[@STEP|@averaged|@best] (to
  # fine-tune it); its model and vocabulary with them; optimizer and data start fresh.
  c.train.init_from = ''
  c.train.stop_after_minutes = 0.0  # save and stop after this long (per invocation); 0 = off
  # End the run (checkpoint, done.json) at the first step whose training FLOPs, counted
  # from step 0 as `info`'s flops_per_step_train each, reach this; 0 = off. A budget the
  # same on any machine and any number of processes, unlike minutes.
  c.train.budget_flops = 0.0
  c.train.log_every = 50         # console line + TensorBoard scalars
  c.train.eval_every = 500       # validation loss/accuracy; 0 = only at the end
  c.train.eval_batch_size = 64
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 3   # the last N are kept
  c.train.bleu_every = 0         # validation BLEU (beam search) every N steps; 0 = off
  c.train.bleu_sentences = 500   # how many validation sentences it translates
  c.train.keep_best = 2          # checkpoints with the best BLEU, kept in WORKDIR/best
  # A jax.profiler trace of training steps (FIRST, COUNT) into WORKDIR/tensorboard; () = off.
  c.train.profile_steps = ()
  c.train.profile_every_process = False  # each process writes its own trace (else process 0)

  c.mesh = ConfigDict()          # device mesh axis sizes; -1 takes the remaining devices
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  # Weight-update sharding: Adam's moments and the update split over `data` too
  # (sharding.update_specs); the parameters stay as the rules place them.
  c.mesh.shard_update = False
  return c


def load(path: str) -> ConfigDict:
  """Run a config file's `get_config()` and validate the result."""
  spec = importlib.util.spec_from_file_location('_transformer_jax_config', path)
  if spec is None or spec.loader is None:
    raise ConfigError(f'Cannot load config file {path!r}: expected a Python file '
                      'defining get_config(), e.g. configs/default.py.')
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except FileNotFoundError:
    raise ConfigError(f'Config file {path!r} does not exist; '
                      'pick one under configs/, e.g. configs/default.py.') from None
  return validate(module.get_config())


def from_checkpoint(saved: dict) -> ConfigDict:
  """The config stored in a checkpoint, validated. Keys added to the schema since it was
  saved take their defaults (which keep the old behaviour), so old checkpoints restore."""
  config = defaults()

  def merge(node: ConfigDict, values: dict, prefix: str) -> None:
    for key, value in values.items():
      if key not in node:
        raise _unknown_key(key, node, prefix)
      if isinstance(value, dict):
        merge(node[key], value, prefix + key + '.')
      else:
        node[key] = value

  merge(config, saved, '')
  return validate(config)


def validate(config: ConfigDict) -> ConfigDict:
  """Check keys and types against `defaults()`, then the values' consistency."""
  _check_against(config, defaults(), prefix='')
  _check_values(config)
  return config


def _check_against(config: ConfigDict, schema: ConfigDict, prefix: str) -> None:
  for key in config.keys():
    if key not in schema:
      raise _unknown_key(key, schema, prefix)
  for key, default in schema.items():
    name = prefix + key
    if key not in config:
      raise ConfigError(f"Config is missing '{name}'. Build configs from "
                        'transformer_jax.config.defaults() so every key is present.')
    value = config[key]
    if isinstance(default, ConfigDict):
      if not isinstance(value, ConfigDict):
        raise ConfigError(f"Config '{name}' must be a group of keys, got {value!r}.")
      _check_against(value, default, name + '.')
    elif not _same_type(value, default):
      raise ConfigError(f"Config '{name}' must be {type(default).__name__}, got "
                        f'{value!r} ({type(value).__name__}).')


def _unknown_key(key: str, schema: ConfigDict, prefix: str) -> ConfigError:
  close = difflib.get_close_matches(key, list(schema.keys()), n=1)
  hint = f" Did you mean '{prefix}{close[0]}'?" if close else ''
  return ConfigError(f"Unknown config key '{prefix}{key}'.{hint} Valid keys here: "
                     f"{', '.join(sorted(schema.keys()))}.")


def check_key(dotted: str) -> None:
  """Raise ConfigError unless `dotted` (e.g. 'model.d_model') is a key of the schema."""
  node, prefix = defaults(), ''
  for key in dotted.split('.'):
    if not isinstance(node, ConfigDict) or key not in node:
      raise _unknown_key(key, node if isinstance(node, ConfigDict) else ConfigDict(), prefix)
    node, prefix = node[key], prefix + key + '.'


def _same_type(value: Any, default: Any) -> bool:
  if isinstance(default, bool) or isinstance(value, bool):
    return isinstance(value, bool) and isinstance(default, bool)
  if isinstance(default, float):
    return isinstance(value, (int, float))
  return isinstance(value, type(default))


def _check_values(c: ConfigDict) -> None:
  m = c.model
  _require(m.d_model % m.num_heads == 0,
           f'model.d_model ({m.d_model}) must be divisible by model.num_heads '
           f'({m.num_heads}); choose e.g. num_heads={_divisor_near(m.d_model, m.num_heads)}.')
  _require(m.d_model % 2 == 0, f'model.d_model ({m.d_model}) must be even: the '
           'sinusoidal positional encoding pairs sin and cos channels.')
  for key in ('vocab_size', 'd_model', 'num_heads', 'd_ff', 'num_encoder_layers',
              'num_decoder_layers'):
    _require(m[key] >= 1, f'model.{key} must be at least 1, got {m[key]}.')
  _require(m.activation in ACTIVATIONS, f"model.activation must be one of "
           f"{', '.join(ACTIVATIONS)}, got {m.activation!r}.")
  _require(0 < m.layer_norm_epsilon < 1, 'model.layer_norm_epsilon must be in (0, 1), '
           f'got {m.layer_norm_epsilon}.')
  _require(m.vocab_size >= 4, 'model.vocab_size must be at least 4 '
           f'(pad, eos and unk are reserved), got {m.vocab_size}.')
  for key in ('dropout_rate', 'attention_dropout_rate'):
    _require(0.0 <= m[key] < 1.0, f'model.{key} must be in [0, 1), got {m[key]}.')
  _require(math.isfinite(c.train.rdrop_alpha) and c.train.rdrop_alpha >= 0.0,
           f'train.rdrop_alpha must be finite and >= 0, got {c.train.rdrop_alpha}.')
  _require(0.0 <= c.train.label_smoothing < 1.0,
           f'train.label_smoothing must be in [0, 1), got {c.train.label_smoothing}.')
  _require(m.matmul_dtype in ('', *DTYPES), f"model.matmul_dtype must be '' or one of "
           f"{', '.join(DTYPES)}, got {m.matmul_dtype!r}.")
  for key in ('dtype', 'param_dtype'):
    _require(m[key] in DTYPES, f"model.{key} must be one of {', '.join(DTYPES)}, "
             f'got {m[key]!r}.')
  for key in ('max_len', 'batch_size'):
    _require(c.data[key] >= 1, f'data.{key} must be at least 1, got {c.data[key]}.')
  _require(c.data.prefetch >= 1, f'data.prefetch must be at least 1, got {c.data.prefetch}.')
  _require(c.data.prepare_timeout_minutes > 0, 'data.prepare_timeout_minutes must be > 0, '
           f'got {c.data.prepare_timeout_minutes}.')
  _require(c.data.subword_samples >= 0, 'data.subword_samples must be >= 0 (0 = off), '
           f'got {c.data.subword_samples}.')
  _require(c.data.subword_alpha > 0, 'data.subword_alpha must be > 0, '
           f'got {c.data.subword_alpha}.')
  for key in ('num_steps', 'warmup_steps', 'grad_accum_steps', 'log_every',
              'eval_batch_size', 'checkpoint_every', 'keep_checkpoints', 'bleu_sentences',
              'keep_best'):
    _require(c.train[key] >= 1, f'train.{key} must be at least 1, got {c.train[key]}.')
  _require(c.train.schedule in SCHEDULES, f"train.schedule must be one of "
           f"{', '.join(SCHEDULES)}, got {c.train.schedule!r}.")
  _require(c.train.schedule != 'linear_decay' or c.train.num_steps > c.train.warmup_steps,
           f'train.schedule=linear_decay decays to zero at train.num_steps, which must '
           f'exceed train.warmup_steps; got num_steps={c.train.num_steps}, '
           f'warmup_steps={c.train.warmup_steps}.')
  t = c.train
  _require(math.isfinite(t.learning_rate) and t.learning_rate > 0,
           f'train.learning_rate must be a finite number > 0, got {t.learning_rate}.')
  for key in ('adam_b1', 'adam_b2'):
    _require(0.0 <= t[key] < 1.0, f'train.{key} must be in [0, 1), got {t[key]}.')
  _require(t.adam_eps > 0, f'train.adam_eps must be > 0, got {t.adam_eps}.')
  for key in ('weight_decay', 'clip_grad_norm', 'eval_every', 'bleu_every'):
    _require(t[key] >= 0, f'train.{key} must be >= 0 (0 = off), got {t[key]}.')
  _require(c.train.stop_after_minutes >= 0, 'train.stop_after_minutes must be >= 0 '
           f'(0 = no time limit), got {c.train.stop_after_minutes}.')
  _require(math.isfinite(t.budget_flops) and t.budget_flops >= 0, 'train.budget_flops '
           f'must be a finite number >= 0 (0 = no budget), got {t.budget_flops}.')
  _require(t.profile_steps == () or (len(t.profile_steps) == 2 and all(
      isinstance(x, int) and x >= 1 for x in t.profile_steps)),
           'train.profile_steps must be () (off) or (FIRST, COUNT), two integers >= 1, e.g. '
           f'--config.train.profile_steps="(10,3)"; got {t.profile_steps!r}.')
  _require(c.data.batch_size % c.train.grad_accum_steps == 0,
           f'data.batch_size ({c.data.batch_size}) must be divisible by '
           f'train.grad_accum_steps ({c.train.grad_accum_steps}).')
  for key in ('data', 'fsdp', 'tensor'):
    _require(c.mesh[key] == -1 or c.mesh[key] >= 1,
             f'mesh.{key} must be -1 (the remaining devices) or at least 1, '
             f'got {c.mesh[key]}.')


def _divisor_near(n: int, k: int) -> int:
  return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: abs(d - k))


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)
