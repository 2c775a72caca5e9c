"""What a failed restore proves, and so what may happen to the step: the one place that
decides between moving a checkpoint aside and stopping with every file left in place.

**Proven damage** (`CorruptCheckpoint`; the step is quarantined and the commands fall
back to the one before):
- values that differ from the checksums the step's `meta` carries (`checksum.py`), or
  a `meta` or data position that differs from its own sha256;
- a step whose read failed and whose files differ from its manifest (`manifest.py`): a
  file missing, shorter, longer or with another checksum. Only these records decide for
  a step that has a manifest: an error's words never do.
- For a step without a manifest (saved before manifests, or killed before its manifest
  was written), the storage layer's own status: TensorStore's DATA_LOSS (its index and
  manifests are checksummed) or OUT_OF_RANGE (a file shorter than its index says), else
  the exception types and messages with the paths taken out: decompression errors,
  metadata that is no longer UTF-8 JSON, a file missing from a step whose directory is
  still there, Orbax's on-disk tree disagreeing with the structure the verified `meta`
  records.

**Everything else** (`RestoreFailed`: one line naming the step, the cause and the fix;
nothing is moved): a state of another structure, out of memory, permission denied, a
bucket that does not answer after TensorStore's retries, a step deleted while it was
read (a live run's save schedule), any error this list does not name, and any failure of
a step whose files all match its manifest.

Several processes agree before anyone acts, also when only some of them failed: a
refusal anywhere stops all of them, damage anywhere quarantines (process 0 moves the
step, unless another run holds the directory's lease: `lease.py`) and every process
falls back together.
"""
from __future__ import annotations

import ast
import hashlib
import json
import re

from transformer_jax import checksum, distributed, manifest, orbax_shims
from transformer_jax.errors import UserError


_AGREE_S = 600  # how long processes wait for each other's verdict on a read


class CorruptCheckpoint(UserError):
  """A checkpoint step whose damage is proven: it is moved aside, never loaded."""

  def __init__(self, step: int, directory, reason: str):
    super().__init__(f'The checkpoint at step {step} in {directory} failed verification: '
                     f'{reason}.')
    self.step, self.reason = step, reason


class RestoreFailed(UserError):
  """A step that could not be restored for a reason that proves no damage: the command
  stops and every checkpoint stays where it is."""

  def __init__(self, step: int, directory, cause: str, fix: str):
    super().__init__(f'Could not restore the checkpoint at step {step} in {directory}: '
                     f'{cause}. {fix} Every checkpoint was left in place.')
    self.step, self.cause = step, cause


# (pattern in the error chain, cause, fix) of failures that say nothing about the bytes.
# Checked before damage: TensorStore prefixes each error with its status code.
_NOT_DAMAGE = (
    (r'Too Many Requests|HTTP response code: 429|rate limit', 'the storage is limiting the '
     'rate of requests', 'Run again in a while.'),
    (r'RESOURCE_EXHAUSTED|[Oo]ut of memory|MemoryError|bad_alloc', 'it ran out of memory',
     'Free memory, or restore with more devices (the state is sharded over them).'),
    (r'PERMISSION_DENIED|PermissionError|Permission denied|UNAUTHENTICATED',
     'permission denied', 'Give this machine read access to the workdir and run again.'),
    (r'UNAVAILABLE|DEADLINE_EXCEEDED|ConnectionError|TimeoutError|Connection reset',
     'the storage did not answer', 'Check the network or the bucket and run again.'),
)
_DAMAGE = r'DATA_LOSS|OUT_OF_RANGE|[Dd]ecompress|Zstd|JSONDecodeError|UnicodeDecodeError'
_MISSING = r'NOT_FOUND|FileNotFoundError|Item "\w+" was not found in the checkpoint'
_STRUCTURE = r'tree structures do not match|pytree structure error|node type mismatch'


