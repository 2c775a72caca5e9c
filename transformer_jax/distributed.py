"""Several processes as one run: a TPU pod slice (one process per worker VM), or CPU
processes joined over gloo. Every command runs the same code on every process; this
module connects them, says which one writes shared files, lets one process do a
one-time job while the others wait, and gathers results onto every process.
"""
from __future__ import annotations

import os
import socket
import sys
import time
from typing import Callable, TypeVar

import jax
import numpy as np
from absl import flags
from jax.experimental import multihost_utils

from transformer_jax.errors import PeersLost, UserError

T = TypeVar('T')
_barriers = [0]  # each barrier needs an id of its own; all processes count alike

_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0, for multi-process runs off TPU '
    '(on a TPU pod slice JAX finds its peers itself).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in a multi-process run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, 0..num_processes-1.')
_HEARTBEAT = flags.DEFINE_integer(
    'heartbeat_timeout_s', 100, 'A process silent this long counts as dead: the others '
    'exit with an error instead of waiting for it (JAX distributed heartbeat).')
_INIT_TIMEOUT = flags.DEFINE_integer(
    'initialization_timeout_s', 120, 'How long the processes of a multi-process run wait '
    'for each other at start-up; then each exits with one line naming the processes that '
    'never joined.')


def initialize() -> None:
  """Connect the processes of a multi-process run, before any other JAX call; see
  `join_plan` for when and how. A process that never starts makes the others exit
  within --initialization_timeout_s, naming it (see `roll_call`)."""
  plan = join_plan(dict(os.environ), tpu_present(), bool(_COORDINATOR.value))
  timeout_s = _INIT_TIMEOUT.value
  if plan == 'flags':
    roll_call(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, timeout_s)
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                               initialization_timeout=timeout_s,
                               heartbeat_timeout_seconds=_HEARTBEAT.value)
  elif plan == 'tpu':
    # Learn what jax.distributed.initialize() is about to detect, as it does; JAX itself
    # is still called bare, as on any TPU VM.
    from jax._src import clusters  # noqa: PLC0415 (JAX keeps its detection private)
    coordinator, count, me, _ = clusters.ClusterEnv.auto_detect_unset_distributed_params(
        os.environ.get('JAX_COORDINATOR_ADDRESS'), None, None, None, None, timeout_s)
    roll_call(coordinator, count, me, timeout_s)
    jax.distributed.initialize(initialization_timeout=timeout_s,
                               heartbeat_timeout_seconds=_HEARTBEAT.value)


def roll_call(coordinator: str | None, count: int | None, me: int | None,
              timeout_s: float) -> None:
  """Return once all `count` processes have started; else, after `timeout_s`, one
  PeersLost naming the processes that never came (or, where process 0 itself cannot
  be reached, naming it and its address).

  JAX's own join (the coordination service's RegisterTask) cannot do this: a missing
  process shows only as a C++ abort on every other process, with no roll call we can
  read, and the coordinator port is the service's. So process 0 holds the roll call on
  the next port: every other process connects there and sends its id, and process 0
  answers all of them at once, "go" or the ids still missing. Incomplete parameters,
  or one process, skip it (JAX reports the former itself).
  """
  if None in (coordinator, count, me) or count == 1 or not 0 <= me < count:
    return
  host, port = coordinator.rsplit(':', 1)
  address = (host.strip('[]'), int(port) + 1)
  if me == 0:
    missing = _call_roll(address[1], count, timeout_s)
  else:
    missing = _answer_roll(address, me, timeout_s)
  if missing:
    who = 'process' + ('es' if len(missing) > 1 else '') + ' ' + ', '.join(missing)
    raise PeersLost(f'Process {me} waited {timeout_s:g} s (--initialization_timeout_s) '
                    f'for {who} to join the run (coordinator {coordinator}), in vain: start '
                    f'{who} with the same --num_processes and coordinator, or read its log '
                    'for why it stopped.')


def _call_roll(port: int, count: int, timeout_s: float) -> list[str]:
  """Process 0: take the ids of processes 1..count-1 until all came or `timeout_s` passed,
  then answer each the ids still missing (none: go). Returns the missing ids."""
  deadline = time.monotonic() + timeout_s
  family = socket.AF_INET6 if socket.has_dualstack_ipv6() else socket.AF_INET
  try:
    server = socket.create_server(('', port), family=family,
                                  dualstack_ipv6=family == socket.AF_INET6)
  except OSError as e:
    raise UserError(f'Process 0 cannot listen on port {port} (the coordinator\'s port + 1) '
                    f'for the other processes to check in ({e.strerror}): pick a '
                    'coordinator port whose next port is free.') from None
  came = {}
  with server:
    while len(came) < count - 1 and (left := deadline - time.monotonic()) > 0:
      server.settimeout(left)
      try:
        peer, _ = server.accept()
        peer.settimeout(min(left, 5))  # a stray connection must not hold up the roll call
        came[int(peer.makefile().readline())] = peer
      except (OSError, ValueError):
        continue  # the deadline (socket.timeout is an OSError), or not one of ours
  missing = [str(i) for i in range(1, count) if i not in came]
  for peer in came.values():
    with peer:
      try:
        peer.sendall((' '.join(missing) or 'go').encode() + b'\n')
      except OSError:
        pass  # it left; JAX's own join tells the others
  return missing


