"""Every corpus behind one name: a TFDS builder stored as array_record, read with
`tfds.data_source` (random access, no TensorFlow needed to read).

Ours: `synthetic` (built in, no download), `multi30k` (local files or its public
repository), `parallel_text` (the user's two aligned files per split). Any other name is
looked up in the TFDS catalog (`wmt14_translate/de-en`, ...), which needs TensorFlow to
build. Every example is {language code: UTF-8 bytes}.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.util
import io
import itertools
import os
import socket
import sys
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

tfds.disable_progress_bar()
from ml_collections import ConfigDict

from transformer_jax.data import synthetic
from transformer_jax.errors import UserError

SPLITS = ('train', 'validation', 'test')
MULTI30K_FILES = {'train': 'train', 'validation': 'val', 'test': 'test_2016_flickr'}
MULTI30K_URL = 'https://github.com/multi30k/dataset/raw/master/data/task1/raw/'


def _text_features(languages) -> tfds.features.FeaturesDict:
  # `index` is the line number in the original split: eval output keeps the input order.
  return tfds.features.FeaturesDict(
      {**{lang: tfds.features.Text() for lang in languages},
       'index': tfds.features.Scalar(np.int64)})


def _examples(pairs, languages):
  for i, (a, b) in enumerate(pairs):
    yield i, {languages[0]: a, languages[1]: b, 'index': i}


class Synthetic(tfds.core.GeneratorBasedBuilder):
  """The made-up English-German task of `synthetic.py`; deterministic, no download."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=_text_features(('en', 'de')))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {name: self._generate_examples(pairs) for name, pairs in synthetic.splits().items()}

  def _generate_examples(self, pairs):
    return _examples(pairs, ('en', 'de'))


class Multi30k(tfds.core.GeneratorBasedBuilder):
  """Multi30k task 1 En-De (29,000 / 1,014 / 1,000 pairs; test = test_2016_flickr)."""
  VERSION = tfds.core.Version('1.0.0')

  def __init__(self, *, raw_dir: str = '', **kwargs):
    self._raw_dir = raw_dir
    super().__init__(**kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=_text_features(('en', 'de')),
                                 homepage='https://github.com/multi30k/dataset')

  def _split_generators(self, dl_manager):
    if self._raw_dir:
      paths = {f'{stem}.{lang}': os.path.join(self._raw_dir, f'{stem}.{lang}.gz')
               for stem in MULTI30K_FILES.values() for lang in ('en', 'de')}
    else:
      paths = dl_manager.download({f'{stem}.{lang}': f'{MULTI30K_URL}{stem}.{lang}.gz'
                                   for stem in MULTI30K_FILES.values() for lang in ('en', 'de')})
    return {split: self._generate_examples(
        read_parallel(str(paths[f'{stem}.en']), str(paths[f'{stem}.de'])))
            for split, stem in MULTI30K_FILES.items()}

  def _generate_examples(self, pairs):
    return _examples(pairs, ('en', 'de'))


class ParallelText(tfds.core.GeneratorBasedBuilder):
  """The user's corpus: DIR/{train,validation,test}.{src,tgt}[.gz], line i aligned with i.

  The builder config is named after a fingerprint of the files, so an edited corpus is
  rebuilt instead of read stale.
  """
  VERSION = tfds.core.Version('1.0.0')

  def __init__(self, *, files: dict, languages: tuple[str, str], **kwargs):
    self._files, self._languages = files, languages
    digest = hashlib.sha1(repr(sorted(
        (split, path, os.path.getsize(path), os.path.getmtime(path))
        for split, pair in files.items() for path in pair)).encode()).hexdigest()[:12]
    super().__init__(config=tfds.core.BuilderConfig(name=f'{"-".join(languages)}-{digest}'),
                     **kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=_text_features(self._languages))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(read_parallel(*pair))
            for split, pair in self._files.items()}

  def _generate_examples(self, pairs):
    return _examples(pairs, self._languages)