def classify(step: int, directory, error: Exception, recorded: set[str] | None = None
             ) -> UserError:
  """CorruptCheckpoint if `error`, raised reading `step`, proves damage; else RestoreFailed.
  `recorded`: the paths of the saved arrays, as the step's verified meta lists them (the
  tree being read into has them all)."""
  chain = _chain(error)
  line = _telling_line(chain)
  step_dir = directory / str(step)
  try:
    listed = manifest.read(directory, step)
  except manifest.DamagedManifest:
    listed = None  # a record that proves nothing: judged as a step without one
  if listed is not None:
    try:
      found = manifest.differences(step_dir, listed)
    except Exception:  # noqa: BLE001 (unreadable files: permission, a bucket error)
      return _not_damage(step, directory, _words(chain, directory), line,
                         'an error that proves no damage')
    if found and _exists(step_dir):
      return CorruptCheckpoint(step, directory, f'it could not be read ({line}), and '
                               f'{manifest.proof(found)}')
    if found:
      return _disappeared(step, directory, line)
    return _not_damage(step, directory, _words(chain, directory), line,
                       'an error that proves no damage, every file matching its manifest')
  # No manifest: the storage layer's own status, where one is named, decides alone (a
  # DATA_LOSS whose message mentions memory is damage; running out of memory while
  # decompressing is not); else the exception types and messages, without their paths
  # (a workdir named `decompress_ablation` proves nothing).
  status = _status(line)
  text = status if status in _STATUSES else _words(chain, directory)
  if any(re.search(pattern, text) for pattern, _, _ in _NOT_DAMAGE):
    return _not_damage(step, directory, text, line, 'an error that proves no damage')
  damaged = (re.search(_DAMAGE, text)
             or (re.search(_MISSING, text) and _exists(step_dir))
             or (re.search(_STRUCTURE, text) and recorded is not None
                 and _orbax_tree_differs(step_dir, recorded)))
  if damaged:
    return CorruptCheckpoint(step, directory, f'it could not be read ({line})')
  if re.search(_MISSING, text):
    return _disappeared(step, directory, line)
  return _not_damage(step, directory, text, line, 'an error that proves no damage')


def _words(chain, directory) -> str:
  """The chain's exception types and messages, without paths."""
  return ' '.join(f'{type(e).__name__}: {_without_paths(str(e), directory)}' for e in chain)


def _not_damage(step: int, directory, text: str, line: str, default: str) -> RestoreFailed:
  """RestoreFailed naming the cause and fix where `text` tells them (only wording: it
  never moves a step), else `default`."""
  for pattern, cause, fix in _NOT_DAMAGE:
    if re.search(pattern, text):
      return RestoreFailed(step, directory, f'{cause} ({line})', fix)
  return RestoreFailed(step, directory, f'{default} ({line})',
                       'If the step must be skipped, move its directory aside yourself.')


def _disappeared(step: int, directory, line: str) -> RestoreFailed:
  return RestoreFailed(step, directory, f'it disappeared while being read ({line})',
                       'A run saving into this workdir deleted it; run again.')


def read(step: int, directory, read_fn, recorded: set[str] | None = None):
  """`read_fn()`'s result on every process, or on every process the same exception:
  CorruptCheckpoint if any process's failure proves damage and none failed otherwise,
  RestoreFailed if any failed otherwise (a collective: all processes call it).
  `recorded`: as for `classify`."""
  result, failure = None, None
  try:
    with orbax_shims.restoring():
      result = read_fn()
  except (CorruptCheckpoint, RestoreFailed) as e:
    failure = e
  except Exception as e:  # noqa: BLE001 (TensorStore and Orbax raise many types)
    failure = classify(step, directory, e, recorded)
  ours = 0 if failure is None else 1 if isinstance(failure, CorruptCheckpoint) else 2
  # Timed, as Orbax's own barrier after a restore (which `restoring` leaves to this) is.
  distributed.barrier(f'agree on what reading checkpoint step {step} proved', _AGREE_S)
  codes = distributed.each(ours)
  verdict = max(codes)
  if verdict == 0:
    return result
  if verdict == ours:
    raise failure
  if verdict == 1:
    raise CorruptCheckpoint(step, directory, 'another process found it damaged')
  raise RestoreFailed(step, directory, f'process {codes.index(verdict)} could not read it',
                      'Its log names the cause.')


