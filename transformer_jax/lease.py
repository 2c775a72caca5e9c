"""The writer's lease: which checkpoint directory a live run is saving into.

A run that saves checkpoints (training; `average` into WORKDIR/averaged) renews
ROOT/writer.json every `RENEW_S` seconds from process 0 while it runs, and removes it
when it closes. Orbax deletes old steps file by file (on a bucket object by object), so
a reader beside a live run (`translate`, `evaluate`, `average`, `verify`) can meet a step
half deleted: it never moves a step while another run's lease is live, it only skips
it. A lease not renewed for `EXPIRES_S` (a killed or preempted run) is not live.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from transformer_jax import files

LEASE_FILE = 'writer.json'
RENEW_S = 30.0
EXPIRES_S = 120.0


class Lease:
  """Held from construction until `release()`, renewed in a daemon thread."""

  def __init__(self, root, renew_s: float = RENEW_S):
    self.path = files.path(root) / LEASE_FILE
    self.token = uuid.uuid4().hex
    self._stop = threading.Event()
    self._renew()  # live before the first save can delete anything
    self._thread = threading.Thread(target=self._run, args=(renew_s,), daemon=True,
                                    name='transformer_jax lease')
    self._thread.start()

  def _renew(self) -> None:
    body = {'token': self.token, 'host': socket.gethostname(), 'pid': os.getpid(),
            'renewed': time.time()}
    files.write_atomically(self.path, json.dumps(body).encode())

  def _run(self, renew_s: float) -> None:
    while not self._stop.wait(renew_s):
      try:
        self._renew()
      except Exception:  # noqa: BLE001 (a bucket hiccup: the next renewal may succeed)
        pass

  def release(self) -> None:
    self._stop.set()
    self._thread.join()
    try:
      if json.loads(self.path.read_text()).get('token') == self.token:
        self.path.unlink()
    except Exception:  # noqa: BLE001 (gone, or another run's now: leave it)
      pass


def live_writer(root) -> str | None:
  """'host H, process P' of the run whose lease on `root` is live, else None."""
  try:
    body = json.loads((files.path(root) / LEASE_FILE).read_text())
  except FileNotFoundError:
    return None
  except Exception:  # noqa: BLE001 (unreadable: assume a writer, move nothing)
    return 'a run whose lease cannot be read'
  if time.time() - float(body.get('renewed', 0)) > EXPIRES_S:
    return None
  return f'host {body.get("host")}, process {body.get("pid")}'
