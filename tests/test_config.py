"""Configs load, override from the command line, and reject bad input clearly."""
import pathlib
import re

import pytest

from transformer_jax import config as config_lib
from transformer_jax.errors import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize('name', sorted(str(p.relative_to(REPO / 'configs'))
                                         for p in (REPO / 'configs').rglob('*.py')))
def test_shipped_configs_are_valid(name):
  config_lib.load(str(REPO / 'configs' / name))


def test_configs_holds_presets_and_experiments_live_apart():
  presets = sorted(p.name for p in (REPO / 'configs').glob('*.py'))
  assert len(presets) <= 10 and not [p for p in presets if '_1h' in p or '_2h' in p]
  assert len(list((REPO / 'configs' / 'experiments').glob('*.py'))) >= 8


def test_multi30k_twin_differs_only_in_direction(repo):
  en_de = config_lib.load(str(repo / 'configs' / 'multi30k.py')).to_dict()
  de_en = config_lib.load(str(repo / 'configs' / 'multi30k_de_en.py')).to_dict()
  assert (de_en['data'].pop('source_lang'), de_en['data'].pop('target_lang')) == ('de', 'en')
  assert (en_de['data'].pop('source_lang'), en_de['data'].pop('target_lang')) == ('en', 'de')
  assert de_en == en_de


def test_paper_hyperparameters(repo):
  base = config_lib.load(str(repo / 'configs' / 'base.py'))
  big = config_lib.load(str(repo / 'configs' / 'big.py'))
  assert (base.model.num_encoder_layers, base.model.num_decoder_layers) == (6, 6)
  assert (base.model.d_model, base.model.num_heads, base.model.d_ff) == (512, 8, 2048)
  assert (big.model.d_model, big.model.num_heads, big.model.d_ff) == (1024, 16, 4096)
  assert (base.model.dropout_rate, big.model.dropout_rate) == (0.1, 0.3)
  for c in (base, big):
    assert c.train.label_smoothing == 0.1 and c.train.warmup_steps == 4000
    assert (c.train.adam_b1, c.train.adam_b2, c.train.adam_eps) == (0.9, 0.98, 1e-9)


def test_validate_rejects_unknown_key():
  c = config_lib.defaults()
  c.unlock()
  c.model.d_modle = 3
  with pytest.raises(ConfigError, match=r"Unknown config key 'model.d_modle'.*'model.d_model'"):
    config_lib.validate(c)


def test_checkpoint_config_from_an_older_schema_restores():
  saved = config_lib.defaults().to_dict()
  del saved['model']['matmul_dtype']  # a key added after this checkpoint was written
  saved['model']['d_model'] = 64
  config = config_lib.from_checkpoint(saved)
  assert config.model.d_model == 64 and config.model.matmul_dtype == ''
  saved['model']['no_such_key'] = 1
  with pytest.raises(ConfigError, match='no_such_key'):
    config_lib.from_checkpoint(saved)


def test_validate_rejects_wrong_type():
  c = config_lib.defaults()
  c.model.unlock()
  del c.model['dropout_rate']
  c.model.dropout_rate = 'high'
  with pytest.raises(ConfigError, match=r"'model.dropout_rate' must be float"):
    config_lib.validate(c)


def test_validate_rejects_heads_not_dividing_d_model():
  c = config_lib.defaults()
  c.model.num_heads = 7
  with pytest.raises(ConfigError, match=r'divisible by model.num_heads \(7\)'):
    config_lib.validate(c)


def test_missing_config_file():
  with pytest.raises(ConfigError, match='does not exist'):
    config_lib.load('configs/nope.py')


@pytest.mark.parametrize('key, value, message', [
    ('learning_rate', -0.5, 'train.learning_rate must be a finite number > 0, got -0.5'),
    ('learning_rate', float('nan'), 'train.learning_rate must be a finite number > 0'),
    ('adam_b2', 1.0, 'train.adam_b2 must be in [0, 1)'),
    ('adam_eps', 0.0, 'train.adam_eps must be > 0'),
    ('clip_grad_norm', -1.0, 'train.clip_grad_norm must be >= 0'),
    ('bleu_every', -5, 'train.bleu_every must be >= 0'),
])
def test_validate_rejects_out_of_range_training_values(key, value, message):
  c = config_lib.defaults()
  c.train[key] = value
  with pytest.raises(ConfigError, match=re.escape(message)):
    config_lib.validate(c)
