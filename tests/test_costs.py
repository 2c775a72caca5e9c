"""What a config costs (costs.py): parameter counts against the paper's shapes, and the
FLOPs of a training step against the reference workload's count."""
import json

import pytest

from transformer_jax import config as config_lib
from transformer_jax.costs import count_params, summary, train_flops


def small_config(**changes):
  c = config_lib.defaults().model
  c.update(dict(vocab_size=50, d_model=32, num_heads=4, d_ff=48, num_encoder_layers=2,
                num_decoder_layers=2, **changes))
  return c


def formula_params(m):
  """Independent count from the paper's shapes (no attention-projection biases)."""
  d, f, v = m.d_model, m.d_ff, m.vocab_size
  ffn = 2 * d * f + f + d
  norm = 2 * d
  encoder = m.num_encoder_layers * (4 * d * d + ffn + 2 * norm)
  decoder = m.num_decoder_layers * (8 * d * d + ffn + 3 * norm)
  embeddings = v * d * (1 if m.share_embeddings else 2)
  output = 0 if m.tie_output_embedding else v * d
  final_norms = 2 * norm if m.pre_norm else 0
  total = encoder + decoder + embeddings + output + final_norms
  return total, total - embeddings - output



@pytest.mark.parametrize('name', ['base', 'big'])
def test_parameter_count_equals_formula(repo, name):
  cfg = config_lib.load(str(repo / 'configs' / f'{name}.py')).model
  counts = count_params(cfg)
  total, non_embedding = formula_params(cfg)
  assert counts == {'params': total, 'params_non_embedding': non_embedding}



def test_base_is_the_papers_65m(repo):
  cfg = config_lib.load(str(repo / 'configs' / 'base.py')).model
  assert cfg.vocab_size == 37000
  assert abs(count_params(cfg)['params'] - 65e6) / 65e6 < 0.05



@pytest.mark.parametrize('changes', [dict(share_embeddings=False),
                                     dict(tie_output_embedding=False),
                                     dict(pre_norm=True)])
def test_parameter_count_switches(changes):
  cfg = small_config(**changes)
  assert count_params(cfg)['params'] == formula_params(cfg)[0]



def test_train_flops_equal_the_reference_workloads_count(repo):
  w = json.loads((repo / 'bench' / 'workloads' / 'cpu_small.json').read_text())
  m = config_lib.defaults().model
  m.update(vocab_size=w['vocab_size'], d_model=w['d_model'], d_ff=w['d_ff'],
           num_heads=w['num_heads'], num_encoder_layers=w['encoder_layers'],
           num_decoder_layers=w['decoder_layers'])
  assert train_flops(m, w['batch'], w['src_len'], w['tgt_len']) == w['train_flops_per_step']
  # Twice the tokens, twice the matmul work; attention grows faster than linearly.
  one = train_flops(m, 1, 32, 32)
  assert train_flops(m, 2, 32, 32) == 2 * one and train_flops(m, 1, 64, 64) > 2 * one


def test_summary_of_a_preset(repo):
  config = config_lib.load(str(repo / 'configs' / 'base.py'))
  s = summary(config)
  assert s['params'] == count_params(config.model)['params']
  assert s['memory_bytes']['total_state'] == 4 * 4 * s['params']  # fp32 params, grads, Adam
  n = config.data.max_len
  assert s['flops_per_token_train'] * config.data.batch_size * n == pytest.approx(
      train_flops(config.model, config.data.batch_size, n, n))


def test_mfu_uses_published_peaks_and_does_not_guess_a_cpus():
  from types import SimpleNamespace
  from transformer_jax.costs import mfu, peak_flops, step_flops
  assert peak_flops('TPU v5 lite') == 197e12 and peak_flops('TPU v4') == 275e12
  assert peak_flops('TPU v5') == 459e12  # v5p reports itself as 'TPU v5'
  assert peak_flops('NVIDIA H100 80GB HBM3') == 989e12
  assert peak_flops('NVIDIA H100 PCIe') == 756e12
  assert peak_flops('NVIDIA A100-SXM4-40GB') == 312e12
  assert peak_flops('cpu') is None
  config = config_lib.defaults()
  n = config.data.max_len
  assert step_flops(config) == train_flops(config.model, config.data.batch_size, n, n)
  chips = [SimpleNamespace(device_kind='TPU v5 lite')] * 4
  assert mfu(config, 0.5, chips) == pytest.approx(step_flops(config) / 0.5 / (4 * 197e12))
  config.train.rdrop_alpha = 1.0  # every row twice
  assert step_flops(config) == 2 * train_flops(config.model, config.data.batch_size, n, n)
  assert mfu(config, 0.5, [SimpleNamespace(device_kind='cpu')]) is None


def test_a_flops_budget_ends_at_the_first_step_that_reaches_it(repo):
  from transformer_jax.costs import last_step, step_flops
  config = config_lib.load(str(repo / 'configs' / 'experiments' / 'multi30k_lc.py'))
  config.train.num_steps = 100_000
  assert last_step(config) == 100_000  # no budget
  f = step_flops(config)
  for budget, steps in ((2.5 * f, 3), (3 * f, 3), (3 * f + 1, 4), (0.1, 1), (1e30, 100_000)):
    config.train.budget_flops = budget
    assert last_step(config) == steps
  config.train.budget_flops = 10_451 * f  # B_lc: the lowercased recipe's recorded run
  assert last_step(config) == 10_451
  config.train.rdrop_alpha = 5.0  # two passes a step: half the steps
  assert last_step(config) == 5_226
  config.train.budget_flops = -1.0
  with pytest.raises(config_lib.ConfigError, match='train.budget_flops must be'):
    config_lib.validate(config)
