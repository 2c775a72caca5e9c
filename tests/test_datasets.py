"""Datasets (data/datasets.py) build and read offline: the synthetic corpus, Multi30k's
file layout (a small synthetic fixture in tests/data/multi30k), the user's parallel text;
and each bad corpus or text file is one clear error."""
import gzip
import pathlib

import pytest

from transformer_jax import config as config_lib
from transformer_jax.data import datasets, pipeline, synthetic
from transformer_jax.errors import UserError

MULTI30K = pathlib.Path(__file__).resolve().parent / 'data' / 'multi30k'


def make_config(tfds_dir, **data):
  """Defaults with a 256-piece vocabulary, reading datasets into `tfds_dir`."""
  c = config_lib.defaults()
  c.model.vocab_size = 256
  c.data.tfds_dir = str(tfds_dir)
  c.data.max_len = 32
  c.data.batch_size = 8
  c.data.update(data)
  return config_lib.validate(c)



def write_corpus(directory, split, source_lines, target_lines, gz=False):
  for lang, lines in (('en', source_lines), ('fr', target_lines)):
    path = directory / f'{split}.{lang}' if not gz else directory / f'{split}.{lang}.gz'
    data = ''.join(line + '\n' for line in lines).encode()
    path.write_bytes(gzip.compress(data) if gz else data)



PAIRS = [(f'the {n} cats sleep number {i}', f'les {n} chats dorment numero {i}')
         for i, n in enumerate(['two', 'three', 'four', 'five', 'six'] * 40)]



def parallel_text_config(tmp_path, **data):
  return make_config(tmp_path / 'tfds', name='parallel_text', data_dir=str(tmp_path / 'corpus'),
                     source_lang='en', target_lang='fr', **data)



def test_synthetic_builds_offline_with_three_splits(tmp_path, monkeypatch):
  """The builder of the built-in corpus, over fewer pairs (test_synthetic.py checks the
  100,000 / 1,000 / 1,000 that `synthetic.splits` makes by default)."""
  small = synthetic.splits(train_size=300, eval_size=20)
  monkeypatch.setattr(synthetic, 'splits', lambda: small)
  config = make_config(tmp_path)
  train = datasets.data_source(config.data, 'train')
  validation = datasets.data_source(config.data, 'validation')
  assert (len(train), len(validation), len(datasets.data_source(config.data, 'test'))) == (
      300, 20, 20)
  example = next(ex for ex in pipeline.read(validation, range(20)) if ex['index'] == 3)
  assert example == {'en': small['validation'][3][0].encode(),
                     'de': small['validation'][3][1].encode(), 'index': 3}



def test_multi30k_reads_its_file_layout(tmp_path):
  config = make_config(tmp_path, name='multi30k', data_dir=str(MULTI30K))
  sizes = {s: len(datasets.data_source(config.data, s)) for s in datasets.SPLITS}
  assert sizes == {'train': 400, 'validation': 40, 'test': 40}
  source = datasets.data_source(config.data, 'test')
  first = next(ex for ex in pipeline.read(source, range(len(source))) if ex['index'] == 0)
  with gzip.open(MULTI30K / 'test_2016_flickr.en.gz', 'rt', encoding='utf-8') as f:
    assert first['en'].decode() == f.readline().rstrip('\n')



@pytest.mark.parametrize('gz', [False, True])
def test_parallel_text_reads_the_users_files(tmp_path, gz):
  (tmp_path / 'corpus').mkdir()
  write_corpus(tmp_path / 'corpus', 'train', *zip(*PAIRS), gz=gz)
  write_corpus(tmp_path / 'corpus', 'validation', *zip(*PAIRS[:7]), gz=gz)
  config = parallel_text_config(tmp_path)
  train = datasets.data_source(config.data, 'train')
  assert len(train) == len(PAIRS)
  by_index = {ex['index']: ex for ex in pipeline.read(train, range(len(train)))}
  assert by_index[3] == {'en': PAIRS[3][0].encode(), 'fr': PAIRS[3][1].encode(), 'index': 3}
  assert len(datasets.data_source(config.data, 'validation')) == 7
  with pytest.raises(UserError, match="no split 'test'"):
    datasets.data_source(config.data, 'test')



def test_edited_corpus_is_rebuilt(tmp_path):
  (tmp_path / 'corpus').mkdir()
  write_corpus(tmp_path / 'corpus', 'train', *zip(*PAIRS))
  config = parallel_text_config(tmp_path)
  assert len(datasets.data_source(config.data, 'train')) == len(PAIRS)
  write_corpus(tmp_path / 'corpus', 'train', *zip(*PAIRS[:10]))
  assert len(datasets.data_source(config.data, 'train')) == 10



