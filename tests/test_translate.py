"""The `translate` command: stdin or files in, translations out in input order, empty
lines kept; its flags; and each bad input is one clear error."""
import os
import re
import shutil

import pytest

from transformer_jax import translate

SENTENCES = ['The dog sees the cat.', '', 'Today the big dog sees two small cats in the park.']


def lines_of(sentences):
  return ''.join(s + '\n' for s in sentences).encode()


def test_stdin_in_order_with_empty_lines(command, briefly_trained):
  result = command(translate, f'--workdir={briefly_trained}', '--decode=greedy',
                   stdin=lines_of(SENTENCES))
  assert result.code == 0, result.err
  lines = result.out.split('\n')
  assert len(lines) == 4 and lines[3] == ''  # three lines, each ending in a newline
  assert lines[1] == ''  # an empty line translates to an empty line
  # The same lines in reverse order come back reversed. (Batches are formed by length,
  # so both runs decode the same batches.)
  reverse = command(translate, f'--workdir={briefly_trained}', '--decode=greedy',
                    stdin=lines_of(SENTENCES[::-1]))
  assert reverse.out.split('\n')[:3] == lines[:3][::-1]
  assert 'translated' not in result.err  # no progress lines when stdout is the output


def test_output_limit_flag_and_its_old_name(command, briefly_trained, tmp_path):
  """Sampling from a barely trained model runs to the length limit: source tokens +
  --max_extra_len (seeded, so the same tokens up to the shorter limit)."""
  (tmp_path / 'in.txt').write_text('The dog sleeps.\n')
  outputs = []
  for flag in ('--max_extra_len=2', '--max_len=2', '--max_extra_len=9'):
    out = tmp_path / f'out{len(outputs)}.txt'
    result = command(translate, f'--workdir={briefly_trained}', f'--input={tmp_path / "in.txt"}',
                     f'--output={out}', '--decode=sample', '--seed=3', flag)
    assert result.code == 0, result.err
    outputs.append(out.read_text().strip())
  assert outputs[0] == outputs[1] and len(outputs[2]) > len(outputs[0])


@pytest.mark.parametrize('flags, message', [
    (['--decode=nucleus'], '--decode must be beam, greedy or sample'),
    (['--beam_size=0'], '--beam_size must be at least 1'),
    (['--max_len=-5'], '--max_extra_len must be at least 0'),
    (['--step=3'], 'No checkpoint at step 3'),
    (['--averaged'], 'holds no averaged checkpoint'),
    (['--input=/nonexistent/in.txt'], 'Cannot read /nonexistent/in.txt: No such file')])
def test_bad_flags_are_one_line_errors(command, briefly_trained, flags, message):
  result = command(translate, f'--workdir={briefly_trained}', *flags, stdin=b'x\n')
  assert result.code == 2 and message in result.err
  assert len(result.err.strip().splitlines()) == 1 and result.out == ''


def test_bad_bytes_name_the_line(command, briefly_trained):
  result = command(translate, f'--workdir={briefly_trained}', stdin=b'fine\nbad \xff here\n')
  assert result.code == 2
  assert 'stdin, line 2: bytes that are not UTF-8' in result.err


def test_missing_or_empty_workdir(command, tmp_path):
  for workdir in (tmp_path / 'nope', tmp_path):
    result = command(translate, f'--workdir={workdir}', stdin=b'x\n')
    assert result.code == 2 and 'holds no checkpoints' in result.err


def test_vocabulary_that_does_not_match_the_checkpoint(command, briefly_trained, tmp_path):
  other = tmp_path / 'work'
  os.makedirs(other)
  os.symlink(briefly_trained / 'checkpoints', other / 'checkpoints')
  (other / 'vocab.model').write_bytes(b'another vocabulary')
  result = command(translate, f'--workdir={other}', stdin=b'x\n')
  assert result.code == 2
  assert 'does not match the vocabulary the checkpoint was trained with' in result.err
  assert (other / 'vocab.model').read_bytes() == b'another vocabulary'