def read_parallel(source_path: str, target_path: str) -> Iterator[tuple[str, str]]:
  """Aligned lines of two text files (plain or .gz), streamed (memory does not grow with
  the corpus) and checked: same count, UTF-8, not empty."""
  sources, targets = _stream_lines(source_path), _stream_lines(target_path)
  count = 0
  for count, (source, target) in enumerate(itertools.zip_longest(sources, targets), 1):
    if source is None or target is None:  # one file ended first: count the other's rest
      rest = 1 + sum(1 for _ in (sources if target is None else targets))
      counts = ((count - 1 + rest, count - 1) if target is None
                else (count - 1, count - 1 + rest))
      raise UserError(f'{source_path} has {counts[0]} lines but {target_path} has '
                      f'{counts[1]}; line i of one must translate line i of the other.')
    yield source, target
  if count == 0:
    raise UserError(f'{source_path} and {target_path} are empty: the split has no pairs.')


def _stream_lines(path: str) -> Iterator[str]:
  """The lines of a plain or .gz text file, one at a time, decoded strictly."""
  if not os.path.exists(path):
    raise UserError(f'Missing corpus file {path}.')
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rb') as f:
    for number, raw in enumerate(f, 1):
      yield decode_line(raw.rstrip(b'\n'), path, number)


def read_lines(path: str | None) -> list[str]:
  """Lines of a user's text file (or stdin for None or '-'), decoded strictly."""
  if path in (None, '-'):
    return decode_lines(sys.stdin.buffer.read(), 'stdin')
  try:
    with open(path, 'rb') as f:
      return decode_lines(f.read(), path)
  except OSError as e:
    raise UserError(f'Cannot read {path}: {e.strerror}.') from None


def decode_lines(raw: bytes, name: str, first: int = 1) -> list[str]:
  """Text lines of `raw`, decoded strictly: bytes that are not UTF-8 name their line
  (numbered from `first`)."""
  lines = raw.split(b'\n')
  if lines and lines[-1] == b'':
    lines.pop()  # the newline that ends the last line
  return [decode_line(line, name, number) for number, line in enumerate(lines, first)]


def decode_line(line: bytes, name: str, number: int) -> str:
  """One line (without its newline) decoded strictly: bytes that are not UTF-8 are named."""
  try:
    return line.decode('utf-8').rstrip('\r')
  except UnicodeDecodeError as e:
    raise UserError(f'{name}, line {number}: bytes that are not UTF-8 ({e.reason} at '
                    f'byte {e.start}); convert it to UTF-8, e.g. with iconv.') from None


def _parallel_text_files(data: ConfigDict) -> dict:
  if not data.data_dir:
    raise UserError('data.name=parallel_text needs data.data_dir: a directory with '
                    'train.SRC and train.TGT (optionally validation.*, test.*, .gz allowed).')
  files = {}
  for split in SPLITS:
    pair = []
    for lang in (data.source_lang, data.target_lang):
      plain = os.path.join(data.data_dir, f'{split}.{lang}')
      pair.append(plain + '.gz' if os.path.exists(plain + '.gz') else plain)
    if all(os.path.exists(p) for p in pair):
      files[split] = tuple(pair)
    elif split == 'train' or any(os.path.exists(p) for p in pair):
      missing = next(p for p in pair if not os.path.exists(p))
      raise UserError(f'Missing corpus file {missing}: parallel_text needs '
                      f'{split}.{data.source_lang} and {split}.{data.target_lang} in '
                      f'{data.data_dir} (plain or .gz).')
  return files


def builder(data: ConfigDict) -> tfds.core.DatasetBuilder:
  """The TFDS builder `data.name` selects, prepared (built once, then reused)."""
  if data.tfds_dir.startswith(('gs://', 's3://', 'az://')):
    # ArrayRecord reads and writes local files only (its C++ file layer has no GCS).
    raise UserError(f'data.tfds_dir={data.tfds_dir} is a bucket, but TFDS array_record '
                    'files must be on a local disk (or a gcsfuse mount). Use a local '
                    'directory; on a pod slice, `launch/tpu.py prepare` builds it once and '
                    'copies it to every worker.')
  kwargs = dict(data_dir=data.tfds_dir or None, file_format='array_record')
  if data.name == 'synthetic':
    b = Synthetic(**kwargs)
  elif data.name == 'multi30k':
    if data.data_dir and not os.path.isdir(data.data_dir):
      raise UserError(f'data.data_dir={data.data_dir} does not exist; point it at the '
                      'Multi30k raw files (train.en.gz, ...), or leave it empty to download.')
    b = Multi30k(raw_dir=data.data_dir, **kwargs)
  elif data.name == 'parallel_text':
    b = ParallelText(files=_parallel_text_files(data),
                     languages=(data.source_lang, data.target_lang), **kwargs)
  else:
    b = _catalog_builder(data.name, data.tfds_dir)
  if not b.is_prepared():
    _spill_without_tensorflow()
    print(f'preparing the {data.name} dataset in {b.data_dir} (once; later runs reuse it)',
          file=sys.stderr, flush=True)  # stdout may carry translations or JSON
    with contextlib.redirect_stdout(io.StringIO()):  # TFDS's own banners
      b.download_and_prepare()
  return b


