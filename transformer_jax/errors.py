"""Errors a user can cause: each carries one message naming the problem and the fix."""


class UserError(Exception):
  """Bad config, missing data, wrong checkpoint, bad input text. Commands print the
  message alone (no traceback) and exit with `exit_code`; see `cli.run`. The same
  command again fails the same way: `launch/tpu.py supervise` does not relaunch it."""
  exit_code = 2


class PeersLost(UserError):
  """Another process of a multi-process run never came, or stopped answering (a worker
  that did not start, died or was preempted). The same command may succeed once they
  are all back, so it exits 75 (EX_TEMPFAIL, sysexits.h), which `supervise` relaunches."""
  exit_code = 75


class ConfigError(UserError):
  """A config key that does not exist, a wrong type, or inconsistent values."""
