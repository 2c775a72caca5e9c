"""`train.profile_steps=(FIRST, COUNT)`: a `jax.profiler` trace of those training steps.

The trace (`HOST.xplane.pb`, what xprof and TensorBoard's profile plugin read) lands in
WORKDIR/tensorboard/train/plugins/profile/RUN/, beside the training scalars, so
`tensorboard --logdir=WORKDIR/tensorboard` shows it under the `train` run. JAX's profiler
writes to a local directory first; a workdir in a bucket gets a copy. Process 0 traces
alone unless `train.profile_every_process` (then each process writes its own file,
HOST.processN.xplane.pb).
"""
from __future__ import annotations

import os
import shutil
import tempfile

import jax

from transformer_jax import distributed, files

PROFILE_DIR = ('tensorboard', 'train', 'plugins', 'profile')


class StepProfile:
  """Starts the trace before step FIRST and stops it after step FIRST + COUNT - 1."""

  def __init__(self, workdir: str, profile_steps, every_process: bool):
    self.first, count = tuple(profile_steps) or (0, 0)
    self.last = self.first + count - 1
    self.on = bool(profile_steps) and (every_process or distributed.is_writer())
    self.workdir = workdir
    self._local = None

  def before(self, step: int) -> None:
    """Called before computing `step` (1-based)."""
    if self.on and step == self.first and self._local is None:
      self._local = tempfile.mkdtemp(prefix='transformer_jax-profile-')
      jax.profiler.start_trace(self._local)

  def after(self, step: int, state) -> None:
    """Called once `step` was dispatched: the trace ends when its work has."""
    if self._local is not None and step >= self.last:
      jax.block_until_ready(state)
      self.stop()

  def stop(self) -> None:
    """End a running trace (also when training ended before its last step) and move it
    into the workdir."""
    if self._local is None:
      return
    jax.profiler.stop_trace()
    local, self._local = self._local, None
    target = files.path(self.workdir).joinpath(*PROFILE_DIR)
    source = os.path.join(local, *PROFILE_DIR[2:])
    for parent, _, names in os.walk(source):
      for name in names:
        relative = os.path.relpath(os.path.join(parent, name), source)
        if jax.process_count() > 1:  # processes on one host would share its name
          relative = relative.replace('.xplane.pb', f'.process{jax.process_index()}.xplane.pb')
        with open(os.path.join(parent, name), 'rb') as f:
          files.write_atomically(target / relative, f.read())
    shutil.rmtree(local, ignore_errors=True)
    distributed.say(f'profiled steps {self.first}-{self.last}: {target} (open with '
                    f'tensorboard --logdir={files.path(self.workdir) / "tensorboard"})')
