"""A pod slice rehearsed on one machine: N processes of one command, D CPU devices each,
joined as a pod's workers are (`jax.distributed` with a coordinator on localhost, gloo
collectives). The multi-process tests and `bench/pod_rehearsal.py` run commands this way.

  pod = local_pod.start(['transformer_jax.train', '--config=...', '--workdir=...'],
                        processes=2, devices=4)
  results = pod.wait()     # [Result(code, out, err)] per process
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import random
import socket
import subprocess
import sys
import time


@dataclasses.dataclass
class Result:
  code: int
  out: str
  err: str


def free_port() -> int:
  """A free port for the coordinator whose next port is free too (process 0 holds its
  start-up roll call there: distributed.roll_call), below the kernel's range for
  outgoing connections, so that no client socket takes the next port meanwhile."""
  low = int(pathlib.Path('/proc/sys/net/ipv4/ip_local_port_range').read_text().split()[0])
  while True:
    port = random.randrange(10000, max(low, 10003) - 2)
    with socket.socket() as s, socket.socket() as after:
      try:
        s.bind(('127.0.0.1', port))
        after.bind(('127.0.0.1', port + 1))
        return port
      except OSError:
        continue


def environment(devices: int, base: dict | None = None) -> dict:
  """What a CPU process of a rehearsal needs: D host devices, gloo collectives."""
  env = dict(os.environ if base is None else base)
  flags = [f for f in env.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  env.update(JAX_PLATFORMS='cpu', JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo',
             XLA_FLAGS=' '.join([*flags, f'--xla_force_host_platform_device_count={devices}']))
  return env


class Pod:
  """The running processes of one command; process i's output goes to LOG_DIR/i.{out,err}."""

  def __init__(self, processes: list[subprocess.Popen], logs: list[tuple[str, str]]):
    self.processes, self.logs = processes, logs

  def wait(self, timeout: float = 900) -> list[Result]:
    """Every process's exit code and output; the ones still running after `timeout`
    seconds are killed (code -9)."""
    deadline = time.monotonic() + timeout
    for p in self.processes:
      try:
        p.wait(timeout=max(deadline - time.monotonic(), 0))
      except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    return [Result(p.returncode, _read(out), _read(err))
            for p, (out, err) in zip(self.processes, self.logs)]

  def kill(self, i: int) -> None:
    self.processes[i].kill()


def start(command: list[str], *, processes: int, devices: int, log_dir: str,
          cwd: str | None = None, env: dict | None = None, heartbeat_s: int = 10) -> Pod:
  """`python -m command[0] command[1:]` as process 0..N-1 of one run.

  A dead process is noticed by the others within `heartbeat_s` (JAX's distributed
  heartbeat timeout), and they exit with an error instead of waiting for it."""
  port = free_port()
  os.makedirs(log_dir, exist_ok=True)
  started, logs = [], []
  for i in range(processes):
    joined = [f'--coordinator_address=127.0.0.1:{port}', f'--num_processes={processes}',
              f'--process_id={i}', f'--heartbeat_timeout_s={heartbeat_s}']
    out, err = os.path.join(log_dir, f'{i}.out'), os.path.join(log_dir, f'{i}.err')
    with open(out, 'w') as o, open(err, 'w') as e:
      started.append(subprocess.Popen([sys.executable, '-m', *command[:1], *joined,
                                       *command[1:]], cwd=cwd, env=environment(devices, env),
                                      stdout=o, stderr=e, stdin=subprocess.DEVNULL))
    logs.append((out, err))
  return Pod(started, logs)


def run(command: list[str], *, processes: int, devices: int, log_dir: str,
        timeout: float = 900, **kwargs) -> list[Result]:
  """start(...).wait(timeout)."""
  return start(command, processes=processes, devices=devices, log_dir=log_dir,
               **kwargs).wait(timeout)


def _read(path: str) -> str:
  with open(path, encoding='utf-8', errors='replace') as f:
    return f.read()
