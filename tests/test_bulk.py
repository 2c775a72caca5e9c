"""Bulk translation of a file (`translate --input=F --output=O`): windows found in one
pass, output written window by window and joined at the end, a rerun after a SIGKILL
that ends with the same bytes, refusals that leave the work in place, per-line sampling,
and 2 and 4 processes that each decode only their own windows."""
import os
import signal
import subprocess
import sys
import time

import pytest

from transformer_jax import bulk, local_pod, translate
from transformer_jax.data import synthetic as synthetic_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def corpus(path, count: int, seed: int = 7, empty_every: int = 0) -> str:
  """`count` English lines of the synthetic task (every `empty_every`-th one empty)."""
  lines = [en for en, _ in synthetic_lib.generate_pairs(seed, count)]
  if empty_every:
    lines = ['' if i % empty_every == 0 else line for i, line in enumerate(lines, 1)]
  path.write_text(''.join(line + '\n' for line in lines), encoding='utf-8')
  return str(path)


@pytest.mark.parametrize('text, window', [
    (b'a\nbb\n\nccc\nd\n', 2), (b'a\nbb\n\nccc\nd', 2), (b'a\nbb\n', 5), (b'', 3),
    (b'x\n' * 10, 1), (b'x\n' * 10, 10), ('Straße\nÜber\n'.encode(), 1)])
