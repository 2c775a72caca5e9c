"""`train.profile_steps`: a trace of the chosen steps, read back as xprof reads it."""
import subprocess
import sys

import jax
import pytest

from transformer_jax import config as config_lib
from transformer_jax import loop, profiling
from transformer_jax.errors import ConfigError


def _event_names(trace) -> set[str]:
  data = jax.profiler.ProfileData.from_file(str(trace))
  return {event.name for plane in data.planes for line in plane.lines
          for event in line.events}


def test_the_chosen_steps_are_traced_into_the_workdir(tiny_config, tmp_path, capsys):
  workdir = tmp_path / 'work'
  loop.train(tiny_config(num_steps=6, profile_steps=(3, 2)), str(workdir))
  traces = list(workdir.joinpath(*profiling.PROFILE_DIR).glob('*/*.xplane.pb'))
  assert len(traces) == 1, traces
  names = _event_names(traces[0])
  # The compiled train step ran inside the trace (PjRt names the executable after the
  # jitted function), once per device of the 8-device mesh.
  executions = [n for n in names if n.endswith('Execute (jit_train_step)')]
  assert len(executions) >= 2, sorted(names)[:50]
  assert 'profiled steps 3-4: ' in capsys.readouterr().out


def test_no_trace_unless_asked(tiny_config, tmp_path):
  workdir = tmp_path / 'work'
  loop.train(tiny_config(num_steps=2), str(workdir))
  assert not workdir.joinpath(*profiling.PROFILE_DIR).exists()


@pytest.mark.parametrize('value', [(3,), (0, 2), (3, 0), (1, 2, 3), (1.5, 2)])
def test_a_bad_range_is_one_line(value):
  config = config_lib.defaults()
  config.train.profile_steps = value
  with pytest.raises(ConfigError, match=r'train\.profile_steps must be \(\) \(off\) or '):
    config_lib.validate(config)


def test_the_flag_parses_from_the_command_line(repo):
  result = subprocess.run(
      [sys.executable, '-m', 'transformer_jax.info', f'--config={repo / "configs" / "tiny.py"}',
       '--config.train.profile_steps=(10,3)'], cwd=repo, capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'profile_steps' in result.stdout and '10' in result.stdout, result.stdout[-2000:]
