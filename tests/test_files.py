"""Paths on local disks and in buckets (files.py): atomic writes leave nothing half
written."""
import os

import pytest

from transformer_jax import files


def test_write_atomically_replaces_whole_files_and_leaves_no_temporaries(tmp_path):
  target = tmp_path / 'new' / 'dir' / 'record.json'
  files.write_atomically(target, b'first')
  files.write_atomically(str(target), b'second')
  assert target.read_bytes() == b'second'
  assert os.listdir(target.parent) == ['record.json']


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
  target = tmp_path / 'record.json'
  files.write_atomically(target, b'good')

  def fail(self, data):
    raise OSError('disk full')

  monkeypatch.setattr(type(files.path(target)), 'write_bytes', fail)
  with pytest.raises(OSError, match='disk full'):
    files.write_atomically(target, b'half')
  assert target.read_bytes() == b'good' and os.listdir(tmp_path) == ['record.json']


def test_local_paths_are_absolute_and_buckets_are_recognized(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert str(files.path('work')) == str(tmp_path / 'work')
  assert files.is_bucket('gs://bucket/run') and not files.is_bucket('/gs/run')
  assert str(files.path('gs://bucket/run')) == 'gs://bucket/run'
