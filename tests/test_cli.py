"""What every command shares (cli.py): the console script, one-line errors, progress; and
the layering rule that keeps commands thin: no module imports a command."""
import ast
import json
import os
import pathlib
import re
import sys

import pytest

from transformer_jax import cli

REPO = pathlib.Path(__file__).resolve().parents[1]


def imported_modules(path: pathlib.Path) -> set[str]:
  """Every transformer_jax module a file imports, at any depth of its code."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f'{node.module}.{a.name}' for a in node.names)
  return {n for n in names if n.startswith('transformer_jax')}


def test_no_module_imports_a_command():
  commands = {f'transformer_jax.{c}' for c in cli.COMMANDS}
  assert all((REPO / 'transformer_jax' / f'{c}.py').exists() for c in cli.COMMANDS)
  sources = [*(REPO / 'transformer_jax').rglob('*.py'), *(REPO / 'bench').glob('*.py'),
             *(REPO / 'launch').glob('*.py')]
  offenders = {str(p.relative_to(REPO)): sorted(imported_modules(p) & commands)
               for p in sources if imported_modules(p) & commands}
  assert not offenders


def test_console_script_runs_a_command(monkeypatch, capsys):
  monkeypatch.setattr(sys, 'argv', ['transformer-jax', 'info',
                                    f'--config={REPO / "configs" / "tiny.py"}'])
  with pytest.raises(SystemExit) as exit_:
    cli.main()
  assert exit_.value.code in (0, None)
  assert json.loads(capsys.readouterr().out)['params'] > 0


@pytest.mark.parametrize('argv', [['transformer-jax'], ['transformer-jax', 'fly']])
def test_console_script_without_a_command_prints_usage(monkeypatch, capsys, argv):
  monkeypatch.setattr(sys, 'argv', argv)
  with pytest.raises(SystemExit) as exit_:
    cli.main()
  assert exit_.value.code == 2
  assert ('usage: transformer-jax {prepare,train,translate,evaluate,average,verify,goodput,'
          'info,aot,export,import_model}') in \
      capsys.readouterr().err


def test_an_unknown_config_key_is_one_line(capsys):
  with pytest.raises(SystemExit) as exit_:
    cli._parse_flags(['info', f'--config={REPO / "configs" / "tiny.py"}',
                      '--config.model.d_modle=3'])
  assert exit_.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith('error: ') and 'd_modle' in err and len(err.strip().splitlines()) == 1


def test_progress_lines_are_rate_limited(capsys):
  report = cli.stderr_progress(every_s=3600)
  for done in range(1, 6):
    report(done, 5)
  assert capsys.readouterr().err.splitlines() == ['translated 1/5 sentences',
                                                  'translated 5/5 sentences']


@pytest.mark.parametrize('override, named', [
    ('--config.model.d_model=abc', '--config.model.d_model=abc'),
    ('--config.model.share_embeddings=maybe', '--config.model.share_embeddings=maybe'),
    ('--config.model=5', '--config.model=5'),
])
def test_a_flag_of_the_wrong_type_is_one_line(command, override, named):
  from transformer_jax import info
  result = command(info, f'--config={REPO / "configs" / "tiny.py"}', override)
  assert result.code == 2 and len(result.err.strip().splitlines()) == 1
  assert result.err.startswith('error: ') and named in result.err
  assert 'FATAL' not in result.err and not result.out


def test_a_missing_or_broken_config_file_is_one_line(command, tmp_path):
  from transformer_jax import info
  result = command(info, f'--config={tmp_path / "nope.py"}')
  assert result.code == 2 and len(result.err.strip().splitlines()) == 1
  assert 'nope.py' in result.err and 'does not exist' in result.err
  broken = tmp_path / 'broken.py'
  broken.write_text('from transformer_jax.config import defaults\n\ndef get_config(:\n')
  result = command(info, f'--config={broken}')
  assert result.code == 2 and len(result.err.strip().splitlines()) == 1
  assert f'{broken}, line 3' in result.err


def test_commands_print_no_library_info_logs_unless_asked(command_process, briefly_trained):
  """Orbax logs dozens of INFO lines per restore; absl's app.run turns INFO on by itself.
  By default a command prints only its own lines; --verbosity=0 brings the logs back."""
  def info_lines(err):  # absl's format: I1201 05:37:15.864239 ...
    return [line for line in err.splitlines() if re.match(r'I\d{4} \d\d:\d\d', line)]
  quiet = command_process('translate', f'--workdir={briefly_trained}', stdin=b'hello\n')
  assert quiet.code == 0, quiet.err
  assert not info_lines(quiet.err)
  chatty = command_process('translate', f'--workdir={briefly_trained}', '--verbosity=0',
                           stdin=b'hello\n')
  assert chatty.code == 0 and len(info_lines(chatty.err)) > 5


def test_the_main_job_prints_only_its_own_lines(repo, tmp_path):
  """The README's main job (shortened) on a machine as a user has it: no JAX_PLATFORMS,
  libtpu installed (the test extra). No library log line, no libtpu probing."""
  import subprocess
  env = {k: v for k, v in os.environ.items() if k not in ('JAX_PLATFORMS', 'XLA_FLAGS')}
  result = subprocess.run(
      [sys.executable, '-m', 'transformer_jax.train', '--config=configs/default.py',
       f'--workdir={tmp_path / "work"}', f'--config.data.tfds_dir={tmp_path / "tfds"}',
       '--config.train.num_steps=2', '--config.train.log_every=1'],
      cwd=repo, env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr
  assert result.stderr.splitlines() == [
      f'preparing the synthetic dataset in {tmp_path / "tfds" / "synthetic" / "1.0.0"} '
      '(once; later runs reuse it)']
  ours = re.compile(r'^(step \d+/2 |eval step 2 |\{"final")')
  assert all(ours.match(line) for line in result.stdout.splitlines()), result.stdout
