"""The two changes we make to how Orbax runs a restore's reads: both replace private
functions of orbax-checkpoint, so they apply only to the version they were written for
(setup.py's pin); with any other, restores take Orbax's own path, with one warning.

- Orbax runs a restore's reads with asyncio.gather in an event loop it closes as soon as
  one read fails; the other reads then finish in TensorStore's threads against the
  closed loop and print tracebacks at random later moments ("Event loop is closed",
  "Task exception was never retrieved"). Here the loop runs until every read has ended,
  so a skipped step leaves only our warning.
- After a restore Orbax waits for every process in a collective barrier, which a process
  whose read raised never reaches: on a pod, the others would wait there while it waits
  in `integrity.read`'s agreement. Here that barrier is left to the agreement (timed, as
  Orbax's is), which every process reaches whether its read failed or not (this
  thread's restores only).
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.metadata
import threading

from transformer_jax import distributed

WRITTEN_FOR = '0.12.8'  # orbax-checkpoint, as setup.py pins it


@functools.cache
def _private_modules():
  """Orbax's modules whose functions we replace, or None (with a warning, once) where the
  installed Orbax is not the one these changes were written for."""
  version = importlib.metadata.version('orbax-checkpoint')
  try:
    from orbax.checkpoint._src import asyncio_utils  # noqa: PLC0415 (private: guarded)
    from orbax.checkpoint._src.multihost import multihost  # noqa: PLC0415
    present = (hasattr(asyncio_utils, '_run_sync_via_new_loop')
               and hasattr(multihost, 'sync_global_processes'))
  except ImportError:
    present = False
  if version == WRITTEN_FOR and present:
    return asyncio_utils, multihost
  distributed.warn(
      f'orbax-checkpoint {version} is installed; our changes to its restores were written '
      f'for {WRITTEN_FOR}, so restores take its own path: a read that fails may print '
      "asyncio tracebacks, and on several processes one that fails leaves the others in "
      "Orbax's barrier until its timeout.")
  return None


_lock = threading.Lock()
_threads: set[threading.Thread] = set()  # those restoring now, within `restoring`
_originals: list = []


@contextlib.contextmanager
def restoring():
  """Within: this thread's Orbax restores run as the module docstring says. Threads may
  overlap: the first in makes the changes, the last out undoes them."""
  modules = _private_modules()
  if modules is None:
    yield
    return
  thread = threading.current_thread()
  with _lock:
    if not _threads:
      _replace(*modules)
    _threads.add(thread)
  try:
    yield
  finally:
    with _lock:
      _threads.discard(thread)
      if not _threads:
        for module, name, original in _originals:
          setattr(module, name, original)
        _originals.clear()


def _replace(asyncio_utils, multihost) -> None:
  barrier = multihost.sync_global_processes

  def sync_unless_restored_here(name, **kwargs):
    if not (threading.current_thread() in _threads and name.endswith('Checkpointer:restore')):
      barrier(name, **kwargs)
  _originals.extend([
      (asyncio_utils, '_run_sync_via_new_loop', asyncio_utils._run_sync_via_new_loop),  # noqa: SLF001
      (multihost, 'sync_global_processes', barrier)])
  asyncio_utils._run_sync_via_new_loop = _run_until_all_finished  # noqa: SLF001
  multihost.sync_global_processes = sync_unless_restored_here


def _run_until_all_finished(coro):
  loop = asyncio.new_event_loop()
  try:
    asyncio.set_event_loop(loop)
    return loop.run_until_complete(coro)
  finally:
    try:
      pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
      if pending:  # the reads gather() abandoned: let them end, their errors retrieved
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    finally:
      asyncio.set_event_loop(None)
      loop.close()
