"""The writer's lease (lease.py): a reader beside a live run never moves its steps."""
import hashlib
import json
import shutil
import time

from etils import epath

from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import inference, lease, manifest


def _snapshot(workdir) -> dict[str, str]:
  return {p.relative_to(workdir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(workdir.rglob('*')) if p.is_file() and p.name != lease.LEASE_FILE}


def test_a_reader_beside_a_live_run_never_moves_a_half_deleted_step(briefly_trained, tmp_path,
                                                                   capsys):
  """Orbax deletes a step's files before its directory: `translate` (its restore) beside
  the run sees step 6 half gone. While the run's lease is live it falls back to step 4
  and moves nothing; once the lease has expired (a killed run) the step is moved aside."""
  workdir = tmp_path / 'work'
  shutil.copytree(briefly_trained, workdir)
  held = lease.Lease(workdir, renew_s=3600)
  shutil.rmtree(workdir / 'checkpoints' / '6' / 'state')
  before = _snapshot(workdir)
  capsys.readouterr()
  assert inference.restore(str(workdir)).step == 4
  err = capsys.readouterr().err
  assert 'left ' in err and 'in place: a run is saving into' in err, err
  assert _snapshot(workdir) == before
  held.release()
  assert not (workdir / lease.LEASE_FILE).exists()

  stale = {'token': 'x', 'host': 'h', 'pid': 1, 'renewed': time.time() - 2 * lease.EXPIRES_S}
  (workdir / lease.LEASE_FILE).write_text(json.dumps(stale))
  assert inference.restore(str(workdir)).step == 4
  moved = [p.name for p in (workdir / checkpoint_lib.QUARANTINE_DIR).iterdir()]
  assert len(moved) == 1 and moved[0].startswith('checkpoints-6-')
  assert (workdir / 'quarantine' / moved[0] / 'manifest.json').exists()  # the proof, kept
  assert not manifest.path(epath.Path(workdir) / 'checkpoints', 6).exists()
