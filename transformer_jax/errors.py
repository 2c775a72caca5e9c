"""Errors a user can cause: each carries one message naming the problem and the fix."""


class UserError(Exception):
  """Bad config, missing data, wrong checkpoint, bad input text. Commands print the
  message alone (no traceback) and exit non-zero; see `cli.run`."""


class ConfigError(UserError):
  """A config key that does not exist, a wrong type, or inconsistent values."""