def test_scan_finds_every_window_and_reading_them_gives_the_lines(tmp_path, text, window):
  path = tmp_path / 'in.txt'
  path.write_bytes(text)
  plan = bulk.scan(str(path), window)
  lines = text.decode().split('\n')
  lines = lines[:-1] if text.endswith(b'\n') or not text else lines
  assert plan.lines == len(lines) and plan.offsets[0] == 0 and plan.offsets[-1] == len(text)
  assert plan.windows == -(-len(lines) // window)
  read = [line for k in range(plan.windows) for line in bulk.read_window(str(path), plan, k)]
  assert read == lines


def test_the_first_window_is_short_and_the_others_full(tmp_path, monkeypatch):
  monkeypatch.setattr(bulk, 'FIRST_WINDOW', 3)
  path = corpus(tmp_path / 'in.txt', 12)
  plan = bulk.scan(path, 5)
  assert plan.starts == (0, 3, 8, 12)
  assert bulk.read_window(path, plan, 1) == open(path).read().split('\n')[3:8]


def test_a_small_read_size_finds_the_same_windows(tmp_path, monkeypatch):
  path = corpus(tmp_path / 'in.txt', 300)
  plan = bulk.scan(path, 7)
  monkeypatch.setattr(bulk, '_CHUNK', 13)  # windows that straddle reads
  assert bulk.scan(path, 7) == plan


def test_a_bad_byte_names_its_line_in_the_whole_file(tmp_path):
  path = tmp_path / 'in.txt'
  path.write_bytes(b'ok\n' * 5 + b'bad \xff\n')
  plan = bulk.scan(str(path), 4)
  with pytest.raises(Exception, match=r'line 6: bytes that are not UTF-8'):
    bulk.read_window(str(path), plan, 1)


def test_a_file_in_windows_equals_the_stream_and_leaves_no_parts(command, briefly_trained,
                                                                 tmp_path):
  source = corpus(tmp_path / 'in.txt', 45, empty_every=9)
  out = tmp_path / 'out.txt'
  common = [f'--workdir={briefly_trained}', '--decode=sample', '--seed=3', '--max_extra_len=5']
  result = command(translate, *common, f'--input={source}', f'--output={out}', '--window=7')
  assert result.code == 0, result.err
  assert not (tmp_path / 'out.txt.parts').exists()
  streamed = command(translate, *common, f'--input={source}', '--window=100')
  assert streamed.code == 0 and out.read_text() == streamed.out
  lines = out.read_text().split('\n')
  assert len(lines) == 46 and lines[8] == '' and sum(map(bool, lines)) >= 35  # 9, 18, ...: empty


def test_an_existing_output_is_never_truncated(command, briefly_trained, tmp_path):
  source = corpus(tmp_path / 'in.txt', 5)
  out = tmp_path / 'out.txt'
  out.write_text('an earlier result\n')
  flags = [f'--workdir={briefly_trained}', f'--input={source}', f'--output={out}',
           '--decode=greedy', '--max_extra_len=3']
  result = command(translate, *flags)
  assert result.code == 2 and 'exists' in result.err and '--restart' in result.err
  assert out.read_text() == 'an earlier result\n'
  assert command(translate, *flags, '--restart').code == 0
  assert len(out.read_text().splitlines()) == 5


def test_a_rerun_with_other_settings_is_refused_and_restart_starts_over(
    command, briefly_trained, tmp_path, monkeypatch):
  source = corpus(tmp_path / 'in.txt', 20)
  out, parts = tmp_path / 'out.txt', tmp_path / 'out.txt.parts'
  flags = [f'--workdir={briefly_trained}', f'--input={source}', f'--output={out}',
           '--window=5', '--max_extra_len=3', '--decode=greedy']
  assert command(translate, *flags).code == 0
  reference = out.read_text()
  out.unlink()
  _interrupted_job(command, monkeypatch, flags, parts, keep=1)
  before = {name: (parts / name).read_bytes() for name in os.listdir(parts)}
  for other, named in (('--decode=beam', 'method'), ('--step=4', 'step'),
                       ('--window=4', 'window')):
    refused = command(translate, *flags, other)
    assert refused.code == 2 and 'other settings' in refused.err and named in refused.err
    assert len(refused.err.strip().splitlines()) == 1
    assert {name: (parts / name).read_bytes() for name in os.listdir(parts)} == before
  resumed = command(translate, *flags)
  assert resumed.code == 0 and 'resuming at line 6 (1 of 4 windows' in resumed.out
  assert out.read_text() == reference and not parts.exists()
  out.unlink()
  _interrupted_job(command, monkeypatch, flags, parts, keep=1)
  assert command(translate, *flags, '--decode=beam', '--restart').code == 0
  assert out.exists() and not parts.exists()


def _interrupted_job(command, monkeypatch, flags, parts, keep: int) -> None:
  """`parts` as a kill after `keep` windows leaves it: the job's record and the parts of
  its first windows (a run stopped before joining, the later windows' parts removed)."""
  with monkeypatch.context() as patch:
    patch.setattr(bulk, '_join', lambda *args: None)
    assert command(translate, *flags).code == 0
  for name in os.listdir(parts):
    if name.startswith('window-') and int(name[7:15]) >= keep:
      (parts / name).unlink()


def test_samples_depend_on_the_line_not_on_windows_or_batches(command, briefly_trained,
                                                              tmp_path):
  source = corpus(tmp_path / 'in.txt', 30)
  outputs = []
  for window, batch in ((30, 256), (4, 256), (7, 3)):
    result = command(translate, f'--workdir={briefly_trained}', f'--input={source}',
                     '--decode=sample', '--seed=5', '--max_extra_len=6', f'--window={window}',
                     f'--batch_size={batch}')
    assert result.code == 0, result.err
    outputs.append(result.out)
  assert outputs[0] == outputs[1] == outputs[2]
  other_seed = command(translate, f'--workdir={briefly_trained}', f'--input={source}',
                       '--decode=sample', '--seed=6', '--max_extra_len=6')
  assert other_seed.out != outputs[0]


def _translate_process(workdir, source, out, *flags):
  return subprocess.Popen(
      [sys.executable, '-m', 'transformer_jax.translate', f'--workdir={workdir}',
       f'--input={source}', f'--output={out}', *flags], cwd=REPO,
      env=dict(os.environ, JAX_PLATFORMS='cpu'), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigkills_then_reruns_give_the_bytes_of_an_uninterrupted_run(trained, tmp_path):
  workdir, _ = trained
  source = corpus(tmp_path / 'in.txt', 400, empty_every=13)
  flags = ['--window=25', '--decode=beam', '--max_extra_len=10']
  reference = tmp_path / 'reference.txt'
  done = _translate_process(workdir, source, reference, *flags)
  assert done.wait(600) == 0, done.stderr.read()
  out, parts = tmp_path / 'out.txt', tmp_path / 'out.txt.parts'
  resumed_at = []
  for windows_before_kill in (1, 5, 11):
    run = _translate_process(workdir, source, out, *flags)
    while len(list(parts.glob('window-*.txt'))) < windows_before_kill:
      assert run.poll() is None, run.stderr.read()
      time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    written = len(list(parts.glob('window-*.txt')))
    assert not out.exists() and written >= windows_before_kill
    resumed_at.append(written)
  final = _translate_process(workdir, source, out, *flags)
  stdout, stderr = final.communicate(timeout=600)
  assert final.returncode == 0, stderr
  # The rerun started after the windows on disk: only the window in flight was redone.
  assert f'resuming at line {resumed_at[-1] * 25 + 1} ' in stdout
  assert out.read_bytes() == reference.read_bytes() and not parts.exists()


def failure(err: str) -> str:
  """What a failed process said: its error lines first (a fatal error's thread dump
  would push them out of a plain tail), then its last lines."""
  lines = err.splitlines()
  said = [line for line in lines if 'rror' in line or 'Fatal' in line or 'abort' in line]
  return '\n'.join([*said[:20], '...', *lines[-15:]])


@pytest.mark.slow
@pytest.mark.parametrize('processes', [2, 4])
def test_processes_decode_their_own_windows_and_write_what_one_process_does(
    trained, tmp_path, processes):
  workdir, _ = trained
  source = corpus(tmp_path / 'in.txt', 130, empty_every=11)
  flags = ['--window=20', '--decode=sample', '--seed=3', '--max_extra_len=8']
  one = tmp_path / 'one.txt'
  [single] = local_pod.run(['transformer_jax.translate', f'--workdir={workdir}',
                            f'--input={source}', f'--output={one}', *flags],
                           processes=1, devices=2, log_dir=str(tmp_path / 'one'), cwd=REPO)
  assert single.code == 0, single.err
  many = tmp_path / 'many.txt'
  # Heartbeat 60 s: 4 processes compiling at once on a 2-core machine can be silent
  # for 10 s (local_pod's default), and JAX then aborts them all (a CI failure once).
  results = local_pod.run(['transformer_jax.translate', f'--workdir={workdir}',
                           f'--input={source}', f'--output={many}', *flags],
                          processes=processes, devices=2, log_dir=str(tmp_path / 'many'),
                          cwd=REPO, heartbeat_s=60)
  assert all(r.code == 0 for r in results), [failure(r.err) for r in results]
  assert many.read_bytes() == one.read_bytes()
  windows = [min(20, 130 - k * 20) for k in range(7)]  # 7 windows dealt out in turn
  for p, result in enumerate(results):
    assert f'process {p} translated {sum(windows[p::processes])} lines' in result.err
