"""The `info` command: parameters, FLOPs and memory of a config as JSON, with command-line
overrides; a bad config is one clear error."""
import json

import pytest

from transformer_jax import info
from transformer_jax.costs import count_params


def test_json_of_a_config_with_an_override(command, repo):
  result = command(info, f'--config={repo / "configs" / "tiny.py"}', '--config.model.d_model=64')
  assert result.code == 0, result.err
  report = json.loads(result.out)
  assert report['config']['model']['d_model'] == 64
  model = report['config']['model']
  from transformer_jax import config as config_lib
  tiny = config_lib.load(str(repo / 'configs' / 'tiny.py')).model
  tiny.d_model = 64
  assert report['params'] == count_params(tiny)['params'] and model['d_ff'] == tiny.d_ff
  assert report['flops_per_token_train'] > 0 and len(report['devices']) == 8


@pytest.mark.parametrize('flag, message', [
    ('--config.model.d_modle=64', 'd_modle'),
    ('--config.model.d_model=abc', 'd_model'),
    ('--config.model.num_heads=5', 'divisible by model.num_heads'),
    ('--config.data.subword_samples=-1', 'data.subword_samples must be >= 0'),
])
def test_bad_config_exits_with_a_clear_message(command, repo, flag, message):
  result = command(info, f'--config={repo / "configs" / "tiny.py"}', flag)
  assert result.code != 0 and message in result.err
  assert 'Traceback' not in result.err and result.out == ''


@pytest.mark.slow
def test_from_a_new_process(command_process):
  result = command_process('info', '--config=configs/base.py')
  assert result.code == 0, result.err
  assert 60e6 < json.loads(result.out)['params'] < 70e6  # the paper's 65M base model
