"""The `average` command: the mean of the last N checkpoints, which translate reads with
--averaged; a later call replaces it; too few checkpoints is one clear error."""
import shutil

import pytest

from transformer_jax import average, checkpoint as checkpoint_lib, translate


def test_average_then_translate_with_it(command, briefly_trained, tmp_path):
  workdir = tmp_path / 'work'
  shutil.copytree(briefly_trained, workdir)
  result = command(average, f'--workdir={workdir}', '--last=3')
  assert result.code == 0, result.err
  assert result.out.strip() == (f'averaged checkpoints 2, 4, 6 into '
                                f'{workdir / checkpoint_lib.AVERAGED_DIR} (step 6)')
  result = command(translate, f'--workdir={workdir}', '--averaged', '--max_extra_len=2',
                   stdin=b'The dog sleeps.\n')
  assert result.code == 0 and result.out.count('\n') == 1, result.err
  result = command(average, f'--workdir={workdir}', '--last=2', '--until_step=5')
  assert result.code == 0 and 'averaged checkpoints 2, 4 into' in result.out


@pytest.mark.parametrize('flags, message', [
    (['--last=0'], '--last must be at least 1, got 0.'),
    (['--last=4'], '--last=4 but'),
    (['--last=3', '--until_step=5'], 'at or before step 5 (2, 4)')])
def test_bad_requests_are_one_line_errors(command, briefly_trained, flags, message):
  result = command(average, f'--workdir={briefly_trained}', *flags)
  assert result.code == 2 and message in result.err
  assert not (briefly_trained / checkpoint_lib.AVERAGED_DIR).exists()


@pytest.mark.slow
def test_from_a_new_process(command_process, trained, tmp_path):
  workdir = tmp_path / 'work'
  shutil.copytree(trained[0], workdir)
  result = command_process('average', f'--workdir={workdir}', '--last=3')
  assert result.code == 0, result.err
  assert 'averaged checkpoints 200, 250, 300 into' in result.out
