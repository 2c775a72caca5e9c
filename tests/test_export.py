"""`export` (export.py), the command: a self-contained CTranslate2 directory that the
README's recipe translates with, and each bad request one line that writes nothing."""
import os
import sys

import ctranslate2
import pytest

from transformer_jax import serving
from transformer_jax.data import synthetic

pytestmark = pytest.mark.slow


def test_the_command_writes_a_self_contained_int8_model_and_refuses_bad_requests(
    command, trained, tmp_path, monkeypatch):
  from transformer_jax import export as command_module
  workdir, _ = trained
  out = tmp_path / 'int8'
  result = command(command_module, f'--workdir={workdir}', f'--output={out}',
                   '--quantization=int8')
  assert result.code == 0, result.err
  assert {'model.bin', 'config.json', 'shared_vocabulary.json', serving.SPM_FILE,
          'README.md', 'transformer_jax_config.json'} <= set(os.listdir(out))
  import sentencepiece as spm
  sp = spm.SentencePieceProcessor(model_file=str(out / serving.SPM_FILE))
  line = synthetic.splits(train_size=10, eval_size=4)['test'][0][0]
  translated = ctranslate2.Translator(str(out)).translate_batch(
      [sp.encode(line, out_type=str) + ['</s>']], beam_size=4)
  assert sp.decode(translated[0].hypotheses[0])  # words, from the README's recipe
  for flags, message in (
      ((f'--output={out}',), 'exists and is not an empty directory'),
      ((f'--output={tmp_path / "x"}', '--format=onnx'), 'the formats are ctranslate2'),
      ((f'--output={tmp_path / "y"}', '--quantization=int4'), 'one of float32, int8'),
      ((), '--output is required')):
    result = command(command_module, f'--workdir={workdir}', *flags)
    assert result.code != 0 and message in result.err and len(result.err.splitlines()) == 1
  assert not (tmp_path / 'x').exists() and not (tmp_path / 'y').exists()
  monkeypatch.setitem(sys.modules, 'ctranslate2', None)  # as if not installed
  result = command(command_module, f'--workdir={workdir}', f'--output={tmp_path / "z"}')
  assert result.code != 0 and "pip install -e '.[export]'" in result.err
  assert not (tmp_path / 'z').exists()