def json_sha256(value) -> str:
  """The sha256 of a JSON value as it reads back (tuples become lists), keys sorted."""
  text = json.dumps(json.loads(json.dumps(value)), sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()


def checked_meta(step: int, directory, meta) -> dict:
  """`meta` without its own sha256, if it matches it (CorruptCheckpoint if not)."""
  saved = meta.pop('meta_sha256', None) if isinstance(meta, dict) else ''
  if saved is not None and saved != json_sha256(meta):
    raise CorruptCheckpoint(step, directory, 'its meta item (config, vocabulary, '
                            'checksums) does not match its checksum')
  return meta


def verifiable(meta: dict) -> bool:
  """Whether `meta` carries checksums this version computes (older steps do not)."""
  return meta.get('checksum_algorithm') == checksum.ALGORITHM


def verify(step: int, directory, meta: dict, tree, prefix: str = '') -> None:
  """CorruptCheckpoint unless `tree`'s values match the checksums in a verifiable `meta`
  (a collective: checksums are computed over every process's shards)."""
  bad = checksum.mismatches(tree, meta['checksums'], prefix)
  if bad:
    raise CorruptCheckpoint(step, directory, f'{len(bad)} of its arrays differ from their '
                            f'checksums ({", ".join(bad[:3])}{", ..." if bad[3:] else ""})')


def _exists(path) -> bool:
  try:
    return path.exists()
  except Exception:  # noqa: BLE001 (a bucket that does not answer proves nothing)
    return False


def _orbax_tree_differs(step_dir, recorded: set[str]) -> bool:
  """Whether Orbax's own record of the saved tree (state/_METADATA) is missing, is not
  the JSON Orbax writes, or lists other arrays than the verified meta: only then is a
  structure error the disk's. Listing the same arrays, the error is the reader's (e.g.
  a container of another type after a library upgrade): no damage."""
  try:
    text = (step_dir / 'state' / '_METADATA').read_text()
  except FileNotFoundError:
    return True
  except Exception:  # noqa: BLE001 (permission, a bucket error: nothing proven)
    return False
  try:
    tree = json.loads(text)['tree_metadata']
    arrays = {'/'.join(ast.literal_eval(key)) for key, value in tree.items()
              if value['value_metadata']['value_type'] != 'None'}  # not empty nodes
    return arrays != recorded
  except (ValueError, KeyError, TypeError, SyntaxError):
    return True


# The status codes the patterns above decide on (TensorStore's and gRPC's names).
_STATUSES = {'DATA_LOSS', 'OUT_OF_RANGE', 'NOT_FOUND', 'RESOURCE_EXHAUSTED', 'PERMISSION_DENIED',
             'UNAUTHENTICATED', 'UNAVAILABLE', 'DEADLINE_EXCEEDED'}


def _status(line: str) -> str:
  """The status code a line starts with ('DATA_LOSS: ...'), or ''."""
  match = re.match(r'([A-Z_]{5,}): ', line)
  return match[1] if match else ''


def _without_paths(message: str, directory) -> str:
  """`message` without the workdir's name (which may hold spaces) and the words that
  hold a slash (paths, URLs, specs naming them)."""
  for name in {str(directory.parent), str(directory)}:
    message = message.replace(name, '<path>')
  return re.sub(r'\S*/\S*', '<path>', message)


def _chain(error: BaseException) -> list[BaseException]:
  """`error` and the exceptions it was raised from, outermost first."""
  chain = [error]
  while (nxt := chain[-1].__cause__ or chain[-1].__context__) and nxt not in chain:
    chain.append(nxt)
  return chain


def first_line(error: BaseException) -> str:
  """An error's message in one line (of at most 200 characters), or its type's name."""
  return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def _telling_line(chain) -> str:
  """The first line that names a status (TensorStore's 'DATA_LOSS: ...'), else the
  outermost; Orbax wraps TensorStore's errors in a dump of the whole spec."""
  lines = [first_line(e) for e in chain]
  return next((x for x in lines if re.match(r'[A-Z_]{5,}: ', x)), lines[0])