@pytest.mark.slow
def test_a_trained_model_from_a_new_process(command_process, trained, tmp_path):
  """As a user runs it: stdin in order, and files, where greedy equals a beam of one."""
  workdir, _ = trained
  result = command_process('translate', f'--workdir={workdir}', stdin=lines_of(SENTENCES))
  assert result.code == 0, result.err
  lines = result.out.split('\n')
  assert len(lines) == 4 and lines[1] == '' and lines[0] and lines[2] and lines[0] != lines[2]
  (tmp_path / 'in.txt').write_text(''.join(s + '\n' for s in SENTENCES))
  outputs = []
  for flags in (['--decode=greedy'], ['--beam_size=1']):
    out = tmp_path / f'out{len(outputs)}.txt'
    result = command_process('translate', f'--workdir={workdir}',
                             f'--input={tmp_path / "in.txt"}', f'--output={out}', *flags)
    assert result.code == 0, result.err
    outputs.append(out.read_text())
  assert outputs[0] == outputs[1]


@pytest.mark.slow
def test_very_long_line_is_truncated_with_a_warning(command_process, trained):
  workdir, _ = trained
  long_line = ' '.join(['the dog sees the cat'] * 40)
  result = command_process('translate', f'--workdir={workdir}', '--max_input_len=20',
                           stdin=f'The dog sleeps.\n{long_line}\n'.encode())
  assert result.code == 0, result.err
  assert 'line 2 has' in result.err and 'translating its first 19' in result.err
  assert len(result.out.split('\n')) == 3


def test_a_damaged_checkpoint_is_never_translated_with(command, briefly_trained, tmp_path,
                                                       damage_arrays):
  """--step of a step that fails verification: one line. Without --step: the newest step
  that verifies, with a warning; the damaged one is moved aside."""
  workdir = tmp_path / 'work'
  shutil.copytree(briefly_trained, workdir)
  damage_arrays(workdir / 'checkpoints' / '6')
  refused = command(translate, f'--workdir={workdir}', '--step=6', stdin=b'x\n')
  assert refused.code == 2 and len(refused.err.strip().splitlines()) == 1, refused.err
  assert 'step 6' in refused.err and 'failed verification' in refused.err
  assert 'Choose another --step' in refused.err
  assert not (workdir / 'checkpoints' / '6').exists()
  assert len(list((workdir / 'quarantine').iterdir())) == 1
  fallback = command(translate, f'--workdir={workdir}', '--decode=greedy', stdin=b'x\n')
  assert fallback.code == 0 and fallback.out.count('\n') == 1
  damage_arrays(workdir / 'checkpoints' / '4')
  newest = command(translate, f'--workdir={workdir}', '--decode=greedy', stdin=b'x\n')
  assert newest.code == 0, newest.err
  assert re.search(r'warning: The checkpoint at step 4 .* failed verification: .* trying '
                   'the one before', newest.err)
  assert sorted(int(p) for p in os.listdir(workdir / 'checkpoints') if p.isdigit()) == [2]


def test_an_ensemble_translates_and_one_of_one_is_the_model(command, briefly_trained):
  single = command(translate, f'--workdir={briefly_trained}', stdin=lines_of(SENTENCES))
  one = command(translate, f'--ensemble={briefly_trained}', stdin=lines_of(SENTENCES))
  assert one.code == 0 and one.out == single.out
  two = command(translate, f'--ensemble={briefly_trained}@6,{briefly_trained}@4',
                stdin=lines_of(SENTENCES))
  assert two.code == 0, two.err
  assert len(two.out.split('\n')) == len(SENTENCES) + 1 and two.out.split('\n')[1] == ''


def test_an_ensemble_needs_one_vocabulary(command, briefly_trained, tiny_config, tmp_path):
  from transformer_jax import loop
  config = tiny_config(num_steps=2, checkpoint_every=2)
  config.model.vocab_size = 200  # a vocabulary of its own
  config.data.vocab_path = ''  # trained into the workdir
  loop.train(config, str(tmp_path / 'other'))
  result = command(translate, f'--ensemble={briefly_trained},{tmp_path / "other"}',
                   stdin=b'x\n')
  assert result.code == 2 and len(result.err.strip().splitlines()) == 1, result.err
  assert 'another vocabulary' in result.err
  for flags, message in (([f'--ensemble={briefly_trained}@six'], 'after @ comes a step'),
                         ([f'--ensemble={briefly_trained}', '--step=4'], 'do not go with')):
    result = command(translate, *flags, stdin=b'x\n')
    assert result.code == 2 and message in result.err, result.err


