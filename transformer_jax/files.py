"""Workdir files on a local disk or in a bucket (`gs://...`): the one place that knows
the difference. Everything we write ourselves (vocabulary, metrics.jsonl, evaluation
JSON) goes through `etils.epath`, which Orbax and TFDS use too, so a workdir on GCS works
for every command; TensorBoard event files go through tensorboardX's own GCS writer.
"""
from __future__ import annotations

import importlib.util
import os

from etils import epath

from transformer_jax.errors import UserError

BUCKET_SCHEMES = ('gs://', 's3://', 'az://')


def path(p: str | os.PathLike) -> epath.Path:
  """`p` as an epath.Path; local paths are made absolute (Orbax wants them so)."""
  if is_bucket(p):
    _check_bucket_support(str(p))
    return epath.Path(p)
  return epath.Path(os.path.abspath(p))


def is_bucket(p: str | os.PathLike) -> bool:
  return str(p).startswith(BUCKET_SCHEMES)


def write_atomically(p: str | os.PathLike, data: bytes) -> None:
  """Readers never see a half-written file: locally, write beside it and rename; in a
  bucket, an object appears only once its upload completes."""
  target = path(p)
  target.parent.mkdir(parents=True, exist_ok=True)
  if is_bucket(target):
    target.write_bytes(data)
    return
  tmp = target.parent / f'.{target.name}.tmp-{os.getpid()}'
  try:
    tmp.write_bytes(data)
    tmp.replace(target)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def move_tree(source: epath.Path, target: epath.Path) -> None:
  """Move a directory. Locally one rename; a bucket has no directories, so each object is
  copied (server-side) and the source deleted after all copies succeed. In a bucket a
  move cut short is resumed by moving again to the same target: objects already there
  with the source's size are not copied again (an object appears whole or not at all)."""
  if not is_bucket(source):
    target.parent.mkdir(parents=True, exist_ok=True)
    source.rename(target)
    return
  def copy(directory: epath.Path, into: epath.Path) -> None:
    for item in directory.iterdir():  # (gs:// paths take no recursive glob)
      there = into / item.name
      if item.is_dir():
        copy(item, there)
      elif not (there.exists() and there.stat().length == item.stat().length):
        item.copy(there)
  copy(source, target)
  source.rmtree()


def _check_bucket_support(p: str) -> None:
  # gcsfs is epath's gs:// backend when TensorFlow is absent.
  if p.startswith('gs://') and importlib.util.find_spec('gcsfs') is None:
    raise UserError(f'{p} is on Google Cloud Storage, which needs the gcs extra: '
                      "pip install -e '.[gcs]' (the tpu extra includes it).")