class _LocalFiles:
  """The corner of `tf.io.gfile` that TFDS's writer uses to spill a split larger than
  its memory buffer to temporary files, as plain local file I/O (`data.tfds_dir` is
  always local). Without it, building a corpus of more than ~1 GB needs TensorFlow."""

  class io:  # noqa: N801 (mirrors tf.io.gfile)
    class gfile:  # noqa: N801
      GFile = staticmethod(open)
      exists = staticmethod(os.path.exists)
      remove = staticmethod(os.remove)

  class errors:  # noqa: N801
    class ResourceExhaustedError(OSError):
      message = ''


def _spill_without_tensorflow() -> None:
  """Let TFDS spill to local files without TensorFlow, and hold at most 256 MB of a
  split in memory while building (its default is 1 GB)."""
  from tensorflow_datasets.core import shuffle  # noqa: PLC0415 (TFDS internals, here only)
  shuffle.MAX_MEM_BUFFER_SIZE = min(shuffle.MAX_MEM_BUFFER_SIZE, 256 << 20)
  if importlib.util.find_spec('tensorflow') is None:
    shuffle.tf = _LocalFiles


def _catalog_builder(name: str, tfds_dir: str) -> tfds.core.DatasetBuilder:
  ours = 'synthetic, multi30k, parallel_text'
  needs_tf = importlib.util.find_spec('tensorflow') is None
  try:
    b = tfds.builder(name, data_dir=tfds_dir or None, file_format='array_record')
  except tfds.core.registered.DatasetNotFoundError:
    hint = (" TFDS catalog datasets such as wmt14_translate/de-en need TensorFlow to "
            "build: pip install -e '.[tf]'." if needs_tf else '')
    raise UserError(f"Unknown dataset '{name}'. Ours: {ours}; or a TFDS catalog "
                    f'name.{hint}') from None
  if not b.is_prepared():
    if needs_tf:
      raise UserError(f"Building '{name}' needs TensorFlow: pip install -e '.[tf]'.")
    _require_network(name)
  return b


def _require_network(name: str, host: str = 'www.statmt.org') -> None:
  """TFDS retries downloads for minutes when offline; fail in seconds instead."""
  try:
    socket.create_connection((host, 443), timeout=5).close()
  except OSError:
    raise UserError(f"'{name}' is not prepared and {host} cannot be reached: build it on "
                    'a machine with network access and point data.tfds_dir at it.') from None


def dataset_id(data: ConfigDict, split: str) -> str:
  """Names the split's exact contents: builder, config (for parallel_text a fingerprint
  of the files), version and size."""
  b = builder(data)
  return f'{b.info.full_name}/{split}/{b.info.splits[split].num_examples}'


def data_source(data: ConfigDict, split: str):
  """Random-access examples of one split: len() and [i] -> {lang: bytes, 'index': int}."""
  b = builder(data)
  if split not in b.info.splits:
    raise UserError(f"Dataset '{data.name}' has no split '{split}'; it has "
                    f"{', '.join(sorted(b.info.splits))}.")
  source = b.as_data_source(split)
  missing = {data.source_lang, data.target_lang} - set(b.info.features)
  if missing:
    raise UserError(f"Dataset '{data.name}' has no language {sorted(missing)[0]!r}; it "
                    f"has {', '.join(k for k in b.info.features if k != 'index')}.")
  return source