def _answer_roll(address: tuple[str, int], me: int, timeout_s: float) -> list[str]:
  """Another process: check in with process 0 (retrying for `timeout_s`, as it may start
  later) and return its answer, the ids still missing."""
  deadline = time.monotonic() + timeout_s
  where = f'process 0 at {address[0]}:{address[1]} (the coordinator\'s port + 1)'
  while True:
    try:
      peer = socket.create_connection(address, timeout=5)
      break
    except OSError:  # not listening yet, or the host not up yet
      if time.monotonic() > deadline:
        raise PeersLost(f'Process {me} could not reach {where} within {timeout_s:g} s '
                        '(--initialization_timeout_s): start process 0, or check that '
                        'address and its log.') from None
      time.sleep(0.5)
  with peer:
    # Process 0 answers within its own timeout of our arrival; a little more for the wire.
    peer.settimeout(timeout_s + 10)
    try:
      peer.sendall(f'{me}\n'.encode())
      answer = peer.makefile().readline().split()
    except OSError:
      answer = []
  if not answer:
    raise PeersLost(f'Process {me} reached {where}, but it did not answer whether all '
                    'processes came: read its log.')
  return [] if answer == ['go'] else answer


def join_plan(env: dict, on_tpu_vm: bool, coordinator_flag: bool) -> str:
  """How this process joins its run: 'flags' (the coordinator given by flags, e.g.
  several CPU or GPU processes), 'tpu' (JAX finds its peers itself: from the VM's
  metadata server on a TPU VM made by `gcloud compute tpus tpu-vm create`, where no
  variable names the workers, or from the TPU_WORKER_* variables GKE sets), or 'none'
  (one process). A process told to use the CPU only (JAX_PLATFORMS=cpu) on a TPU worker
  is not part of the slice: `prepare` runs so on worker 0 alone."""
  if coordinator_flag:
    return 'flags'
  if env.get('JAX_PLATFORMS', '') == 'cpu':
    return 'none'
  return 'tpu' if on_tpu_vm else 'none'


def tpu_present() -> bool:
  """Whether JAX found itself on a Cloud TPU VM (or GKE TPU node) at `import jax`: TPU
  chips on the PCI bus (vendor 0x1ae0) and libtpu installed. The same test decides
  whether JAX's cluster detection asks the VM's metadata server for the workers."""
  from jax._src import cloud_tpu_init  # noqa: PLC0415 (JAX keeps its verdict private)
  return bool(cloud_tpu_init.running_in_cloud_tpu_vm)


def is_writer() -> bool:
  """Process 0 writes every file all processes share (vocabulary, metrics, results)."""
  return jax.process_index() == 0


def say(text: str) -> None:
  """A console line, printed once per run (by process 0)."""
  if is_writer():
    print(text, flush=True)


def warn(text: str) -> None:
  """A warning line on stderr, printed once per run (by process 0)."""
  if is_writer():
    print(f'warning: {text}', file=sys.stderr, flush=True)


def all_true(flag: bool) -> bool:
  """Whether `flag` holds on every process (a collective: all processes must call it)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.all(multihost_utils.process_allgather(np.asarray(flag))))


def each(value: int) -> list[int]:
  """Every process's `value`, in process order (a collective: all processes must call it)."""
  if jax.process_count() == 1:
    return [value]
  return [int(v) for v in multihost_utils.process_allgather(np.asarray(value, np.int32))]


def each_array(value: np.ndarray) -> list[np.ndarray]:
  """Every process's `value` (int32, one shape on all), in process order (a collective)."""
  if jax.process_count() == 1:
    return [value]
  return list(np.asarray(multihost_utils.process_allgather(np.asarray(value, np.int32))))


def barrier(what: str, timeout_s: float) -> None:
  """Wait until every process gets here; after `timeout_s`, one error naming `what`."""
  if jax.process_count() == 1:
    return
  client = jax._src.distributed.global_state.client  # noqa: SLF001 (the only timed barrier)
  _barriers[0] += 1
  try:
    client.wait_at_barrier(f'transformer_jax {_barriers[0]}: {what}', int(timeout_s * 1000))
  except Exception as e:  # noqa: BLE001 (jaxlib raises XlaRuntimeError, untyped)
    raise PeersLost(f'Process {jax.process_index()} waited {timeout_s:.0f} s for the other '
                    f'processes to {what}, in vain ({str(e).splitlines()[0][:200]}). '
                    'Check the other processes\' logs.') from None


def once(what: str, job: Callable[[bool], T], timeout_s: float) -> T:
  """`job(True)` on process 0 first, then `job(False)` on the others.

  For one-time work into shared storage (building the dataset, training the vocabulary):
  process 0 does it while the others wait, then the others find it done. Where storage
  is not shared (each worker's own disk), their `job(False)` does it again, locally.
  """
  if is_writer():
    result = job(True)
  barrier(what, timeout_s)
  return result if is_writer() else job(False)


def gather(x: jax.Array) -> np.ndarray:
  """The whole of a (possibly multi-process) array, on every process."""
  if jax.process_count() == 1 or x.is_fully_addressable:  # e.g. on this process's own mesh
    return np.asarray(jax.device_get(x))
  if x.is_fully_replicated:
    return np.asarray(x.addressable_data(0))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def global_array(value: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
  """A global array from a numpy value that every process holds whole (e.g. a batch of
  sentences to translate); each process places the slices its devices own."""
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
