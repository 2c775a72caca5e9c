"""A committed checkpoint step's manifest: the record its bytes are verified against.

Written after Orbax commits the step (by the process that saved it, off the training
thread): every file of the step with its size and checksum, in a file of its own that
carries its own sha256, ROOT/manifests/checkpoints-STEP.json. It lives beside Orbax's
directory, not inside a step, so that nothing we write can race Orbax's own deletions
or look like part of a step to it. On a local disk the checksum is the file's sha256
(read once); in a bucket it is the object's own crc32c from the listing, so nothing is
read back.

A failed read proves damage only where the step's files differ from its manifest (a
file missing, of another size or checksum); a step whose files all match it is not
damaged, whatever the error says (`integrity.py`). A step without a manifest (saved
before this version, or killed between Orbax's commit and the manifest) gets one when
it is next restored by a training run and its values match their checksums.
"""
from __future__ import annotations

import hashlib
import json
import os

from transformer_jax import files

MANIFEST_DIR = 'manifests'  # beside a `checkpoints/` directory


class DamagedManifest(ValueError):
  """A manifest whose bytes do not match its own sha256: it proves nothing."""


def path(directory, step: int):
  """Where the manifest of `directory`/`step` lives."""
  return directory.parent / MANIFEST_DIR / f'{directory.name}-{step}.json'


def listing(step_dir) -> dict[str, dict]:
  """{path inside the step: {'size': bytes, 'sha256' or 'crc32c': digest}} of every file
  under `step_dir` ({} if it is gone)."""
  if files.is_bucket(step_dir):
    import fsspec  # gcsfs's filesystem: one listing carries every object's crc32c
    fs, root = fsspec.core.url_to_fs(str(step_dir))
    fs.invalidate_cache(root)  # gcsfs keeps listings: this one must be of now
    try:
      found = fs.find(root, detail=True)
    except FileNotFoundError:
      return {}
    return {name[len(root):].lstrip('/'): {'size': int(info['size']),
                                            'crc32c': info.get('crc32c')}
            for name, info in found.items() if info.get('type') != 'directory'}
  result = {}
  for parent, _, names in os.walk(step_dir):
    for name in names:
      full = os.path.join(parent, name)
      try:
        result[os.path.relpath(full, step_dir)] = {'size': os.path.getsize(full),
                                                   'sha256': _sha256(full)}
      except FileNotFoundError:
        continue  # deleted while listed: absent
  return result


def _sha256(file_path: str) -> str:
  digest = hashlib.sha256()
  with open(file_path, 'rb') as f:
    while chunk := f.read(1 << 20):
      digest.update(chunk)
  return digest.hexdigest()


def _own_sha256(body: dict) -> str:
  return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write(directory, step: int) -> bool:
  """Record `directory`/`step` as it is now (False, writing nothing, if it is gone)."""
  contents = listing(directory / str(step))
  if not contents:
    return False
  body = {'step': step, 'files': contents}
  body['manifest_sha256'] = _own_sha256(body)
  files.write_atomically(path(directory, step), json.dumps(body, indent=1).encode())
  return True


def read(directory, step: int) -> dict | None:
  """The step's manifest ({path: entry}); None if it has none; DamagedManifest if its
  bytes do not match its own checksum."""
  try:
    text = path(directory, step).read_text()
  except FileNotFoundError:
    return None
  try:
    body = json.loads(text)
    saved = body.pop('manifest_sha256')
    if saved != _own_sha256(body) or body['step'] != step:
      raise ValueError('its own checksum differs')
    return body['files']
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise DamagedManifest(f'{path(directory, step)} is damaged ({e})') from None


def remove(directory, step: int) -> None:
  """Forget a step's manifest (before a step of that number is saved again)."""
  try:
    path(directory, step).unlink()
  except FileNotFoundError:
    pass


def prune(directory) -> None:
  """Remove the manifests of steps no longer in `directory` (deleted by Orbax's
  `max_to_keep`, or moved aside)."""
  where = directory.parent / MANIFEST_DIR
  prefix = f'{directory.name}-'
  if not where.is_dir():
    return
  for item in where.iterdir():
    number = item.name[len(prefix):-len('.json')]
    if item.name.startswith(prefix) and number.isdigit() and \
        not (directory / number).exists():
      remove(directory, int(number))


def move(directory, step: int, target) -> None:
  """Move the step's manifest (if it has one) to `target`."""
  try:
    data = path(directory, step).read_bytes()
  except FileNotFoundError:
    return
  files.write_atomically(target, data)
  remove(directory, step)


def differences(step_dir, recorded: dict[str, dict]) -> list[str]:
  """How the files under `step_dir` differ from their manifest: 'PATH: missing',
  'PATH: N bytes, recorded M', 'PATH: another checksum than recorded' ([] if none).
  Files the manifest does not list are not compared."""
  now = listing(step_dir)
  found = []
  for name, want in sorted(recorded.items()):
    got = now.get(name)
    if got is None:
      found.append(f'{name}: missing')
    elif got['size'] != want['size']:
      found.append(f'{name}: {got["size"]} bytes, recorded {want["size"]}')
    elif not same(got, want):
      found.append(f'{name}: another checksum than recorded')
  return found


def same(a: dict, b: dict) -> bool:
  """Whether two files' entries agree: the size, and each checksum both carry."""
  return a['size'] == b['size'] and not any(
      a.get(k) and b.get(k) and a[k] != b[k] for k in ('sha256', 'crc32c'))


def proof(found: list[str]) -> str:
  """A verdict's proof in one line: how many files differ, and the first."""
  return (f'{len(found)} of its files differ from its manifest ({found[0]}'
          f'{", ..." if found[1:] else ""})')
