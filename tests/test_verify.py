"""`verify`: each step against its manifest, one line each; nothing moved unless told."""
import hashlib
import os
import shutil
import subprocess
import sys

from etils import epath

from transformer_jax import manifest


def _snapshot(workdir) -> dict[str, str]:
  return {p.relative_to(workdir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(workdir.rglob('*')) if p.is_file()}


def _directory(workdir):
  return epath.Path(workdir) / 'checkpoints'


def _largest_array_file(step_dir):
  return max((p for p in step_dir.rglob('*') if p.is_file() and p.parent.name == 'd'),
             key=lambda p: p.stat().st_size)


def _verify(repo, workdir, *flags):
  return subprocess.run([sys.executable, '-m', 'transformer_jax.verify',
                         f'--workdir={workdir}', *flags], cwd=repo, capture_output=True,
                        text=True, timeout=600, env=dict(os.environ, JAX_PLATFORMS='cpu'))


def test_verify_reports_each_step_and_moves_nothing_unless_told(briefly_trained, tmp_path,
                                                                repo):
  workdir = tmp_path / 'work'
  shutil.copytree(briefly_trained, workdir)
  result = _verify(repo, workdir)
  assert result.returncode == 0, result.stderr
  assert [line.split('/checkpoints/', 1)[1] for line in result.stdout.splitlines()] == \
      [f'{step}: ok ({len(manifest.read(_directory(workdir), step))} files)'
       for step in (2, 4, 6)]
  manifest.remove(_directory(workdir), 2)
  victim = _largest_array_file(workdir / 'checkpoints' / '6')
  victim.write_bytes(victim.read_bytes()[:100])
  before = _snapshot(workdir)
  result = _verify(repo, workdir)
  assert result.returncode == 2
  lines = [line.split('/checkpoints/', 1)[1] for line in result.stdout.splitlines()]
  assert lines[0] == '2: no manifest' and lines[1].startswith('4: ok'), lines
  assert lines[2].startswith('6: damaged: 1 of its files differ from its manifest (') and \
      '100 bytes, recorded' in lines[2], lines
  assert result.stderr.strip() == ('error: 1 damaged step(s) left in place; run again with '
                                   '--quarantine to move them aside (a restore skips them '
                                   'either way).')
  assert _snapshot(workdir) == before
  result = _verify(repo, workdir, '--quarantine')
  assert result.returncode == 0, result.stderr
  assert 'moved to' in result.stdout
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()
                if p.name.isdigit()) == ['2', '4']


def test_verify_names_a_workdir_without_checkpoints(tmp_path, repo):
  result = _verify(repo, tmp_path)
  assert result.returncode == 2
  assert result.stderr.strip() == f'error: {tmp_path} holds no checkpoints (point --workdir ' \
                                  'at a training run).'
