"""`export` (export.py), the command: self-contained CTranslate2 and Transformers
directories that their READMEs' recipes translate with, the scores `evaluate` recorded
for the checkpoint in the README, and each bad request one line that writes nothing."""
import json
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
      ((f'--output={tmp_path / "x"}', '--format=onnx'), 'the formats are ctranslate2, '
                                                          'huggingface'),
      ((f'--output={tmp_path / "y"}', '--quantization=int4'), 'one of float32, int8'),
      ((f'--output={tmp_path / "y"}', '--format=huggingface', '--quantization=int8'),
       'is for --format=ctranslate2'),
      ((), '--output is required')):
    result = command(command_module, f'--workdir={workdir}', *flags)
    assert result.code != 0 and message in result.err and len(result.err.splitlines()) == 1
  assert not (tmp_path / 'x').exists() and not (tmp_path / 'y').exists()
  for module, fmt in (('ctranslate2', 'ctranslate2'), ('transformers', 'huggingface')):
    with monkeypatch.context() as patch:
      patch.setitem(sys.modules, module, None)  # as if not installed
      result = command(command_module, f'--workdir={workdir}', f'--format={fmt}',
                       f'--output={tmp_path / "z"}')
    assert result.code != 0 and "pip install -e '.[export]'" in result.err
    assert len(result.err.splitlines()) == 1 and not (tmp_path / 'z').exists()


def test_a_transformers_export_loads_alone_and_its_readme_gives_the_recorded_bleu(
    command, trained, tmp_path):
  """The README's recipe runs on OUT alone; the README lists the `evaluate` record of
  the exported step, not another step's."""
  from transformer_jax import evaluate, export as command_module
  workdir, _ = trained
  source, reference = tmp_path / 'src.txt', tmp_path / 'ref.txt'
  pairs = synthetic.splits(train_size=10, eval_size=8)['test']
  source.write_text(''.join(p[0] + '\n' for p in pairs))
  reference.write_text(''.join(p[1] + '\n' for p in pairs))
  recorded = [f'eval_file_step{step}.json' for step in (300, 250)]
  try:
    for step, name in zip((300, 250), recorded):
      result = command(evaluate, f'--workdir={workdir}', f'--step={step}', f'--src={source}',
                       f'--ref={reference}', '--decode=greedy', f'--json={workdir / name}')
      assert result.code == 0, result.err
    out = tmp_path / 'hf'
    result = command(command_module, f'--workdir={workdir}', '--format=huggingface',
                     f'--output={out}')
    assert result.code == 0, result.err
    scores = [json.loads((workdir / name).read_text())['bleu'] for name in recorded]
  finally:
    for name in recorded:
      (workdir / name).unlink(missing_ok=True)
  readme = (out / 'README.md').read_text()
  recipe = readme.split('```python\n')[1].split('```')[0]
  namespace = {}
  exec(recipe.replace('"OUT"', repr(str(out))).replace('A sentence.', pairs[0][0]), namespace)
  assert namespace['tokenizer'].batch_decode(namespace['out'], skip_special_tokens=True)[0]
  assert 'step 300' in readme and f'BLEU {scores[0]:.2f} (greedy' in readme
  assert readme.count('BLEU ') == 1  # the step-250 record is not this checkpoint's
