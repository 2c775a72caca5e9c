"""The run's segments (segments.py): what one training process records, and the
goodput arithmetic over several."""
import json

import pytest

from transformer_jax import loop, segments


def test_a_run_records_its_phases_progress_and_exit(tiny_config, tmp_path):
  workdir = tmp_path / 'work'
  loop.train(tiny_config(num_steps=5, checkpoint_every=2), str(workdir))
  found = segments.read(str(workdir))
  assert len(found) == 1
  record = found[0]
  assert record['exit'] == 'done' and record['restored_step'] == 0 and record['step'] == 5
  phases = record['phases']
  assert record['start'] <= phases['data_ready'] <= phases['restored'] <= \
      phases['first_step'] <= record['time']
  assert record['step_s'] > 0 and record['checkpoint_s'] > 0
  assert all(record[k] >= 0 for k in segments.COUNTERS)
  # The same command again resumes at step 5 and exits at once: a second segment.
  loop.train(tiny_config(num_steps=5, checkpoint_every=2), str(workdir))
  found = segments.read(str(workdir))
  assert [s['restored_step'] for s in found] == [0, 5]
  assert [s['exit'] for s in found] == ['done', 'done']


def _segment(start, restored, step, step_s, end, exit_='done', **counters):
  return {'start': start, 'phases': {'restored': start + 1, 'first_step': start + 3},
          'restored_step': restored, 'step': step, 'time': end, 'exit': exit_,
          'step_s': step_s, **{k: 0.0 for k in segments.COUNTERS if k != 'step_s'},
          **counters}


def test_goodput_counts_steps_a_kill_made_compute_twice():
  """Killed at step 10 (known), restored from step 8: steps 9 and 10 were computed
  twice; their time, the start-up and the gap before the relaunch are badput."""
  killed = _segment(0.0, 0, 10, 10.0, 13.0, exit_=None, checkpoint_s=0.5)
  relaunched = _segment(20.0, 8, 14, 6.0, 29.0)
  summary = segments.summarize([killed, relaunched])
  assert summary['recomputed_steps'] == 2
  assert summary['productive_s'] == pytest.approx(8.0 + 6.0)
  assert summary['wall_s'] == pytest.approx(29.0)
  assert summary['goodput'] == pytest.approx(14.0 / 29.0, abs=1e-4)
  badput = summary['badput_s']
  assert badput['recomputed'] == pytest.approx(2.0)
  assert badput['gaps'] == pytest.approx(7.0)
  assert badput['restore'] == pytest.approx(2.0) and badput['checkpoint'] == 0.5
  assert summary['exits'] == ['killed', 'done']


def test_nothing_is_written_before_a_run_is_past_its_refusals(tmp_path):
  segment = segments.Segment(str(tmp_path))
  segment.phase('data_ready')
  assert not (tmp_path / segments.GOODPUT_DIR).exists()
  segment.open(restored_step=4)
  segment.exit('error')
  written = json.loads(segment.path.read_text())
  assert written['restored_step'] == 4 and 'data_ready' in written['phases']
  assert written['exit'] == 'error'


def test_each_launch_of_supervise_is_timed_until_its_first_step():
  """A slice lost at t=100, back at 130; install until 150 (the worker noted it), the
  data copied until 156, the process joined at 160, its first step at 170. The first
  launch's record is of before 2026-12-08: supervise noted the install's end."""
  supervised = [{'start': 0.0, 'events': [
      {'event': 'start', 'time': 0.0}, {'event': 'launch', 'time': 1.0},
      {'event': 'installed', 'time': 5.0}, {'event': 'launched', 'time': 6.0},
      {'event': 'lost', 'time': 100.0}, {'event': 'ready', 'time': 130.0},
      {'event': 'launch', 'time': 131.0},  # the install's end noted by the worker (below)
      {'event': 'launched', 'time': 151.0}, {'event': 'done', 'time': 300.0}]}]
  first = _segment(7.0, 0, 10, 10.0, 99.0, exit_=None)
  second = _segment(150.5, 8, 20, 10.0, 299.0)  # forked as the install ended
  second['launch'] = {'installed': 150.0, 'data_copied': 156.0}
  second['phases'] = {'joined': 160.0, 'data_ready': 162.0, 'restored': 165.0,
                      'first_step': 170.0}
  rows = segments.launches(supervised, [first, second])
  assert len(rows) == 2 and rows[0]['capacity_s'] == 0.0
  assert rows[0]['data_copy_and_start_s'] == 2.0  # a record of before the worker's times
  assert rows[1] == {'capacity_s': 30.0, 'install_s': 19.0, 'data_copy_s': 5.5,
                     'start_up_s': 4.0, 'data_s': 2.0, 'restore_s': 3.0,
                     'compile_and_first_step_s': 5.0, 'launch_to_first_step_s': 39.0}


def test_the_workers_launch_times_are_kept(tmp_path, monkeypatch):
  """launch/tpu.py notes when the worker's install and data copy ended; the process it
  starts keeps them in its first segment only (a later one in the same Python, as a
  notebook's, was not launched so)."""
  monkeypatch.setattr(segments, '_opened', [])
  monkeypatch.setenv(segments.LAUNCH_TIMES, ' installed=100.5 data_copied=107.25 bad=x')
  first = segments.Segment(str(tmp_path))
  first.open(restored_step=0)
  assert json.loads(first.path.read_text())['launch'] == {'installed': 100.5,
                                                          'data_copied': 107.25}
  later = segments.Segment(str(tmp_path))
  later.open(restored_step=0)
  assert json.loads(later.path.read_text())['launch'] == {}


def test_a_record_that_cannot_be_written_never_stops_training(tmp_path, capsys):
  (tmp_path / segments.GOODPUT_DIR).write_text('a file where the directory would go')
  segment = segments.Segment(str(tmp_path))
  segment.open(restored_step=0)  # writes: fails, says so, goes on
  segment.exit('done')
  err = capsys.readouterr().err
  assert err.count('warning: could not write ') == 2, err
