"""`python -m transformer_jax.evaluate --workdir=DIR`: BLEU and chrF with sacreBLEU.

Translates a split of the checkpoint's dataset (default: test) or `--src`/`--ref` files,
and reports sacreBLEU's BLEU (cased, detokenized, 13a by default: the comparable number)
and chrF with their signatures, as a console line and a JSON file. `--tokenize` and
`--lowercase` give the tokenized, lowercased variants some papers report.
"""
from __future__ import annotations

import json
import os
import time

import sacrebleu
from absl import flags

from transformer_jax import cli, files, inference
from transformer_jax import translate as translate_lib
from transformer_jax.data import datasets, pipeline
from transformer_jax.errors import UserError


def scores(hypotheses: list[str], references: list[str], tokenize: str = '13a',
           lowercase: bool = False) -> dict:
  """sacreBLEU BLEU and chrF of a corpus, with the signatures that make them comparable."""
  bleu = sacrebleu.metrics.BLEU(tokenize=tokenize, lowercase=lowercase)
  chrf = sacrebleu.metrics.CHRF(lowercase=lowercase)
  b = bleu.corpus_score(hypotheses, [references])
  c = chrf.corpus_score(hypotheses, [references])
  return {'bleu': b.score, 'bleu_signature': str(bleu.get_signature()),
          'bleu_detail': str(b), 'chrf': c.score, 'chrf_signature': str(chrf.get_signature()),
          'sentences': len(hypotheses)}


def split_pairs(config, split: str) -> tuple[list[str], list[str]]:
  """Source and reference texts of a dataset split, in the split's original order."""
  source = datasets.data_source(config.data, split)
  examples = sorted(pipeline.read(source, range(len(source))),
                    key=lambda ex: int(ex.get('index', 0)))
  return ([ex[config.data.source_lang].decode('utf-8') for ex in examples],
          [ex[config.data.target_lang].decode('utf-8') for ex in examples])


def main(argv):
  del argv
  workdir = cli.required_workdir()
  settings = translate_lib.settings_from_flags()
  if bool(_SRC.value) != bool(_REF.value):
    raise UserError('--src and --ref go together: the source file and its references.')
  restored = inference.restore(workdir, _STEP.value, _AVERAGED.value)
  if _SRC.value:
    sources, references = translate_lib.read_lines(_SRC.value), translate_lib.read_lines(_REF.value)
    if len(sources) != len(references):
      raise UserError(f'{_SRC.value} has {len(sources)} lines but {_REF.value} has '
                      f'{len(references)}.')
    what = _SRC.value
  else:
    if _DATA_DIR.value:
      restored.config.data.data_dir = _DATA_DIR.value
    if _TFDS_DIR.value:
      restored.config.data.tfds_dir = _TFDS_DIR.value
    sources, references = split_pairs(restored.config, _SPLIT.value)
    what = f'{restored.config.data.name}/{_SPLIT.value}'
  start = time.perf_counter()
  hypotheses = translate_lib.translate_texts(restored, sources, settings,
                                             translate_lib.stderr_progress())
  result = {'data': what, 'step': restored.step, 'averaged': _AVERAGED.value,
            'decode': settings.__dict__, 'translate_seconds': time.perf_counter() - start,
            **scores(hypotheses, references, _TOKENIZE.value, _LOWERCASE.value)}
  print(f'{what} step {restored.step}: BLEU {result["bleu"]:.2f} ({result["bleu_signature"]})'
        f'  chrF {result["chrf"]:.2f} ({result["chrf_signature"]})', flush=True)
  out = _JSON.value or os.path.join(
      workdir, f'eval_{what.replace("/", "_")}_step{restored.step}.json')
  files.write_atomically(out, json.dumps(result, indent=2).encode())
  if _HYPOTHESES.value:
    with open(_HYPOTHESES.value, 'w', encoding='utf-8') as f:
      f.writelines(h + '\n' for h in hypotheses)


_SPLIT = flags.DEFINE_string('split', 'test', 'Dataset split to score (train, validation, test).')
_SRC = flags.DEFINE_string('src', None, 'Source file to translate instead of a split.')
_REF = flags.DEFINE_string('ref', None, 'Reference translations of --src, line by line.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, "Override the checkpoint's data.data_dir.")
_TFDS_DIR = flags.DEFINE_string('tfds_dir', None, "Override the checkpoint's data.tfds_dir.")
_TOKENIZE = flags.DEFINE_string('tokenize', '13a', "sacreBLEU tokenizer: 13a, intl, none, ...")
_LOWERCASE = flags.DEFINE_bool('lowercase', False, 'Case-insensitive BLEU and chrF.')
_JSON = flags.DEFINE_string('json', None, 'Result file (default WORKDIR/eval_<data>_step<N>.json).')
_HYPOTHESES = flags.DEFINE_string('hypotheses', None, 'Also write the translations here.')
_STEP = translate_lib._STEP
_AVERAGED = translate_lib._AVERAGED

if __name__ == '__main__':
  cli.run(main)