@pytest.mark.slow
def test_an_ensemble_of_the_best_and_the_latest(command, trained):
  """DIR@best: the checkpoint of WORKDIR/best with the highest validation BLEU."""
  import orbax.checkpoint as ocp
  workdir, _ = trained
  best = ocp.CheckpointManager(workdir / 'best' / 'checkpoints',
                               options=ocp.CheckpointManagerOptions(
                                   read_only=True, best_fn=lambda m: m['bleu'], best_mode='max'))
  assert len(best.all_steps()) == 2
  alone = command(translate, f'--workdir={workdir / "best"}', f'--step={best.best_step()}',
                  stdin=lines_of(SENTENCES))
  as_member = command(translate, f'--ensemble={workdir}@best', stdin=lines_of(SENTENCES))
  assert as_member.code == 0 and as_member.out == alone.out
  both = command(translate, f'--ensemble={workdir}@best,{workdir}', stdin=lines_of(SENTENCES))
  assert both.code == 0 and both.out.count('\n') == len(SENTENCES)


def test_a_pipe_gets_each_translation_before_the_next_line_is_sent(repo, briefly_trained,
                                                                  tmp_path):
  """As fairseq-interactive is used: one line in, its translation out, the pipe still
  open; the same translations as a file gives; the end of input ends the command."""
  import queue
  import subprocess
  import sys
  import threading
  process = subprocess.Popen(
      [sys.executable, '-m', 'transformer_jax.translate', f'--workdir={briefly_trained}',
       '--decode=greedy', '--max_wait_ms=20'], cwd=repo, stdin=subprocess.PIPE,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  out: queue.Queue = queue.Queue()
  threading.Thread(target=lambda: [out.put(line) for line in process.stdout], daemon=True).start()
  got = []
  try:
    for sentence in SENTENCES:
      process.stdin.write(sentence.encode() + b'\n')
      process.stdin.flush()
      got.append(out.get(timeout=300).decode().rstrip('\n'))  # before the next line is sent
    process.stdin.close()
    assert process.wait(timeout=120) == 0, process.stderr.read().decode()
  finally:
    process.kill()
  assert out.empty() and got[1] == ''
  (tmp_path / 'in.txt').write_bytes(lines_of(SENTENCES))  # a file: length-sorted batches
  whole = subprocess.run(
      [sys.executable, '-m', 'transformer_jax.translate', f'--workdir={briefly_trained}',
       '--decode=greedy', f'--input={tmp_path / "in.txt"}'], cwd=repo, capture_output=True,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert whole.returncode == 0
  assert whole.stdout.decode().split('\n')[:-1] == got


def test_nbest_writes_k_scored_hypotheses_per_line(command, briefly_trained):
  result = command(translate, f'--workdir={briefly_trained}', '--nbest=3', '--beam_size=4',
                   stdin=lines_of(SENTENCES))
  assert result.code == 0, result.err
  rows = [line.split('\t') for line in result.out.rstrip('\n').split('\n')]
  assert [r[0] for r in rows] == ['1', '1', '1', '2', '3', '3', '3']
  assert rows[3] == ['2', '0.0000', '']
  for first in (0, 4):
    scores = [float(r[1]) for r in rows[first:first + 3]]
    assert scores == sorted(scores, reverse=True)
    assert len({r[2] for r in rows[first:first + 3]}) == 3
  best = command(translate, f'--workdir={briefly_trained}', '--beam_size=4',
                 stdin=lines_of(SENTENCES))
  assert best.out.split('\n')[0] == rows[0][2]  # the first of the n best is the translation
  refused = command(translate, f'--workdir={briefly_trained}', '--nbest=5', '--beam_size=4',
                    stdin=b'x\n')
  assert refused.code == 2 and 'at most --beam_size' in refused.err
