"""bench/pod_rehearsal.py at a small size, in the suite: 2 processes x 2 CPU devices, the
workdirs in a gs:// bucket on the GCS emulator. Prepare once; train with evaluation and
BLEU; SIGKILL a process (the other must exit on its own); relaunch and finish bitwise
equal to an uninterrupted run; average; evaluate on 2 processes equals 1; translate."""
import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_the_pod_path_rehearsed_on_two_processes(repo, tmp_path):
  result = subprocess.run(
      [sys.executable, 'bench/pod_rehearsal.py', '--processes=2', '--devices=2',
       f'--root={tmp_path}'], cwd=repo, capture_output=True, text=True, timeout=1200)
  record = json.loads(result.stdout)
  failed = {name: phase for name, phase in record['phases'].items() if not phase['ok']}
  assert result.returncode == 0 and record['ok'], (failed, result.stderr[-3000:])
  assert list(record['phases']) == ['prepare', 'reference', 'killed', 'resumed', 'bitwise',
                                    'average', 'evaluate', 'translate']
  killed = record['phases']['killed']
  assert killed['survivor_exit_codes'][0] != 0 and killed['survivors_exited_after_seconds'] < 60
  assert record['phases']['bitwise']['same_parameters']
  assert record['phases']['evaluate']['distinct_translations'] > 1