def test_missing_files(tmp_path):
  (tmp_path / 'corpus').mkdir()
  with pytest.raises(UserError, match=r'Missing corpus file .*train\.en'):
    datasets.data_source(parallel_text_config(tmp_path).data, 'train')
  with pytest.raises(UserError, match='does not exist'):
    datasets.data_source(make_config(tmp_path, name='multi30k',
                                     data_dir=str(tmp_path / 'nope')).data, 'train')



def test_line_count_mismatch_names_files_and_counts(tmp_path):
  (tmp_path / 'corpus').mkdir()
  write_corpus(tmp_path / 'corpus', 'train', ['a', 'b', 'c'], ['x', 'y'])
  with pytest.raises(UserError, match=r'train\.en has 3 lines but .*train\.fr has 2'):
    datasets.data_source(parallel_text_config(tmp_path).data, 'train')



def test_undecodable_bytes_name_file_and_line(tmp_path):
  (tmp_path / 'corpus').mkdir()
  write_corpus(tmp_path / 'corpus', 'train', ['ok', 'fine'], ['bon', 'bien'])
  (tmp_path / 'corpus' / 'train.fr').write_bytes(b'bon\nbi\xffen\n')
  with pytest.raises(UserError, match=r'train\.fr, line 2: bytes that are not UTF-8'):
    datasets.data_source(parallel_text_config(tmp_path).data, 'train')
  assert not (tmp_path / 'tfds').exists() or not any((tmp_path / 'tfds').rglob('*.array_record*'))



def test_empty_split(tmp_path):
  (tmp_path / 'corpus').mkdir()
  write_corpus(tmp_path / 'corpus', 'train', [], [])
  with pytest.raises(UserError, match='empty'):
    datasets.data_source(parallel_text_config(tmp_path).data, 'train')



def test_unknown_dataset_name(tmp_path):
  with pytest.raises(UserError, match="Unknown dataset 'nonexistent_corpus'.*synthetic"):
    datasets.data_source(make_config(tmp_path, name='nonexistent_corpus').data, 'train')



def test_wmt_without_tensorflow_fails_fast(tmp_path):
  import importlib.util
  if importlib.util.find_spec('tensorflow') is not None:
    pytest.fail('this test expects the test environment without TensorFlow (no [tf] extra)')
  with pytest.raises(UserError, match=r"pip install -e '\.\[tf\]'"):
    datasets.data_source(make_config(tmp_path, name='wmt14_translate/de-en').data, 'train')



def test_read_lines_of_a_file_or_stdin(tmp_path, monkeypatch):
  import io
  import sys
  (tmp_path / 'in.txt').write_bytes('eins\r\n\nzwei drei\n'.encode())
  assert datasets.read_lines(str(tmp_path / 'in.txt')) == ['eins', '', 'zwei drei']
  monkeypatch.setattr(sys, 'stdin', type('Stdin', (), {'buffer': io.BytesIO(b'a\nb')}))
  assert datasets.read_lines('-') == ['a', 'b']  # the last line may lack its newline
  with pytest.raises(UserError, match=r'Cannot read .*nope\.txt: No such file'):
    datasets.read_lines(str(tmp_path / 'nope.txt'))



def test_a_bucket_tfds_dir_is_refused_in_one_line(tmp_path):
  """ArrayRecord cannot write or read gs:// objects: say so before TFDS fails deep inside."""
  with pytest.raises(UserError, match='gs://b/tfds is a bucket.*local disk'):
    datasets.data_source(make_config('gs://b/tfds').data, 'train')


def test_a_corpus_larger_than_the_build_buffer_builds_without_tensorflow(tmp_path,
                                                                         monkeypatch):
  """TFDS spills a split larger than its memory buffer to temporary files, through
  tf.io.gfile; here the buffer is 4 KB, so the 200 pairs spill, and the build must not
  need TensorFlow (absent in the test environment)."""
  import importlib.util
  from tensorflow_datasets.core import shuffle
  assert importlib.util.find_spec('tensorflow') is None
  monkeypatch.setattr(shuffle, 'MAX_MEM_BUFFER_SIZE', 4096)
  monkeypatch.setattr(shuffle, 'tf', shuffle.tf)  # restored after the test
  (tmp_path / 'corpus').mkdir()
  write_corpus(tmp_path / 'corpus', 'train', *zip(*PAIRS))
  source = datasets.data_source(parallel_text_config(tmp_path).data, 'train')
  assert sorted((ex['en'].decode(), ex['fr'].decode()) for ex in
                pipeline.read(source, range(len(source)))) == sorted(PAIRS)
