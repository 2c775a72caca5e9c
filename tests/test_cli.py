"""What every command shares (cli.py): the console script, one-line errors, progress; and
the layering rule that keeps commands thin: no module imports a command."""
import ast
import json
import pathlib
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
  assert 'usage: transformer-jax {prepare,train,translate,evaluate,average,info,aot}' in \
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
